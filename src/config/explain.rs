//! The configuration's errors in the project's own words: the `config`
//! crate and serde report type names and bare keys; these name the field,
//! what was given, what is allowed (every value of an enum, the nearest
//! known key), and where it was written (the file and line, or the
//! environment variable).

use std::path::Path;

use serde_json::Value;

use crate::field::{nearest, ConfigError};

/// Explains an error of loading or deserializing the layered sources.
pub(super) fn explain(
    e: config::ConfigError,
    file: Option<&Path>,
    vars: &[(String, String)],
) -> ConfigError {
    let (key, message) = match e {
        config::ConfigError::Type {
            key,
            unexpected,
            expected,
            ..
        } => (
            key.unwrap_or_default(),
            format!(
                "expected {}, got {unexpected}",
                plain_type(expected.to_string())
            ),
        ),
        config::ConfigError::Message(m) => split_key(&m),
        config::ConfigError::NotFound(k) => (k, "not found".into()),
        config::ConfigError::FileParse { uri, cause } => {
            let at = uri.unwrap_or_else(|| "the file".into());
            return ConfigError::new("--config", format!("{at} cannot be parsed: {cause}"));
        }
        other => split_key(&other.to_string()),
    };
    let schema = super::schema();
    let (field, problem) = reword(&schema, &key, &message);
    if field.is_empty() {
        return ConfigError::new("config", problem);
    }
    let problem = match locate(&field, file, vars) {
        Some(at) => format!("{problem} ({at})"),
        None => problem,
    };
    ConfigError::new(field, problem)
}

/// Splits serde's "… for key `a.b`" into the key and the message.
fn split_key(m: &str) -> (String, String) {
    match m.rsplit_once(" for key `") {
        Some((msg, k)) => (k.trim_end_matches('`').to_string(), msg.to_string()),
        None => (String::new(), m.to_string()),
    }
}

/// An error of a later check, in the same words: a tenant's section is
/// read by the tenant stage (`tenants.<name>.api`), whose serde message
/// names no allowed value or nearest key.
pub(super) fn polish(e: ConfigError, file: Option<&Path>) -> ConfigError {
    if !e.problem.starts_with("unknown field `") && !e.problem.starts_with("unknown variant `") {
        return e;
    }
    let schema = super::schema();
    // `tenants.<name>.api` → the schema's `tenants.api`.
    let parts: Vec<&str> = e.field.split('.').collect();
    let (schema_path, shown) = match parts.as_slice() {
        ["tenants", name, rest @ ..] => (
            format!("tenants.{}", rest.join(".")),
            format!("tenants.{name}.{}", rest.join(".")),
        ),
        _ => (e.field.clone(), e.field.clone()),
    };
    let (field, problem) = reword(&schema, &schema_path, &e.problem);
    let field = field.replacen(&schema_path, &shown, 1);
    let problem = problem.replace(&format!("`{schema_path}."), &format!("`{shown}."));
    let problem = match file
        .and_then(|f| Some((f, std::fs::read_to_string(f).ok()?)))
        .and_then(|(f, text)| Some((f, line_of(&text, &field)?)))
    {
        Some((f, line)) => format!("{problem} ({}, line {line})", f.display()),
        None => problem,
    };
    ConfigError::new(field, problem)
}

/// The section whose keys serde listed ("expected one of `a`, `b`"): the
/// path of an unknown key the `config` crate did not name.
fn section_listing(schema: &Value, msg: &str) -> Option<String> {
    let (_, list) = msg.split_once("expected one of ")?;
    let mut wanted: Vec<String> = list
        .split(", ")
        .map(|k| k.trim().trim_matches('`').to_string())
        .collect();
    wanted.sort();
    let keys = super::keys();
    let mut sections: Vec<String> = keys
        .iter()
        .filter_map(|k| k.rsplit_once('.').map(|(s, _)| s.to_string()))
        .collect();
    sections.push(String::new());
    sections.sort();
    sections.dedup();
    sections.into_iter().find(|s| {
        let mut have = node(schema, s)
            .map(|n| properties(schema, n))
            .unwrap_or_default();
        have.sort();
        have == wanted
    })
}

/// The field the message is about and the message in our words.
fn reword(schema: &Value, key: &str, msg: &str) -> (String, String) {
    let mut path = normalize(key);
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or_default();
        if path.is_empty() {
            path = section_listing(schema, msg).unwrap_or_default();
        }
        let field = join(&path, unknown);
        let known = node(schema, &path)
            .map(|n| properties(schema, n))
            .unwrap_or_default();
        let hint = match nearest(unknown, known.iter().map(String::as_str)) {
            Some(n) => format!("; did you mean `{}`?", join(&path, n)),
            None if known.is_empty() => String::new(),
            None => format!("; the keys of this section: {}", known.join(", ")),
        };
        return (field, format!("unknown key `{unknown}`{hint}"));
    }
    let values = node(schema, &path)
        .map(|n| enum_values(schema, n))
        .unwrap_or_default();
    if let Some(given) = enum_given(msg) {
        if !values.is_empty() {
            let hint = match nearest(&given, values.iter().map(String::as_str)) {
                Some(n) => format!("; did you mean `{n}`?"),
                None => String::new(),
            };
            return (
                path,
                format!("`{given}` is not one of: {}{hint}", values.join(", ")),
            );
        }
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return (
                path,
                format!("expected {}, got {got}", plain_type(expected.to_string())),
            );
        }
    }
    (path, msg.to_string())
}

/// The value an enum did not know, from the `config` crate's or serde's
/// message.
fn enum_given(msg: &str) -> Option<String> {
    if let Some((_, rest)) = msg.split_once("does not have variant constructor ") {
        return Some(rest.trim().trim_matches('`').to_string());
    }
    let rest = msg.strip_prefix("unknown variant `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Rust's type names in words.
fn plain_type(t: String) -> String {
    let t = t.trim();
    let t = t.strip_prefix("a ").unwrap_or(t);
    let t = t.strip_prefix("an ").unwrap_or(t);
    match t {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" | "integer" => "a whole number".into(),
        "f32" | "f64" | "float" => "a number".into(),
        "boolean" | "bool" => "true or false".into(),
        "string" => "text".into(),
        "sequence" => "a list".into(),
        "map" => "a table of keys".into(),
        _ => t.to_string(),
    }
}

/// `tenants[1].api` → `tenants.api` (the schema's path).
fn normalize(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut skip = false;
    for c in key.chars() {
        match c {
            '[' => skip = true,
            ']' => skip = false,
            _ if !skip => out.push(c),
            _ => {}
        }
    }
    out
}

fn join(path: &str, leaf: &str) -> String {
    if path.is_empty() {
        leaf.to_string()
    } else {
        format!("{path}.{leaf}")
    }
}

/// The schema node of a dotted path (through `$ref`, nullable `anyOf`
/// and list items).
pub(super) fn node<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut n = resolve(schema, schema);
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let props = n.get("properties")?;
        n = resolve(schema, props.get(part)?);
        if let Some(items) = n.get("items") {
            n = resolve(schema, items);
        }
    }
    Some(n)
}

/// Follows `$ref` and the non-null branch of an `anyOf`/`oneOf`.
fn resolve<'a>(schema: &'a Value, mut n: &'a Value) -> &'a Value {
    for _ in 0..8 {
        if let Some(r) = n.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or_default();
            match schema.get("$defs").and_then(|d| d.get(name)) {
                Some(d) => n = d,
                None => return n,
            }
        } else if let Some(alts) = n
            .get("anyOf")
            .or_else(|| n.get("oneOf"))
            .and_then(Value::as_array)
        {
            let mut it = alts
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"));
            match (it.next(), it.next()) {
                (Some(only), None) => n = only,
                _ => return n,
            }
        } else {
            return n;
        }
    }
    n
}

/// The keys an object node allows.
pub(super) fn properties(schema: &Value, n: &Value) -> Vec<String> {
    resolve(schema, n)
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every value an enum node allows (`enum`, or `oneOf` of `const`s).
pub(super) fn enum_values(schema: &Value, n: &Value) -> Vec<String> {
    let n = resolve(schema, n);
    let text = |v: &Value| v.as_str().map(str::to_string);
    if let Some(e) = n.get("enum").and_then(Value::as_array) {
        return e.iter().filter_map(text).collect();
    }
    n.get("oneOf")
        .or_else(|| n.get("anyOf"))
        .and_then(Value::as_array)
        .map(|alts| {
            alts.iter()
                .flat_map(|a| {
                    let a = resolve(schema, a);
                    let listed = a.get("enum").and_then(Value::as_array);
                    a.get("const")
                        .and_then(text)
                        .into_iter()
                        .chain(listed.into_iter().flatten().filter_map(text))
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where a field was written: the environment variable that sets it, or
/// the file and line.
fn locate(field: &str, file: Option<&Path>, vars: &[(String, String)]) -> Option<String> {
    let var = format!(
        "CAS_BRIDGE__{}",
        field.replace('.', "__").to_ascii_uppercase()
    );
    if vars.iter().any(|(k, _)| k.eq_ignore_ascii_case(&var)) {
        return Some(format!("from the environment, {var}"));
    }
    let file = file?;
    let text = std::fs::read_to_string(file).ok()?;
    let line = line_of(&text, field)?;
    Some(format!("{}, line {line}", file.display()))
}

/// The line (from 1) where `field`'s last part is set, after its
/// section's header when the file has one (TOML `[a.b]`, YAML `a:`).
pub(super) fn line_of(text: &str, field: &str) -> Option<usize> {
    let mut parts: Vec<&str> = field.split('.').collect();
    let leaf = parts.pop()?;
    let sets = |line: &str, key: &str| {
        let l = line.trim_start().trim_start_matches("- ");
        let l = l.trim_start_matches(['"', '\'']);
        l.strip_prefix(key).is_some_and(|r| {
            let r = r.trim_start_matches(['"', '\'']).trim_start();
            r.starts_with('=') || r.starts_with(':')
        })
    };
    // Where the innermost section starts: a TOML header naming it (or a
    // list entry of it), or a YAML key of its last part.
    let mut from = 0;
    if let Some(section) = parts.last() {
        let header = parts.join(".");
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            let toml = l.starts_with('[') && l.trim_matches(['[', ']']).trim() == header;
            if toml || sets(line, section) {
                from = i;
                break;
            }
        }
    }
    text.lines()
        .enumerate()
        .skip(from)
        .find(|(_, l)| sets(l, leaf))
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_found_under_their_section() {
        let toml = "[api]\nregion = \"us\"\n\n[coord]\nprefix = \"x\"\nlease_tll = \"10s\"\n";
        assert_eq!(line_of(toml, "coord.lease_tll"), Some(6));
        assert_eq!(line_of(toml, "api.region"), Some(2));
        let yaml = "api:\n  region: us\ncoord:\n  prefix: x\n  lease_tll: 10s\n";
        assert_eq!(line_of(yaml, "coord.lease_tll"), Some(5));
        assert_eq!(line_of(yaml, "coord.missing"), None);
    }

    #[test]
    fn keys_normalize_to_the_schema_path() {
        assert_eq!(normalize("tenants[1].api.tokn"), "tenants.api.tokn");
        assert_eq!(normalize("sink.kind"), "sink.kind");
    }
}
