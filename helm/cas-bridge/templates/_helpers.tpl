{{- define "cas-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cas-bridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cas-bridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "cas-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "cas-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cas-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cas-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cas-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cas-bridge.tokenSecret" -}}
{{- if .Values.token.existingSecret }}{{ .Values.token.existingSecret }}{{ else }}{{ include "cas-bridge.fullname" . }}-token{{ end }}
{{- end }}

{{- define "cas-bridge.tenantSecret" -}}
{{- $t := .tenant }}
{{- if and $t.token $t.token.existingSecret }}{{ $t.token.existingSecret }}{{ else }}{{ include "cas-bridge.fullname" .root }}-token-{{ $t.name }}{{ end }}
{{- end }}

{{- define "cas-bridge.tenantSecretKey" -}}
{{- $t := .tenant }}
{{- if and $t.token $t.token.existingSecretKey }}{{ $t.token.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{- /* The configuration file: .Values.config, with the tenants and their token files. */ -}}
{{- define "cas-bridge.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- if .Values.tenants }}
{{- $ts := list }}
{{- range .Values.tenants }}
{{- $tenant := . }}
{{- $api := merge (dict "token_file" (printf "/var/run/secrets/cas-bridge/tenants/%s/token" .name)) (deepCopy (default dict .api)) }}
{{- $t := dict "name" .name "api" $api }}
{{- range $section := list "shards" "window" "budget" }}
{{- with (get $tenant $section) }}{{ $_ := set $t $section . }}{{ end }}
{{- end }}
{{- $ts = append $ts $t }}
{{- end }}
{{- $_ := set $cfg "tenants" $ts }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{- /* What the bridge and its `helm test` pod (cas-bridge verify) share:
the token files, Redis, the extra environment. */ -}}
{{- define "cas-bridge.sharedEnv" -}}
{{- if not .Values.tenants }}
- name: CAS_BRIDGE__API__TOKEN_FILE
  value: /var/run/secrets/cas-bridge/token
{{- end }}
{{- if .Values.redis.existingSecret }}
- name: CAS_BRIDGE__COORD__REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else if .Values.redis.url }}
- name: CAS_BRIDGE__COORD__REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cas-bridge.volumeMounts" -}}
- name: config
  mountPath: /etc/cas-bridge
  readOnly: true
{{- if .Values.tenants }}
{{- /* One directory per tenant, not a single file (a Secret updated in
place reaches a directory mount only), followed by the bridge. */}}
{{- range .Values.tenants }}
- name: token-{{ .name }}
  mountPath: /var/run/secrets/cas-bridge/tenants/{{ .name }}
  readOnly: true
{{- end }}
{{- else }}
- name: token
  mountPath: /var/run/secrets/cas-bridge
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cas-bridge.volumes" -}}
- name: config
  configMap:
    name: {{ include "cas-bridge.fullname" . }}
{{- if .Values.tenants }}
{{- range .Values.tenants }}
- name: token-{{ .name }}
  secret:
    secretName: {{ include "cas-bridge.tenantSecret" (dict "tenant" . "root" $) }}
    items:
      - key: {{ include "cas-bridge.tenantSecretKey" (dict "tenant" . "root" $) }}
        path: token
{{- end }}
{{- else }}
- name: token
  secret:
    secretName: {{ include "cas-bridge.tokenSecret" . }}
    items:
      - key: {{ .Values.token.existingSecretKey }}
        path: token
{{- end }}
- name: tmp
  emptyDir: {}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
