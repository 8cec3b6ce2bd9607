use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use url::Url;

use super::{ApiError, Dialect};

/// One page of security events.
#[derive(Debug, Default)]
pub struct Page {
    /// The body, whose events are read in place.
    text: String,
    /// Where each event's JSON text is in `text`: the vendor's event
    /// objects, whole and untouched, parsed one at a time by the worker.
    spans: Vec<std::ops::Range<usize>>,
    /// The next link exactly as returned; `None` when the pages end.
    pub next_link: Option<String>,
    /// The body's share of the bytes in flight, given back when the page
    /// is dropped (see [`super::PAGE_BYTES_IN_FLIGHT`]).
    pub memory: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Page {
    /// A page of these events (each one JSON value's text).
    pub fn from_events(events: &[Box<RawValue>], next_link: Option<String>) -> Self {
        let mut text = String::from("[");
        let mut spans = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let start = text.len();
            text.push_str(e.get());
            spans.push(start..text.len());
        }
        text.push(']');
        Self {
            text,
            spans,
            next_link,
            memory: None,
        }
    }

    /// Each event's JSON text, in page order.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.spans.iter().map(|r| &self.text[r.clone()])
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// The most events a page may hold: twice the larger dialect's page size.
/// The parser stops at the next one, so a hostile page of millions of tiny
/// items costs no more memory than this many (the engine refuses, more
/// strictly, any page over twice the page size it asked for).
pub const MAX_PAGE_EVENTS: usize = 1000;

/// Both dialects' envelope field names are accepted whatever the configured
/// dialect is: a tolerant reader costs nothing here.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(
        default,
        borrow,
        alias = "securityEvents",
        deserialize_with = "bounded"
    )]
    security_events: Option<Vec<&'a RawValue>>,
    #[serde(default, alias = "nextLink")]
    next_link: Option<Value>,
}

/// The events array, refused past [`MAX_PAGE_EVENTS`] items without
/// reading further.
fn bounded<'de, D>(d: D) -> Result<Option<Vec<&'de RawValue>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Events;
    impl<'de> serde::de::Visitor<'de> for Events {
        type Value = Option<Vec<&'de RawValue>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of events")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PAGE_EVENTS));
            while let Some(e) = seq.next_element::<&'de RawValue>()? {
                if v.len() == MAX_PAGE_EVENTS {
                    return Err(serde::de::Error::custom(format_args!(
                        "more than {MAX_PAGE_EVENTS} events in one page"
                    )));
                }
                v.push(e);
            }
            Ok(Some(v))
        }
    }
    d.deserialize_option(Events)
}

/// Parses a 200 body.
pub fn parse_page(body: &[u8], dialect: Dialect) -> Result<Page, ApiError> {
    parse_page_owned(body.to_vec(), dialect)
}

/// Parses a 200 body, which the page keeps: its events are read in place.
pub fn parse_page_owned(body: Vec<u8>, dialect: Dialect) -> Result<Page, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Malformed("empty body".into()));
    }
    let text = String::from_utf8(body)
        .map_err(|e| ApiError::Malformed(format!("not a {dialect} page: not UTF-8: {e}")))?;
    let env: Envelope<'_> = serde_json::from_str(&text)
        .map_err(|e| ApiError::Malformed(format!("not a {dialect} page: {e}")))?;
    let events = env.security_events.ok_or_else(|| {
        ApiError::Malformed(format!(
            "the page has no `{}` array",
            dialect.events_field()
        ))
    })?;
    let next_link = match env.next_link {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = s.trim();
            if t.is_empty() || t.eq_ignore_ascii_case("null") {
                None
            } else {
                Some(s)
            }
        }
        Some(other) => {
            return Err(ApiError::Malformed(format!(
                "`{}` is not a string: {other}",
                dialect.next_field()
            )))
        }
    };
    // Each event borrowed from the body: where it is.
    let base = text.as_ptr() as usize;
    let spans = events
        .iter()
        .map(|e| {
            let start = e.get().as_ptr() as usize - base;
            start..start + e.get().len()
        })
        .collect();
    Ok(Page {
        text,
        spans,
        next_link,
        memory: None,
    })
}

/// Turns a next link into a URL that may be requested with the token: the
/// same host and port as `base`, and not https → http. A link without a
/// scheme gets `https://` (or the base's scheme when the base is plain http,
/// as with the simulator).
pub fn resolve_next_link(raw: &str, base: &Url) -> Result<Url, ApiError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else if raw.starts_with('/') {
        // A path-only link is relative to the configured host; the base
        // URL's own path and query do not carry over.
        base.join(raw)
            .map_err(|e| ApiError::ForeignLink(format!("`{raw}` is not a URL: {e}")))?
            .to_string()
    } else {
        let scheme = if base.scheme() == "http" {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{raw}")
    };
    let url = Url::parse(&with_scheme)
        .map_err(|e| ApiError::ForeignLink(format!("`{raw}` is not a URL: {e}")))?;
    let same_host = url.host_str().map(|h| h.to_ascii_lowercase())
        == base.host_str().map(|h| h.to_ascii_lowercase())
        && url.port_or_known_default() == base.port_or_known_default();
    let downgrade = base.scheme() == "https" && url.scheme() != "https";
    if !same_host || downgrade || !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::ForeignLink(format!(
            "{}://{}:{} is not the configured API host",
            url.scheme(),
            url.host_str().unwrap_or("?"),
            url.port_or_known_default().unwrap_or(0)
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_only_link_goes_to_the_configured_host_without_its_query() {
        let base = Url::parse("https://api.test/base?x=1").unwrap();
        let u = resolve_next_link("/v1/siem/security_events?p=2", &base).unwrap();
        assert_eq!(u.as_str(), "https://api.test/v1/siem/security_events?p=2");
    }

    #[test]
    fn a_flood_of_tiny_events_is_refused_without_reading_it_all() {
        let page = |n: usize| {
            let items = vec!["0"; n].join(",");
            format!(r#"{{"security_events":[{items}],"next_link":""}}"#)
        };
        let p = parse_page(page(MAX_PAGE_EVENTS).as_bytes(), Dialect::V1).unwrap();
        assert_eq!(p.len(), MAX_PAGE_EVENTS);
        let e = parse_page(page(1_000_000).as_bytes(), Dialect::V1).unwrap_err();
        assert!(
            e.to_string().contains("more than 1000 events in one page"),
            "{e}"
        );
        // `null` is no array, as before.
        let e = parse_page(br#"{"security_events":null}"#, Dialect::V1).unwrap_err();
        assert!(e.to_string().contains("no `security_events` array"), "{e}");
    }

    #[test]
    fn both_dialects_parse() {
        let v1 = br#"{"current_link":"x","next_link":"https://h/v1/siem/security_events?p=2","security_events":[{"a":1}],"traceId":"t","last_log_item_generation_time":"2020-07-19T22:51:30.000Z"}"#;
        let p = parse_page(v1, Dialect::V1).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p.events().next(), Some(r#"{"a":1}"#));
        assert_eq!(
            p.next_link.as_deref(),
            Some("https://h/v1/siem/security_events?p=2")
        );
        let legacy = br#"{"selfLink":"x","nextLink":"","securityEvents":[{"a":1},{"b":2}]}"#;
        let p = parse_page(legacy, Dialect::Legacy).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.events().collect::<Vec<_>>(), [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert!(p.next_link.is_none());
    }

    #[test]
    fn end_of_pages_markers() {
        for body in [
            r#"{"security_events":[],"next_link":""}"#,
            r#"{"security_events":[],"next_link":"null"}"#,
            r#"{"security_events":[],"next_link":null}"#,
            r#"{"security_events":[]}"#,
        ] {
            assert!(
                parse_page(body.as_bytes(), Dialect::V1)
                    .unwrap()
                    .next_link
                    .is_none(),
                "{body}"
            );
        }
    }

    #[test]
    fn broken_bodies_are_errors() {
        for body in [
            "",
            "  ",
            "{",
            r#"{"security_events":"#,
            "[]",
            r#"{"next_link":""}"#,
            r#"{"security_events":[],"next_link":5}"#,
        ] {
            let e = parse_page(body.as_bytes(), Dialect::V1).unwrap_err();
            assert!(matches!(e, ApiError::Malformed(_)), "{body}: {e}");
        }
    }

    #[test]
    fn next_links() {
        let base = Url::parse("https://api.tmcas.trendmicro.com").unwrap();
        let ok = resolve_next_link(
            "https://api.tmcas.trendmicro.com/v1/siem/security_events?a=1&b=2",
            &base,
        )
        .unwrap();
        assert_eq!(ok.query(), Some("a=1&b=2"));
        let noscheme = resolve_next_link(
            "api.tmcas.trendmicro.com/v1/siem/security_events?x=1",
            &base,
        )
        .unwrap();
        assert_eq!(noscheme.scheme(), "https");
        assert!(resolve_next_link("https://evil.example/v1/siem/security_events", &base).is_err());
        assert!(resolve_next_link(
            "http://api.tmcas.trendmicro.com/v1/siem/security_events",
            &base
        )
        .is_err());
        assert!(resolve_next_link("https://api.tmcas.trendmicro.com:8443/x", &base).is_err());
        assert!(
            resolve_next_link("https://api.tmcas.trendmicro.com.evil.example/x", &base).is_err()
        );
        let local = Url::parse("http://127.0.0.1:8080").unwrap();
        assert!(resolve_next_link("http://127.0.0.1:8080/p?q=1", &local).is_ok());
        assert!(resolve_next_link("http://127.0.0.1:8081/p?q=1", &local).is_err());
    }
}
