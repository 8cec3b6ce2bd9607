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
/// and the position after its closing quote. Inlined: most strings hold no
/// escape and end at the first stop.
#[inline(always)]
fn string(text: &str, at: usize, out: &mut TapeBuf) -> Result<(Entry, usize), ParseError> {
    let b = text.as_bytes();
    match string_stop(b, at) {
        Some(stop) if b[stop] == b'"' => Ok((Entry::Str(at as u32, (stop - at) as u32), stop + 1)),
        stop => escaped_string(text, at, stop, out),
    }
}

/// [`string`] from its first stop (`stop`, as [`string_stop`] found it):
/// an escape, a control character or the end of the text.
#[cold]
#[inline(never)]
fn escaped_string(
    text: &str,
    at: usize,
    stop: Option<usize>,
    out: &mut TapeBuf,
) -> Result<(Entry, usize), ParseError> {
    let b = text.as_bytes();
    let Some(stop) = stop else {
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
#[path = "parse_tests.rs"]
pub(crate) mod tests;
