//! A strict JSON parser (RFC 8259, as serde_json reads it) that writes a
//! tape directly: one pass over the text finds where each value is and
//! records it, with no visitor and no tree. The page parser uses it to split
//! a page into events and build every event's tape in the same pass.

use serde_json::Number;

use super::{Entry, TapeBuf};

/// The deepest nesting accepted (serde_json's own recursion limit).
pub const MAX_DEPTH: usize = 128;

/// Why a text is not one JSON value, and where (a byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    pub what: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for ParseError {}

fn fail<T>(at: usize, what: &'static str) -> Result<T, ParseError> {
    Err(ParseError { at, what })
}

/// What one parsed value holds that the tape cannot stand for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// Some object in it repeats a member name.
    pub repeated_names: bool,
}

/// The position of the first byte after `at` that is not JSON whitespace.
#[inline]
pub fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while let Some(c) = b.get(at) {
        match c {
            b' ' | b'\n' | b'\r' | b'\t' => at += 1,
            _ => break,
        }
    }
    at
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The first byte of `b[at..]` that ends a plain run of string content: a
/// quote, a backslash or a control character (eight bytes at a time).
#[inline]
fn string_stop(b: &[u8], mut at: usize) -> Option<usize> {
    while let Some(chunk) = b.get(at..at + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let quote = x ^ (ONES * u64::from(b'"'));
        let slash = x ^ (ONES * u64::from(b'\\'));
        // A zero byte in `quote` or `slash`, or a byte below 0x20 in `x`.
        let found = (quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash)
            | (x.wrapping_sub(ONES * 0x20) & !x);
        let found = found & HIGHS;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    b[at..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| at + i)
}

fn hex4(b: &[u8], at: usize) -> Result<u16, ParseError> {
    let Some(digits) = b.get(at..at + 4) else {
        return fail(at, "EOF while parsing a string");
    };
    let mut n = 0u16;
    for (i, &d) in digits.iter().enumerate() {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return fail(at + i, "invalid escape"),
        };
        n = n << 4 | u16::from(v);
    }
    Ok(n)
}

/// Reads the string whose opening quote is at `at - 1`; returns its entry
/// and the position after its closing quote.
fn string(text: &str, at: usize, out: &mut TapeBuf) -> Result<(Entry, usize), ParseError> {
    let b = text.as_bytes();
    let Some(stop) = string_stop(b, at) else {
        return fail(b.len(), "EOF while parsing a string");
    };
    match b[stop] {
        b'"' => return Ok((Entry::Str(at as u32, (stop - at) as u32), stop + 1)),
        b'\\' => {}
        _ => {
            return fail(
                stop,
                "control character (\\u0000-\\u001F) found while parsing a string",
            )
        }
    }
    // Escapes: the string is written out, unescaped.
    let start = out.unescaped.len();
    out.unescaped.push_str(&text[at..stop]);
    let mut i = stop;
    loop {
        match b.get(i) {
            None => return fail(i, "EOF while parsing a string"),
            Some(b'"') => break,
            Some(b'\\') => {
                let c = match b.get(i + 1) {
                    None => return fail(i + 1, "EOF while parsing a string"),
                    Some(b'"') => '"',
                    Some(b'\\') => '\\',
                    Some(b'/') => '/',
                    Some(b'b') => '\u{8}',
                    Some(b'f') => '\u{c}',
                    Some(b'n') => '\n',
                    Some(b'r') => '\r',
                    Some(b't') => '\t',
                    Some(b'u') => {
                        let first = hex4(b, i + 2)?;
                        i += 6;
                        let c = match first {
                            0xD800..=0xDBFF => {
                                if b.get(i..i + 2) != Some(b"\\u") {
                                    return fail(i, "lone leading surrogate in hex escape");
                                }
                                let second = hex4(b, i + 2)?;
                                if !(0xDC00..=0xDFFF).contains(&second) {
                                    return fail(i, "lone leading surrogate in hex escape");
                                }
                                i += 6;
                                let c = 0x10000
                                    + ((u32::from(first) - 0xD800) << 10)
                                    + (u32::from(second) - 0xDC00);
                                char::from_u32(c)
                            }
                            0xDC00..=0xDFFF => {
                                return fail(i, "lone trailing surrogate in hex escape")
                            }
                            n => char::from_u32(u32::from(n)),
                        };
                        let Some(c) = c else {
                            return fail(i, "invalid unicode code point");
                        };
                        out.unescaped.push(c);
                        continue;
                    }
                    Some(_) => return fail(i + 1, "invalid escape"),
                };
                out.unescaped.push(c);
                i += 2;
            }
            Some(_) => {
                let Some(next) = string_stop(b, i) else {
                    return fail(b.len(), "EOF while parsing a string");
                };
                if b[next] < 0x20 {
                    return fail(
                        next,
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    );
                }
                out.unescaped.push_str(&text[i..next]);
                i = next;
            }
        }
    }
    let len = out.unescaped.len() - start;
    Ok((Entry::Escaped(start as u32, len as u32), i + 1))
}

/// Reads the number starting at `at`; returns it and the position after it.
fn number(text: &str, at: usize) -> Result<(Number, usize), ParseError> {
    let b = text.as_bytes();
    let mut i = at;
    let negative = b.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let digits = i;
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return fail(i, "invalid number"),
    }
    let integer = i;
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !b.get(i).is_some_and(u8::is_ascii_digit) {
            return fail(i, "invalid number");
        }
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !b.get(i).is_some_and(u8::is_ascii_digit) {
            return fail(i, "invalid number");
        }
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    // The common case, a non-negative integer that fits: read here.
    if !negative && i == integer && integer - digits <= 19 {
        let n = b[digits..integer].iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        if let Some(n) = n {
            return Ok((n.into(), i));
        }
    }
    // Anything else exactly as serde_json reads it (floats, negatives,
    // integers past u64).
    match serde_json::from_str::<Number>(&text[at..i]) {
        Ok(n) => Ok((n, i)),
        Err(_) => fail(at, "number out of range"),
    }
}

/// A container being filled: where its entry is, how many members or
/// elements it has so far.
struct Open {
    at: u32,
    len: u32,
    object: bool,
}

/// Reads `"name":` at `at`; returns the position after the colon.
fn member_name(text: &str, at: usize, out: &mut TapeBuf) -> Result<usize, ParseError> {
    let b = text.as_bytes();
    match b.get(at) {
        Some(b'"') => {}
        None => return fail(at, "EOF while parsing an object"),
        Some(_) => return fail(at, "key must be a string"),
    }
    let (name, next) = string(text, at + 1, out)?;
    out.entries.push(name);
    let i = skip_ws(b, next);
    match b.get(i) {
        Some(b':') => Ok(i + 1),
        None => fail(i, "EOF while parsing an object"),
        Some(_) => fail(i, "expected `:`"),
    }
}

fn literal(
    b: &[u8],
    at: usize,
    word: &[u8],
    entry: Entry,
    out: &mut TapeBuf,
) -> Result<usize, ParseError> {
    if b.get(at..at + word.len()) != Some(word) {
        return fail(at, "expected value");
    }
    out.entries.push(entry);
    Ok(at + word.len())
}

/// Writes a finished container's entry: its length and where it ends.
fn close(text: &str, out: &mut TapeBuf, c: &Open, flags: &mut Flags) {
    let end = out.entries.len() as u32;
    out.entries[c.at as usize] = if c.object {
        Entry::Object { len: c.len, end }
    } else {
        Entry::Array { len: c.len, end }
    };
    if c.object && c.len > 1 && !flags.repeated_names {
        flags.repeated_names = out.repeats_a_name(text, c.at as usize);
    }
}

/// Parses the one JSON value starting at `text[at..]` (after any
/// whitespace) onto `out`, containers nested fewer than `depth` deep. Returns
/// the position right after the value, and what the tape cannot stand for.
pub fn value(
    text: &str,
    at: usize,
    out: &mut TapeBuf,
    depth: usize,
) -> Result<(usize, Flags), ParseError> {
    let b = text.as_bytes();
    let mut flags = Flags::default();
    let mut open: Vec<Open> = Vec::new();
    let mut i = at;
    'value: loop {
        i = skip_ws(b, i);
        // One value, or the opening of a container.
        match b.get(i) {
            None => return fail(i, "EOF while parsing a value"),
            Some(&c @ (b'{' | b'[')) => {
                // serde_json's count: the `depth`th container is refused.
                if open.len() + 1 >= depth {
                    return fail(i, "recursion limit exceeded");
                }
                let object = c == b'{';
                let container = Open {
                    at: out.entries.len() as u32,
                    len: 0,
                    object,
                };
                out.entries.push(Entry::Null);
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(if object { &b'}' } else { &b']' }) {
                    i += 1;
                    close(text, out, &container, &mut flags);
                } else {
                    open.push(container);
                    if object {
                        i = member_name(text, i, out)?;
                    }
                    continue 'value;
                }
            }
            Some(b'"') => {
                let (e, next) = string(text, i + 1, out)?;
                out.entries.push(e);
                i = next;
            }
            Some(b't') => i = literal(b, i, b"true", Entry::Bool(true), out)?,
            Some(b'f') => i = literal(b, i, b"false", Entry::Bool(false), out)?,
            Some(b'n') => i = literal(b, i, b"null", Entry::Null, out)?,
            Some(b'-' | b'0'..=b'9') => {
                let (n, next) = number(text, i)?;
                out.entries.push(Entry::Number(out.numbers.len() as u32));
                out.numbers.push(n);
                i = next;
            }
            Some(_) => return fail(i, "expected value"),
        }
        // A value ended: the containers it ends, then the next value.
        loop {
            let Some(top) = open.last_mut() else {
                return Ok((i, flags));
            };
            top.len += 1;
            i = skip_ws(b, i);
            match (b.get(i), top.object) {
                (Some(b','), object) => {
                    i += 1;
                    if object {
                        i = member_name(text, skip_ws(b, i), out)?;
                    }
                    continue 'value;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    i += 1;
                    if let Some(done) = open.pop() {
                        close(text, out, &done, &mut flags);
                    }
                }
                (None, _) => return fail(i, "EOF while parsing a list or object"),
                (Some(_), true) => return fail(i, "expected `,` or `}`"),
                (Some(_), false) => return fail(i, "expected `,` or `]`"),
            }
        }
    }
}

/// Reads the string whose opening quote is at `at`: its text, unescaped,
/// and the position after its closing quote.
pub fn string_at(text: &str, at: usize) -> Result<(std::borrow::Cow<'_, str>, usize), ParseError> {
    if text.as_bytes().get(at) != Some(&b'"') {
        return fail(at, "key must be a string");
    }
    let mut buf = TapeBuf::default();
    match string(text, at + 1, &mut buf)? {
        (Entry::Str(s, len), next) => Ok((
            std::borrow::Cow::Borrowed(&text[s as usize..(s + len) as usize]),
            next,
        )),
        (_, next) => Ok((std::borrow::Cow::Owned(buf.unescaped), next)),
    }
}

/// Parses `text` as exactly one JSON value (whitespace around it allowed).
pub fn document(text: &str, out: &mut TapeBuf) -> Result<Flags, ParseError> {
    let (end, flags) = value(text, 0, out, MAX_DEPTH)?;
    let end = skip_ws(text.as_bytes(), end);
    if end != text.len() {
        return fail(end, "trailing characters");
    }
    Ok(flags)
}

#[cfg(test)]
pub(crate) mod tests {
    //! The parser against serde_json, the oracle: the same texts accepted,
    //! the same documents read.
    use super::super::{Tape, DUPLICATE_NAMES};
    use rand::{Rng, SeedableRng};
    use serde_json::Value;

    /// The tape's reading of `text` agrees with serde_json's.
    fn agrees(text: &str) {
        let want = serde_json::from_str::<Value>(text);
        match (Tape::parse(text), want) {
            (Ok(tape), Ok(v)) => {
                assert_eq!(tape.doc().root().to_value(), v, "{text:?}");
                // No member lost: a repeated name would have collapsed.
                assert_eq!(members(tape.doc().root()), members_of(&v), "{text:?}");
            }
            (Err(e), Ok(v)) => {
                // A repeated member name is the one text the tape refuses
                // and a `Value` takes (keeping the last).
                assert_eq!(e.what, DUPLICATE_NAMES, "{text:?} is JSON ({v}) but: {e}");
            }
            (Ok(tape), Err(e)) => panic!(
                "{text:?} is not JSON ({e}) but the tape read {}",
                tape.doc().root().to_value()
            ),
            (Err(_), Err(_)) => {}
        }
    }

    /// `chars` with `edits` characters inserted, removed or replaced by one
    /// of `alphabet`, at random places.
    pub(crate) fn mutated(
        chars: &[char],
        alphabet: &[char],
        edits: usize,
        rng: &mut impl Rng,
    ) -> String {
        let mut c = chars.to_vec();
        for _ in 0..edits {
            let at = rng.random_range(0..c.len().max(1));
            let new = alphabet[rng.random_range(0..alphabet.len())];
            match rng.random_range(0..3) {
                0 => c.insert(at.min(c.len()), new),
                _ if c.is_empty() => {}
                1 => {
                    c.remove(at);
                }
                _ => c[at] = new,
            }
        }
        c.iter().collect()
    }

    /// How many object members a document holds, all levels.
    fn members(node: super::super::TapeNode<'_>) -> usize {
        use jsonschema::json::{Array, Node, Object};
        if let Some(o) = node.as_object() {
            return o.len() + o.members().map(|(_, v)| members(v)).sum::<usize>();
        }
        node.as_array()
            .map_or(0, |a| a.elements().map(members).sum())
    }

    fn members_of(v: &Value) -> usize {
        match v {
            Value::Object(o) => o.len() + o.values().map(members_of).sum::<usize>(),
            Value::Array(a) => a.iter().map(members_of).sum(),
            _ => 0,
        }
    }

    #[test]
    fn a_repeated_name_is_found_at_any_depth_and_width() {
        let wide: Vec<String> = (0..80).map(|i| format!("\"k{i}\":{i}")).collect();
        for text in [
            r#"{"a":1,"a":2}"#.to_string(),
            r#"{"x":{"b":1,"c":[{"d":1,"d":1}]}}"#.to_string(),
            r#"{"\u0061":1,"a":2}"#.to_string(),
            format!("{{{},\"k77\":0}}", wide.join(",")),
            format!("{{{},\"k3\":0}}", wide.join(",")),
        ] {
            let e = Tape::parse(&text).unwrap_err();
            assert_eq!(e.what, DUPLICATE_NAMES, "{text}");
        }
        let text = format!("{{{}}}", wide.join(","));
        assert!(Tape::parse(&text).is_ok());
    }

    #[test]
    fn reads_what_serde_json_reads_and_refuses_what_it_refuses() {
        let texts = [
            "0",
            "-0",
            "1",
            "-1",
            "01",
            "1.",
            ".5",
            "1.5",
            "-1.5e3",
            "1E+2",
            "1e-2",
            "1e",
            "1e+",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "12345678901234567890123",
            "1e400",
            "-1e400",
            "2.5e-400",
            "0.1",
            "1.7976931348623157e308",
            "00",
            "-",
            "--1",
            "+1",
            "0x10",
            "1 2",
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "True",
            "truex",
            "nullnull",
            r#""""#,
            r#""a""#,
            r#""a"#,
            r#""\""#,
            r#""\\""#,
            r#""\/""#,
            r#""\b\f\n\r\t""#,
            r#""\u0041""#,
            r#""\u00e9""#,
            r#""\ud83d\ude00""#,
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\ud83dx""#,
            r#""\ud83d\u0041""#,
            r#""\u12""#,
            r#""\u12G4""#,
            r#""\x""#,
            "\"a\u{1}b\"",
            "\"a\tb\"",
            "\"a\u{7f}b\"",
            "\"é😀\"",
            r#""abcdefghijklmnopqrstuvwxyz\"0123""#,
            "[]",
            "[ ]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1,2",
            "[[[]]]",
            "[[[]]",
            "{}",
            "{ }",
            r#"{"a":1}"#,
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{a:1}"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{1:2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":{"b":1,"b":1}}"#,
            r#"{"a":[{"x":1},{"x":2}]}"#,
            r#"{"\u0061":1,"a":2}"#,
            r#"{"a\n":1}"#,
            " \t\n\r[1] \n",
            "[1]x",
            "",
            " ",
            "\u{feff}1",
            "[1]\u{0}",
        ];
        for t in texts {
            agrees(t);
        }
        // Nesting up to the limit and past it.
        for depth in [1, 50, 126, 127, 128, 129, 200] {
            agrees(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
            agrees(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth)));
            agrees(&format!(
                "{}{}",
                r#"{"a":"#.repeat(depth),
                "}".repeat(depth)
            ));
        }
    }

    /// Mutations of real events: a character inserted, removed or changed,
    /// many times over, from an alphabet of what matters to a JSON parser.
    #[test]
    fn broken_events_are_read_as_serde_json_reads_them() {
        let plan = crate::sim::EventPlan::plain(5, 60.0, 0.3);
        let shard = crate::shard::Shard::new("exchange", "dlp");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: Vec<char> = "{}[]\",:\\/ \t\n\u{1}0123456789-+.eEuabfnrtlsxé😀"
            .chars()
            .collect();
        let mut checked = 0;
        for dialect in [crate::cas::Dialect::V1, crate::cas::Dialect::Legacy] {
            for stub in plan.stubs(&shard, 0, 3_600_000).iter().take(4) {
                let event = plan.render(&shard, stub, dialect);
                for text in [
                    event.to_string(),
                    serde_json::to_string_pretty(&event).unwrap(),
                ] {
                    agrees(&text);
                    let chars: Vec<char> = text.chars().collect();
                    for _ in 0..1500 {
                        let edits = rng.random_range(1..4);
                        agrees(&mutated(&chars, &alphabet, edits, &mut rng));
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 20_000, "{checked}");
    }
}
