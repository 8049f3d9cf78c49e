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

impl Object<'_> {
    /// One member: its field, or why the line is refused.
    fn member(&mut self, key: &str, raw: &RawValue) -> Result<(), LineError> {
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
        let text = raw.get();
        let start = self.buf.len() as u32;
        match text.as_bytes().first() {
            Some(b'n') => return Ok(()),
            Some(b'"') => {
                // The text between the quotes, when it holds no escape, is the
                // string itself.
                let plain = text
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .filter(|t| !t.contains('\\'));
                if let Some(plain) = plain {
                    self.buf.push_str(plain);
                } else {
                    let s: Cow<str> = serde_json::from_str(text).map_err(|e| {
                        LineError::column(
                            column,
                            format!("not a valid JSON string: {}", message(&e)),
                        )
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
            }
            Some(b'{') | Some(b'[') if column.ty != ColumnType::Jsonb => {
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
            // A number, true, false, or a nested value: its JSON text.
            _ => self.buf.push_str(text),
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
            if let Err(e) = self.member(&key, raw) {
                self.refused = Some(e);
                return Err(serde::de::Error::custom("refused"));
            }
        }
        Ok(())
    }
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
    buf.clear();
    fields.clear();
    buf.push_str(null_text);
    let null = Field {
        start: 0,
        end: buf.len() as u32,
        quoted: false,
    };
    fields.resize(columns.len(), null);
    if line.trim().is_empty() {
        return Err(LineError::line(
            "an empty line: each line must hold one JSON object".into(),
        ));
    }
    let mut object = Object {
        columns,
        ignore_extra,
        buf,
        fields,
        seen: Seen::new(columns.len()),
        refused: None,
        guess: 0,
    };
    let mut de = serde_json::Deserializer::from_str(line);
    let parsed = (&mut de)
        .deserialize_map(&mut object)
        .and_then(|()| de.end());
    if let Some(refused) = object.refused {
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

    fn fields(line: &str) -> Result<Vec<Option<String>>, String> {
        let (mut buf, mut f) = (String::new(), Vec::new());
        object_fields(line, &columns(), false, "", &mut buf, &mut f).map_err(|e| e.reason)?;
        Ok(f.iter()
            .map(|f| {
                f.quoted
                    .then(|| buf[f.start as usize..f.end as usize].to_string())
            })
            .collect())
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
