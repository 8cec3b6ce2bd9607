//! Deterministic event generation: the same seed gives the same events, so
//! the simulator can tell a test which ids a window holds.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::cas::Dialect;
use crate::shard::Shard;

/// How events are generated.
#[derive(Debug, Clone)]
pub struct EventPlan {
    pub seed: u64,
    /// Mean events per hour per shard.
    pub events_per_hour: f64,
    /// Share of events that reach the API late.
    pub late_fraction: f64,
    /// Ingest delay of a late event, in ms (others take 2 s).
    pub late_by_ms: i64,
    /// Share of events whose shape violates the schema.
    pub bad_fraction: f64,
    /// Share of events carrying `huge_bytes` of padding (larger than a
    /// broker may take).
    pub huge_fraction: f64,
    /// Padding of a huge event, in bytes.
    pub huge_bytes: usize,
    /// Per-pair rates (events per hour) and the time (ms since the epoch)
    /// each pair starts; when not empty, pairs not named are silent and
    /// `events_per_hour` is not used.
    pub activity: Vec<(Shard, f64, i64)>,
}

/// One generated event, before it is rendered.
#[derive(Debug, Clone, Copy)]
pub struct Stub {
    /// Generation time, ms since the epoch (what the window filters on).
    pub at_ms: i64,
    /// When the API can return it, ms since the epoch.
    pub visible_ms: i64,
    /// A per-event random number.
    pub key: u64,
}

fn h(parts: &[&[u8]]) -> u64 {
    let mut d = Sha256::new();
    for p in parts {
        d.update((p.len() as u32).to_le_bytes());
        d.update(p);
    }
    let out = d.finalize();
    u64::from_le_bytes(out[..8].try_into().unwrap_or_default())
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl EventPlan {
    /// `events_per_hour` events from `seed`, `bad_fraction` of them with a
    /// bad shape; none late, none huge, the same rate for every pair.
    pub fn plain(seed: u64, events_per_hour: f64, bad_fraction: f64) -> Self {
        Self {
            seed,
            events_per_hour,
            late_fraction: 0.0,
            late_by_ms: 0,
            bad_fraction,
            huge_fraction: 0.0,
            huge_bytes: 0,
            activity: Vec::new(),
        }
    }

    /// The stubs generated in `[start_ms, end_ms]` (both inclusive), in order.
    pub fn stubs(&self, shard: &Shard, start_ms: i64, end_ms: i64) -> Vec<Stub> {
        let mut out = Vec::new();
        let (per_hour, from_ms) = if self.activity.is_empty() {
            (self.events_per_hour, i64::MIN)
        } else {
            self.activity
                .iter()
                .find(|(s, ..)| s == shard)
                .map_or((0.0, i64::MIN), |(_, r, from)| (*r, *from))
        };
        let start_ms = start_ms.max(from_ms);
        if end_ms < start_ms || per_hour <= 0.0 {
            return out;
        }
        let per_minute = per_hour / 60.0;
        let seed = self.seed.to_le_bytes();
        let (sv, ev) = (shard.service.as_bytes(), shard.event.as_bytes());
        for minute in start_ms.div_euclid(60_000)..=end_ms.div_euclid(60_000) {
            let mb = minute.to_le_bytes();
            let r = h(&[&seed, sv, ev, &mb]);
            let n = per_minute.floor() as u64 + u64::from(unit(r) < per_minute.fract());
            for i in 0..n {
                let key = h(&[&seed, sv, ev, &mb, &i.to_le_bytes()]);
                // Every 8th minute's first event sits exactly on the minute:
                // windows often end on round times, so boundaries get tested.
                let offset = if i == 0 && r % 8 == 0 {
                    0
                } else {
                    (key % 60_000) as i64
                };
                let at_ms = minute * 60_000 + offset;
                if at_ms < start_ms || at_ms > end_ms {
                    continue;
                }
                let late = unit(key.rotate_left(17)) < self.late_fraction;
                let visible_ms = at_ms + if late { self.late_by_ms } else { 2_000 };
                out.push(Stub {
                    at_ms,
                    visible_ms,
                    key,
                });
            }
        }
        out.sort_by_key(|s| (s.at_ms, s.key));
        out
    }

    /// Whether this stub renders with `huge_bytes` of padding.
    pub fn is_huge(&self, stub: &Stub) -> bool {
        self.huge_bytes > 0 && unit(stub.key.rotate_left(41)) < self.huge_fraction
    }

    /// Whether this stub renders as a schema violation.
    pub fn is_bad(&self, stub: &Stub) -> bool {
        unit(stub.key.rotate_left(29)) < self.bad_fraction
    }

    /// The event object as the API returns it.
    pub fn render(&self, shard: &Shard, stub: &Stub, dialect: Dialect) -> Value {
        if &*shard.event == crate::shard::QUARANTINE {
            return self.render_quarantine(shard, stub);
        }
        let k = stub.key;
        let uuid = self.uuid(stub);
        let at = Utc
            .timestamp_millis_opt(stub.at_ms)
            .single()
            .unwrap_or_default();
        let ts = |t: DateTime<Utc>| match dialect {
            Dialect::V1 => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            Dialect::Legacy => t.format("%Y-%m-%dT%H:%M:%S").to_string(),
        };
        let user = format!("user{}@example{}.onmicrosoft.com", k % 97, k % 5);
        let mut m = Map::new();
        if dialect == Dialect::V1 {
            m.insert("log_item_id".into(), json!(uuid));
        }
        m.insert("detection_time".into(), json!(ts(at)));
        m.insert("affected_user".into(), json!(format!(" {user} ")));
        m.insert(
            "location".into(),
            json!(format!("{user}\\Inbox\\\"Folder {}\"", k % 13)),
        );
        m.insert(
            "triggered_policy_name".into(),
            json!("Default  Policy <Strict> "),
        );
        m.insert(
            "triggered_security_filter".into(),
            json!(filter(&shard.event)),
        );
        m.insert(
            "action".into(),
            json!(["Pass", "Quarantine", "Delete"][(k % 3) as usize]),
        );
        m.insert("action_result".into(), json!("Successful"));
        m.insert("scan_type".into(), json!("Real-time scan"));
        if matches!(&*shard.service, "exchange" | "gmail" | "exchangeserver") {
            let sender = format!("\"Sender {}\" <s{}@example.com> ", k % 31, k % 31);
            m.insert(
                "mail_message_id".into(),
                json!(format!(" <{k:x}@mail.example.com>")),
            );
            m.insert(
                "mail_message_sender".into(),
                if dialect == Dialect::Legacy {
                    json!([sender])
                } else {
                    json!(sender)
                },
            );
            m.insert(
                "mail_message_recipient".into(),
                json!([format!("\" {user}\"< {user} >")]),
            );
            m.insert(
                "mail_message_subject".into(),
                json!(format!("  Invoice #{} ", k % 1000)),
            );
            m.insert(
                "mail_message_submit_time".into(),
                json!(ts(at - chrono::Duration::seconds(3))),
            );
            m.insert(
                "mail_message_delivery_time".into(),
                json!(ts(at - chrono::Duration::seconds(1))),
            );
        } else {
            m.insert("file_name".into(), json!(format!("report {}.docx", k % 50)));
            m.insert(
                "file_upload_time".into(),
                json!(ts(at - chrono::Duration::seconds(30))),
            );
        }
        match &*shard.event {
            "dlp" => {
                m.insert("violator".into(), json!(format!(" {user} ")));
                m.insert("violating_content".into(), json!("4111-1111-1111-1111"));
                m.insert(
                    "triggered_dlp_template".into(),
                    if dialect == Dialect::Legacy {
                        json!(["PCI-DSS"])
                    } else {
                        json!({"name": "PCI-DSS", "ids": [k % 9]})
                    },
                );
            }
            "securityrisk" => {
                m.insert(
                    "security_risk_name".into(),
                    json!(format!("TROJ_GEN.R{:04}", k % 9999)),
                );
                m.insert("virus_name".into(), json!("Eicar_test_file"));
                m.insert("detected_by".into(), json!("Pattern"));
            }
            "virtualanalyzer" => {
                m.insert(
                    "risk_level".into(),
                    json!(["low", "medium", "high"][(k % 3) as usize]),
                );
                m.insert("file_sha1".into(), json!(format!("{:040x}", k as u128)));
                m.insert("file_sha256".into(), json!(format!("{:064x}", k as u128)));
                m.insert(
                    "va_report_link".into(),
                    json!(format!("https://report.example/{uuid}")),
                );
            }
            "ransomware" => {
                m.insert("ransomware_name".into(), json!("RANSOM_WCRY.A"));
                m.insert("detection_type".into(), json!("Behavior"));
            }
            _ => {}
        }
        if self.is_huge(stub) {
            m.insert("padding".into(), json!("x".repeat(self.huge_bytes)));
        }
        let mut message = Value::Object(m);
        if self.is_bad(stub) {
            // Wrong types, as broken upstream data would have them.
            if k % 2 == 0 {
                message["detection_time"] = json!(stub.at_ms / 1000);
            } else {
                message = json!(format!("unparsed: {uuid}"));
            }
        }
        let mut event = Map::new();
        event.insert("service".into(), json!(display_service(&shard.service)));
        event.insert("event".into(), json!(display_event(&shard.event)));
        if dialect == Dialect::V1 {
            event.insert("log_item_id".into(), json!(uuid));
        }
        event.insert("message".into(), message);
        Value::Object(event)
    }

    /// A quarantine event as the live API's reference describes one: the
    /// service and a message of the quarantined mail's ids and places; its
    /// id is `mail_log_id`, its time the mail's delivery time.
    fn render_quarantine(&self, shard: &Shard, stub: &Stub) -> Value {
        let k = stub.key;
        let at = Utc
            .timestamp_millis_opt(stub.at_ms)
            .single()
            .unwrap_or_default();
        let user = format!("user{}@example{}.onmicrosoft.com", k % 97, k % 5);
        let mut m = Map::new();
        m.insert("mail_log_id".into(), json!(self.uuid(stub)));
        m.insert(
            "mail_unique_id".into(),
            json!(format!("AAMkAG{:016x}AAA=", k.rotate_left(7))),
        );
        m.insert(
            "mail_message_id".into(),
            json!(format!("<{k:x}@mail.example.com>")),
        );
        m.insert("affected_user".into(), json!(user));
        m.insert("mailbox".into(), json!(format!(" {user} ")));
        m.insert(
            "mail_message_direction".into(),
            json!(["Inbound", "Outbound"][(k % 2) as usize]),
        );
        m.insert(
            "mail_blob_path".into(),
            json!(format!("quarantine/{:x}/{:x}.eml", k % 4096, k)),
        );
        m.insert(
            "mail_backup_blob_path".into(),
            json!(format!("quarantine-backup/{:x}/{:x}.eml", k % 4096, k)),
        );
        m.insert(
            "mail_message_delivery_time".into(),
            json!(at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
        );
        if self.is_huge(stub) {
            m.insert("padding".into(), json!("x".repeat(self.huge_bytes)));
        }
        let mut message = Value::Object(m);
        if self.is_bad(stub) {
            if k % 2 == 0 {
                message["mail_log_id"] = json!(k % 1000);
            } else {
                message = json!(format!("unparsed: {}", self.uuid(stub)));
            }
        }
        json!({"service": &*shard.service, "message": message})
    }

    /// The id the bridge must derive for this stub, worked out here on its
    /// own (an oracle that shares no code with the bridge's `identity`):
    /// v1 events carry the UUID the simulator gave them as `log_item_id`;
    /// legacy events have none, so their id is the SHA-256 of
    /// `[service, event, message]` written with sorted keys and no
    /// whitespace, as API-NOTES.md describes.
    /// A quarantine event's id is its `mail_log_id`, the same UUID, unless
    /// the event is rendered broken (then the content hash, as for legacy
    /// events).
    pub fn id(&self, shard: &Shard, stub: &Stub, dialect: Dialect) -> String {
        if &*shard.event == crate::shard::QUARANTINE {
            // The same in both dialects (only the live one serves it).
            return if self.is_bad(stub) {
                self.hashed(shard, stub, dialect)
            } else {
                self.uuid(stub)
            };
        }
        match dialect {
            Dialect::V1 => self.uuid(stub),
            Dialect::Legacy => self.hashed(shard, stub, dialect),
        }
    }

    /// The content hash of a stub's event: SHA-256 of
    /// `[service, event, message]` with sorted keys and no whitespace.
    fn hashed(&self, shard: &Shard, stub: &Stub, dialect: Dialect) -> String {
        let event = self.render(shard, stub, dialect);
        let message = event.get("message").cloned().unwrap_or(Value::Null);
        // serde_json's map is ordered by key: this is the sorted form.
        let text = serde_json::to_string(&json!([&*shard.service, &*shard.event, message]))
            .unwrap_or_default();
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    fn uuid(&self, stub: &Stub) -> String {
        let k = stub.key;
        uuid::Uuid::from_u64_pair(k, k.rotate_left(32) ^ self.seed).to_string()
    }
}

fn filter(event: &str) -> &'static str {
    match event {
        "dlp" => "Data Loss Prevention",
        "securityrisk" => "Security Risk Scan",
        "virtualanalyzer" => "Virtual Analyzer",
        "ransomware" => "Ransomware",
        _ => "Other",
    }
}

/// The vendor's own service name, as found inside events.
fn display_service(s: &str) -> String {
    match s {
        "exchange" => "Exchange".into(),
        "sharepoint" => "SharePoint".into(),
        "onedrive" => "OneDrive".into(),
        "dropbox" => "Dropbox".into(),
        "box" => "Box".into(),
        "googledrive" => "Google Drive".into(),
        "gmail" => "Gmail".into(),
        "teams" => "Teams".into(),
        "exchangeserver" => "Exchange Server".into(),
        "salesforce_sandbox" => "Salesforce Sandbox".into(),
        "salesforce_production" => "Salesforce".into(),
        "teams_chat" => "Teams Chat".into(),
        other => other.into(),
    }
}

/// The vendor's own event name, as found inside events.
fn display_event(e: &str) -> String {
    match e {
        "securityrisk" => "security_risk_scan".into(),
        "virtualanalyzer" => "virtual_analyzer".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> EventPlan {
        EventPlan {
            seed: 7,
            events_per_hour: 600.0,
            late_fraction: 0.1,
            late_by_ms: 90_000,
            bad_fraction: 0.0,
            huge_fraction: 0.0,
            huge_bytes: 0,
            activity: Vec::new(),
        }
    }

    #[test]
    fn per_pair_activity_silences_the_others_and_starts_late() {
        let busy = Shard::new("box", "dlp");
        let waking = Shard::new("gmail", "ransomware");
        let p = EventPlan {
            activity: vec![
                (busy.clone(), 1200.0, i64::MIN),
                (waking.clone(), 600.0, 1_800_000),
            ],
            ..plan()
        };
        let hour = 3_600_000;
        let n = p.stubs(&busy, 0, hour - 1).len();
        assert!((1000..1400).contains(&n), "~1200 an hour: {n}");
        assert!(p.stubs(&Shard::new("exchange", "dlp"), 0, hour).is_empty());
        let w = p.stubs(&waking, 0, hour - 1);
        assert!(!w.is_empty() && w.iter().all(|s| s.at_ms >= 1_800_000));
        // The same events as without the start: only earlier ones are cut.
        let all = EventPlan {
            activity: vec![(waking.clone(), 600.0, i64::MIN)],
            ..plan()
        };
        let later: Vec<i64> = all
            .stubs(&waking, 0, hour - 1)
            .iter()
            .map(|s| s.at_ms)
            .filter(|t| *t >= 1_800_000)
            .collect();
        assert_eq!(w.iter().map(|s| s.at_ms).collect::<Vec<_>>(), later);
    }

    #[test]
    fn deterministic_and_windowed() {
        let s = Shard::new("exchange", "dlp");
        let a = plan().stubs(&s, 0, 3_600_000);
        let b = plan().stubs(&s, 0, 3_600_000);
        assert_eq!(a.len(), b.len());
        assert!((500..700).contains(&a.len()), "{}", a.len());
        let half = plan().stubs(&s, 0, 1_800_000);
        assert!(half.iter().all(|x| x.at_ms <= 1_800_000));
        assert!(
            a.iter().any(|x| x.at_ms % 60_000 == 0),
            "boundary events exist"
        );
        assert!(
            a.iter().any(|x| x.visible_ms - x.at_ms == 90_000),
            "late events exist"
        );
    }

    #[test]
    fn rendered_events_validate_and_ids_match() {
        let reg = crate::validate::Registry::load(None).unwrap();
        for d in [Dialect::V1, Dialect::Legacy] {
            for ev in [
                "dlp",
                "securityrisk",
                "virtualanalyzer",
                "ransomware",
                "quarantine",
            ] {
                let s = Shard::new("exchange", ev);
                for stub in plan().stubs(&s, 0, 600_000) {
                    let e = plan().render(&s, &stub, d);
                    assert_eq!(reg.check(ev, &e), vec![], "{e}");
                    // The bridge's id function agrees with the simulator's own.
                    assert_eq!(crate::identity::event_id(&s, &e), plan().id(&s, &stub, d));
                }
            }
        }
        let bad = EventPlan {
            bad_fraction: 1.0,
            ..plan()
        };
        let s = Shard::new("box", "ransomware");
        for stub in bad.stubs(&s, 0, 600_000) {
            assert!(!reg
                .check("ransomware", &bad.render(&s, &stub, Dialect::V1))
                .is_empty());
        }
        // Broken quarantine events fail too, and their ids are content
        // hashes the bridge derives alike.
        let q = Shard::new("exchange", "quarantine");
        for stub in bad.stubs(&q, 0, 600_000) {
            let e = bad.render(&q, &stub, Dialect::V1);
            assert!(!reg.check("quarantine", &e).is_empty(), "{e}");
            assert_eq!(
                crate::identity::event_id(&q, &e),
                bad.id(&q, &stub, Dialect::V1)
            );
        }
    }
}
