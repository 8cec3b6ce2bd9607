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
