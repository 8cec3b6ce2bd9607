//! One event as a flat, borrowed tape: the fast path of validation.
//!
//! Parsing an event into a `serde_json::Value` builds a tree of maps and
//! strings, a third of the CPU an event costs. The tape is one vector of
//! entries, in document order, whose strings borrow from the event's text
//! (unless they hold escapes), and jsonschema validates it in place through
//! its `Json` representation trait. The verdict is the same as on a `Value`
//! (tested on the simulator's events, bad ones included); the reasons of an
//! invalid event still come from the `Value` path, which runs only then.

use std::borrow::Cow;
use std::fmt;

use jsonschema::json::{cmp, Array, Json, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// One entry of a tape. A container is followed by its contents (an
/// object's as name, value, name, value…) and knows where they end.
#[derive(Debug, Clone, PartialEq)]
enum Entry<'s> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'s, str>),
    Array { len: u32, end: u32 },
    Object { len: u32, end: u32 },
}

/// A parsed JSON document, borrowing from its text.
#[derive(Debug, Default)]
pub struct Tape<'s> {
    entries: Vec<Entry<'s>>,
}

impl<'s> Tape<'s> {
    /// Parses `text` (one JSON value).
    pub fn parse(text: &'s str) -> Result<Self, serde_json::Error> {
        // About one entry per 12 bytes of an event's text.
        let mut entries = Vec::with_capacity(text.len() / 12 + 4);
        let mut de = serde_json::Deserializer::from_str(text);
        Fill(&mut entries).deserialize(&mut de)?;
        de.end()?;
        Ok(Self { entries })
    }

    /// The document's root.
    pub fn root(&self) -> TapeNode<'_> {
        TapeNode {
            tape: &self.entries,
            at: 0,
        }
    }
}

/// A value on a tape.
#[derive(Clone, Copy)]
pub struct TapeNode<'a> {
    tape: &'a [Entry<'a>],
    at: usize,
}

impl fmt::Debug for TapeNode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_value())
    }
}

impl<'a> TapeNode<'a> {
    fn entry(&self) -> &'a Entry<'a> {
        &self.tape[self.at]
    }

    /// Where the next sibling starts.
    fn after(&self) -> usize {
        match self.entry() {
            Entry::Array { end, .. } | Entry::Object { end, .. } => *end as usize,
            _ => self.at + 1,
        }
    }

    fn at(&self, at: usize) -> Self {
        Self {
            tape: self.tape,
            at,
        }
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
        match self.entry() {
            Entry::String(s) => Some(s),
            _ => None,
        }
    }

    /// The node as a `serde_json::Value` (for cold paths).
    pub fn to_value(&self) -> Value {
        match self.entry() {
            Entry::Null => Value::Null,
            Entry::Bool(b) => Value::Bool(*b),
            Entry::Number(n) => Value::Number(n.clone()),
            Entry::String(s) => Value::String(s.to_string()),
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
        let one = [Entry::String(Cow::Borrowed(string))];
        f(TapeNode { tape: &one, at: 0 })
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
        match self.entry() {
            Entry::Number(n) => Some(n),
            _ => None,
        }
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
            Entry::String(_) => JsonType::String,
            Entry::Array { .. } => JsonType::Array,
            Entry::Object { .. } => JsonType::Object,
        }
    }

    fn equals_value(&self, expected: &Value) -> bool {
        match (self.entry(), expected) {
            (Entry::String(s), Value::String(e)) => s == e,
            (Entry::String(_), _) => false,
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
    fn find(&self, name: &str) -> Option<TapeNode<'a>> {
        self.members().find(|(k, _)| *k == name).map(|(_, v)| v)
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

/// Appends one value to the tape.
struct Fill<'t, 's>(&'t mut Vec<Entry<'s>>);

impl<'de, 's> DeserializeSeed<'de> for Fill<'_, 's>
where
    'de: 's,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 's> Visitor<'de> for Fill<'_, 's>
where
    'de: 's,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.push(Entry::Null);
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.push(Entry::Bool(v));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(Entry::Number(v.into()));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(Entry::Number(v.into()));
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        let n = Number::from_f64(v).ok_or_else(|| E::custom("a number out of range"))?;
        self.0.push(Entry::Number(n));
        Ok(())
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.0.push(Entry::String(Cow::Borrowed(v)));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.push(Entry::String(Cow::Owned(v.to_owned())));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let at = self.0.len();
        self.0.push(Entry::Array { len: 0, end: 0 });
        let mut len = 0u32;
        while seq.next_element_seed(Fill(self.0))?.is_some() {
            len += 1;
        }
        let end = self.0.len() as u32;
        self.0[at] = Entry::Array { len, end };
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let at = self.0.len();
        self.0.push(Entry::Object { len: 0, end: 0 });
        let mut len = 0u32;
        while map.next_key_seed(Name(self.0))?.is_some() {
            map.next_value_seed(Fill(self.0))?;
            len += 1;
        }
        let end = self.0.len() as u32;
        self.0[at] = Entry::Object { len, end };
        let node = TapeNode { tape: self.0, at };
        let object = TapeObject(node);
        let repeated = object
            .members()
            .enumerate()
            .any(|(i, (name, _))| object.members().take(i).any(|(k, _)| k == name));
        if repeated {
            // A `Value` keeps the last of them; the tape does not decide
            // which one counts, so such an event takes the `Value` path.
            return Err(serde::de::Error::custom(DUPLICATE_NAMES));
        }
        Ok(())
    }
}

/// The error of a tape whose object repeats a member name.
pub const DUPLICATE_NAMES: &str = "an object repeats a member name";

/// Appends one member name.
struct Name<'t, 's>(&'t mut Vec<Entry<'s>>);

impl<'de, 's> DeserializeSeed<'de> for Name<'_, 's>
where
    'de: 's,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(Fill(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tape_holds_the_same_document_as_a_value() {
        let texts = [
            r#"{"a":1,"b":[true,null,"x\ny",{"c":-2.5e3}],"d":{},"e":[],"f":"é\u00e9"}"#,
            r#"[1,[2,[3]],{"k":{"k":{"k":"v"}}}]"#,
            r#""just a string""#,
            "18446744073709551615",
        ];
        for text in texts {
            let tape = Tape::parse(text).unwrap();
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(tape.root().to_value(), want, "{text}");
        }
        let tape = Tape::parse(r#"{"m":{"id":" x ","n":[1,2]},"z":0}"#).unwrap();
        let root = tape.root();
        assert_eq!(
            root.get("m")
                .and_then(|m| m.get("id"))
                .and_then(|n| n.as_str()),
            Some(" x ")
        );
        assert_eq!(root.get("z").map(|z| z.json_type()), Some(JsonType::Number));
        assert!(root.get("n").is_none());
        assert!(Tape::parse("{\"a\":1} trailing").is_err());
        let e = Tape::parse(r#"{"m":{"a":1,"b":2,"a":3}}"#).unwrap_err();
        assert!(e.to_string().contains(DUPLICATE_NAMES), "{e}");
        assert!(Tape::parse("{\"a\":").is_err());
    }
}

#[cfg(test)]
mod verdicts {
    //! The tape's verdicts against the `Value` path's, on the simulator's
    //! events (bad shapes included) and on variants of them broken by hand.
    use super::*;
    use crate::cas::Dialect;
    use crate::identity::{event_id, natural_id_on_tape};
    use crate::publish::{event_time, event_time_on_tape};
    use crate::shard::{Shard, DEFAULT_EVENTS, DEFAULT_SERVICES};
    use crate::sim::EventPlan;
    use crate::validate::Registry;

    /// Variants of a valid event: each top-level and message member
    /// removed, nulled, made a number, an array, an object, a long string.
    fn variants(event: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        let breaks = [
            Value::Null,
            serde_json::json!(7),
            serde_json::json!([1]),
            serde_json::json!({"x": 1}),
            serde_json::json!("x".repeat(5000)),
            serde_json::json!(""),
        ];
        let top: Vec<String> = event.as_object().unwrap().keys().cloned().collect();
        for k in &top {
            let mut e = event.clone();
            e.as_object_mut().unwrap().remove(k);
            out.push(e);
            for b in &breaks {
                let mut e = event.clone();
                e[k] = b.clone();
                out.push(e);
            }
        }
        if let Some(m) = event.get("message").and_then(Value::as_object) {
            for k in m.keys() {
                let mut e = event.clone();
                e["message"].as_object_mut().unwrap().remove(k);
                out.push(e);
                for b in &breaks {
                    let mut e = event.clone();
                    e["message"][k] = b.clone();
                    out.push(e);
                }
            }
        }
        out
    }

    #[test]
    fn the_tape_gives_the_values_verdict_id_and_time() {
        let registry = Registry::load(None).unwrap();
        let plan = EventPlan {
            seed: 11,
            events_per_hour: 120.0,
            late_fraction: 0.0,
            late_by_ms: 0,
            bad_fraction: 0.3,
            huge_fraction: 0.0,
            huge_bytes: 0,
            activity: Vec::new(),
        };
        let (mut valid, mut invalid) = (0, 0);
        for dialect in [Dialect::V1, Dialect::Legacy] {
            for service in DEFAULT_SERVICES.iter().copied() {
                for kind in DEFAULT_EVENTS.iter().copied() {
                    let shard = Shard::new(service, kind);
                    for stub in plan.stubs(&shard, 0, 3_600_000).iter().take(6) {
                        let event = plan.render(&shard, stub, dialect);
                        for e in std::iter::once(event.clone()).chain(variants(&event)) {
                            let text = serde_json::to_string_pretty(&e).unwrap();
                            let tape = Tape::parse(&text).unwrap();
                            let root = tape.root();
                            let want = registry.check(kind, &e).is_empty();
                            assert_eq!(registry.is_valid(kind, root), want, "{kind}: {text}");
                            if let Some(id) = natural_id_on_tape(root) {
                                assert_eq!(id, event_id(&shard, &e));
                            }
                            assert_eq!(event_time_on_tape(root), event_time(&e));
                            if want {
                                valid += 1;
                            } else {
                                invalid += 1;
                            }
                        }
                    }
                }
            }
        }
        // Both verdicts were compared, many times each.
        assert!(
            valid > 300 && invalid > 3000,
            "{valid} valid, {invalid} invalid"
        );
    }
}
