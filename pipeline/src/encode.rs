//! Text → PostgreSQL binary COPY values, with the model's rules checked on
//! the way. Hand-written because this is the hot path: the server skips
//! its own text parsing for binary input, so every value parsed here is CPU
//! taken off the database (binary COPY costs the server less than text).

use crate::model::{Column, Rules, TimeZone};
use crate::types::ColumnType;
pub use crate::values::show;
use crate::values::{self, Verdict};

/// `PGCOPY\n\377\r\n\0`, flags, header extension length.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
pub const COPY_TRAILER: &[u8] = &[0xff, 0xff];

#[inline]
pub fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}
#[inline]
pub fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}
#[inline]
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Why a value was not encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldError {
    /// PostgreSQL refuses it too, or a rule of the model does: the reason.
    Invalid(String),
    /// The fast path cannot be sure what PostgreSQL makes of it: the
    /// server's input function decides (see [`crate::values`]).
    Defer,
}

impl From<String> for FieldError {
    fn from(reason: String) -> Self {
        FieldError::Invalid(reason)
    }
}

/// A verdict's value, or the field's error.
fn take<T>(v: Verdict<T>) -> Result<T, FieldError> {
    match v {
        Verdict::Value(x) => Ok(x),
        Verdict::Invalid(reason) => Err(FieldError::Invalid(reason)),
        Verdict::Unsure => Err(FieldError::Defer),
    }
}

/// Encodes one non-NULL value of `col` (length word and bytes) into `out`,
/// or says why not. On an error `out` may hold a partial field: the caller
/// truncates to the row's start.
pub fn encode_field(
    col: &Column,
    tz: &TimeZone,
    v: &str,
    out: &mut Vec<u8>,
) -> Result<(), FieldError> {
    let rules = &col.rules;
    match col.ty {
        ColumnType::SmallInt => {
            let n = take(values::integer(
                v,
                i16::MIN as i64,
                i16::MAX as i64,
                "smallint",
            ))?;
            check_range(rules, n as f64, v)?;
            put_i32(out, 2);
            put_i16(out, n as i16);
        }
        ColumnType::Int => {
            let n = take(values::integer(
                v,
                i32::MIN as i64,
                i32::MAX as i64,
                "integer",
            ))?;
            check_range(rules, n as f64, v)?;
            put_i32(out, 4);
            put_i32(out, n as i32);
        }
        ColumnType::BigInt => {
            let n = take(values::integer(v, i64::MIN, i64::MAX, "bigint"))?;
            check_range(rules, n as f64, v)?;
            put_i32(out, 8);
            put_i64(out, n);
        }
        ColumnType::Real => {
            let f = take(values::real(v))?;
            check_range(rules, f as f64, v)?;
            put_i32(out, 4);
            out.extend_from_slice(&f.to_be_bytes());
        }
        ColumnType::Double => {
            let f = take(values::double(v))?;
            check_range(rules, f, v)?;
            put_i32(out, 8);
            out.extend_from_slice(&f.to_be_bytes());
        }
        ColumnType::Numeric(typmod) => {
            let len_at = out.len();
            put_i32(out, 0);
            let approx = take(values::numeric(v, typmod, out))?;
            check_range(rules, approx, v)?;
            let len = (out.len() - len_at - 4) as i32;
            out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
        ColumnType::Text | ColumnType::Varchar(_) | ColumnType::Char(_) => {
            let stored = match col.ty {
                ColumnType::Varchar(Some(n)) | ColumnType::Char(n) => {
                    take(values::bounded_text(v, n as usize, &col.ty))?
                }
                _ => v,
            };
            check_text(col, stored)?;
            put_i32(out, stored.len() as i32);
            out.extend_from_slice(stored.as_bytes());
        }
        ColumnType::Boolean => {
            let b = take(values::boolean(v))?;
            put_i32(out, 1);
            out.push(b as u8);
        }
        ColumnType::Date => {
            let days = take(values::date(v))?;
            put_i32(out, 4);
            put_i32(out, days);
        }
        ColumnType::Timestamp | ColumnType::Timestamptz => {
            let micros = take(values::timestamp(v, tz, col.ty == ColumnType::Timestamptz))?;
            put_i32(out, 8);
            put_i64(out, micros);
        }
        ColumnType::Uuid => {
            let u = take(values::uuid(v))?;
            put_i32(out, 16);
            out.extend_from_slice(&u);
        }
        ColumnType::Jsonb => {
            take(values::json(v))?;
            // jsonb's binary form is a version byte and the text, which the
            // server parses itself: what it stores is its own reading.
            put_i32(out, v.len() as i32 + 1);
            out.push(1);
            out.extend_from_slice(v.as_bytes());
        }
        ColumnType::Bytea => {
            let len_at = out.len();
            put_i32(out, 0);
            take(values::bytea(v, out))?;
            let len = (out.len() - len_at - 4) as i32;
            out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    Ok(())
}

/// A value read from a typed (columnar) input, already in the unit the
/// column stores: no text is parsed for it.
#[derive(Debug, Clone, Copy)]
pub enum Typed<'a> {
    Int(i128),
    Float32(f32),
    Float64(f64),
    Bool(bool),
    /// Days since 2000-01-01.
    Days(i64),
    /// Microseconds since 2000-01-01.
    Micros(i64),
    Bytes(&'a [u8]),
}

/// PostgreSQL's `date` range in days since 2000-01-01: from 4714-11-24 BC
/// to 5874897-12-31.
const PG_DAYS: std::ops::Range<i64> = -2_451_545..2_145_031_949;
/// PostgreSQL's `timestamp` range in microseconds since 2000-01-01: from
/// 4714-11-24 BC to 294276-12-31.
const PG_MICROS: std::ops::Range<i64> = -211_813_488_000_000_000..9_223_371_331_200_000_000;

/// The text a number is shown as in a reject, and parsed from where a
/// column takes numbers as text (`numeric`): PostgreSQL's rendering of
/// the same value (shortest round-trip digits, no exponent).
pub fn number_text(v: Typed) -> String {
    let float = |f: f64, shown: String| {
        if f.is_nan() {
            "NaN".to_string()
        } else if f.is_infinite() {
            if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
        } else {
            shown
        }
    };
    match v {
        Typed::Int(n) => n.to_string(),
        Typed::Float32(f) => float(f as f64, f.to_string()),
        Typed::Float64(f) => float(f, f.to_string()),
        _ => String::new(),
    }
}

/// Encodes a decimal (unscaled integer and scale) into a `numeric` column
/// without its text, when the value is plain: true if written. Anything
/// else — not a numeric column, too many digits, out of the column's
/// precision or against a rule — is left to the text path (nothing
/// written), which stores it or says why not, as for a CSV field.
pub fn encode_decimal(col: &Column, unscaled: i128, scale: i8, out: &mut Vec<u8>) -> bool {
    let ColumnType::Numeric(typmod) = col.ty else {
        return false;
    };
    let len_at = out.len();
    put_i32(out, 0);
    match values::numeric_scaled(unscaled, scale, typmod, out) {
        // The text only names the value in a refusal, which the text path
        // gives.
        Some(Ok(approx)) if check_range(&col.rules, approx, "").is_ok() => {
            let len = (out.len() - len_at - 4) as i32;
            out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
            true
        }
        _ => {
            out.truncate(len_at);
            false
        }
    }
}

/// Encodes one non-NULL typed value of `col` (length word and bytes), or
/// says why not: out of the column type's range, or against a rule.
/// The caller checked that the input type suits the column (see
/// [`crate::columnar`]; numbers into `numeric` go as [`number_text`]); a
/// pairing it did not is refused here too.
pub fn encode_typed(col: &Column, v: Typed, out: &mut Vec<u8>) -> Result<(), FieldError> {
    let out_of_range = |ty: &str| {
        FieldError::Invalid(format!(
            "{} is out of range for type {ty}",
            show(&number_text(v))
        ))
    };
    let mismatch = || {
        FieldError::Invalid(format!(
            "a {v:?} value cannot be stored in a {} column",
            col.ty
        ))
    };
    let ranged = |n: f64| -> Result<(), FieldError> {
        let r = &col.rules;
        // The value's text is only the refusal's: made when it refuses.
        if (r.min.is_some() || r.max.is_some() || r.one_of.is_some())
            && check_range(r, n, "").is_err()
        {
            check_range(r, n, &number_text(v))?;
        }
        Ok(())
    };
    match (col.ty, v) {
        (ColumnType::SmallInt, Typed::Int(n)) => {
            let n = i16::try_from(n).map_err(|_| out_of_range("smallint"))?;
            ranged(n as f64)?;
            put_i32(out, 2);
            put_i16(out, n);
        }
        (ColumnType::Int, Typed::Int(n)) => {
            let n = i32::try_from(n).map_err(|_| out_of_range("integer"))?;
            ranged(n as f64)?;
            put_i32(out, 4);
            put_i32(out, n);
        }
        (ColumnType::BigInt, Typed::Int(n)) => {
            let n = i64::try_from(n).map_err(|_| out_of_range("bigint"))?;
            ranged(n as f64)?;
            put_i32(out, 8);
            put_i64(out, n);
        }
        (ColumnType::Real, Typed::Int(_) | Typed::Float32(_) | Typed::Float64(_)) => {
            let f = match v {
                Typed::Float32(f) => f,
                Typed::Float64(f) => {
                    let narrow = f as f32;
                    // float4 refuses what it cannot hold, as for text.
                    if (narrow.is_infinite() && f.is_finite()) || (narrow == 0.0 && f != 0.0) {
                        return Err(out_of_range("real"));
                    }
                    narrow
                }
                Typed::Int(n) => n as f32,
                _ => return Err(mismatch()),
            };
            ranged(f as f64)?;
            put_i32(out, 4);
            out.extend_from_slice(&f.to_be_bytes());
        }
        (ColumnType::Double, Typed::Int(_) | Typed::Float32(_) | Typed::Float64(_)) => {
            let f = match v {
                Typed::Float64(f) => f,
                Typed::Float32(f) => f as f64,
                Typed::Int(n) => n as f64,
                _ => return Err(mismatch()),
            };
            ranged(f)?;
            put_i32(out, 8);
            out.extend_from_slice(&f.to_be_bytes());
        }
        (ColumnType::Boolean, Typed::Bool(b)) => {
            put_i32(out, 1);
            out.push(b as u8);
        }
        (ColumnType::Date, Typed::Days(d)) => {
            if !PG_DAYS.contains(&d) {
                return Err(FieldError::Invalid("date out of range".into()));
            }
            put_i32(out, 4);
            put_i32(out, d as i32);
        }
        (ColumnType::Timestamp | ColumnType::Timestamptz, Typed::Micros(m)) => {
            if !PG_MICROS.contains(&m) {
                return Err(FieldError::Invalid("timestamp out of range".into()));
            }
            put_i32(out, 8);
            put_i64(out, m);
        }
        (ColumnType::Bytea, Typed::Bytes(b)) => {
            put_i32(out, b.len() as i32);
            out.extend_from_slice(b);
        }
        (ColumnType::Uuid, Typed::Bytes(b)) if b.len() == 16 => {
            put_i32(out, 16);
            out.extend_from_slice(b);
        }
        _ => return Err(mismatch()),
    }
    Ok(())
}

/// The model's rules for a value the server read (deferred by the fast
/// path): `text` is the server's rendering of what it stores.
pub fn check_server_value(col: &Column, original: &str, text: &str) -> Result<(), String> {
    if col.ty.is_numeric() {
        let n: f64 = text.parse().unwrap_or(f64::NAN);
        check_range(&col.rules, n, original)?;
    }
    Ok(())
}

fn check_range(rules: &Rules, n: f64, v: &str) -> Result<(), String> {
    if let Some(min) = rules.min
        && n < min
    {
        return Err(format!("{} is below the minimum {min}", show(v)));
    }
    if let Some(max) = rules.max
        && n > max
    {
        return Err(format!("{} is above the maximum {max}", show(v)));
    }
    if let Some(set) = &rules.one_of
        && !set.iter().any(|s| s.parse::<f64>().ok() == Some(n))
    {
        return Err(format!("{} is not one of {}", show(v), set.join(", ")));
    }
    Ok(())
}

fn check_text(col: &Column, v: &str) -> Result<(), String> {
    let rules = &col.rules;
    let limit = match col.ty {
        ColumnType::Varchar(Some(n)) | ColumnType::Char(n) => Some(n as usize),
        _ => None,
    };
    if limit.is_some() || rules.min_length.is_some() || rules.max_length.is_some() {
        let chars = if v.is_ascii() {
            v.len()
        } else {
            v.chars().count()
        };
        if let Some(n) = limit
            && chars > n
        {
            return Err(format!(
                "{} is {chars} characters, longer than {}",
                show(v),
                col.ty
            ));
        }
        if let Some(min) = rules.min_length
            && chars < min
        {
            return Err(format!("{} is shorter than {min} characters", show(v)));
        }
        if let Some(max) = rules.max_length
            && chars > max
        {
            return Err(format!(
                "{} is {chars} characters, longer than {max}",
                show(v)
            ));
        }
    }
    if let Some(set) = &rules.one_of
        && !set.iter().any(|s| s == v)
    {
        return Err(format!("{} is not one of {}", show(v), set.join(", ")));
    }
    if let Some(f) = rules.format {
        f.check(v).map_err(|why| format!("{} {why}", show(v)))?;
    }
    if let Some(p) = &rules.pattern
        && !p.is_match(v)
    {
        return Err(format!(
            "{} does not match the pattern {}",
            show(v),
            p.as_str()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Rules;

    fn column(ty: &str) -> Column {
        Column {
            name: "c".into(),
            ty: ColumnType::parse(ty).unwrap(),
            required: false,
            rules: Rules::default(),
            source: None,
        }
    }

    #[test]
    fn fields_defer_what_the_fast_path_does_not_know() {
        let utc = TimeZone::parse("UTC").unwrap();
        let mut out = Vec::new();
        for (ty, v) in [
            ("date", "Jan 5 2020"),
            ("double precision", "0x1p3"),
            ("numeric", "NaN"),
            ("integer", "0x1F"),
        ] {
            assert_eq!(
                encode_field(&column(ty), &utc, v, &mut out),
                Err(FieldError::Defer),
                "{ty} {v}"
            );
        }
        assert!(matches!(
            encode_field(&column("numeric"), &utc, "1e-9223372036854775808", &mut out),
            Err(FieldError::Defer)
        ));
    }

    #[test]
    fn char_and_varchar_store_the_cut_value() {
        let utc = TimeZone::parse("UTC").unwrap();
        let mut out = Vec::new();
        encode_field(&column("varchar(5)"), &utc, "abc   ", &mut out).unwrap();
        assert_eq!(out, b"\0\0\0\x05abc  ");
    }
}
