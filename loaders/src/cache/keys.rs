//! Cache keys: one text form per key value, whether it comes from a URL or
//! from a row being loaded, and the same as PostgreSQL's `key::text` — so
//! `007` in a file and `7` in a request name one entry.

use nexus_pipeline::Model;
use nexus_pipeline::types::ColumnType;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("model `{0}` has no single key column; only such models are cached")]
    NotSingle(String),
    #[error("model `{model}`: a {ty} key cannot be cached (use an integer, text or uuid key)")]
    Type { model: String, ty: ColumnType },
    #[error("`{text}` is not a valid {ty} key")]
    Invalid { text: String, ty: ColumnType },
}

/// A batch's keys, each once: integer keys as numbers (most keys are ids,
/// and a batch's ids are announced as runs without ever being written out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchKeys {
    Integers(Vec<i64>),
    Texts(Vec<String>),
}

impl BatchKeys {
    pub fn len(&self) -> usize {
        match self {
            BatchKeys::Integers(k) => k.len(),
            BatchKeys::Texts(k) => k.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys in their text form.
    pub fn texts(&self) -> std::borrow::Cow<'_, [String]> {
        match self {
            BatchKeys::Integers(k) => k.iter().map(i64::to_string).collect(),
            BatchKeys::Texts(k) => k.into(),
        }
    }
}

fn cacheable(ty: ColumnType) -> bool {
    matches!(
        ty,
        ColumnType::SmallInt
            | ColumnType::Int
            | ColumnType::BigInt
            | ColumnType::Text
            | ColumnType::Varchar(_)
            | ColumnType::Uuid
    )
}

/// The index of the model's key column, if the model can be cached.
pub fn key_column(model: &Model) -> Result<usize, KeyError> {
    let [key] = model.key.as_slice() else {
        return Err(KeyError::NotSingle(model.name.clone()));
    };
    let i = model
        .columns
        .iter()
        .position(|c| &c.name == key)
        .ok_or_else(|| KeyError::NotSingle(model.name.clone()))?;
    let ty = model.columns[i].ty;
    if !cacheable(ty) {
        return Err(KeyError::Type {
            model: model.name.clone(),
            ty,
        });
    }
    Ok(i)
}

/// The canonical form of a key as a person writes it.
pub fn canonical(ty: ColumnType, text: &str) -> Result<String, KeyError> {
    let invalid = || KeyError::Invalid {
        text: text.chars().take(100).collect(),
        ty,
    };
    let t = text.trim();
    Ok(match ty {
        ColumnType::SmallInt => t.parse::<i16>().map_err(|_| invalid())?.to_string(),
        ColumnType::Int => t.parse::<i32>().map_err(|_| invalid())?.to_string(),
        ColumnType::BigInt => t.parse::<i64>().map_err(|_| invalid())?.to_string(),
        ColumnType::Uuid => uuid::Uuid::parse_str(t)
            .map_err(|_| invalid())?
            .hyphenated()
            .to_string(),
        // PostgreSQL text holds no NUL: no row has such a key.
        _ if text.is_empty() || text.contains('\0') => return Err(invalid()),
        _ => text.to_string(),
    })
}

/// The canonical form of a key field of a binary COPY row; `None` for a
/// NULL or a malformed row.
pub fn from_binary_row(row: &[u8], field: usize, ty: ColumnType) -> Option<String> {
    if let Some(n) = integer_from_binary_row(row, field, ty) {
        return Some(n.to_string());
    }
    let v = binary_field(row, field)?;
    match ty {
        ColumnType::SmallInt | ColumnType::Int | ColumnType::BigInt => None,
        ColumnType::Uuid => Some(uuid::Uuid::from_slice(v).ok()?.hyphenated().to_string()),
        _ => String::from_utf8(v.to_vec()).ok(),
    }
}

/// An integer key field of a binary COPY row; `None` for another type, a
/// NULL or a malformed row.
pub fn integer_from_binary_row(row: &[u8], field: usize, ty: ColumnType) -> Option<i64> {
    let v = binary_field(row, field)?;
    match ty {
        ColumnType::SmallInt => Some(i16::from_be_bytes(v.try_into().ok()?).into()),
        ColumnType::Int => Some(i32::from_be_bytes(v.try_into().ok()?).into()),
        ColumnType::BigInt => Some(i64::from_be_bytes(v.try_into().ok()?)),
        _ => None,
    }
}

/// The bytes of field `field` of a binary COPY row; `None` for a NULL or
/// a malformed row.
fn binary_field(row: &[u8], field: usize) -> Option<&[u8]> {
    let mut at = 2usize;
    for i in 0..=field {
        let len = i32::from_be_bytes(row.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if i == field {
            return row.get(at..at + usize::try_from(len).ok()?);
        }
        at += len.max(0) as usize;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical(ColumnType::BigInt, " 007").unwrap(), "7");
        assert!(canonical(ColumnType::Int, "x").is_err());
        assert!(canonical(ColumnType::SmallInt, "70000").is_err());
        assert_eq!(
            canonical(ColumnType::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").unwrap(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(canonical(ColumnType::Text, " a ").unwrap(), " a ");
        assert!(canonical(ColumnType::Text, "").is_err());
        assert!(canonical(ColumnType::Text, "a\0b").is_err());
        assert!(canonical(ColumnType::Varchar(Some(5)), "\0").is_err());
        assert!(canonical(ColumnType::Int, "\0").is_err());
    }

    #[test]
    fn keys_from_binary_rows() {
        // Two fields: text "ab", bigint 42.
        let mut row = vec![0, 2];
        row.extend_from_slice(&2i32.to_be_bytes());
        row.extend_from_slice(b"ab");
        row.extend_from_slice(&8i32.to_be_bytes());
        row.extend_from_slice(&42i64.to_be_bytes());
        assert_eq!(
            from_binary_row(&row, 0, ColumnType::Text).as_deref(),
            Some("ab")
        );
        assert_eq!(
            from_binary_row(&row, 1, ColumnType::BigInt).as_deref(),
            Some("42")
        );
        assert_eq!(from_binary_row(&row[..10], 1, ColumnType::BigInt), None);
    }
}
