//! JSON Schema registry and verdicts.
//!
//! Every event is checked against `envelope.json`; its `message` against
//! `message.json` (the shapes shared by all event types) and, when one
//! exists, `<request event>.json`. Schemas are compiled once at start. The
//! built-in schemas are embedded in the binary; `schemas.dir` replaces any of
//! them by file name. An event that fails is never dropped: the worker sends
//! it to the dead-letter destination (see [`crate::publish`]) with the [`Violation`]s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::field::ConfigError;
use crate::tape::{TapeJson, TapeNode};

/// The `schemas` section.
#[derive(Debug, Clone, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasConfig {
    /// A directory replacing the built-in schemas (same file names).
    pub dir: Option<PathBuf>,
}

const BUILT_IN: [(&str, &str); 8] = [
    ("envelope", include_str!("../schemas/envelope.json")),
    (
        "quarantine_envelope",
        include_str!("../schemas/quarantine_envelope.json"),
    ),
    ("quarantine", include_str!("../schemas/quarantine.json")),
    ("message", include_str!("../schemas/message.json")),
    ("dlp", include_str!("../schemas/dlp.json")),
    ("securityrisk", include_str!("../schemas/securityrisk.json")),
    (
        "virtualanalyzer",
        include_str!("../schemas/virtualanalyzer.json"),
    ),
    ("ransomware", include_str!("../schemas/ransomware.json")),
];

/// Reported violations per event are capped: a broken event can fail on
/// every field, and the dead letter must stay small.
const MAX_VIOLATIONS: usize = 20;

/// One reason an event failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the event, e.g. `/message/detection_time`.
    pub path: String,
    /// What the schema wanted.
    pub message: String,
}

/// The compiled schemas.
pub struct Registry {
    /// Schemas by name: `envelope`, `message`, and one per event type.
    schemas: HashMap<String, Validator>,
    /// The same schemas compiled for the tape (the verdict of a valid event).
    tapes: HashMap<String, Validator<TapeJson>, foldhash::fast::FixedState>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.schemas.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("schemas", &names).finish()
    }
}

impl Registry {
    /// The built-in schemas, each replaced by `<dir>/<name>.json` when that
    /// file exists; other `*.json` files in `dir` add event types.
    pub fn load(dir: Option<&Path>) -> Result<Self, ConfigError> {
        let mut sources: HashMap<String, (String, String)> = BUILT_IN
            .iter()
            .map(|(n, s)| (n.to_string(), (s.to_string(), format!("built-in {n}.json"))))
            .collect();
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                ConfigError::new("schemas.dir", format!("cannot read {}: {e}", dir.display()))
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new(
                        "schemas.dir",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                sources.insert(name.to_string(), (text, path.display().to_string()));
            }
        }
        let mut schemas = HashMap::new();
        let mut tapes = HashMap::with_hasher(foldhash::fast::FixedState::default());
        for (name, (text, origin)) in sources {
            let doc: Value = serde_json::from_str(&text).map_err(|e| {
                ConfigError::new("schemas.dir", format!("{origin} is not JSON: {e}"))
            })?;
            let v = jsonschema::draft202012::new(&doc).map_err(|e| {
                ConfigError::new(
                    "schemas.dir",
                    format!("{origin} is not a valid schema: {e}"),
                )
            })?;
            let t = jsonschema::options_for::<TapeJson>()
                .with_draft(jsonschema::Draft::Draft202012)
                .build(&doc)
                .map_err(|e| {
                    ConfigError::new(
                        "schemas.dir",
                        format!("{origin} is not a valid schema: {e}"),
                    )
                })?;
            tapes.insert(name.clone(), t);
            schemas.insert(name, v);
        }
        for required in ["envelope", "message", "quarantine_envelope"] {
            if !schemas.contains_key(required) {
                return Err(ConfigError::new(
                    "schemas.dir",
                    format!("{required}.json is missing"),
                ));
            }
        }
        Ok(Self { schemas, tapes })
    }

    /// Checks one event fetched for request event type `event_type`.
    /// An empty result means the event is valid.
    pub fn check(&self, event_type: &str, event: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        collect(&self.schemas[envelope_of(event_type)], event, "", &mut out);
        if let Some(message) = event.get("message").filter(|m| m.is_object()) {
            collect(&self.schemas["message"], message, "/message", &mut out);
            if let Some(specific) = self
                .schemas
                .get(event_type)
                .filter(|_| !is_shared(event_type))
            {
                collect(specific, message, "/message", &mut out);
            }
        }
        out.truncate(MAX_VIOLATIONS);
        out
    }
}

impl Registry {
    /// Whether one event, on a tape, passes every schema [`Registry::check`]
    /// applies. The same verdict as `check(..).is_empty()`, without building
    /// a `Value`; the reasons of an invalid event come from `check`.
    pub fn is_valid(&self, event_type: &str, event: TapeNode<'_>) -> bool {
        if !self.tapes[envelope_of(event_type)].is_valid(event) {
            return false;
        }
        let Some(message) = event.get("message").filter(TapeNode::is_object) else {
            return true;
        };
        self.tapes["message"].is_valid(message)
            && self
                .tapes
                .get(event_type)
                .filter(|_| !is_shared(event_type))
                .is_none_or(|specific| specific.is_valid(message))
    }
}

/// The envelope schema of an event type: a quarantine event has no event
/// name, so its own.
fn envelope_of(event_type: &str) -> &'static str {
    if event_type == crate::shard::QUARANTINE {
        "quarantine_envelope"
    } else {
        "envelope"
    }
}

/// Whether a schema name is one applied to every event, not an event type's.
fn is_shared(name: &str) -> bool {
    matches!(name, "envelope" | "message" | "quarantine_envelope")
}

fn collect(schema: &Validator, instance: &Value, prefix: &str, out: &mut Vec<Violation>) {
    if schema.is_valid(instance) {
        return;
    }
    for err in schema.iter_errors(instance).take(MAX_VIOLATIONS) {
        let mut message = err.to_string();
        if message.len() > 300 {
            let mut cut = 300;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        out.push(Violation {
            path: format!("{prefix}{}", err.instance_path()),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The example of the seed page, as printed there.
    fn seed_example() -> Value {
        json!({
            "service": "exchange",
            "event": "dlp",
            "message": {
                "file_name": "Mail Body",
                "location": "username1@example1.onmicrosoft.com\\Inbox",
                "mail_message_id": " <XXXXXXX.outlook.com>",
                "mail_message_sender": [" <username1@example1.onmicrosoft.com.onmicrosoft.com>"],
                "mail_message_recipient": ["\" username2\"< username2@example2.onmicrosoft.com >"],
                "mail_message_subject": "test dlp ",
                "mail_message_delivery_time": "2016-07-22T01:51:28",
                "mail_message_submit_time": "2016-07-22T01:51:31",
                "triggered_policy_name": "Default Exchange Policy DLP",
                "triggered_security_filter": "Data Loss Prevention",
                "detection_time": "2016-07-22T01:51:31",
                "violator": " username2@example2.onmicrosoft.com ",
                "triggered_dlp_template": [],
                "violating_content": "",
                "action": "Pass",
                "action_result": "Successful"
            }
        })
    }

    #[test]
    fn seed_example_and_live_shapes_pass() {
        let r = Registry::load(None).unwrap();
        assert_eq!(r.check("dlp", &seed_example()), vec![]);
        let live = json!({
            "service": "OneDrive", "event": "security_risk_scan",
            "log_item_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            "message": {
                "log_item_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                "detection_time": "2020-07-19T22:51:30.000Z",
                "mail_message_sender": "a@b.example",
                "triggered_dlp_template": {"any": ["thing"]},
                "risk_level": 3,
                "a_field_from_next_year": {"x": 1}
            }
        });
        assert_eq!(r.check("securityrisk", &live), vec![]);
    }

    #[test]
    fn quarantine_events_have_their_own_envelope_and_message() {
        let r = Registry::load(None).unwrap();
        let q = json!({
            "service": "exchange",
            "message": {
                "mail_log_id": "ql-1", "mail_unique_id": "AAMk=", "mail_message_id": "<m@x>",
                "affected_user": "u@x", "mailbox": "u@x", "mail_message_direction": "Inbound",
                "mail_blob_path": "b/1", "mail_backup_blob_path": "b/1.bak",
                "mail_message_delivery_time": "2026-12-01T10:00:00.000Z",
                "a_field_from_next_year": [1]
            }
        });
        assert_eq!(r.check("quarantine", &q), vec![]);
        let text = q.to_string();
        let mut tape = crate::tape::TapeBuf::default();
        crate::tape::parse::value(&text, 0, &mut tape, 64).unwrap();
        assert!(r.is_valid("quarantine", tape.doc(&text).root()));
        // No `event` member: a security event's envelope would refuse it.
        assert!(!r.check("dlp", &q).is_empty());
        let mut bad = q.clone();
        bad["message"]["mail_log_id"] = json!(17);
        let v = r.check("quarantine", &bad);
        assert!(v.iter().any(|v| v.path == "/message/mail_log_id"), "{v:?}");
        let mut bad = q;
        bad.as_object_mut().unwrap().remove("service");
        assert!(!r.check("quarantine", &bad).is_empty());
    }

    #[test]
    fn broken_variants_fail_with_paths() {
        let r = Registry::load(None).unwrap();
        let mut e = seed_example();
        e["message"]["detection_time"] = json!(1469152291);
        let v = r.check("dlp", &e);
        assert!(
            v.iter().any(|v| v.path == "/message/detection_time"),
            "{v:?}"
        );

        let mut e = seed_example();
        e["message"] = json!("not an object");
        let v = r.check("dlp", &e);
        assert!(v.iter().any(|v| v.path == "/message"), "{v:?}");

        let mut e = seed_example();
        e["message"]["mail_message_sender"] = json!([1, 2]);
        assert!(!r.check("dlp", &e).is_empty());

        let mut e = seed_example();
        e["message"]
            .as_object_mut()
            .unwrap()
            .remove("detection_time");
        assert!(!r.check("dlp", &e).is_empty());
        // ... but an unknown event type only gets the shared checks.
        assert!(r.check("intelligencealert", &e).is_empty());

        assert!(!r.check("dlp", &json!([1, 2])).is_empty());
        let mut e = seed_example();
        e["message"]["detection_time"] = json!("yesterday");
        assert!(!r.check("dlp", &e).is_empty());
    }

    #[test]
    fn override_dir_replaces_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dlp.json"),
            r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["must_have"]}"#,
        )
        .unwrap();
        let r = Registry::load(Some(dir.path())).unwrap();
        assert!(!r.check("dlp", &seed_example()).is_empty());
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        let e = Registry::load(Some(dir.path())).unwrap_err();
        assert_eq!(e.field, "schemas.dir");
    }
}
