//! NDJSON records: one JSON object per line, whose keys name columns as a
//! CSV header does. A line becomes the fields the CSV path makes, so every
//! value is read by the same rules ([`crate::values`]): a string gives its
//! text (never NULL, like a quoted CSV field, so `""` is an empty string), a
//! number its text as written (exact for numeric), `true`/`false` their
//! words, an object or array its JSON text (jsonb columns only); `null` and
//! an absent key are NULL.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::csv::Field;
use crate::model::Column;
use crate::types::ColumnType;

/// An object's members in the order written, duplicates kept (to refuse).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Object)
    }
}

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
    let members: Members = serde_json::from_str(line).map_err(|e| {
        LineError::line(if e.is_data() {
            format!("not a JSON object: {}", message(&e))
        } else {
            format!("not valid JSON: {}", message(&e))
        })
    })?;
    let mut seen = vec![false; columns.len()];
    for (key, raw) in members.0 {
        // As a CSV header names columns: by source (or name), any case.
        let Some(at) = columns
            .iter()
            .position(|c| c.header().eq_ignore_ascii_case(&key))
        else {
            if ignore_extra {
                continue;
            }
            return Err(LineError::line(format!(
                "key `{}` names no column of the model",
                key.chars().take(60).collect::<String>()
            )));
        };
        let column = &columns[at];
        if std::mem::replace(&mut seen[at], true) {
            return Err(LineError::column(
                column,
                format!("key `{key}` appears more than once"),
            ));
        }
        let text = raw.get();
        let start = buf.len() as u32;
        match text.as_bytes().first() {
            Some(b'n') => continue,
            Some(b'"') => {
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
                buf.push_str(&s);
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
            _ => buf.push_str(text),
        }
        fields[at] = Field {
            start,
            end: buf.len() as u32,
            quoted: true,
        };
    }
    Ok(())
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
