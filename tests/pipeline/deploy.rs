//! The deployment files: the Helm chart lints, renders (with default values
//! and with every optional object on) into manifests that validate against
//! the Kubernetes schemas, and docker-compose.yml is a valid compose file.
//! The tools come from `scripts/install-tools` (run by `./scripts/test`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from PATH or target/tools; fails with how to install it.
pub fn tool(name: &str) -> PathBuf {
    let local = root().join("target/tools").join(name);
    if local.exists() {
        return local;
    }
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.exists())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: run ./scripts/install-tools (./scripts/test does)")
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn render(values: Option<&Path>, dir: &Path, name: &str) -> PathBuf {
    let mut cmd = Command::new(tool("helm"));
    cmd.args(["template", "t"])
        .arg(root().join("helm/cas-bridge"));
    if let Some(v) = values {
        cmd.arg("-f").arg(v);
    }
    let out = dir.join(name);
    std::fs::write(&out, run(&mut cmd)).unwrap();
    out
}

fn kinds(manifest: &Path) -> Vec<String> {
    std::fs::read_to_string(manifest)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn helm_chart_lints_renders_and_validates() {
    let chart = root().join("helm/cas-bridge");
    let all_on = chart.join("ci/all-on-values.yaml");
    run(Command::new(tool("helm"))
        .args(["lint", "--strict"])
        .arg(&chart));
    run(Command::new(tool("helm"))
        .args(["lint", "--strict"])
        .arg(&chart)
        .arg("-f")
        .arg(&all_on));

    let dir = tempfile::tempdir().unwrap();
    let default = render(None, dir.path(), "default.yaml");
    let mut k = kinds(&default);
    k.sort();
    assert_eq!(
        k,
        [
            "ConfigMap",
            "Deployment",
            "Pod",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceAccount"
        ]
    );
    let full = render(Some(&all_on), dir.path(), "all-on.yaml");
    let k = kinds(&full);
    for want in [
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
        "Deployment",
    ] {
        assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
    }
    assert!(
        !k.iter().any(|x| x == "Secret"),
        "an existing Secret is used, none created"
    );
    let f = std::fs::read_to_string(&full).unwrap();
    for must in [
        "grafana_dashboard: \"1\"",
        "topologySpreadConstraints:",
        "envFrom:",
        "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL_PASSWORD",
        "checksum/config:",
        "secretName: cas-bridge-tls",
        "mountPath: /var/run/secrets/cas-bridge-tls",
    ] {
        assert!(f.contains(must), "all-on manifest lacks `{must}`");
    }
    for m in [&default, &full] {
        let out = run(Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--quiet"])
            .arg(m));
        // ServiceMonitor and PrometheusRule are CRDs: their schemas are not
        // among Kubernetes' own.
        for line in out
            .lines()
            .filter(|l| !l.contains("ServiceMonitor") && !l.contains("PrometheusRule"))
        {
            assert!(!line.contains("ERROR") && !line.contains("FAIL"), "{line}");
        }
    }
    let d = std::fs::read_to_string(&default).unwrap();
    for must in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "- ALL",
        "type: RuntimeDefault",
        "terminationGracePeriodSeconds: 30",
        "path: /healthz",
        "path: /readyz",
        "replicas: 3",
        "type: RollingUpdate",
        "CAS_BRIDGE__API__TOKEN_FILE",
        // `helm test`: cas-bridge verify with the replicas' configuration.
        "helm.sh/hook: test",
        "args: [\"verify\", \"--config\", \"/etc/cas-bridge/config.yaml\"]",
    ] {
        assert!(d.contains(must), "default manifest lacks `{must}`");
    }
    // Tenants: one token volume each, a Secret made only for the tenant
    // without an existing one, no top-level token, and pods left running
    // on a ConfigMap change when asked.
    let tenants_values = chart.join("ci/tenants-values.yaml");
    run(Command::new(tool("helm"))
        .args(["lint", "--strict"])
        .arg(&chart)
        .arg("-f")
        .arg(&tenants_values));
    let tenants = render(Some(&tenants_values), dir.path(), "tenants.yaml");
    let out = run(Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .arg(&tenants));
    assert!(!out.contains("ERROR") && !out.contains("FAIL"), "{out}");
    assert_eq!(
        kinds(&tenants).iter().filter(|k| *k == "Secret").count(),
        1,
        "one Secret: globex's (acme names an existing one)"
    );
    let t = std::fs::read_to_string(&tenants).unwrap();
    for must in [
        "name: t-cas-bridge-token-globex",
        "secretName: cas-token-acme",
        "secretName: t-cas-bridge-token-globex",
        "mountPath: /var/run/secrets/cas-bridge/tenants/acme",
    ] {
        assert!(t.contains(must), "tenants manifest lacks `{must}`");
    }
    // The replicas and the verify pod mount the same token directories.
    assert_eq!(
        t.matches("mountPath: /var/run/secrets/cas-bridge/tenants/acme")
            .count(),
        2,
        "the verify pod mounts acme's token as the replicas do"
    );
    for must_not in ["CAS_BRIDGE__API__TOKEN_FILE", "checksum/config", "subPath:"] {
        assert!(!t.contains(must_not), "tenants manifest has `{must_not}`");
    }
    // A tenant name that cannot go into topics and keys is refused.
    let out = Command::new(tool("helm"))
        .args(["template", "t"])
        .arg(&chart)
        .args(["--set", "tenants[0].name=Acme.Corp"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad tenant name is refused");
    // A grace period shorter than the bridge's own is refused at render time.
    let out = Command::new(tool("helm"))
        .args(["template", "t"])
        .arg(&chart)
        .args(["--set", "terminationGracePeriodSeconds=10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("terminationGracePeriodSeconds"));
    // values.schema.json rejects a typo.
    let out = Command::new(tool("helm"))
        .args(["template", "t"])
        .arg(&chart)
        .args(["--set", "replicaCont=2"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown value is refused");
}

#[test]
fn the_rendered_config_file_is_one_the_bridge_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for (values, name) in [
        (None, "d.yaml"),
        (
            Some(root().join("helm/cas-bridge/ci/all-on-values.yaml")),
            "a.yaml",
        ),
        (
            Some(root().join("helm/cas-bridge/ci/tenants-values.yaml")),
            "t.yaml",
        ),
        (
            Some(root().join("helm/cas-bridge/ci/cluster-values.yaml")),
            "c.yaml",
        ),
    ] {
        let m = render(values.as_deref(), dir.path(), name);
        let text = std::fs::read_to_string(&m).unwrap();
        // The ConfigMap's config.yaml, un-indented.
        let body: String = text
            .split("config.yaml: |")
            .nth(1)
            .unwrap()
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let file = dir.path().join(format!("{name}.config.yaml"));
        std::fs::write(&file, body).unwrap();
        // The chart gives the Redis URL from a Secret, as a variable; the
        // all-on values use TLS and Sentinel, which need a rediss:// one.
        let vars = values.as_ref().map(|_| {
            (
                "CAS_BRIDGE__COORD__REDIS_URL".to_string(),
                "rediss://bridge:secret@sentinel/0".to_string(),
            )
        });
        let cfg = cas_bridge::config::Config::load_from(Some(&file), vars);
        assert!(cfg.is_ok(), "{name}: {:?}", cfg.err());
        // Every tenant's token file is where the chart mounts its Secret.
        for t in cfg.unwrap().tenants().unwrap() {
            if t.name == "default" {
                continue;
            }
            let dir = format!("/var/run/secrets/cas-bridge/tenants/{}", t.name);
            assert_eq!(
                t.api.token_file.unwrap().display().to_string(),
                format!("{dir}/token")
            );
            assert!(
                text.contains(&format!("mountPath: {dir}\n")),
                "{name}: {dir} not mounted"
            );
        }
    }
}

#[test]
fn docker_compose_file_is_valid() {
    run(Command::new(tool("docker-compose"))
        .arg("-f")
        .arg(root().join("docker-compose.yml"))
        .args(["config", "-q"]));
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    for service in ["redis:", "kafka:", "nats:", "simulator:", "bridge:"] {
        assert!(text.contains(&format!("  {service}")), "{service} missing");
    }
    assert!(text.contains("replicas: 3"));
}

/// The `groups` of the chart's PrometheusRule, rendered with the default
/// thresholds, as a rule file.
pub fn rule_groups(dir: &Path) -> PathBuf {
    let out = run(Command::new(tool("helm"))
        .args(["template", "t"])
        .arg(root().join("helm/cas-bridge"))
        .args(["--set", "prometheusRule.enabled=true"])
        .args(["--show-only", "templates/prometheusrule.yaml"]));
    let groups: String = out
        .split_once("\nspec:\n")
        .expect("a spec")
        .1
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect();
    let file = dir.join("rules.yaml");
    std::fs::write(&file, groups).unwrap();
    file
}

/// Every alert fires on a series that should fire it and stays silent
/// otherwise (`helm/cas-bridge/ci/rules-test.yaml`, run by promtool).
#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rule_groups(dir.path());
    let out = run(Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&rules));
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let tests = dir.path().join("rules-test.yaml");
    std::fs::copy(root().join("helm/cas-bridge/ci/rules-test.yaml"), &tests).unwrap();
    let out = run(Command::new(tool("promtool"))
        .current_dir(dir.path())
        .args(["test", "rules", "rules-test.yaml"]));
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert has a test.
    let text = std::fs::read_to_string(&tests).unwrap();
    for alert in std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            text.contains(&format!("alertname: {alert}")),
            "{alert} has no test"
        );
    }
}

/// The dashboard's queries, with Grafana's variables put in.
pub fn dashboard_queries() -> Vec<String> {
    let text =
        std::fs::read_to_string(root().join("helm/cas-bridge/dashboards/cas-bridge.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in doc["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(
                t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "5m")
                    .replace("$job", ".*"),
            );
        }
    }
    assert!(out.len() >= 9, "{out:?}");
    out
}

/// Each dashboard query parses: they go through promtool as recording rules.
#[test]
fn the_dashboard_queries_parse() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries().iter().enumerate() {
        file.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(q).unwrap()
        ));
    }
    let rules = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&rules, file).unwrap();
    run(Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&rules));
}
