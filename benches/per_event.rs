//! Where the time of one event goes: parse → id → validate → serialize, for
//! one event of each type (as the simulator renders them, messy values and all).
//! `all` is the path through a `serde_json::Value` (still taken by invalid
//! events); `tape`, `validate_tape` and `all_tape` the path of a valid one.
//! `page_per_event` and `serde_split_per_event` time a page of 500 events
//! (divide by 500): read with its tapes in one pass, and split by serde_json
//! alone.
//!
//!   cargo bench --bench per_event

use cas_bridge::cas::Dialect;
use cas_bridge::identity::event_id;
use cas_bridge::identity::natural_id_on_tape;
use cas_bridge::shard::Shard;
use cas_bridge::sim::EventPlan;
use cas_bridge::sink::{PageMeta, Record};
use cas_bridge::tape::Tape;
use cas_bridge::validate::Registry;
use cas_bridge::window::Window;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;

fn per_event(c: &mut Criterion) {
    let plan = EventPlan {
        seed: 3,
        events_per_hour: 600.0,
        late_fraction: 0.0,
        late_by_ms: 0,
        bad_fraction: 0.0,
        huge_fraction: 0.0,
        huge_bytes: 0,
        activity: Vec::new(),
    };
    let registry = Registry::load(None).unwrap();
    let window = Window {
        start: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        end: chrono::DateTime::from_timestamp(1_700_003_600, 0).unwrap(),
    };
    for event in ["dlp", "securityrisk", "virtualanalyzer", "ransomware"] {
        let shard = Shard::new("exchange", event);
        let stub = plan.stubs(&shard, 0, 600_000)[0];
        let raw = serde_json::to_vec(&plan.render(&shard, &stub, Dialect::V1)).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let id = event_id(&shard, &value);
        let meta = Arc::new(PageMeta::new(&shard, &window));
        let topic: Arc<str> = "cas.exchange.dlp".into();
        let mut g = c.benchmark_group(event);
        g.bench_function("parse", |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&raw)).unwrap())
        });
        g.bench_function("id", |b| b.iter(|| event_id(&shard, black_box(&value))));
        g.bench_function("id_hashed", |b| {
            let mut v = value.clone();
            v.as_object_mut().unwrap().remove("log_item_id");
            v["message"].as_object_mut().unwrap().remove("log_item_id");
            b.iter(|| event_id(&shard, black_box(&v)))
        });
        g.bench_function("validate", |b| {
            b.iter(|| registry.check(event, black_box(&value)))
        });
        let raw_value =
            serde_json::value::RawValue::from_string(String::from_utf8(raw.clone()).unwrap())
                .unwrap();
        g.bench_function("serialize", |b| {
            b.iter(|| Record::event(topic.clone(), id.clone(), &meta, black_box(raw_value.get())))
        });
        g.bench_function("all", |b| {
            b.iter(|| {
                let v: serde_json::Value =
                    serde_json::from_str(black_box(raw_value.get())).unwrap();
                let id = event_id(&shard, &v);
                let bad = registry.check(event, &v);
                assert!(bad.is_empty());
                Record::event(topic.clone(), id, &meta, raw_value.get())
            })
        });
        let text = raw_value.get();
        g.bench_function("tape", |b| {
            b.iter(|| {
                Tape::parse(black_box(text))
                    .unwrap()
                    .doc()
                    .root()
                    .is_object()
            })
        });
        let tape = Tape::parse(text).unwrap();
        let doc = tape.doc();
        g.bench_function("validate_tape", |b| {
            b.iter(|| registry.is_valid(event, black_box(doc.root())))
        });
        g.bench_function("all_tape", |b| {
            b.iter(|| {
                let tape = Tape::parse(black_box(text)).unwrap();
                let doc = tape.doc();
                let root = doc.root();
                let id = natural_id_on_tape(root).unwrap().to_string();
                assert!(registry.is_valid(event, root));
                Record::event(topic.clone(), id, &meta, raw_value.get())
            })
        });
        // A page of 500 such events, per event: split into events with
        // their tapes in one pass (the bridge's way), against serde_json's
        // split into raw events alone (the first of the two scans before).
        let page = format!(
            r#"{{"security_events":[{}],"next_link":"https://h/p"}}"#,
            vec![raw_value.get(); 500].join(",")
        );
        g.bench_function("page_per_event", |b| {
            b.iter(|| {
                let p =
                    cas_bridge::cas::parse_page(black_box(page.as_bytes()), Dialect::V1).unwrap();
                assert_eq!(p.len(), 500);
            })
        });
        g.bench_function("serde_split_per_event", |b| {
            #[derive(serde::Deserialize)]
            struct Split<'a> {
                #[serde(borrow)]
                security_events: Vec<&'a serde_json::value::RawValue>,
            }
            b.iter(|| {
                let p: Split<'_> = serde_json::from_str(black_box(&page)).unwrap();
                assert_eq!(p.security_events.len(), 500);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, per_event);
criterion_main!(benches);
