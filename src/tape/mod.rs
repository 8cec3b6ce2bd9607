//! One event as a flat tape: the fast path of validation.
//!
//! Parsing an event into a `serde_json::Value` builds a tree of maps and
//! strings, a third of the CPU an event costs. The tape is one vector of
//! small entries, in document order; strings are spans of the text (or of
//! a side buffer when they held escapes), numbers sit in a side vector.
//! jsonschema validates it in place through its `Json` representation
//! trait. The verdict is the same as on a `Value` (tested on the
//! simulator's events, bad ones included); the reasons of an invalid event
//! still come from the `Value` path, which runs only then.
//!
//! Entries hold no borrow, so a page keeps the tapes of all its events
//! beside its body: the page is read once ([`parse`]), splitting it into
//! events and building their tapes in the same pass.

pub mod parse;

use std::borrow::Cow;
use std::fmt;

use jsonschema::json::{cmp, Array, Json, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde_json::{Map, Number, Value};

pub use parse::{Flags, ParseError};

/// One entry of a tape. A container is followed by its contents (an
/// object's as name, value, name, value…) and knows where they end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Entry {
    Null,
    Bool(bool),
    /// The index of the number in the tape's numbers.
    Number(u32),
    /// A string without escapes: where it is in the text, its length.
    Str(u32, u32),
    /// A string that held escapes: where it is, unescaped, in the tape's
    /// side buffer, its length.
    Escaped(u32, u32),
    Array {
        len: u32,
        end: u32,
    },
    Object {
        len: u32,
        end: u32,
    },
}

/// The entries of one or more documents, with their numbers and unescaped
/// strings; the strings' text is kept apart (a page's body).
#[derive(Debug, Default)]
pub struct TapeBuf {
    pub(crate) entries: Vec<Entry>,
    pub(crate) numbers: Vec<Number>,
    pub(crate) unescaped: String,
}

impl TapeBuf {
    /// Room for about one entry per 12 bytes of text.
    pub fn for_text(len: usize) -> Self {
        Self {
            entries: Vec::with_capacity(len / 12 + 4),
            numbers: Vec::new(),
            unescaped: String::new(),
        }
    }

    /// Gives back room it reserved and did not use (a text of long strings
    /// has few entries for its length).
    pub fn shrink(&mut self) {
        if self.entries.capacity() > 2 * self.entries.len() {
            self.entries.shrink_to_fit();
        }
    }

    /// Empties it, keeping its room.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.numbers.clear();
        self.unescaped.clear();
    }

    /// The bytes it holds (counted against the pages in flight).
    pub fn bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.numbers.capacity() * std::mem::size_of::<Number>()
            + self.unescaped.capacity()
    }

    /// The documents on it, whose strings are in `text`.
    pub fn doc<'a>(&'a self, text: &'a str) -> Doc<'a> {
        Doc {
            text,
            unescaped: &self.unescaped,
            numbers: &self.numbers,
            entries: &self.entries,
        }
    }

    /// Whether the object whose entry is at `at` (closed, its strings in
    /// `text`) repeats a member name. Each name sets one bit of a
    /// 1,024-bit filter (from its length and a few of its bytes); only a
    /// name whose bit is set already is compared with the names before it.
    fn repeats_a_name(&self, text: &str, at: usize) -> bool {
        let Entry::Object { len, .. } = self.entries[at] else {
            return false;
        };
        let name_at = |i: usize| -> &[u8] {
            let (bytes, s, l) = match self.entries[i] {
                Entry::Str(s, l) => (text.as_bytes(), s, l),
                Entry::Escaped(s, l) => (self.unescaped.as_bytes(), s, l),
                _ => return &[],
            };
            bytes.get(s as usize..(s + l) as usize).unwrap_or_default()
        };
        let next = |i: usize| match self.entries[i + 1] {
            Entry::Array { end, .. } | Entry::Object { end, .. } => end as usize,
            _ => i + 2,
        };
        let mut filter = [0u64; 16];
        let mut i = at + 1;
        for _ in 0..len {
            let name = name_at(i);
            let (first, last, mid) = match name {
                [] => (0, 0, 0),
                _ => (name[0], name[name.len() - 1], name[name.len() / 2]),
            };
            let key = name.len() as u64
                | u64::from(first) << 16
                | u64::from(last) << 24
                | u64::from(mid) << 32;
            let bit = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize;
            if filter[bit / 64] & 1 << (bit % 64) != 0 {
                let mut j = at + 1;
                while j < i {
                    if name_at(j) == name {
                        return true;
                    }
                    j = next(j);
                }
            }
            filter[bit / 64] |= 1 << (bit % 64);
            i = next(i);
        }
        false
    }
}

/// A parsed JSON document and the text its strings are in.
#[derive(Debug)]
pub struct Tape<'s> {
    text: &'s str,
    buf: TapeBuf,
}

impl<'s> Tape<'s> {
    /// Parses `text` (one JSON value). An object repeating a member name
    /// is refused with [`DUPLICATE_NAMES`]: a `Value` keeps the last of
    /// them and the tape does not decide which one counts.
    pub fn parse(text: &'s str) -> Result<Self, ParseError> {
        let mut buf = TapeBuf::for_text(text.len());
        let flags = parse::document(text, &mut buf)?;
        if flags.repeated_names {
            return Err(ParseError {
                at: 0,
                what: DUPLICATE_NAMES,
            });
        }
        Ok(Self { text, buf })
    }

    /// The document (its root is [`Doc::root`]).
    pub fn doc(&self) -> Doc<'_> {
        self.buf.doc(self.text)
    }
}

/// The error of a tape whose object repeats a member name.
pub const DUPLICATE_NAMES: &str = "an object repeats a member name";

/// A tape and what its entries point into: what a node reads.
#[derive(Clone, Copy)]
pub struct Doc<'a> {
    text: &'a str,
    unescaped: &'a str,
    numbers: &'a [Number],
    entries: &'a [Entry],
}

impl<'a> Doc<'a> {
    /// The value whose entry is at `at`.
    pub fn node(&'a self, at: usize) -> TapeNode<'a> {
        TapeNode { doc: self, at }
    }

    /// The value of the first entry.
    pub fn root(&'a self) -> TapeNode<'a> {
        self.node(0)
    }
}

/// A value on a tape.
#[derive(Clone, Copy)]
pub struct TapeNode<'a> {
    doc: &'a Doc<'a>,
    at: usize,
}

impl fmt::Debug for TapeNode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_value())
    }
}

impl<'a> TapeNode<'a> {
    fn entry(&self) -> &'a Entry {
        &self.doc.entries[self.at]
    }

    /// Where the next sibling starts.
    fn after(&self) -> usize {
        match self.entry() {
            Entry::Array { end, .. } | Entry::Object { end, .. } => *end as usize,
            _ => self.at + 1,
        }
    }

    fn at(&self, at: usize) -> Self {
        Self { doc: self.doc, at }
    }

    /// The member `name` of an object.
    pub fn get(&self, name: &str) -> Option<Self> {
        TapeObject(*self).find(name)
    }

    /// Whether this node is an object.
    pub fn is_object(&self) -> bool {
        matches!(self.entry(), Entry::Object { .. })
    }

    /// The string this node holds.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self.entry() {
            Entry::Str(at, len) => self.doc.text.get(at as usize..(at + len) as usize),
            Entry::Escaped(at, len) => self.doc.unescaped.get(at as usize..(at + len) as usize),
            _ => None,
        }
    }

    fn number(&self) -> Option<&'a Number> {
        match *self.entry() {
            Entry::Number(i) => self.doc.numbers.get(i as usize),
            _ => None,
        }
    }

    /// The node as a `serde_json::Value` (for cold paths).
    pub fn to_value(&self) -> Value {
        match self.entry() {
            Entry::Null => Value::Null,
            Entry::Bool(b) => Value::Bool(*b),
            Entry::Number(_) => self
                .number()
                .map_or(Value::Null, |n| Value::Number(n.clone())),
            Entry::Str(..) | Entry::Escaped(..) => {
                Value::String(self.as_str().unwrap_or_default().to_string())
            }
            Entry::Array { .. } => Value::Array(
                TapeArray(*self)
                    .elements()
                    .map(|n| TapeNode::to_value(&n))
                    .collect(),
            ),
            Entry::Object { .. } => Value::Object(
                TapeObject(*self)
                    .members()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

/// The tape representation, for `jsonschema::options_for`.
pub struct TapeJson;

impl Json for TapeJson {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(TapeNode<'_>) -> T) -> T {
        let one = [Entry::Str(0, string.len() as u32)];
        let doc = Doc {
            text: string,
            unescaped: "",
            numbers: &[],
            entries: &one,
        };
        f(doc.root())
    }
}

impl<'a> Node<'a, TapeJson> for TapeNode<'a> {
    type Object = TapeObject<'a>;
    type Array = TapeArray<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<TapeObject<'a>> {
        matches!(self.entry(), Entry::Object { .. }).then_some(TapeObject(*self))
    }

    fn as_array(&self) -> Option<TapeArray<'a>> {
        matches!(self.entry(), Entry::Array { .. }).then_some(TapeArray(*self))
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        self.as_str().map(Cow::Borrowed)
    }

    fn as_number(&self) -> Option<&'a Number> {
        self.number()
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.entry() {
            Entry::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.entry(), Entry::Null)
    }

    fn json_type(&self) -> JsonType {
        match self.entry() {
            Entry::Null => JsonType::Null,
            Entry::Bool(_) => JsonType::Boolean,
            Entry::Number(_) => JsonType::Number,
            Entry::Str(..) | Entry::Escaped(..) => JsonType::String,
            Entry::Array { .. } => JsonType::Array,
            Entry::Object { .. } => JsonType::Object,
        }
    }

    fn equals_value(&self, expected: &Value) -> bool {
        match (self.entry(), expected) {
            (Entry::Str(..) | Entry::Escaped(..), Value::String(e)) => self.as_str() == Some(e),
            (Entry::Str(..) | Entry::Escaped(..), _) => false,
            (Entry::Bool(b), Value::Bool(e)) => b == e,
            (Entry::Null, Value::Null) => true,
            _ => cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(TapeNode::to_value(self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(std::ptr::from_ref(self.entry()) as usize))
    }
}

/// An object on a tape.
#[derive(Clone, Copy)]
pub struct TapeObject<'a>(TapeNode<'a>);

impl<'a> TapeObject<'a> {
    /// The value of the first member named `name`. Names are compared as
    /// bytes, length first (most members are passed over on that alone).
    fn find(&self, name: &str) -> Option<TapeNode<'a>> {
        let node = self.0;
        let Entry::Object { len, .. } = *node.entry() else {
            return None;
        };
        let want = name.as_bytes();
        let mut at = node.at + 1;
        for _ in 0..len {
            let found = match node.doc.entries[at] {
                Entry::Str(s, l) if l as usize == want.len() => {
                    node.doc.text.as_bytes().get(s as usize..(s + l) as usize) == Some(want)
                }
                Entry::Escaped(s, l) if l as usize == want.len() => {
                    node.doc
                        .unescaped
                        .as_bytes()
                        .get(s as usize..(s + l) as usize)
                        == Some(want)
                }
                _ => false,
            };
            let value = node.at(at + 1);
            if found {
                return Some(value);
            }
            at = value.after();
        }
        None
    }
}

/// The members of an object on a tape, in document order.
pub struct Members<'a> {
    node: TapeNode<'a>,
    left: u32,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TapeNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let name = self.node.as_str().unwrap_or_default();
        let value = self.node.at(self.node.at + 1);
        self.node = value.at(value.after());
        Some((name, value))
    }
}

impl<'a> Object<'a, TapeJson> for TapeObject<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        match self.0.entry() {
            Entry::Object { len, .. } => *len as usize,
            _ => 0,
        }
    }

    fn get(&self, key: &Box<str>) -> Option<TapeNode<'a>> {
        self.find(key)
    }

    fn members(&self) -> Members<'a> {
        Members {
            node: self.0.at(self.0.at + 1),
            left: Object::len(self) as u32,
        }
    }
}

/// An array on a tape.
#[derive(Clone, Copy)]
pub struct TapeArray<'a>(TapeNode<'a>);

/// The elements of an array on a tape.
pub struct Elements<'a> {
    node: TapeNode<'a>,
    left: u32,
}

impl<'a> Iterator for Elements<'a> {
    type Item = TapeNode<'a>;

    fn next(&mut self) -> Option<TapeNode<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let element = self.node;
        self.node = element.at(element.after());
        Some(element)
    }
}

impl<'a> Array<'a, TapeJson> for TapeArray<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        match self.0.entry() {
            Entry::Array { len, .. } => *len as usize,
            _ => 0,
        }
    }

    fn elements(&self) -> Elements<'a> {
        Elements {
            node: self.0.at(self.0.at + 1),
            left: Array::len(self) as u32,
        }
    }
}

#[cfg(test)]
mod tests;
