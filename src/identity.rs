//! Stable event identity.
//!
//! An event's id is its `log_item_id` (top level, else inside `message`) when
//! present and sane; otherwise the SHA-256 hex of the canonical JSON (keys
//! sorted, no whitespace) of `[request service, request event, message]`.
//! The id is the Kafka key and the NATS `Nats-Msg-Id`, and dedup works on it,
//! so the same event read twice (overlap, retry, restart) gets the same id.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::shard::Shard;

/// The id of `event`, fetched for `shard`.
pub fn event_id(shard: &Shard, event: &Value) -> String {
    let natural = event
        .get("log_item_id")
        .or_else(|| event.get("message").and_then(|m| m.get("log_item_id")))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| usable_id(s));
    if let Some(id) = natural {
        return id.to_string();
    }
    let message = event.get("message").unwrap_or(event);
    let mut canon = String::with_capacity(256);
    canon.push('[');
    write_canonical(&Value::String(shard.service.clone()), &mut canon);
    canon.push(',');
    write_canonical(&Value::String(shard.event.clone()), &mut canon);
    canon.push(',');
    write_canonical(message, &mut canon);
    canon.push(']');
    hex::encode(Sha256::digest(canon.as_bytes()))
}

/// A natural id must be safe as a Kafka key and a NATS header value.
fn usable_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace,
/// strings escaped as serde_json escapes them. Independent of whether the
/// map type preserves insertion order.
pub fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    // serde_json's string serializer is the reference escaping.
    out.push_str(&Value::String(s.to_string()).to_string());
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
        let mut s = String::new();
        write_canonical(&json!({"z": "\"q\"", "a": {"y": null, "b": true}}), &mut s);
        assert_eq!(s, r#"{"a":{"b":true,"y":null},"z":"\"q\""}"#);
    }
}
