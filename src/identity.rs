//! Stable event identity.
//!
//! An event's id is its `log_item_id` (top level, else inside `message`) when
//! present and sane — for a quarantine event, `mail_log_id` (the id the API
//! gives each quarantine event) the same way; otherwise the SHA-256 hex of the canonical JSON (keys
//! sorted, no whitespace) of `[request service, request event, message]`.
//! The id is the Kafka key and the NATS `Nats-Msg-Id`, and dedup works on it,
//! so the same event read twice (overlap, retry, restart) gets the same id.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::shard::Shard;
use crate::tape::TapeNode;

/// The members that carry an event's natural id, in the order they are
/// looked for: security events' `log_item_id`, quarantine events'
/// `mail_log_id`.
const NATURAL_IDS: [&str; 2] = ["log_item_id", "mail_log_id"];

/// The id of `event`, fetched for `shard`.
pub fn event_id(shard: &Shard, event: &Value) -> String {
    let natural = NATURAL_IDS.iter().find_map(|name| {
        event
            .get(*name)
            .or_else(|| event.get("message").and_then(|m| m.get(*name)))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| usable_id(s))
    });
    if let Some(id) = natural {
        return id.to_string();
    }
    let message = event.get("message").unwrap_or(event);
    let mut h = Sha256::new();
    h.update(b"[");
    write_str(&shard.service, &mut h);
    h.update(b",");
    write_str(&shard.event, &mut h);
    h.update(b",");
    write_canonical(message, &mut h);
    h.update(b"]");
    hex::encode(h.finalize())
}

/// The event's natural id (`log_item_id`, as [`event_id`] takes it), read
/// from its tape; `None` when the id would be a content hash.
pub fn natural_id_on_tape<'a>(event: TapeNode<'a>) -> Option<&'a str> {
    NATURAL_IDS.iter().find_map(|name| {
        event
            .get(name)
            .or_else(|| event.get("message").and_then(|m| m.get(name)))
            .and_then(|n| n.as_str())
            .map(str::trim)
            .filter(|s| usable_id(s))
    })
}

/// A natural id must be safe as a Kafka key and a NATS header value.
fn usable_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace,
/// strings and numbers written as serde_json writes them. Independent of
/// whether the map type preserves insertion order.
pub fn canonical_json(v: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    write_canonical(v, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `v` canonically into any byte sink (a hasher, a buffer).
fn write_canonical<W: std::io::Write>(v: &Value, out: &mut W) {
    // Writing to a hasher or a Vec cannot fail.
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            let _ = out.write_all(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                write_str(k, out);
                let _ = out.write_all(b":");
                write_canonical(&map[k], out);
            }
            let _ = out.write_all(b"}");
        }
        Value::Array(items) => {
            let _ = out.write_all(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    let _ = out.write_all(b",");
                }
                write_canonical(item, out);
            }
            let _ = out.write_all(b"]");
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

fn write_str<W: std::io::Write>(s: &str, out: &mut W) {
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn natural_id_wins() {
        let s = Shard::new("onedrive", "securityrisk");
        let e = json!({"log_item_id": " 7c9e6679-7425-40de-944b-e07fc1f90ae7 ", "message": {}});
        assert_eq!(event_id(&s, &e), "7c9e6679-7425-40de-944b-e07fc1f90ae7");
        let e = json!({"message": {"log_item_id": "abc"}});
        assert_eq!(event_id(&s, &e), "abc");
        // A quarantine event: its `mail_log_id`.
        let q = Shard::new("exchange", "quarantine");
        let e = json!({"service": "exchange", "message": {"mail_log_id": " q-123 ", "mail_unique_id": "u"}});
        assert_eq!(event_id(&q, &e), "q-123");
        let text = e.to_string();
        let mut tape = crate::tape::TapeBuf::default();
        crate::tape::parse::value(&text, 0, &mut tape, 64).unwrap();
        assert_eq!(natural_id_on_tape(tape.doc(&text).root()), Some("q-123"));
        // Without one, a content hash of the request pair and the message.
        let e = json!({"service": "exchange", "message": {"mailbox": "a@b"}});
        assert_eq!(event_id(&q, &e).len(), 64);
    }

    #[test]
    fn derived_id_is_stable_and_depends_on_the_request_pair() {
        let a = json!({"service": "exchange", "event": "dlp", "message": {"b": 1, "a": [1, "x"]}});
        let b = json!({"event": "dlp", "message": {"a": [1, "x"], "b": 1}, "service": "exchange"});
        let s = Shard::new("exchange", "dlp");
        let id = event_id(&s, &a);
        assert_eq!(id.len(), 64);
        assert_eq!(id, event_id(&s, &b));
        assert_ne!(id, event_id(&Shard::new("exchange", "ransomware"), &a));
        // a weird natural id falls back to the hash
        let c = json!({"log_item_id": "has space", "message": {"b": 1, "a": [1, "x"]}});
        assert_eq!(event_id(&s, &c), id);
    }

    #[test]
    fn canonical_form() {
        let s = canonical_json(&json!({"z": "\"q\"", "a": {"y": null, "b": true}, "n": [1, 2.5]}));
        assert_eq!(s, r#"{"a":{"b":true,"y":null},"n":[1,2.5],"z":"\"q\""}"#);
    }

    /// Fixed ids for fixed events, worked out outside the bridge (SHA-256
    /// of the sorted, compact JSON of `[service, event, message]`). A
    /// change here changes every id in every consumer's topic: never edit
    /// these to make a test pass.
    #[test]
    fn golden_ids() {
        let cases = [
            (
                Shard::new("exchange", "dlp"),
                json!({"service": "Exchange", "message": {"b": 1, "a": [1, "x"]}}),
                "cac4f04d36a972a5dcc48717c317bfef168ec3d91ffea8066073a612df00ccc6",
            ),
            (
                Shard::new("onedrive", "securityrisk"),
                json!({"message": "unparsed: x"}),
                "6be77563cb908c6500083ab7c8dd84bc627fa57923198941597d556321b54ffa",
            ),
            (
                Shard::new("box", "ransomware"),
                json!({"message": {"z": null, "n": 2.5, "k": {"y": true, "b": false}, "f": "é <a>"}}),
                "da3786881e67c35ddc629e6fc2b745fff71a4b7ed4c15319f0acdd803f416a90",
            ),
            (
                Shard::new("box", "ransomware"),
                json!({"log_item_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "message": {}}),
                "0f8fad5b-d9cb-469f-a165-70867728950e",
            ),
        ];
        for (shard, event, want) in cases {
            assert_eq!(event_id(&shard, &event), want, "{event}");
        }
    }

    #[test]
    fn an_event_without_message_hashes_itself() {
        let s = Shard::new("exchange", "dlp");
        let a = json!({"x": 1});
        let b = json!({"x": 2});
        assert_ne!(event_id(&s, &a), event_id(&s, &b));
        assert_eq!(event_id(&s, &a).len(), 64);
        // An over-long natural id is not used.
        let long = json!({"log_item_id": "x".repeat(129), "message": {"a": 1}});
        assert_eq!(event_id(&s, &long).len(), 64);
    }
}
