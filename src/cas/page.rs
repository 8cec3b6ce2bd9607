use serde_json::value::RawValue;
use serde_json::Value;
use url::Url;

use super::{ApiError, Dialect};
use crate::tape::parse::{self, skip_ws, MAX_DEPTH};
use crate::tape::{Doc, TapeBuf};

/// One page of security events.
#[derive(Debug, Default)]
pub struct Page {
    /// The body, whose events are read in place.
    text: String,
    /// Where each event's JSON text is in `text`: the vendor's event
    /// objects, whole and untouched.
    spans: Vec<std::ops::Range<usize>>,
    /// The events' tapes, built while the page was read (their strings are
    /// spans of `text`).
    tape: TapeBuf,
    /// Where each event's tape starts; `None` for an event whose tape the
    /// page does not hold (it repeats a member name, or the tapes were let
    /// go for memory): the worker parses it on its own.
    roots: Vec<Option<u32>>,
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
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(e.get());
        }
        text.push(']');
        let mut page = Self {
            tape: TapeBuf::for_text(text.len()),
            next_link,
            ..Self::default()
        };
        // Each item is JSON already; a failure would leave a short page,
        // which the tests using this would see.
        let _ = events_array(&text, 0, &mut page, usize::MAX);
        page.text = text;
        page
    }

    /// Each event's JSON text, in page order.
    pub fn events(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.spans.iter().map(|r| &self.text[r.clone()])
    }

    /// The events' tapes: [`Doc::node`] of an event's root.
    pub fn doc(&self) -> Doc<'_> {
        self.tape.doc(&self.text)
    }

    /// Where each event's tape starts in [`Page::doc`], in page order
    /// (`None`: parse the event itself).
    pub fn roots(&self) -> impl ExactSizeIterator<Item = Option<usize>> + '_ {
        self.roots.iter().map(|r| r.map(|at| at as usize))
    }

    /// The bytes the tapes take beside the body.
    pub fn tape_bytes(&self) -> usize {
        self.tape.bytes() + self.roots.capacity() * std::mem::size_of::<Option<u32>>()
    }

    /// Lets the tapes go (the events are parsed one by one instead).
    pub fn drop_tapes(&mut self) {
        self.tape = TapeBuf::default();
        self.roots.iter_mut().for_each(|r| *r = None);
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

/// Reads the events array (or `null`) at `at` into `page` (its spans,
/// tapes and roots; `page.text` is not used: the strings are spans of
/// `text`), at most `most` of them. Returns the position after it, and
/// whether it was an array.
fn events_array(
    text: &str,
    at: usize,
    page: &mut Page,
    most: usize,
) -> Result<(usize, bool), String> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, at);
    if b.get(i..i + 4) == Some(b"null") {
        return Ok((i + 4, false));
    }
    if b.get(i) != Some(&b'[') {
        return Err(format!("expected an array of events at byte {i}"));
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b']') {
        return Ok((i + 1, true));
    }
    loop {
        i = skip_ws(b, i);
        if page.spans.len() == most {
            return Err(format!("more than {most} events in one page"));
        }
        let root = page.tape.entries.len() as u32;
        // The page's object and its array are two levels already.
        let (end, flags) =
            parse::value(text, i, &mut page.tape, MAX_DEPTH - 2).map_err(|e| e.to_string())?;
        page.spans.push(i..end);
        page.roots.push((!flags.repeated_names).then_some(root));
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b']') => return Ok((i + 1, true)),
            None => return Err(format!("EOF while parsing the events at byte {i}")),
            Some(_) => return Err(format!("expected `,` or `]` at byte {i}")),
        }
    }
}

/// Parses a 200 body.
pub fn parse_page(body: &[u8], dialect: Dialect) -> Result<Page, ApiError> {
    parse_page_owned(body.to_vec(), dialect)
}

/// Parses a 200 body, which the page keeps: its events are read in place,
/// and their tapes built, in one pass over it. Both dialects' field names
/// are accepted whatever the configured dialect is (a tolerant reader
/// costs nothing here); other members are checked as JSON and skipped.
pub fn parse_page_owned(body: Vec<u8>, dialect: Dialect) -> Result<Page, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Malformed("empty body".into()));
    }
    let text = String::from_utf8(body)
        .map_err(|e| ApiError::Malformed(format!("not a {dialect} page: not UTF-8: {e}")))?;
    let malformed =
        |e: &dyn std::fmt::Display| ApiError::Malformed(format!("not a {dialect} page: {e}"));
    let mut page = Page {
        tape: TapeBuf::for_text(text.len()),
        ..Page::default()
    };
    let (mut events, mut next_link): (Option<bool>, Option<Value>) = (None, None);
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(malformed(&format_args!("expected an object at byte {i}")));
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        let mut scratch = TapeBuf::default();
        loop {
            let (name, next) = parse::string_at(&text, i).map_err(|e| malformed(&e))?;
            i = skip_ws(b, next);
            if b.get(i) != Some(&b':') {
                return Err(malformed(&format_args!("expected `:` at byte {i}")));
            }
            i += 1;
            match &*name {
                // The quarantine stream's pages name their array for it.
                "security_events" | "securityEvents" | "quarantine_events" | "quarantineEvents" => {
                    if events.is_some() {
                        return Err(malformed(&"duplicate field: a second events array"));
                    }
                    let (next, array) = events_array(&text, i, &mut page, MAX_PAGE_EVENTS)
                        .map_err(|e| malformed(&e))?;
                    events = Some(array);
                    i = next;
                }
                other => {
                    let link = matches!(other, "next_link" | "nextLink");
                    if link && next_link.is_some() {
                        return Err(malformed(&"duplicate field `next_link`"));
                    }
                    scratch.clear();
                    let (next, _) = parse::value(&text, i, &mut scratch, MAX_DEPTH - 1)
                        .map_err(|e| malformed(&e))?;
                    if link {
                        next_link = Some(scratch.doc(&text).root().to_value());
                    }
                    i = next;
                }
            }
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                None => return Err(malformed(&"EOF while parsing the page")),
                Some(_) => {
                    return Err(malformed(&format_args!("expected `,` or `}}` at byte {i}")))
                }
            }
        }
    }
    if skip_ws(b, i) != b.len() {
        return Err(malformed(&format_args!("trailing characters at byte {i}")));
    }
    if events != Some(true) {
        return Err(ApiError::Malformed(format!(
            "the page has no `{}` (or `quarantine_events`) array",
            dialect.events_field()
        )));
    }
    page.next_link = match next_link {
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
    page.tape.shrink();
    page.text = text;
    Ok(page)
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
        assert!(
            e.to_string()
                .contains("no `security_events` (or `quarantine_events`) array"),
            "{e}"
        );
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

    /// What serde_json, the oracle, makes of a body that the page parser
    /// read: the same events, each read the same on its tape.
    fn same_as_serde(body: &str, page: &Page) {
        let v: Value = serde_json::from_str(body).expect("the page parser took non-JSON");
        let events = v
            .get("security_events")
            .or_else(|| v.get("securityEvents"))
            .and_then(Value::as_array)
            .expect("no events array");
        assert_eq!(page.len(), events.len(), "{body}");
        let doc = page.doc();
        for ((text, root), want) in page.events().zip(page.roots()).zip(events) {
            assert_eq!(&serde_json::from_str::<Value>(text).unwrap(), want);
            if let Some(root) = root {
                assert_eq!(&doc.node(root).to_value(), want);
            }
        }
    }

    #[test]
    fn pages_are_read_as_serde_json_reads_them_broken_or_not() {
        use rand::SeedableRng;
        let plan = crate::sim::EventPlan::plain(3, 600.0, 0.3);
        let shard = crate::shard::Shard::new("exchange", "dlp");
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let alphabet: Vec<char> = "{}[]\",:\\ \n0123456789-.eunlx".chars().collect();
        let (mut read, mut refused) = (0, 0);
        for dialect in [Dialect::V1, Dialect::Legacy] {
            let events: Vec<Value> = plan
                .stubs(&shard, 0, 3_600_000)
                .iter()
                .take(3)
                .map(|stub| plan.render(&shard, stub, dialect))
                .collect();
            let body = serde_json::json!({
                "traceId": "t\"1\u{e9}",
                dialect.events_field(): events,
                "nested": {"a": [1, {"b": null}], "c": "\\n"},
                dialect.next_field(): "https://h/p?x=1",
            })
            .to_string();
            let page = parse_page(body.as_bytes(), dialect).unwrap();
            assert_eq!(page.len(), 3);
            assert_eq!(page.roots().filter(Option::is_some).count(), 3);
            assert_eq!(page.next_link.as_deref(), Some("https://h/p?x=1"));
            same_as_serde(&body, &page);
            let chars: Vec<char> = body.chars().collect();
            for _ in 0..3000 {
                let broken = crate::tape::parse::tests::mutated(&chars, &alphabet, 1, &mut rng);
                match parse_page(broken.as_bytes(), dialect) {
                    Ok(page) => {
                        same_as_serde(&broken, &page);
                        read += 1;
                    }
                    Err(e) => {
                        assert!(matches!(e, ApiError::Malformed(_)), "{e}");
                        refused += 1;
                    }
                }
            }
        }
        assert!(
            read > 500 && refused > 500,
            "{read} read, {refused} refused"
        );
    }

    #[test]
    fn an_event_repeating_a_name_is_left_to_be_parsed_on_its_own() {
        let body =
            br#"{"security_events":[{"a":1},{"a":1,"a":2},{"b":{"c":1,"c":1}}],"next_link":null}"#;
        let p = parse_page(body, Dialect::V1).unwrap();
        let tapes: Vec<bool> = p.roots().map(|t| t.is_some()).collect();
        assert_eq!(tapes, [true, false, false]);
        assert_eq!(p.events().nth(1), Some(r#"{"a":1,"a":2}"#));
        // A page repeating its own fields is not a page.
        let e = parse_page(
            br#"{"security_events":[],"securityEvents":[]}"#,
            Dialect::V1,
        );
        assert!(e.unwrap_err().to_string().contains("duplicate field"));
    }
}
