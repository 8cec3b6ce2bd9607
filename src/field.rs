//! The leaf every configuration section builds on: the error that names a
//! field, and the duration type written `30s`, `5m`, `2h`, `3d`, `250ms`.
//! It imports nothing from the crate, so any stage can own its section
//! without depending on [`crate::config`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration that could not be loaded or is not allowed.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {field}: {problem}")]
pub struct ConfigError {
    /// The dotted name of the offending field, e.g. `window.max`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A duration written as `30s`, `5m`, `2h`, `3d` or `250ms` (a bare number is seconds).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let (n, unit) = if ms % 86_400_000 == 0 && ms > 0 {
            (ms / 86_400_000, "d")
        } else if ms % 3_600_000 == 0 && ms > 0 {
            (ms / 3_600_000, "h")
        } else if ms % 60_000 == 0 && ms > 0 {
            (ms / 60_000, "m")
        } else if ms % 1000 == 0 {
            (ms / 1000, "s")
        } else {
            (ms, "ms")
        };
        write!(f, "{n}{unit}")
    }
}

/// Parses `30s`, `5m`, `2h`, `3d`, `250ms`, or a bare number of seconds.
/// Serializes a secret as `[REDACTED]` (none stays none): the shown
/// configuration never holds it.
pub fn redact_secret<S: serde::Serializer>(
    v: &Option<secrecy::SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("[REDACTED]"),
        None => s.serialize_none(),
    }
}

/// The cause an error keeps (`#[source]`): any error, boxed.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error with its causes, on one line, `what: cause: cause's cause`; a
/// cause whose text the line already holds is left out. Logs and `status`
/// show errors through it, so no cause is lost and none is said twice.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            let said = c.to_string();
            if !said.is_empty() && !text.contains(&said) {
                text.push_str(": ");
                text.push_str(&said);
            }
            cause = c.source();
        }
        f.write_str(&text)
    }
}

/// [`Chain`] of `e`, for a log field: `error = %chain(&e)`.
pub fn chain<'a>(e: &'a (dyn std::error::Error + 'a)) -> Chain<'a> {
    Chain(e)
}

/// A duration as a log field: seconds, a number (JSON logs keep it a
/// number; `Option`s of it are left out when `None`).
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (use e.g. 30s, 5m, 2h, 3d)"))?;
    let ms = match unit.trim() {
        "" | "s" => n.checked_mul(1000),
        "ms" => Some(n),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Dur(Duration::from_secs(n))),
            Raw::S(s) => parse_duration(&s)
                .map(Dur)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: 250ms, 30s, 5m, 2h, 3d, or a number of seconds.",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*[0-9]+\\s*(ms|s|m|h|d)?\\s*$"},
                {"type": "integer", "minimum": 0}
            ]
        })
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Checks that `d` lies in `min..=max`, naming `field` when it does not.
pub fn check_range(field: &str, d: Dur, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if d.get() < min || d.get() > max {
        return Err(ConfigError::new(
            field,
            format!("{d} is out of range: {} to {}", Dur(min), Dur(max)),
        ));
    }
    Ok(())
}

/// The known name nearest to `given` (edit distance at most a third of
/// its length, and at least 1, 2 from 5 letters), for a "did you mean".
pub fn nearest<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let given = given.to_ascii_lowercase();
    let limit = (given.chars().count() / 3).clamp(1, 3);
    known
        .into_iter()
        .map(|k| (edit_distance(&given, &k.to_ascii_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, an adjacent swap counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A comma list of URLs with each password replaced.
pub fn redact_urls(s: &str) -> String {
    s.split(',')
        .map(|part| match url::Url::parse(part.trim()) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("REDACTED"));
                u.to_string()
            }
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names() {
        let known = ["gmail", "googledrive", "exchange", "lease_ttl", "lag"];
        assert_eq!(nearest("gmial", known), Some("gmail"));
        assert_eq!(nearest("lease_tll", known), Some("lease_ttl"));
        assert_eq!(nearest("EXCHANGE", known), Some("exchange"));
        assert_eq!(nearest("lagg", known), Some("lag"));
        assert_eq!(nearest("zzzzzz", known), None);
        assert_eq!(nearest("ab", known), None);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("3d").unwrap(), Duration::from_secs(259_200));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration(" 42 ").unwrap(), Duration::from_secs(42));
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse_duration("3w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("abc")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999d")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        assert_eq!(Dur::secs(86_400).to_string(), "1d");
        assert_eq!(Dur::secs(7200).to_string(), "2h");
        assert_eq!(Dur::secs(300).to_string(), "5m");
        assert_eq!(Dur::secs(90).to_string(), "90s");
        assert_eq!(Dur(Duration::from_millis(250)).to_string(), "250ms");
        assert_eq!(Dur::secs(0).to_string(), "0s");
    }

    #[test]
    fn durations_round_trip_through_serde() {
        let d: Dur = serde_json::from_str("\"2h\"").unwrap();
        assert_eq!(d, Dur::secs(7200));
        let n: Dur = serde_json::from_str("15").unwrap();
        assert_eq!(n, Dur::secs(15));
        assert_eq!(serde_json::to_string(&Dur::secs(120)).unwrap(), "\"2m\"");
        assert!(serde_json::from_str::<Dur>("\"2 fortnights\"").is_err());
    }

    #[test]
    fn range_check_names_the_field() {
        let e = check_range(
            "a.b",
            Dur::secs(1),
            Duration::from_secs(3),
            Duration::from_secs(9),
        )
        .unwrap_err();
        assert_eq!(e.field, "a.b");
        assert!(e.to_string().contains("1s is out of range: 3s to 9s"));
        assert!(check_range("a", Dur::secs(3), Duration::ZERO, Duration::from_secs(3)).is_ok());
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);
    #[derive(Debug, thiserror::Error)]
    #[error("middle says outer")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn a_chain_shows_every_cause_once() {
        let e = Outer(Middle(std::io::Error::other("connection refused")));
        assert_eq!(
            chain(&e).to_string(),
            "outer: middle says outer: connection refused"
        );
        // A cause the text already holds is not said again.
        #[derive(Debug, thiserror::Error)]
        #[error("reading: connection refused")]
        struct Said(#[source] std::io::Error);
        let e = Said(std::io::Error::other("connection refused"));
        assert_eq!(chain(&e).to_string(), "reading: connection refused");
    }
}
