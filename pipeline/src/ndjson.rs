//! NDJSON records: one JSON object per line, whose keys name columns as a
//! CSV header does. A line becomes the fields the CSV path makes, so every
//! value is read by the same rules ([`crate::values`]): a string gives its
//! text (never NULL, like a quoted CSV field, so `""` is an empty string), a
//! number its text as written (exact for numeric), `true`/`false` their
//! words, an object or array its JSON text (jsonb columns only); `null` and
//! an absent key are NULL.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::csv::Field;
use crate::model::Column;
use crate::types::ColumnType;

/// Why a line is rejected, and the column it is about, if one.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub column: Option<String>,
    pub reason: String,
}

impl LineError {
    fn line(reason: String) -> LineError {
        LineError {
            column: None,
            reason,
        }
    }

    fn column(column: &Column, reason: String) -> LineError {
        LineError {
            column: Some(column.name.clone()),
            reason,
        }
    }
}

/// serde_json's message without its position in the line (one line is
/// one record, and the reject names the line).
fn message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Fills the fields from an object's members as they are read, with no
/// allocation per line beyond an escaped key or string.
struct Object<'a> {
    columns: &'a [Column],
    ignore_extra: bool,
    buf: &'a mut String,
    fields: &'a mut [Field],
    /// Columns given so far (a key twice is refused).
    seen: Seen,
    /// Why the line is refused, when the visitor stopped for it.
    refused: Option<LineError>,
    /// Where the next key is looked for first: after the last one found
    /// (writers keep their keys in one order).
    guess: usize,
}

/// Which columns a line has given: bits for the usual widths, a vector
/// for wider models.
enum Seen {
    Bits(u128),
    Wide(Vec<bool>),
}

impl Seen {
    fn new(n: usize) -> Seen {
        if n <= 128 {
            Seen::Bits(0)
        } else {
            Seen::Wide(vec![false; n])
        }
    }

    /// Marks `at`; whether it was marked already.
    fn mark(&mut self, at: usize) -> bool {
        match self {
            Seen::Bits(b) => {
                let was = *b & (1 << at) != 0;
                *b |= 1 << at;
                was
            }
            Seen::Wide(v) => std::mem::replace(&mut v[at], true),
        }
    }
}

/// A member's value, as the line holds it.
enum Value<'a> {
    Null,
    /// A string without escapes: the text between its quotes.
    Text(&'a str),
    /// A string with escapes: its JSON text, quotes included.
    Escaped(&'a str),
    /// A number, `true` or `false`: its JSON text.
    Scalar(&'a str),
    /// An object or an array: its JSON text.
    Nested(&'a str),
}

impl<'a> Value<'a> {
    /// The value serde_json found at a member.
    fn from_raw(raw: &'a RawValue) -> Value<'a> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'n') => Value::Null,
            Some(b'"') => {
                // The text between the quotes, when it holds no escape, is the
                // string itself.
                let plain = text
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .filter(|t| !t.contains('\\'));
                plain.map_or(Value::Escaped(text), Value::Text)
            }
            Some(b'{') | Some(b'[') => Value::Nested(text),
            _ => Value::Scalar(text),
        }
    }
}

impl Object<'_> {
    /// One member: its field, or why the line is refused.
    fn member(&mut self, key: &str, value: Value<'_>) -> Result<(), LineError> {
        // As a CSV header names columns: by source (or name), any case.
        let named = |c: &Column| c.header().eq_ignore_ascii_case(key);
        let found = match self.columns.get(self.guess) {
            Some(c) if named(c) => Some(self.guess),
            _ => self.columns.iter().position(named),
        };
        let Some(at) = found else {
            if self.ignore_extra {
                return Ok(());
            }
            return Err(LineError::line(format!(
                "key `{}` names no column of the model",
                key.chars().take(60).collect::<String>()
            )));
        };
        self.guess = at + 1;
        let column = &self.columns[at];
        if self.seen.mark(at) {
            return Err(LineError::column(
                column,
                format!("key `{key}` appears more than once"),
            ));
        }
        let start = self.buf.len() as u32;
        match value {
            Value::Null => return Ok(()),
            Value::Text(s) => self.buf.push_str(s),
            Value::Escaped(text) => {
                let s: Cow<str> = serde_json::from_str(text).map_err(|e| {
                    LineError::column(column, format!("not a valid JSON string: {}", message(&e)))
                })?;
                if s.contains('\0') {
                    return Err(LineError::column(
                        column,
                        "contains a NUL character (\\u0000), which PostgreSQL cannot store in any value"
                            .into(),
                    ));
                }
                self.buf.push_str(&s);
            }
            Value::Nested(text) if column.ty != ColumnType::Jsonb => {
                return Err(LineError::column(
                    column,
                    format!(
                        "`{}` ({}) takes a string, number or boolean, not a JSON {}",
                        column.name,
                        column.ty,
                        if text.starts_with('{') {
                            "object"
                        } else {
                            "array"
                        }
                    ),
                ));
            }
            Value::Nested(text) | Value::Scalar(text) => self.buf.push_str(text),
        }
        self.fields[at] = Field {
            start,
            end: self.buf.len() as u32,
            quoted: true,
        };
        Ok(())
    }
}

impl<'de> Visitor<'de> for &mut Object<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let raw: &'de RawValue = map.next_value()?;
            if let Err(e) = self.member(&key, Value::from_raw(raw)) {
                self.refused = Some(e);
                return Err(serde::de::Error::custom("refused"));
            }
        }
        Ok(())
    }
}

/// What the quick reading of a line found.
enum Scan {
    Read,
    Refused(LineError),
    /// The line is not of the usual shape: serde_json reads it.
    Unsure,
}

impl<'a> Object<'a> {
    /// An object with every field NULL (the text `null_text`, unquoted).
    fn start(
        columns: &'a [Column],
        ignore_extra: bool,
        null_text: &str,
        buf: &'a mut String,
        fields: &'a mut Vec<Field>,
    ) -> Object<'a> {
        buf.clear();
        fields.clear();
        buf.push_str(null_text);
        let null = Field {
            start: 0,
            end: buf.len() as u32,
            quoted: false,
        };
        fields.resize(columns.len(), null);
        Object {
            columns,
            ignore_extra,
            buf,
            fields,
            seen: Seen::new(columns.len()),
            refused: None,
            guess: 0,
        }
    }

    /// Reads a line of the usual shape — an object whose keys and strings
    /// hold no escape — in one pass over its bytes, where serde_json would
    /// validate each value and [`Value::from_raw`] look at it again.
    /// Anything else is `Unsure`, for serde_json to read: so a line reads
    /// the same either way (the tests and the `ndjson` fuzz target compare
    /// the two), and this reading needs no error messages of its own.
    fn scan(&mut self, line: &str) -> Scan {
        let b = line.as_bytes();
        let mut at = skip_space(b, 0);
        if b.get(at) != Some(&b'{') {
            return Scan::Unsure;
        }
        at = skip_space(b, at + 1);
        if b.get(at) == Some(&b'}') {
            at += 1;
        } else {
            loop {
                let Some((key, next)) = plain_string(line, at) else {
                    return Scan::Unsure;
                };
                at = skip_space(b, next);
                if b.get(at) != Some(&b':') {
                    return Scan::Unsure;
                }
                let Some((value, next)) = scalar_or_nested(line, skip_space(b, at + 1)) else {
                    return Scan::Unsure;
                };
                if let Err(e) = self.member(key, value) {
                    return Scan::Refused(e);
                }
                at = skip_space(b, next);
                match b.get(at) {
                    Some(b',') => at = skip_space(b, at + 1),
                    Some(b'}') => {
                        at += 1;
                        break;
                    }
                    _ => return Scan::Unsure,
                }
            }
        }
        if skip_space(b, at) == b.len() {
            Scan::Read
        } else {
            Scan::Unsure
        }
    }

    /// Reads the line with serde_json.
    fn by_serde(mut self, line: &str) -> Result<(), LineError> {
        let mut de = serde_json::Deserializer::from_str(line);
        let parsed = (&mut de).deserialize_map(&mut self).and_then(|()| de.end());
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        parsed.map_err(|e| {
            LineError::line(if e.is_data() {
                format!("not a JSON object: {}", message(&e))
            } else {
                format!("not valid JSON: {}", message(&e))
            })
        })
    }
}

/// Where JSON's whitespace after `at` ends.
fn skip_space(b: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(at) {
        at += 1;
    }
    at
}

/// The string at `at` when it holds no escape or control character: its
/// text, and where it ends.
fn plain_string(line: &str, at: usize) -> Option<(&str, usize)> {
    let rest = line.as_bytes().get(at..)?.strip_prefix(b"\"")?;
    let len = rest
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    if rest.get(len) != Some(&b'"') {
        return None;
    }
    Some((line.get(at + 1..at + 1 + len)?, at + 2 + len))
}

/// The value at `at` (a string as [`plain_string`] takes it), and where it
/// ends; nested values are measured by serde_json.
fn scalar_or_nested(line: &str, at: usize) -> Option<(Value<'_>, usize)> {
    let b = line.as_bytes();
    let word = |w: &str, value: Value<'static>| {
        b.get(at..)?
            .starts_with(w.as_bytes())
            .then_some((value, at + w.len()))
    };
    match *b.get(at)? {
        b'"' => plain_string(line, at).map(|(s, end)| (Value::Text(s), end)),
        b'n' => word("null", Value::Null),
        b't' => word("true", Value::Scalar("true")),
        b'f' => word("false", Value::Scalar("false")),
        b'-' | b'0'..=b'9' => {
            let end = number_end(b, at)?;
            Some((Value::Scalar(line.get(at..end)?), end))
        }
        b'{' | b'[' => {
            let mut values =
                serde_json::Deserializer::from_str(line.get(at..)?).into_iter::<&RawValue>();
            let raw = values.next()?.ok()?;
            Some((Value::Nested(raw.get()), at + values.byte_offset()))
        }
        _ => None,
    }
}

/// Where the JSON number at `at` ends, if one is there.
fn number_end(b: &[u8], mut at: usize) -> Option<usize> {
    let digits = |at: usize| {
        b.get(at..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    if b.get(at) == Some(&b'-') {
        at += 1;
    }
    match b.get(at)? {
        // A digit after a leading zero is an error inside the value for
        // serde_json (before the member is looked at): left to it.
        b'0' if b.get(at + 1).is_some_and(u8::is_ascii_digit) => return None,
        b'0' => at += 1,
        b'1'..=b'9' => at += digits(at),
        _ => return None,
    }
    if b.get(at) == Some(&b'.') {
        let n = digits(at + 1);
        if n == 0 {
            return None;
        }
        at += 1 + n;
    }
    if let Some(b'e' | b'E') = b.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = b.get(at) {
            at += 1;
        }
        let n = digits(at);
        if n == 0 {
            return None;
        }
        at += n;
    }
    Some(at)
}

fn empty_line() -> LineError {
    LineError::line("an empty line: each line must hold one JSON object".into())
}

/// Fills `fields` (one per column, in the model's order) and `buf` from
/// one line; why it is rejected otherwise. A NULL field is the text
/// `null_text` unquoted, which the encoder reads as NULL.
pub fn object_fields(
    line: &str,
    columns: &[Column],
    ignore_extra: bool,
    null_text: &str,
    buf: &mut String,
    fields: &mut Vec<Field>,
) -> Result<(), LineError> {
    if line.trim().is_empty() {
        Object::start(columns, ignore_extra, null_text, buf, fields);
        return Err(empty_line());
    }
    match Object::start(columns, ignore_extra, null_text, buf, fields).scan(line) {
        Scan::Read => Ok(()),
        Scan::Refused(e) => Err(e),
        Scan::Unsure => Object::start(columns, ignore_extra, null_text, buf, fields).by_serde(line),
    }
}

/// [`object_fields`] by serde_json alone: the reading the quick one must
/// agree with (the `ndjson` fuzz target compares them).
pub fn object_fields_by_serde(
    line: &str,
    columns: &[Column],
    ignore_extra: bool,
    null_text: &str,
    buf: &mut String,
    fields: &mut Vec<Field>,
) -> Result<(), LineError> {
    let object = Object::start(columns, ignore_extra, null_text, buf, fields);
    if line.trim().is_empty() {
        return Err(empty_line());
    }
    object.by_serde(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<Column> {
        let c = |name: &str, ty: ColumnType| Column {
            name: name.into(),
            ty,
            required: false,
            rules: Default::default(),
            source: None,
        };
        vec![
            c("id", ColumnType::BigInt),
            c("name", ColumnType::Text),
            c("doc", ColumnType::Jsonb),
        ]
    }

    type Read =
        fn(&str, &[Column], bool, &str, &mut String, &mut Vec<Field>) -> Result<(), LineError>;

    /// A line read by `read`: each field's text (None when NULL).
    fn read_by(
        read: Read,
        line: &str,
        ignore_extra: bool,
    ) -> Result<Vec<Option<String>>, LineError> {
        let (mut buf, mut f) = (String::new(), Vec::new());
        read(line, &columns(), ignore_extra, "", &mut buf, &mut f)?;
        Ok(f.iter()
            .map(|f| {
                f.quoted
                    .then(|| buf[f.start as usize..f.end as usize].to_string())
            })
            .collect())
    }

    fn fields(line: &str) -> Result<Vec<Option<String>>, String> {
        read_by(object_fields, line, false).map_err(|e| e.reason)
    }

    /// Pieces of lines, well and badly formed, for the two readings to
    /// disagree on if they can: keys, values, blanks and punctuation.
    fn one_of(pieces: &[&'static str]) -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(pieces.to_vec())
    }

    const KEYS: &[&str] = &[
        "\"id\"",
        "\"ID\"",
        "\"name\"",
        "\"doc\"",
        "\"colour\"",
        "\"na\\u006de\"",
        "\"\"",
        "\"é\"",
        "\"a\\\"b\"",
        "\"x\u{1}\"",
        "id",
        "\"id",
    ];
    const VALUES: &[&str] = &[
        "0",
        "-0",
        "12",
        "01",
        "-01",
        "00",
        "1.",
        "1.5",
        "1.5.2",
        "-2.50e+3",
        "1E9",
        "1e",
        "1e+",
        "-",
        "+1",
        ".5",
        "0x1",
        "1.5x",
        "\"x\"",
        "\"a\\\"b\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"é\"",
        "\"\u{1}\"",
        "\"",
        "null",
        "nul",
        "nullx",
        "true",
        "tru",
        "truex",
        "false",
        "{\"a\":[1,{}]}",
        "{\"a\":}",
        "[1,",
        "[]",
        "{}",
        "x",
        "NaN",
    ];
    const BLANKS: &[&str] = &["", "", " ", "\t", "\r", "\n", "\u{a0}"];
    const MARKS: &[&str] = &["{", "}", "[", "]", ":", ",", "\"", "\\"];

    /// A line: mostly `{"key": value, …}` from the pieces, sometimes
    /// the pieces in any order.
    fn line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let member = (
            one_of(KEYS),
            one_of(BLANKS),
            one_of(BLANKS),
            one_of(VALUES),
            one_of(BLANKS),
        )
            .prop_map(|(k, b1, b2, v, b3)| format!("{k}{b1}:{b2}{v}{b3},"));
        let any = prop_oneof![one_of(KEYS), one_of(VALUES), one_of(BLANKS), one_of(MARKS)];
        prop_oneof![
            (
                one_of(BLANKS),
                proptest::collection::vec(member, 0..5),
                one_of(BLANKS),
                one_of(&["}", "}}", "", "} x", "]"])
            )
                .prop_map(|(lead, members, blank, end)| {
                    let mut line = format!("{lead}{{{}", members.concat());
                    if line.ends_with(',') {
                        line.pop();
                    }
                    line + blank + end
                }),
            proptest::collection::vec(any, 0..12).prop_map(|p| p.concat()),
        ]
    }

    #[test]
    fn usual_lines_are_read_in_one_pass() {
        let columns = columns();
        let (mut buf, mut f) = (String::new(), Vec::new());
        for (line, quick) in [
            (r#" {"id": -1.5e3, "name" : "é", "doc": {"a": [1]}} "#, true),
            (r#"{"ID":null,"name":"x"}"#, true),
            ("{}", true),
            (r#"{"name": "a\"b"}"#, false),
            (r#"{"id": 01}"#, false),
        ] {
            let read = Object::start(&columns, false, "", &mut buf, &mut f).scan(line);
            assert_eq!(matches!(read, Scan::Read), quick, "{line}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20000))]
        #[test]
        fn the_quick_reading_agrees_with_serde_json(line in line(), ignore_extra: bool) {
            proptest::prop_assert_eq!(
                read_by(object_fields, &line, ignore_extra),
                read_by(object_fields_by_serde, &line, ignore_extra)
            );
        }
    }

    #[test]
    fn values_become_the_fields_csv_would_give() {
        assert_eq!(
            fields(
                r#"{"name": "a\"b\u00e9", "id": 12345678901234567890, "doc": {"x": [1, null]}}"#
            ),
            Ok(vec![
                Some("12345678901234567890".into()),
                Some("a\"bé".into()),
                Some(r#"{"x": [1, null]}"#.into())
            ])
        );
        assert_eq!(
            fields(r#"{"id": null, "name": ""}"#),
            Ok(vec![None, Some(String::new()), None])
        );
        assert_eq!(
            fields(r#" {"id": true} "#),
            Ok(vec![Some("true".into()), None, None])
        );
    }

    #[test]
    fn lines_that_are_not_objects_of_columns_are_refused() {
        for (line, says) in [
            ("", "empty line"),
            ("[1, 2]", "not a JSON object"),
            ("42", "not a JSON object"),
            (r#"{"id": 1"#, "not valid JSON"),
            (r#"{"id": 1} {"id": 2}"#, "not valid JSON"),
            (r#"{"id": 1, "id": 2}"#, "more than once"),
            (r#"{"colour": 1}"#, "names no column"),
            (r#"{"name": {"a": 1}}"#, "not a JSON object"),
            (r#"{"id": [1]}"#, "not a JSON array"),
            (r#"{"name": "a\u0000b"}"#, "NUL"),
            (r#"{"name": "\ud800"}"#, "valid JSON"),
        ] {
            let e = fields(line).expect_err(line);
            assert!(e.contains(says), "{line}: {e}");
        }
    }
}
