use super::*;

fn with(kind: SinkKind) -> SinkConfig {
    SinkConfig {
        kind,
        ..SinkConfig::default()
    }
}

#[test]
fn kafka_and_nats_need_their_address() {
    assert_eq!(
        with(SinkKind::Kafka).validate().unwrap_err().field,
        "sink.kafka.brokers"
    );
    assert_eq!(
        with(SinkKind::Nats).validate().unwrap_err().field,
        "sink.nats.url"
    );
    assert!(with(SinkKind::Jsonl).validate().is_ok());
    let mut k = with(SinkKind::Kafka);
    k.kafka.brokers = "k:9092".into();
    assert!(k.validate().is_ok());
}

#[test]
fn kafka_fixed_properties_and_sizes() {
    let mut k = with(SinkKind::Kafka);
    k.kafka.brokers = "k:9092".into();
    k.kafka.properties.insert("acks".into(), "1".into());
    assert_eq!(
        k.validate().unwrap_err().field,
        "sink.kafka.properties.acks"
    );
    k.kafka.properties.clear();
    assert_eq!(k.kafka.max_message_bytes().unwrap(), 1_000_000);
    k.kafka
        .properties
        .insert("message.max.bytes".into(), "lots".into());
    assert_eq!(
        k.validate().unwrap_err().field,
        "sink.kafka.properties.message.max.bytes"
    );
    k.kafka
        .properties
        .insert("message.max.bytes".into(), "65536".into());
    assert_eq!(k.kafka.max_message_bytes().unwrap(), 65_536);
}

fn kafka_env(vars: &[(&str, &str)]) -> Result<crate::config::Config, ConfigError> {
    let mut all = vec![
        ("CAS_BRIDGE__SINK__KIND".to_string(), "kafka".to_string()),
        ("CAS_BRIDGE__SINK__KAFKA__BROKERS".into(), "k:9092".into()),
    ];
    all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    crate::config::Config::load_from(None, all)
}

#[test]
fn nested_environment_keys_are_joined_with_dots() {
    let c = kafka_env(&[
        (
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL__PASSWORD",
            "pw-7f3a",
        ),
        (
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SECURITY__PROTOCOL",
            "sasl_ssl",
        ),
        (
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL__MECHANISM",
            "PLAIN",
        ),
        (
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL__USERNAME",
            "bridge",
        ),
        (
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__MESSAGE__MAX__BYTES",
            "65536",
        ),
    ])
    .unwrap();
    let p = &c.sink.kafka.properties;
    assert_eq!(p["sasl.password"], "pw-7f3a");
    assert_eq!(p["security.protocol"], "sasl_ssl");
    assert_eq!(p["message.max.bytes"], "65536");
    assert_eq!(c.sink.kafka.max_message_bytes().unwrap(), 65_536);
    // Shown nowhere: not in the effective configuration, not in Debug.
    assert!(!c.redacted_json().contains("pw-7f3a"));
    assert!(!format!("{c:?}").contains("pw-7f3a"));
    // A file's TOML form, quoted or dotted, means the same.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(
        &f,
        "[sink]\nkind = \"kafka\"\n[sink.kafka]\nbrokers = \"k:9092\"\n[sink.kafka.properties]\n\"security.protocol\" = \"ssl\"\nssl.key.password = \"pw-7f3a\"\n",
    )
    .unwrap();
    let c = crate::config::Config::load_from(Some(&f), Vec::new()).unwrap();
    assert_eq!(c.sink.kafka.properties["ssl.key.password"], "pw-7f3a");
    assert_eq!(c.sink.kafka.properties["security.protocol"], "ssl");
}

#[test]
fn the_readmes_helm_sasl_example_is_accepted_by_librdkafka() {
    // config.sink.kafka.properties as the README's values file has
    // them, and the password through extraEnv, nested.
    let c = kafka_env(&[
        (
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SECURITY__PROTOCOL",
            "SASL_SSL",
        ),
        (
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL__MECHANISM",
            "SCRAM-SHA-512",
        ),
        (
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL__USERNAME",
            "cas-bridge",
        ),
        (
            "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL__PASSWORD",
            "pw-helm-5e",
        ),
    ])
    .unwrap();
    let client = c.sink.kafka.client_config().unwrap();
    assert_eq!(client.get("sasl.password"), Some("pw-helm-5e"));
    assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
}

#[test]
fn librdkafka_refuses_an_unknown_property_by_name_never_by_value() {
    let e = kafka_env(&[(
        "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SASL_PASSWORD",
        "pw-7f3a",
    )])
    .unwrap_err();
    assert_eq!(e.field, "sink.kafka.properties.sasl_password");
    let text = e.to_string();
    assert!(!text.contains("pw-7f3a"), "{text}");
    assert!(text.contains("No such configuration property"), "{text}");
    assert!(text.contains("SASL__PASSWORD"), "the hint: {text}");
    // A value librdkafka refuses: the key named, the value cut out.
    let e = kafka_env(&[(
        "CAS_BRIDGE__SINK__KAFKA__PROPERTIES__SECURITY__PROTOCOL",
        "pw-7f3a",
    )])
    .unwrap_err();
    assert_eq!(e.field, "sink.kafka.properties.security.protocol");
    assert!(!e.to_string().contains("pw-7f3a"), "{e}");
}

#[test]
fn a_secret_file_sets_its_property() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "pw-from-file\n").unwrap();
    let c = kafka_env(&[(
        "CAS_BRIDGE__SINK__KAFKA__SECRET_FILES__SSL__KEY__PASSWORD",
        pw.to_str().unwrap(),
    )])
    .unwrap();
    let client = c.sink.kafka.client_config().unwrap();
    assert_eq!(client.get("ssl.key.password"), Some("pw-from-file"));
    assert!(!c.redacted_json().contains("pw-from-file"));
    // The path is shown (it is not the secret), and the shown
    // configuration loads back as it is.
    let shown = c.redacted_json();
    assert!(shown.contains(pw.to_str().unwrap()), "{shown}");
    let back = dir.path().join("back.yaml");
    std::fs::write(&back, &shown).unwrap();
    let again = crate::config::Config::load_from(Some(&back), Vec::new()).unwrap();
    assert_eq!(again.sink.kafka.secret_files, c.sink.kafka.secret_files);
    // Unreadable: named, and both places at once: refused.
    let mut k = c.sink.kafka.clone();
    k.secret_files
        .insert("ssl.key.password".into(), "/nonexistent/pw".into());
    let e = k.client_config().unwrap_err();
    assert_eq!(e.field, "sink.kafka.secret_files.ssl.key.password");
    k.properties.insert("ssl.key.password".into(), "x".into());
    assert_eq!(
        k.validate().unwrap_err().field,
        "sink.kafka.secret_files.ssl.key.password"
    );
}

#[test]
fn nats_stream_name() {
    let mut n = with(SinkKind::Nats);
    n.nats.url = "nats://n:4222".into();
    n.nats.stream = "CAS EVENTS".into();
    assert_eq!(n.validate().unwrap_err().field, "sink.nats.stream");
}
