//! The tape against a `serde_json::Value`: the same documents, and the
//! same verdicts, ids and times on the simulator's events.

use super::*;

#[test]
fn a_tape_holds_the_same_document_as_a_value() {
    let texts = [
        r#"{"a":1,"b":[true,null,"x\ny",{"c":-2.5e3}],"d":{},"e":[],"f":"é\u00e9"}"#,
        r#"[1,[2,[3]],{"k":{"k":{"k":"v"}}}]"#,
        r#""just a string""#,
        "18446744073709551615",
    ];
    for text in texts {
        let tape = Tape::parse(text).unwrap();
        let want: Value = serde_json::from_str(text).unwrap();
        assert_eq!(tape.doc().root().to_value(), want, "{text}");
    }
    let tape = Tape::parse(r#"{"m":{"id":" x ","n":[1,2]},"z":0}"#).unwrap();
    let doc = tape.doc();
    let root = doc.root();
    assert_eq!(
        root.get("m")
            .and_then(|m| m.get("id"))
            .and_then(|n| n.as_str()),
        Some(" x ")
    );
    assert_eq!(root.get("z").map(|z| z.json_type()), Some(JsonType::Number));
    assert!(root.get("n").is_none());
    assert!(Tape::parse("{\"a\":1} trailing").is_err());
    let e = Tape::parse(r#"{"m":{"a":1,"b":2,"a":3}}"#).unwrap_err();
    assert!(e.to_string().contains(DUPLICATE_NAMES), "{e}");
    assert!(Tape::parse("{\"a\":").is_err());
}

mod verdicts {
    //! The tape's verdicts against the `Value` path's, on the simulator's
    //! events (bad shapes included) and on variants of them broken by hand.
    use super::super::*;
    use crate::cas::Dialect;
    use crate::identity::{event_id, natural_id_on_tape};
    use crate::publish::{event_time, event_time_on_tape};
    use crate::shard::{Shard, DEFAULT_EVENTS, DEFAULT_SERVICES};
    use crate::sim::EventPlan;
    use crate::validate::Registry;

    /// Variants of a valid event: each top-level and message member
    /// removed, nulled, made a number, an array, an object, a long string.
    fn variants(event: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        let breaks = [
            Value::Null,
            serde_json::json!(7),
            serde_json::json!([1]),
            serde_json::json!({"x": 1}),
            serde_json::json!("x".repeat(5000)),
            serde_json::json!(""),
        ];
        let top: Vec<String> = event.as_object().unwrap().keys().cloned().collect();
        for k in &top {
            let mut e = event.clone();
            e.as_object_mut().unwrap().remove(k);
            out.push(e);
            for b in &breaks {
                let mut e = event.clone();
                e[k] = b.clone();
                out.push(e);
            }
        }
        if let Some(m) = event.get("message").and_then(Value::as_object) {
            for k in m.keys() {
                let mut e = event.clone();
                e["message"].as_object_mut().unwrap().remove(k);
                out.push(e);
                for b in &breaks {
                    let mut e = event.clone();
                    e["message"][k] = b.clone();
                    out.push(e);
                }
            }
        }
        out
    }

    #[test]
    fn the_tape_gives_the_values_verdict_id_and_time() {
        let registry = Registry::load(None).unwrap();
        let plan = EventPlan::plain(11, 120.0, 0.3);
        let (mut valid, mut invalid) = (0, 0);
        for dialect in [Dialect::V1, Dialect::Legacy] {
            for service in DEFAULT_SERVICES.iter().copied() {
                for kind in DEFAULT_EVENTS.iter().copied() {
                    let shard = Shard::new(service, kind);
                    for stub in plan.stubs(&shard, 0, 3_600_000).iter().take(6) {
                        let event = plan.render(&shard, stub, dialect);
                        for e in std::iter::once(event.clone()).chain(variants(&event)) {
                            let text = serde_json::to_string_pretty(&e).unwrap();
                            let tape = Tape::parse(&text).unwrap();
                            let doc = tape.doc();
                            let root = doc.root();
                            let want = registry.check(kind, &e).is_empty();
                            assert_eq!(registry.is_valid(kind, root), want, "{kind}: {text}");
                            if let Some(id) = natural_id_on_tape(root) {
                                assert_eq!(id, event_id(&shard, &e));
                            }
                            assert_eq!(event_time_on_tape(root), event_time(&e));
                            if want {
                                valid += 1;
                            } else {
                                invalid += 1;
                            }
                        }
                    }
                }
            }
        }
        // Both verdicts were compared, many times each.
        assert!(
            valid > 300 && invalid > 3000,
            "{valid} valid, {invalid} invalid"
        );
    }
}
