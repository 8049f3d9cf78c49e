//! A row as PostgreSQL's `row_to_json` prints it, made from the row's
//! binary COPY form — so that the cache can hold what a load wrote
//! without reading it back. Byte for byte what the server prints in a
//! session with `TimeZone` UTC, `extra_float_digits` 1 and `bytea_output`
//! hex (the settings every cache read of Nexus pins):
//! `tests/row_json_differential.rs` holds it to the server over generated
//! values of every type.
//!
//! Each type follows its output function as `row_to_json` uses it
//! (PostgreSQL's `json.c`): numbers bare unless they are not JSON numbers
//! (`NaN`, `Infinity`), dates and timestamps in XSD form, jsonb as
//! `jsonb_out` prints it (keys ordered by length then bytes, the last of
//! duplicates kept, `", "` and `": "` between members), everything else
//! as an escaped string.

use crate::types::ColumnType;
use crate::values::{self, Verdict};

/// Why a row's JSON could not be made; the cache then drops the key
/// instead of writing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("row JSON: {0}")]
pub struct Unwritable(pub &'static str);

/// One column of the table, in the table's order.
#[derive(Debug, Clone)]
struct JsonColumn {
    /// `"name":` with its leading `{` or `,`.
    head: Vec<u8>,
    ty: ColumnType,
    /// Its field in the COPY row; `None`: not loaded, so NULL.
    field: Option<usize>,
}

/// How to print a table's rows from their COPY form.
#[derive(Debug, Clone)]
pub struct RowJson {
    columns: Vec<JsonColumn>,
    /// Fields a COPY row has.
    fields: usize,
}

impl RowJson {
    /// For a table's columns in its order: name, type and field in the
    /// COPY row (`None` for a column the load leaves NULL).
    pub fn new<'a>(
        columns: impl IntoIterator<Item = (&'a str, ColumnType, Option<usize>)>,
    ) -> RowJson {
        let mut fields = 0;
        let columns = columns
            .into_iter()
            .enumerate()
            .map(|(i, (name, ty, field))| {
                let mut head = vec![if i == 0 { b'{' } else { b',' }];
                escape(name.as_bytes(), &mut head);
                head.push(b':');
                if let Some(f) = field {
                    fields = fields.max(f + 1);
                }
                JsonColumn { head, ty, field }
            })
            .collect();
        RowJson { columns, fields }
    }

    /// Appends the JSON of one binary COPY row (its field count, then each
    /// field's length and bytes; fields beyond the columns' are ignored) to
    /// `out`; on an error `out` holds a partial row the caller drops.
    pub fn write(&self, row: &[u8], out: &mut Vec<u8>) -> Result<(), Unwritable> {
        let mut fields: [Option<&[u8]>; 64] = [None; 64];
        let mut more: Vec<Option<&[u8]>> = Vec::new();
        let slots: &mut [Option<&[u8]>] = if self.fields <= fields.len() {
            &mut fields[..self.fields]
        } else {
            more.resize(self.fields, None);
            &mut more
        };
        split_fields(row, slots)?;
        for c in &self.columns {
            out.extend_from_slice(&c.head);
            match c.field.and_then(|f| slots[f]) {
                None => out.extend_from_slice(b"null"),
                Some(v) => value(c.ty, v, out)?,
            }
        }
        if self.columns.is_empty() {
            out.push(b'{');
        }
        out.push(b'}');
        Ok(())
    }
}

/// The fields of a binary COPY row into `slots` (`None` for NULL).
fn split_fields<'a>(row: &'a [u8], slots: &mut [Option<&'a [u8]>]) -> Result<(), Unwritable> {
    let bad = Unwritable("a malformed COPY row");
    let count = row.get(..2).ok_or(bad.clone())?;
    // A row may carry more fields (an upsert's line number) after these.
    if (i16::from_be_bytes([count[0], count[1]]) as usize) < slots.len() {
        return Err(Unwritable("a COPY row with fewer fields"));
    }
    let mut at = 2usize;
    for slot in slots.iter_mut() {
        let len = row.get(at..at + 4).ok_or(bad.clone())?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        *slot = if len < 0 {
            None
        } else {
            let v = row.get(at..at + len as usize).ok_or(bad.clone())?;
            at += len as usize;
            Some(v)
        };
    }
    Ok(())
}

fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], Unwritable> {
    v.try_into()
        .map_err(|_| Unwritable("a value of the wrong size"))
}

/// One non-NULL value in its binary form.
fn value(ty: ColumnType, v: &[u8], out: &mut Vec<u8>) -> Result<(), Unwritable> {
    match ty {
        ColumnType::Boolean => out.extend_from_slice(if fixed::<1>(v)?[0] != 0 {
            b"true"
        } else {
            b"false"
        }),
        ColumnType::SmallInt => integer(i16::from_be_bytes(fixed(v)?).into(), out),
        ColumnType::Int => integer(i32::from_be_bytes(fixed(v)?).into(), out),
        ColumnType::BigInt => integer(i64::from_be_bytes(fixed(v)?), out),
        ColumnType::Real => float(f32::from_be_bytes(fixed(v)?), out)?,
        ColumnType::Double => float(f64::from_be_bytes(fixed(v)?), out)?,
        ColumnType::Numeric(typmod) => {
            let start = out.len();
            numeric(v, typmod.map(|(_, s)| s), out)?;
            if !out[start..].last().is_some_and(u8::is_ascii_digit) {
                // NaN and the infinities are not JSON numbers.
                let word = out.split_off(start);
                escape(&word, out);
            }
        }
        ColumnType::Text | ColumnType::Varchar(_) => {
            std::str::from_utf8(v).map_err(|_| Unwritable("text that is not UTF-8"))?;
            escape(v, out);
        }
        ColumnType::Char(n) => {
            let s = std::str::from_utf8(v).map_err(|_| Unwritable("text that is not UTF-8"))?;
            let chars = s.chars().count();
            if chars > n.max(1) as usize {
                return Err(Unwritable("a char(n) value longer than n"));
            }
            // Blank-padded to n characters, inside the quotes.
            escape(v, out);
            out.pop();
            out.resize(out.len() + n.max(1) as usize - chars, b' ');
            out.push(b'"');
        }
        ColumnType::Uuid => {
            let u: [u8; 16] = fixed(v)?;
            out.push(b'"');
            for (i, b) in u.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push(b'-');
                }
                hex_byte(*b, out);
            }
            out.push(b'"');
        }
        ColumnType::Bytea => {
            out.extend_from_slice(b"\"\\\\x");
            for b in v {
                hex_byte(*b, out);
            }
            out.push(b'"');
        }
        ColumnType::Date => {
            out.push(b'"');
            date(i32::from_be_bytes(fixed(v)?), out)?;
            out.push(b'"');
        }
        ColumnType::Timestamp | ColumnType::Timestamptz => {
            out.push(b'"');
            timestamp(
                i64::from_be_bytes(fixed(v)?),
                ty == ColumnType::Timestamptz,
                out,
            )?;
            out.push(b'"');
        }
        ColumnType::Jsonb => {
            let (&version, text) = v.split_first().ok_or(Unwritable("an empty jsonb value"))?;
            if version != 1 {
                return Err(Unwritable("a jsonb value of an unknown version"));
            }
            let text =
                std::str::from_utf8(text).map_err(|_| Unwritable("jsonb that is not UTF-8"))?;
            jsonb(text, out)?;
        }
    }
    Ok(())
}

fn integer(n: i64, out: &mut Vec<u8>) {
    if n < 0 {
        out.push(b'-');
    }
    padded(n.unsigned_abs(), 1, out);
}

fn hex_byte(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(HEX[(b >> 4) as usize]);
    out.push(HEX[(b & 15) as usize]);
}

/// PostgreSQL's `escape_json`: a quoted string, with `"`, `\` and the
/// control characters escaped, all else as it is.
pub fn escape(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut from = 0;
    for (i, &c) in s.iter().enumerate() {
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&s[from..i]);
        from = i + 1;
        if short == 0 {
            out.extend_from_slice(b"\\u00");
            hex_byte(c, out);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
    }
    out.extend_from_slice(&s[from..]);
    out.push(b'"');
}

/// What printing a float needs of its type.
trait PgFloat: Copy + PartialEq + std::fmt::LowerExp + std::str::FromStr {
    /// Decimal exponents below this (and from -4) print in fixed point.
    const FIXED_BELOW: i32;
    /// Digits that always read back exactly.
    const MAX_DIGITS: usize;
    fn is_finite(self) -> bool;
    fn is_nan(self) -> bool;
    fn is_sign_negative(self) -> bool;
    /// A finite value as `m × 2^e`, `m` with its implicit bit, and
    /// whether the float below it is half as far as the one above.
    fn binary(self) -> Binary;
}

impl PgFloat for f32 {
    const FIXED_BELOW: i32 = 6;
    const MAX_DIGITS: usize = 9;
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn is_sign_negative(self) -> bool {
        f32::is_sign_negative(self)
    }
    fn binary(self) -> Binary {
        let bits = self.to_bits() as u64;
        binary_parts(bits & 0x7F_FFFF, (bits >> 23) & 0xFF, 23, 150)
    }
}

impl PgFloat for f64 {
    const FIXED_BELOW: i32 = 15;
    const MAX_DIGITS: usize = 17;
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn is_sign_negative(self) -> bool {
        f64::is_sign_negative(self)
    }
    fn binary(self) -> Binary {
        let bits = self.to_bits();
        binary_parts(bits & 0xF_FFFF_FFFF_FFFF, (bits >> 52) & 0x7FF, 52, 1075)
    }
}

/// A finite float as `m × 2^e`.
struct Binary {
    m: u64,
    e: i32,
    /// A power of two above the smallest normal: the float below is
    /// nearer than the one above.
    narrow_below: bool,
}

fn binary_parts(fraction: u64, biased: u64, fraction_bits: u32, bias: i32) -> Binary {
    if biased == 0 {
        Binary {
            m: fraction,
            e: 1 - bias,
            narrow_below: false,
        }
    } else {
        Binary {
            m: fraction | 1 << fraction_bits,
            e: biased as i32 - bias,
            narrow_below: fraction == 0 && biased > 1,
        }
    }
}

/// Whether the decimal `digits × 10^exp10` is exactly one of the two
/// points halfway between `m × 2^e` and its neighbours.
fn on_rounding_edge(digits: &[u8], exp10: i32, b: Binary) -> bool {
    let mut d: u64 = digits.iter().fold(0u64, |acc, c| {
        acc.saturating_mul(10).saturating_add((c - b'0') as u64)
    });
    if d == 0 {
        return false;
    }
    let (mut twos, mut fives) = (0i32, 0i32);
    while d.is_multiple_of(2) {
        d /= 2;
        twos += 1;
    }
    while d.is_multiple_of(5) {
        d /= 5;
        fives += 1;
    }
    // digits × 10^exp10 = d × 2^(twos + exp10) × 5^(fives + exp10), d odd
    // and prime to 5; an edge is N × 2^k with N odd.
    let (two_exp, five_exp) = (twos + exp10, fives + exp10);
    if !(0..=27).contains(&five_exp) {
        return false;
    }
    let n = (d as u128) * 5u128.pow(five_exp as u32);
    let (m, e) = (b.m as u128, b.e);
    let below = if b.narrow_below {
        (4 * m - 1, e - 2)
    } else {
        (2 * m - 1, e - 1)
    };
    [(2 * m + 1, e - 1), below]
        .iter()
        .any(|&(en, ek)| en == n && ek == two_exp)
}

/// A float's digits and decimal exponent (of its first digit) as
/// `float4out`/`float8out` choose them with `extra_float_digits` 1
/// (PostgreSQL's Ryu): the fewest digits that read back as the float,
/// nearest to it (ties to even) — never a decimal exactly halfway to a
/// neighbouring float, which a reader rounding half to even would still
/// read back, but Ryu does not take.
fn float_digits<F: PgFloat>(f: F) -> Result<(Vec<u8>, i32), Unwritable> {
    // The shortest form's digit count is where the search starts.
    let shortest = format!("{f:e}");
    let mantissa = shortest.split('e').next().unwrap_or_default();
    let first = mantissa.bytes().filter(u8::is_ascii_digit).count();
    for len in first.max(1)..=F::MAX_DIGITS {
        let text = format!("{:.*e}", len - 1, f);
        let (mantissa, exp) = text
            .split_once('e')
            .ok_or(Unwritable("a float Rust does not print"))?;
        let exp: i32 = exp
            .parse()
            .map_err(|_| Unwritable("a float Rust does not print"))?;
        let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
        if text.parse::<F>().ok() != Some(f) {
            continue;
        }
        if on_rounding_edge(&digits, exp - (digits.len() as i32 - 1), f.binary()) {
            continue;
        }
        return Ok((digits, exp));
    }
    Err(Unwritable("a float without digits that read back"))
}

/// `float4out`/`float8out` with `extra_float_digits` 1: fixed point for
/// decimal exponents from -4 up to `F::FIXED_BELOW` (exclusive), else
/// `d.ddde±XX`; NaN and the infinities are strings in JSON.
fn float<F: PgFloat>(f: F, out: &mut Vec<u8>) -> Result<(), Unwritable> {
    if !f.is_finite() {
        out.extend_from_slice(if f.is_nan() {
            b"\"NaN\""
        } else if f.is_sign_negative() {
            b"\"-Infinity\""
        } else {
            b"\"Infinity\""
        });
        return Ok(());
    }
    if f.is_sign_negative() {
        out.push(b'-');
    }
    let (digits, exp) = float_digits(f)?;
    let digits: Vec<u8> = {
        // Trailing zeros of the mantissa are no digits of Ryu's.
        let keep = digits.iter().rposition(|d| *d != b'0').map_or(0, |i| i + 1);
        digits[..keep].to_vec()
    };
    if digits.is_empty() {
        out.push(b'0');
        return Ok(());
    }
    let n = digits.len() as i32;
    if (-4..F::FIXED_BELOW).contains(&exp) {
        if exp < 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(&digits);
        } else if n <= exp + 1 {
            out.extend_from_slice(&digits);
            out.extend(std::iter::repeat_n(b'0', (exp + 1 - n) as usize));
        } else {
            out.extend_from_slice(&digits[..(exp + 1) as usize]);
            out.push(b'.');
            out.extend_from_slice(&digits[(exp + 1) as usize..]);
        }
        return Ok(());
    }
    out.push(digits[0]);
    if n > 1 {
        out.push(b'.');
        out.extend_from_slice(&digits[1..]);
    }
    out.push(b'e');
    out.push(if exp < 0 { b'-' } else { b'+' });
    let e = exp.unsigned_abs();
    if e < 10 {
        out.push(b'0');
    }
    out.extend_from_slice(e.to_string().as_bytes());
    Ok(())
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// `numeric_out` of a binary numeric (as `numeric_recv` keeps it: digits
/// beyond its display scale cut off). A column with a scale stores
/// values at that scale; a value at another is not one this prints.
fn numeric(v: &[u8], scale: Option<u16>, out: &mut Vec<u8>) -> Result<(), Unwritable> {
    let word = |i: usize| -> Result<u16, Unwritable> {
        let b = v
            .get(2 * i..2 * i + 2)
            .ok_or(Unwritable("a malformed numeric"))?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = word(0)? as usize;
    let weight = word(1)? as i16 as i32;
    let sign = word(2)?;
    let dscale = word(3)?;
    match sign {
        NUMERIC_NAN => {
            out.extend_from_slice(b"NaN");
            return Ok(());
        }
        NUMERIC_PINF => {
            out.extend_from_slice(b"Infinity");
            return Ok(());
        }
        NUMERIC_NINF => {
            out.extend_from_slice(b"-Infinity");
            return Ok(());
        }
        0 | NUMERIC_NEG => {}
        _ => return Err(Unwritable("a numeric of an unknown sign")),
    }
    if v.len() != 8 + 2 * ndigits || dscale > 0x3FFF {
        return Err(Unwritable("a malformed numeric"));
    }
    if scale.is_some_and(|s| s != dscale) {
        return Err(Unwritable("a numeric at another scale than its column's"));
    }
    let digit = |i: i32| -> Result<u16, Unwritable> {
        if i < 0 || i as usize >= ndigits {
            return Ok(0);
        }
        let d = word(4 + i as usize)?;
        if d >= 10_000 {
            return Err(Unwritable("a malformed numeric"));
        }
        Ok(d)
    };
    let mut text = Vec::with_capacity(16 + dscale as usize);
    // The integer part: digit groups 0..=weight.
    if weight < 0 {
        text.push(b'0');
    } else {
        let mut started = false;
        for g in 0..=weight {
            let d = digit(g)?;
            let group = [d / 1000, d / 100 % 10, d / 10 % 10, d % 10];
            for x in group {
                if started || x != 0 {
                    started = true;
                    text.push(b'0' + x as u8);
                }
            }
        }
        if !started {
            text.push(b'0');
        }
    }
    if dscale > 0 {
        text.push(b'.');
        let mut left = dscale as usize;
        let mut g = weight + 1;
        while left > 0 {
            let d = digit(g)?;
            for x in [d / 1000, d / 100 % 10, d / 10 % 10, d % 10] {
                if left == 0 {
                    break;
                }
                text.push(b'0' + x as u8);
                left -= 1;
            }
            g += 1;
        }
    }
    // What the display scale cuts off is gone: a value that prints as
    // zero is zero, without a sign.
    if sign == NUMERIC_NEG && text.iter().any(|c| (b'1'..=b'9').contains(c)) {
        out.push(b'-');
    }
    out.extend_from_slice(&text);
    Ok(())
}

/// PostgreSQL's `j2date`: a Julian day to a proleptic Gregorian date.
fn j2date(jd: u32) -> (i32, u32, u32) {
    let mut julian = jd as u64 + 32044;
    let mut quad = julian / 146_097;
    let extra = (julian - quad * 146_097) * 4 + 3;
    julian += 60 + quad * 3 + extra / 146_097;
    quad = julian / 1461;
    julian -= quad * 1461;
    let mut y = julian * 4 / 1461;
    julian = if y != 0 {
        (julian + 305) % 365
    } else {
        (julian + 306) % 366
    } + 123;
    y += quad * 4;
    let year = y as i64 - 4800;
    let quad = julian * 2141 / 65536;
    let day = julian - 7834 * quad / 256;
    let month = (quad + 10) % 12 + 1;
    (year as i32, month as u32, day as u32)
}

/// The Julian day of 2000-01-01, PostgreSQL's epoch.
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
const USECS_PER_DAY: i64 = 86_400_000_000;

/// `YYYY-MM-DD`, the year at least four digits; years before 1 as
/// `-(year - 1)`, the caller adding ` BC`.
fn ymd(year: i32, month: u32, day: u32, out: &mut Vec<u8>) {
    let y = if year > 0 { year } else { 1 - year };
    padded(y as u64, 4, out);
    out.push(b'-');
    padded(month as u64, 2, out);
    out.push(b'-');
    padded(day as u64, 2, out);
}

/// `n` in decimal, zero-padded to at least `width` digits.
fn padded(n: u64, width: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - at;
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(len)));
    out.extend_from_slice(&digits[at..]);
}

fn date(days: i32, out: &mut Vec<u8>) -> Result<(), Unwritable> {
    match days {
        i32::MIN => out.extend_from_slice(b"-infinity"),
        i32::MAX => out.extend_from_slice(b"infinity"),
        _ => {
            let jd = u32::try_from(days as i64 + POSTGRES_EPOCH_JDATE)
                .map_err(|_| Unwritable("a date out of range"))?;
            let (year, month, day) = j2date(jd);
            ymd(year, month, day, out);
            if year <= 0 {
                out.extend_from_slice(b" BC");
            }
        }
    }
    Ok(())
}

fn timestamp(micros: i64, zoned: bool, out: &mut Vec<u8>) -> Result<(), Unwritable> {
    match micros {
        i64::MIN => {
            out.extend_from_slice(b"-infinity");
            return Ok(());
        }
        i64::MAX => {
            out.extend_from_slice(b"infinity");
            return Ok(());
        }
        _ => {}
    }
    let (mut day, mut time) = (micros / USECS_PER_DAY, micros % USECS_PER_DAY);
    if time < 0 {
        time += USECS_PER_DAY;
        day -= 1;
    }
    let jd = day + POSTGRES_EPOCH_JDATE;
    if !(0..=i32::MAX as i64).contains(&jd) {
        return Err(Unwritable("a timestamp out of range"));
    }
    let (year, month, mday) = j2date(jd as u32);
    ymd(year, month, mday, out);
    let secs = time / 1_000_000;
    let frac = time % 1_000_000;
    out.push(b'T');
    padded((secs / 3600) as u64, 2, out);
    out.push(b':');
    padded((secs / 60 % 60) as u64, 2, out);
    out.push(b':');
    padded((secs % 60) as u64, 2, out);
    if frac != 0 {
        out.push(b'.');
        let at = out.len();
        padded(frac as u64, 6, out);
        while out.last() == Some(&b'0') && out.len() > at {
            out.pop();
        }
    }
    if zoned {
        out.extend_from_slice(b"+00:00");
    }
    if year <= 0 {
        out.extend_from_slice(b" BC");
    }
    Ok(())
}

/// Nesting a jsonb value may have here; deeper ones are left to a read.
const JSONB_DEPTH: usize = 256;

/// `jsonb_out` of a value given as JSON text (as a load sends it, or as
/// the server prints it).
fn jsonb(text: &str, out: &mut Vec<u8>) -> Result<(), Unwritable> {
    let mut p = JsonReader {
        b: text.as_bytes(),
        i: 0,
    };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(Unwritable("text after a jsonb value"));
    }
    v.print(out);
    Ok(())
}

/// A parsed jsonb value: scalars already in their printed form.
enum Jv {
    Scalar(Vec<u8>),
    Array(Vec<Jv>),
    /// Keys unescaped, in jsonb's order, each once.
    Object(Vec<(Vec<u8>, Jv)>),
}

impl Jv {
    fn print(&self, out: &mut Vec<u8>) {
        match self {
            Jv::Scalar(s) => out.extend_from_slice(s),
            Jv::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    item.print(out);
                }
                out.push(b']');
            }
            Jv::Object(pairs) => {
                out.push(b'{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b", ");
                    }
                    escape(k, out);
                    out.extend_from_slice(b": ");
                    v.print(out);
                }
                out.push(b'}');
            }
        }
    }
}

struct JsonReader<'a> {
    b: &'a [u8],
    i: usize,
}

impl JsonReader<'_> {
    fn ws(&mut self) {
        while self
            .b
            .get(self.i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), Unwritable> {
        self.ws();
        if self.b.get(self.i) != Some(&c) {
            return Err(Unwritable("malformed jsonb"));
        }
        self.i += 1;
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Jv, Unwritable> {
        if depth > JSONB_DEPTH {
            return Err(Unwritable("jsonb nested too deeply"));
        }
        self.ws();
        let bad = Unwritable("malformed jsonb");
        match *self.b.get(self.i).ok_or(bad.clone())? {
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Jv::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Jv::Array(items));
                        }
                        _ => return Err(bad),
                    }
                }
            }
            b'{' => {
                self.i += 1;
                let mut pairs: Vec<(Vec<u8>, Jv)> = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Jv::Object(pairs));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.eat(b':')?;
                    pairs.push((key, self.value(depth + 1)?));
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        _ => return Err(bad),
                    }
                }
                // Shorter keys first, then by bytes; of equal keys the
                // last one written is kept.
                let mut order: Vec<usize> = (0..pairs.len()).collect();
                order.sort_by(|&a, &b| {
                    let (ka, kb) = (&pairs[a].0, &pairs[b].0);
                    (ka.len(), ka).cmp(&(kb.len(), kb)).then(b.cmp(&a))
                });
                let mut slots: Vec<Option<(Vec<u8>, Jv)>> = pairs.into_iter().map(Some).collect();
                let mut kept: Vec<(Vec<u8>, Jv)> = Vec::with_capacity(slots.len());
                for i in order {
                    if let Some(pair) = slots[i].take()
                        && kept.last().is_none_or(|(k, _)| *k != pair.0)
                    {
                        kept.push(pair);
                    }
                }
                Ok(Jv::Object(kept))
            }
            b'"' => {
                let s = self.string()?;
                let mut printed = Vec::with_capacity(s.len() + 2);
                escape(&s, &mut printed);
                Ok(Jv::Scalar(printed))
            }
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                while self
                    .b
                    .get(self.i)
                    .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.b[start..self.i]).map_err(|_| bad.clone())?;
                let mut binary = Vec::new();
                match values::numeric(text, None, &mut binary) {
                    Verdict::Value(_) => {}
                    _ => return Err(Unwritable("a jsonb number left to the server")),
                }
                let mut printed = Vec::new();
                numeric(&binary, None, &mut printed)?;
                Ok(Jv::Scalar(printed))
            }
            _ => {
                for word in [&b"true"[..], b"false", b"null"] {
                    if self.b[self.i..].starts_with(word) {
                        self.i += word.len();
                        return Ok(Jv::Scalar(word.to_vec()));
                    }
                }
                Err(bad)
            }
        }
    }

    /// A string's value, unescaped.
    fn string(&mut self) -> Result<Vec<u8>, Unwritable> {
        let bad = Unwritable("malformed jsonb string");
        if self.b.get(self.i) != Some(&b'"') {
            return Err(bad);
        }
        self.i += 1;
        let mut s = Vec::new();
        loop {
            let c = *self.b.get(self.i).ok_or(bad.clone())?;
            self.i += 1;
            match c {
                b'"' => return Ok(s),
                b'\\' => {
                    let e = *self.b.get(self.i).ok_or(bad.clone())?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => s.push(e),
                        b'b' => s.push(0x08),
                        b'f' => s.push(0x0c),
                        b'n' => s.push(b'\n'),
                        b'r' => s.push(b'\r'),
                        b't' => s.push(b'\t'),
                        b'u' => {
                            let mut u = self.hex4()?;
                            if (0xD800..0xDC00).contains(&u) {
                                if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err(bad);
                                }
                                self.i += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(bad);
                                }
                                u = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00);
                            }
                            let ch = char::from_u32(u)
                                .filter(|c| *c != '\0')
                                .ok_or(bad.clone())?;
                            let mut buf = [0u8; 4];
                            s.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(bad),
                    }
                }
                _ => s.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Unwritable> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or(Unwritable("malformed jsonb string"))?;
        self.i += 4;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> String {
        let mut b = Vec::new();
        let mut out = Vec::new();
        match values::numeric(text, None, &mut b) {
            Verdict::Value(_) => numeric(&b, None, &mut out).unwrap(),
            _ => panic!("{text}"),
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_as_numeric_out_prints_them() {
        assert_eq!(num("0"), "0");
        assert_eq!(num("-0.00"), "0.00");
        assert_eq!(num("1e2"), "100");
        assert_eq!(num("1.50"), "1.50");
        assert_eq!(num("-12345.6789"), "-12345.6789");
        assert_eq!(num("0.0001"), "0.0001");
        assert_eq!(num("100000000"), "100000000");
    }

    fn f8(v: f64) -> String {
        let mut out = Vec::new();
        match float(v, &mut out) {
            Ok(()) => String::from_utf8(out).unwrap(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn floats_as_float8out_prints_them() {
        assert_eq!(f8(0.0), "0");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(1.5), "1.5");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(1e14), "100000000000000");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001), "1e-05");
        assert_eq!(f8(1.2345e-300), "1.2345e-300");
        assert_eq!(f8(f64::NAN), "\"NaN\"");
        assert_eq!(f8(f64::NEG_INFINITY), "\"-Infinity\"");
        // -1.28666e21 is halfway to the next float: Ryu takes 17 digits.
        assert_eq!(f8(-1.28666e21), "-1.2866599999999999e+21");
        let mut out = Vec::new();
        float(4_460_000_256f32, &mut out).unwrap();
        assert_eq!(out, b"4.4600003e+09");
        out.clear();
        float(25_540.562_5_f64 as f32, &mut out).unwrap();
        assert_eq!(out, b"25540.562", "ties to even");
    }

    #[test]
    fn jsonb_as_jsonb_out_prints_it() {
        let j = |t: &str| {
            let mut out = Vec::new();
            jsonb(t, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            j(r#"{"bb":1,"a":[1,2.50,{}],"bb":"x\u00e9\n"}"#),
            r#"{"a": [1, 2.50, {}], "bb": "xé\n"}"#
        );
        assert_eq!(j(" null "), "null");
        assert_eq!(j(r#""\ud83d\ude00""#), "\"😀\"");
    }

    #[test]
    fn dates_and_timestamps_in_xsd_form() {
        let d = |n: i32| {
            let mut out = Vec::new();
            date(n, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(d(0), "2000-01-01");
        assert_eq!(d(-730119), "0001-01-01");
        assert_eq!(d(-730120), "0001-12-31 BC");
        let t = |n: i64, z: bool| {
            let mut out = Vec::new();
            timestamp(n, z, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(t(1_500_000, true), "2000-01-01T00:00:01.5+00:00");
        assert_eq!(t(-1, false), "1999-12-31T23:59:59.999999");
    }
}
