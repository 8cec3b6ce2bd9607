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
