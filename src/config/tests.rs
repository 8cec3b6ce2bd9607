//! The configuration's tests: layering, the errors in our words, the
//! schema, the docs' table, redaction, tenants.
use super::*;
use std::time::Duration;

fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load_from(
        None,
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn defaults_are_valid_and_have_49_shards() {
    let c = load(&[]).unwrap();
    assert_eq!(c.shards.shards().unwrap().len(), 49);
    assert_eq!(c.api.effective_page_limit(), 500);
    assert_eq!(c.budget.per_minute, 10);
}

#[test]
fn env_overrides_and_lists() {
    let c = load(&[
        ("CAS_BRIDGE__SHARDS__PAIRS", "exchange:dlp,box:ransomware"),
        ("CAS_BRIDGE__WINDOW__LAG", "5m"),
        ("CAS_BRIDGE__API__DIALECT", "legacy"),
        ("CAS_BRIDGE__BUDGET__PER_MINUTE", "20"),
    ])
    .unwrap();
    assert_eq!(c.shards.pairs, vec!["exchange:dlp", "box:ransomware"]);
    assert_eq!(c.window.lag.get(), Duration::from_secs(300));
    assert_eq!(c.api.effective_page_limit(), 200);
    assert_eq!(c.budget.per_minute, 20);
}

#[test]
fn redaction_hides_the_token() {
    let c = load(&[
        ("CAS_BRIDGE__API__TOKEN", "s3cr3t-token-value"),
        (
            "CAS_BRIDGE__COORD__REDIS_URL",
            "redis://:s3cr3tpw@redis:6379/0",
        ),
    ])
    .unwrap();
    assert!(!c.redacted_json().contains("s3cr3tpw"));
    assert!(!format!("{c:?}").contains("s3cr3tpw"));
    assert!(!c.redacted_json().contains("s3cr3t"));
    assert!(!format!("{c:?}").contains("s3cr3t"));
    assert!(c.redacted_json().contains("[REDACTED]"));
}

#[test]
fn redaction_hides_broker_secrets_by_name_and_in_urls() {
    let mut c = Config::default();
    c.sink.nats.url = "nats://bridge:natspw1@n1:4222,nats://n2:4222".into();
    let props = &mut c.sink.kafka.properties;
    props.insert("sasl.password".into(), "kafkapw2".into());
    props.insert("ssl.key.password".into(), "keypw3".into());
    props.insert("sasl.username".into(), "bridge".into());
    let out = c.redacted_json();
    for secret in ["natspw1", "kafkapw2", "keypw3"] {
        assert!(!out.contains(secret), "{secret} in {out}");
    }
    assert!(out.contains("nats://bridge:REDACTED@n1:4222"), "{out}");
    assert!(out.contains("\"sasl.username\": \"bridge\""), "{out}");
}

#[test]
fn bad_values_name_their_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("CAS_BRIDGE__WINDOW__MAX", "4d", "window.max"),
        ("CAS_BRIDGE__API__REGION", "mars", "api.region"),
        (
            "CAS_BRIDGE__SINK__TOPIC_TEMPLATE",
            "cas.{pair}",
            "sink.topic_template",
        ),
        ("CAS_BRIDGE__API__PAGE_LIMIT", "501", "api.page_limit"),
        ("CAS_BRIDGE__WINDOW__START_FROM", "8d", "window.start_from"),
        ("CAS_BRIDGE__SHARDS__PAIRS", "exchange", "shards.pairs"),
        ("CAS_BRIDGE__BUDGET__PER_MINUTE", "0", "budget.per_minute"),
        (
            "CAS_BRIDGE__COORD__REDIS_URL",
            "http://x",
            "coord.redis_url",
        ),
        ("CAS_BRIDGE__COORD__LEASE_TTL", "1s", "coord.lease_ttl"),
    ];
    for (k, v, field) in cases {
        let e = load(&[(k, v)]).unwrap_err();
        assert_eq!(&e.field, field, "{k}={v}: {e}");
    }
}

#[test]
fn a_file_then_env_layers() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[window]\nlag = \"2m\"\n[budget]\nper_minute = 20\n[sink]\nkind = \"nats\"\n[sink.nats]\nurl = \"nats://n:4222\"\n",
    )
    .unwrap();
    let c = Config::load_from(
        Some(&f),
        [(
            "CAS_BRIDGE__BUDGET__PER_MINUTE".to_string(),
            "15".to_string(),
        )],
    )
    .unwrap();
    assert_eq!(c.window.lag.get(), Duration::from_secs(120));
    assert_eq!(c.budget.per_minute, 15);
    assert_eq!(c.sink.kind, SinkKind::Nats);
}

#[test]
fn unknown_keys_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[window]\nlagg = \"2m\"\n").unwrap();
    let e = Config::load_from(Some(&f), Vec::new()).unwrap_err();
    assert!(e.to_string().contains("lagg"), "{e}");
    let e = Config::load_from(Some(&dir.path().join("none.toml")), Vec::new()).unwrap_err();
    assert_eq!(e.field, "--config");
}

#[test]
fn errors_name_the_field_the_allowed_values_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str, &[&str])] = &[
        // Unknown key: the nearest known one, the file and line.
        (
            "c.toml",
            "[coord]\nprefix = \"x\"\nlease_tll = \"10s\"\n",
            "coord.lease_tll",
            &[
                "unknown key `lease_tll`",
                "did you mean `coord.lease_ttl`?",
                "c.toml, line 3",
            ],
        ),
        (
            "c.yaml",
            "api:\n  regoin: us\n",
            "api.regoin",
            &["did you mean `api.region`?", "c.yaml, line 2"],
        ),
        (
            "c.toml",
            "[sinks]\nkind = \"nats\"\n",
            "sinks",
            &["did you mean `sink`?"],
        ),
        (
            "c.toml",
            "[[tenants]]\nname = \"a\"\n[tenants.api]\ntokn = \"x\"\n",
            "tenants.a.api.tokn",
            &["did you mean `tenants.a.api.token`?", "line 4"],
        ),
        // Unknown enum value: every allowed value.
        (
            "c.toml",
            "[sink]\nkind = \"kafka2\"\n",
            "sink.kind",
            &[
                "`kafka2` is not one of: kafka, nats, jsonl",
                "did you mean `kafka`?",
            ],
        ),
        (
            "c.toml",
            "[budget]\nmode = \"slidng\"\n",
            "budget.mode",
            &["not one of: sliding, fixed"],
        ),
        (
            "c.toml",
            "[api]\ndialect = \"v2\"\n",
            "api.dialect",
            &["not one of: v1, legacy"],
        ),
        // Wrong type: in words, not Rust's type names.
        (
            "c.toml",
            "[budget]\nper_minute = \"abc\"\n",
            "budget.per_minute",
            &["expected a whole number, got string \"abc\"", "line 2"],
        ),
        (
            "c.toml",
            "[sink]\ncloudevents = \"maybe\"\n",
            "sink.cloudevents",
            &["expected true or false"],
        ),
        // Bad duration.
        (
            "c.toml",
            "[window]\nlag = \"5 minutes\"\n",
            "window.lag",
            &["unknown unit `minutes` (use ms, s, m, h or d)", "line 2"],
        ),
    ];
    for (name, text, field, says) in cases {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        let e = Config::load_from(Some(&f), Vec::new()).unwrap_err();
        assert_eq!(&e.field, field, "{text}: {e}");
        for s in *says {
            assert!(e.problem.contains(s), "{text}: `{s}` not in: {e}");
        }
        for rust in [
            "SinkKind",
            "BudgetMode",
            "Dialect",
            "u32",
            "variant constructor",
        ] {
            assert!(!e.problem.contains(rust), "{text}: {e}");
        }
    }
    // From the environment: the variable is named.
    let e = load(&[("CAS_BRIDGE__SINK__KIND", "natz")]).unwrap_err();
    assert_eq!(e.field, "sink.kind");
    assert!(e.problem.contains("did you mean `nats`?"), "{e}");
    assert!(
        e.problem
            .contains("from the environment, CAS_BRIDGE__SINK__KIND"),
        "{e}"
    );
}

/// Every key the configuration serializes (an oracle apart from the
/// schema) is in the schema, and the schema has no other.
#[test]
fn the_schema_lists_every_key() {
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        let free = [
            "sink.kafka.properties",
            "sink.kafka.secret_files",
            "sink.kafka.topic_config",
        ];
        if let Some(m) = v.as_object() {
            if !free.contains(&at) && !at.is_empty() || at.is_empty() {
                for (k, child) in m {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    if child.is_object() && !free.contains(&path.as_str()) {
                        walk(child, &path, out);
                    } else {
                        out.push(path);
                    }
                }
            }
        }
    }
    let mut serialized = Vec::new();
    walk(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut serialized,
    );
    // `tenants` is an empty list by default: its entries' keys.
    serialized.extend(
        [
            "tenants.name",
            "tenants.api",
            "tenants.shards",
            "tenants.window",
            "tenants.budget",
        ]
        .map(String::from),
    );
    serialized.retain(|k| k != "tenants");
    serialized.sort();
    let mut from_schema = keys();
    from_schema.sort();
    assert_eq!(from_schema, serialized);
    assert!(from_schema.len() > 60, "{}", from_schema.len());
}

/// Every key of the configuration is in the reference's table (a row
/// naming it, or a row of its section naming its last part).
#[test]
fn the_docs_table_lists_every_key() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let first_cells: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" | ").next())
        .collect();
    let missing: Vec<String> = keys()
        .into_iter()
        .filter(|key| {
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            !first_cells.iter().any(|c| {
                c.contains(&format!("`{key}`"))
                    || (!section.is_empty()
                        && (c.contains(&format!("`{section}."))
                            || c.contains(&format!("`{section}`")))
                        && (c.contains(&format!("`{leaf}`"))
                            || doc.lines().any(|l| {
                                l.starts_with(&format!("| `{section}`"))
                                    && l.contains(&format!("`{leaf}`"))
                            })))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md's table: {missing:?}"
    );
}

#[test]
fn runnable_needs_a_token() {
    let c = load(&[]).unwrap();
    assert_eq!(c.runnable().unwrap_err().field, "api.token");
    let c = load(&[("CAS_BRIDGE__API__TOKEN", "t")]).unwrap();
    assert!(c.runnable().is_ok());
}

#[test]
fn several_tenants_need_tenant_in_both_templates() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    let tenants = "[[tenants]]\nname = \"acme\"\n[tenants.api]\ntoken = \"a\"\n[[tenants]]\nname = \"beta\"\n[tenants.api]\ntoken = \"b\"\nregion = \"eu\"\n";
    std::fs::write(&f, tenants).unwrap();
    let e = Config::load_from(Some(&f), Vec::new()).unwrap_err();
    assert_eq!(e.field, "sink.topic_template", "{e}");
    assert!(e.problem.contains("would mix"), "{e}");
    let with_topic =
        format!("[sink]\ntopic_template = \"cas.{{tenant}}.{{service}}.{{event}}\"\n{tenants}");
    std::fs::write(&f, &with_topic).unwrap();
    let e = Config::load_from(Some(&f), Vec::new()).unwrap_err();
    assert_eq!(e.field, "sink.dead_letter", "{e}");
    let both = with_topic.replace("[sink]\n", "[sink]\ndead_letter = \"cas.{tenant}.dl\"\n");
    std::fs::write(&f, both).unwrap();
    let c = Config::load_from(Some(&f), Vec::new()).unwrap();
    let shards = c.all_shards().unwrap();
    assert_eq!(shards.len(), 98);
    assert!(c.runnable().is_ok());
    assert_eq!(c.tenants().unwrap()[1].api.region.as_deref(), Some("eu"));
    // A tenant's inline token is redacted like the top-level one.
    assert!(
        !c.redacted_json().contains("\"a\""),
        "{}",
        c.redacted_json()
    );
    assert!(!format!("{c:?}").contains("String(\"b\")"), "{c:?}");
    assert!(format!("{c:?}").contains("[REDACTED]"));
    // One tenant alone may leave {tenant} out.
    std::fs::write(
        &f,
        "[[tenants]]\nname = \"acme\"\n[tenants.api]\ntoken = \"a\"\n",
    )
    .unwrap();
    assert!(Config::load_from(Some(&f), Vec::new()).is_ok());
}

#[test]
fn kafka_without_brokers_is_refused_outside_demo() {
    let e = load(&[("CAS_BRIDGE__SINK__KIND", "kafka")]).unwrap_err();
    assert_eq!(e.field, "sink.kafka.brokers");
    let e = load(&[("CAS_BRIDGE__SINK__KIND", "nats")]).unwrap_err();
    assert_eq!(e.field, "sink.nats.url");
}
