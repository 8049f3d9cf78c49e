//! PostgreSQL's input functions, as far as the encoder's fast path knows
//! them exactly (README, "Values: exactly as PostgreSQL reads them"). Each
//! reader answers with a [`Verdict`]: the value PostgreSQL would store, a
//! refusal PostgreSQL would also make, or [`Verdict::Unsure`] for a form the
//! fast path does not fully know — the loader then asks the server's own
//! input function (`loaders/src/server_input.rs`: the server is the
//! reference). `tests/values_differential.rs` compares every
//! reader with the server over generated inputs.
//!
//! The readers follow PostgreSQL's source, not its documentation: `isspace`
//! is C's (it includes `\v` and `\f`, never a Unicode space), and a refusal
//! is only given where every PostgreSQL version refuses.

use chrono::{NaiveDate, Offset as _, TimeZone as _};

use crate::model::TimeZone;

/// What the fast path makes of one value.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<T> {
    /// PostgreSQL stores exactly this.
    Value(T),
    /// PostgreSQL refuses the value too; the reason.
    Invalid(String),
    /// Only the server can tell.
    Unsure,
}

/// C's `isspace` in the "C" locale, which PostgreSQL's input functions use.
#[inline]
pub fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Trims what C's `isspace` calls white space from both ends.
#[inline]
pub fn trim_c_space(v: &str) -> &str {
    let b = v.as_bytes();
    let start = b.iter().position(|c| !is_c_space(*c)).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !is_c_space(*c))
        .map_or(start, |e| e + 1);
    // Both ends are ASCII bytes next to char boundaries.
    &v[start..end]
}

/// Shortens a value for a reject reason.
pub fn show(v: &str) -> String {
    const MAX: usize = 60;
    if v.len() <= MAX {
        format!("\"{v}\"")
    } else {
        let mut end = MAX;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        format!("\"{}…\"", &v[..end])
    }
}

/// `int2in`/`int4in`/`int8in`: spaces, a sign, decimal digits. Other
/// spellings (`0x1F`, `1_000`, read since PostgreSQL 16) go to the server.
pub fn integer(v: &str, min: i64, max: i64, ty: &str) -> Verdict<i64> {
    let t = trim_c_space(v);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let mut n: i128 = 0;
        for b in digits.bytes() {
            n = n * 10 + (b - b'0') as i128;
            if n > i64::MAX as i128 + 1 {
                break;
            }
        }
        let n = if neg { -n } else { n };
        return if n < min as i128 || n > max as i128 {
            Verdict::Invalid(format!("{} is out of range for type {ty}", show(v)))
        } else {
            Verdict::Value(n as i64)
        };
    }
    let maybe = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-'));
    if maybe {
        Verdict::Unsure
    } else {
        Verdict::Invalid(format!("{} is not an integer", show(v)))
    }
}

/// The shape `[+-](digits[.digits] | .digits)[(e|E)[+-]digits]`, which
/// PostgreSQL's float and numeric readers and Rust's agree on.
#[derive(Debug, Clone, Copy)]
struct Decimal<'a> {
    neg: bool,
    int: &'a [u8],
    frac: &'a [u8],
    /// The exponent's text (sign included), empty without one.
    exp: &'a str,
}

impl Decimal<'_> {
    fn read(t: &str) -> Option<Decimal<'_>> {
        let b = t.as_bytes();
        let (neg, mut i) = match b.first()? {
            b'-' => (true, 1),
            b'+' => (false, 1),
            _ => (false, 0),
        };
        let int_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int = &b[int_start..i];
        let mut frac: &[u8] = &[];
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac = &b[s..i];
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp = "";
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            let s = i + 1;
            let mut j = s;
            if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                j += 1;
            }
            let d = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j == d {
                return None;
            }
            exp = &t[s..j];
            i = j;
        }
        (i == b.len()).then_some(Decimal {
            neg,
            int,
            frac,
            exp,
        })
    }

    fn nonzero(&self) -> bool {
        self.int.iter().chain(self.frac).any(|d| *d != b'0')
    }
}

/// Text that no numeric reader of any PostgreSQL version takes: empty, or
/// with a character outside letters, digits and `+-._()`.
fn surely_not_a_number(t: &str) -> bool {
    t.is_empty()
        || !t.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_' | b'(' | b')')
        })
}

/// `float8in` (`strtod`): the decimal shape is read here, correctly rounded
/// like glibc; an overflow or an underflow to zero is refused as the server
/// refuses it. `NaN`, `Infinity`, hex floats go to the server.
pub fn double(v: &str) -> Verdict<f64> {
    float(v, "double precision")
}

/// `float4in` (`strtof`): read straight to `f32`, never through `f64`
/// (rounding twice can differ).
pub fn real(v: &str) -> Verdict<f32> {
    float(v, "real")
}

fn float<F: std::str::FromStr + Copy + Into<f64>>(v: &str, ty: &str) -> Verdict<F> {
    let t = trim_c_space(v);
    match Decimal::read(t) {
        Some(d) => match t.parse::<F>() {
            Ok(f) => {
                let x: f64 = f.into();
                if x.is_infinite() || (x == 0.0 && d.nonzero()) {
                    Verdict::Invalid(format!("{} is out of range for type {ty}", show(v)))
                } else {
                    Verdict::Value(f)
                }
            }
            Err(_) => Verdict::Unsure,
        },
        None if surely_not_a_number(t) => Verdict::Invalid(format!("{} is not a number", show(v))),
        None => Verdict::Unsure,
    }
}

/// Digits and exponents beyond these bounds go to the server, which knows
/// numeric's own limits; within them every value is representable.
const NUMERIC_FAST_DIGITS: usize = 1000;
const NUMERIC_MAX_EXPONENT: i64 = 1000;

/// `numeric_in` with the column's type modifier: writes PostgreSQL's binary
/// numeric (base-10000 digits) into `out`, rounded to the scale half away
/// from zero and checked against the precision as `apply_typmod` does.
/// Returns the value as `f64` for range rules.
pub fn numeric(v: &str, typmod: Option<(u16, u16)>, out: &mut Vec<u8>) -> Verdict<f64> {
    let t = trim_c_space(v);
    let Some(d) = Decimal::read(t) else {
        return if surely_not_a_number(t) {
            Verdict::Invalid(format!("{} is not a number", show(v)))
        } else {
            Verdict::Unsure
        };
    };
    let overflow = |(p, s): (u16, u16)| {
        Verdict::Invalid(format!(
            "{} does not fit numeric({p},{s}): at most {} digits before the decimal point",
            show(v),
            p - s
        ))
    };
    if d.exp.is_empty()
        && let Some(r) = plain_decimal(&d, typmod, out)
    {
        return match r {
            Ok(f) => Verdict::Value(f),
            Err(pm) => overflow(pm),
        };
    }
    if d.int.len() + d.frac.len() > NUMERIC_FAST_DIGITS || d.exp.len() > 6 {
        return Verdict::Unsure;
    }
    let exp: i64 = if d.exp.is_empty() {
        0
    } else {
        match d.exp.parse() {
            Ok(e) => e,
            Err(_) => return Verdict::Unsure,
        }
    };
    if exp.abs() > NUMERIC_MAX_EXPONENT {
        return Verdict::Unsure;
    }
    // Decimal digits and the position of the point among them; both are
    // bounded by the checks above (≤ 3,000 digits).
    let mut ds: Vec<u8> = d.int.iter().chain(d.frac).map(|c| c - b'0').collect();
    let mut point = d.int.len() as i64 + exp;
    // PostgreSQL's display scale: the fraction digits written, less the exponent.
    let written_scale = (d.frac.len() as i64 - exp).max(0) as usize;
    if point < 0 {
        let mut z = vec![0u8; (-point) as usize];
        z.extend_from_slice(&ds);
        ds = z;
        point = 0;
    }
    while (ds.len() as i64) < point {
        ds.push(0);
    }
    let mut point = point as usize;
    let dscale = match typmod {
        Some((_, s)) => s as usize,
        None => written_scale,
    };
    while ds.len() - point < dscale {
        ds.push(0);
    }
    let rounded = ds.len() - point > dscale;
    if rounded {
        let round_up = ds[point + dscale] >= 5;
        ds.truncate(point + dscale);
        if round_up {
            let mut k = ds.len();
            loop {
                if k == 0 {
                    ds.insert(0, 1);
                    point += 1;
                    break;
                }
                k -= 1;
                if ds[k] == 9 {
                    ds[k] = 0;
                } else {
                    ds[k] += 1;
                    break;
                }
            }
        }
    }
    let int_digits = ds[..point].iter().skip_while(|d| **d == 0).count();
    if let Some((p, s)) = typmod
        && int_digits > (p - s) as usize
    {
        return overflow((p, s));
    }
    // Group into base-10000 digits around the decimal point.
    let int_pad = (4 - point % 4) % 4;
    let mut padded = vec![0u8; int_pad];
    padded.extend_from_slice(&ds);
    while !(padded.len() - int_pad - point).is_multiple_of(4) {
        padded.push(0);
    }
    let mut groups: Vec<i16> = padded
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |a, d| a * 10 + *d as i16))
        .collect();
    let mut weight = ((point + int_pad) / 4) as i64 - 1;
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    weight -= lead as i64;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let zero = groups.is_empty();
    put_numeric_head(
        out,
        groups.len(),
        if zero { 0 } else { weight as i16 },
        d.neg && !zero,
        dscale,
    );
    for g in &groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    // Range rules judge the value stored, as a CHECK constraint would: the
    // text's own value unless the scale rounded it.
    let approx: f64 = if rounded {
        stored_approx(d.neg, &ds, point)
    } else {
        t.parse().unwrap_or(0.0)
    };
    Verdict::Value(approx)
}

/// The nearest `f64` to the decimal digits `ds` with the point after the
/// first `point` of them.
fn stored_approx(neg: bool, ds: &[u8], point: usize) -> f64 {
    let mut text = String::with_capacity(ds.len() + 2);
    if neg {
        text.push('-');
    }
    let (int, frac) = ds.split_at(point.min(ds.len()));
    // A leading and a trailing zero keep either side of the point non-empty.
    text.push('0');
    text.extend(int.iter().map(|d| char::from(b'0' + d)));
    text.push('.');
    text.extend(frac.iter().map(|d| char::from(b'0' + d)));
    text.push('0');
    text.parse().unwrap_or(0.0)
}

fn put_numeric_head(out: &mut Vec<u8>, ndigits: usize, weight: i16, neg: bool, dscale: usize) {
    out.extend_from_slice(&(ndigits as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&(if neg { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&(dscale as i16).to_be_bytes());
}

/// The common case without allocating: no exponent and at most 34 digits,
/// as an i128 scaled by the scale. `None`: use the general path.
/// `Some(Err((p, s)))`: the value does not fit the column's precision.
fn plain_decimal(
    d: &Decimal<'_>,
    typmod: Option<(u16, u16)>,
    out: &mut Vec<u8>,
) -> Option<Result<f64, (u16, u16)>> {
    let (int, frac) = (d.int, d.frac);
    let dscale = typmod.map_or(frac.len(), |(_, s)| s as usize);
    let kept = frac.len().min(dscale);
    if int.len() + dscale > 34 {
        return None;
    }
    let mut value: u128 = 0;
    for c in int.iter().chain(&frac[..kept]) {
        value = value * 10 + (c - b'0') as u128;
    }
    for _ in kept..dscale {
        value *= 10;
    }
    if frac.len() > dscale && frac[dscale] >= b'5' {
        value += 1;
    }
    Some(put_scaled(d.neg, value, dscale, typmod, out))
}

/// A decimal's digits with its point put back (`scale` digits after it;
/// a negative scale appends zeros).
pub fn decimal_text(digits: String, scale: i8) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits.as_str()),
    };
    if scale <= 0 {
        return format!(
            "{sign}{digits}{}",
            "0".repeat(scale.unsigned_abs() as usize)
        );
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// A decimal given as its unscaled integer and scale (Arrow's Decimal128:
/// `12345` at scale 2 is 123.45), as [`numeric`] stores its text: rounded
/// to the column's scale half away from zero, checked against its
/// precision. `None` when it takes the general path (more than 34 digits
/// at the stored scale): then give [`numeric`] its text.
pub fn numeric_scaled(
    unscaled: i128,
    scale: i8,
    typmod: Option<(u16, u16)>,
    out: &mut Vec<u8>,
) -> Option<Result<f64, (u16, u16)>> {
    let pow = |n: u32| POW10.get(n as usize).copied();
    let mut value = unscaled.unsigned_abs();
    // A negative scale appends zeros: the value is whole.
    let scale = if scale < 0 {
        value = value.checked_mul(pow(scale.unsigned_abs() as u32)?)?;
        0
    } else {
        scale as usize
    };
    let dscale = typmod.map_or(scale, |(_, s)| s as usize);
    if dscale > 34 {
        return None;
    }
    if scale > dscale {
        let p = pow((scale - dscale) as u32)?;
        let (q, r) = div_rem(value, p);
        // The first digit dropped is 5 or more: r ≥ p / 2, r < p < 2^127.
        value = q + (r * 2 >= p) as u128;
    } else {
        value = value.checked_mul(pow((dscale - scale) as u32)?)?;
    }
    if value >= POW10[34] {
        return None;
    }
    Some(put_scaled(unscaled < 0, value, dscale, typmod, out))
}

/// The powers of ten a `u128` holds, looked up rather than multiplied out
/// for every value.
const POW10: [u128; 39] = {
    let mut table = [1u128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// 10^0 to 10^34, each the nearest `f64`.
const F64_POW10: [f64; 35] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29, 1e30, 1e31, 1e32,
    1e33, 1e34,
];

/// Writes `value` / 10^`dscale` (both below 10^34 and 34, so that padding
/// the fraction to whole base-10000 digits stays inside a u128) as binary
/// numeric, after the precision check.
fn put_scaled(
    neg: bool,
    value: u128,
    dscale: usize,
    typmod: Option<(u16, u16)>,
    out: &mut Vec<u8>,
) -> Result<f64, (u16, u16)> {
    let pow = |n: usize| POW10[n];
    // 10^p past u128 (a precision over 38) holds any value below 10^34.
    if let Some((p, s)) = typmod
        && POW10.get(p as usize).is_some_and(|limit| value >= *limit)
    {
        return Err((p, s));
    }
    let (ipart, fpart) = div_rem(value, pow(dscale));
    let frac_groups = dscale.div_ceil(4);
    let mut groups = [0i16; 24];
    let mut n = 0;
    let mut i = ipart;
    while i > 0 {
        let (q, r) = div_rem(i, 10_000);
        groups[n] = r as i16;
        i = q;
        n += 1;
    }
    groups[..n].reverse();
    let int_groups = n;
    let mut f = fpart * pow(frac_groups * 4 - dscale);
    for k in (0..frac_groups).rev() {
        let (q, r) = div_rem(f, 10_000);
        groups[n + k] = r as i16;
        f = q;
    }
    n += frac_groups;
    let mut digits = &groups[..n];
    let mut weight = int_groups as i16 - 1;
    while let Some((0, rest)) = digits.split_first() {
        digits = rest;
        weight -= 1;
    }
    while let Some((0, rest)) = digits.split_last() {
        digits = rest;
    }
    let zero = digits.is_empty();
    put_numeric_head(
        out,
        digits.len(),
        if zero { 0 } else { weight },
        neg && !zero,
        dscale,
    );
    for g in digits {
        out.extend_from_slice(&g.to_be_bytes());
    }
    // Both conversions rounded once: most values fit 64 bits, whose
    // conversion is one instruction where a u128's is a call.
    let approx = u64::try_from(value).map_or(value as f64, |v| v as f64) / F64_POW10[dscale];
    Ok(if neg { -approx } else { approx })
}

/// `x / d` and `x % d`, in 64 bits where both fit: most values do, and a
/// 128-bit division is a call where a 64-bit one by a constant is a
/// multiplication.
#[inline]
fn div_rem(x: u128, d: u128) -> (u128, u128) {
    match (u64::try_from(x), u64::try_from(d)) {
        (Ok(x), Ok(d)) => ((x / d) as u128, (x % d) as u128),
        _ => (x / d, x % d),
    }
}

/// `boolin`, whole: spaces trimmed, then any prefix of `true`, `false`,
/// `yes`, `no`, at least two letters of `on`/`off`, or `1`/`0`, in any case.
pub fn boolean(v: &str) -> Verdict<bool> {
    let t = trim_c_space(v).as_bytes();
    let prefix_of = |word: &str, min: usize| {
        t.len() >= min
            && t.len() <= word.len()
            && t.eq_ignore_ascii_case(&word.as_bytes()[..t.len()])
    };
    let b = match t.first().map(u8::to_ascii_lowercase) {
        Some(b't') if prefix_of("true", 1) => Some(true),
        Some(b'f') if prefix_of("false", 1) => Some(false),
        Some(b'y') if prefix_of("yes", 1) => Some(true),
        Some(b'n') if prefix_of("no", 1) => Some(false),
        Some(b'o') if prefix_of("on", 2) => Some(true),
        Some(b'o') if prefix_of("off", 2) => Some(false),
        Some(b'1') if t.len() == 1 => Some(true),
        Some(b'0') if t.len() == 1 => Some(false),
        _ => None,
    };
    match b {
        Some(b) => Verdict::Value(b),
        None => Verdict::Invalid(format!(
            "{} is not a boolean (use true/false, t/f, yes/no, on/off or 1/0)",
            show(v)
        )),
    }
}

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
/// PostgreSQL's epoch in the day count of [`days_from_civil`].
const PG_EPOCH_DAYS: i64 = days_from_civil(2000, 1, 1);

/// Days since 0000-03-01 in the proleptic Gregorian calendar.
const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |a, d| a * 10 + (d - b'0') as u32))
}

/// `YYYY-MM-DD` with a year from 1 to 9999 → days since 2000-01-01. This
/// spelling means the same under every `DateStyle`.
fn iso_date(b: &[u8]) -> Option<i64> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (
        digits(&b[..4])? as i64,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    );
    if y == 0 || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) - PG_EPOCH_DAYS)
}

/// `date_in`: ISO dates here; every other spelling (`2020-1-5`,
/// `Jan 5 2020`, `epoch`, BC years, …) goes to the server.
pub fn date(v: &str) -> Verdict<i32> {
    match iso_date(trim_c_space(v).as_bytes()) {
        Some(days) => Verdict::Value(days as i32),
        None if trim_c_space(v).is_empty() => {
            Verdict::Invalid(format!("{} is not a date", show(v)))
        }
        None => Verdict::Unsure,
    }
}

/// `timestamp_in` / `timestamptz_in` for ISO 8601 text: `YYYY-MM-DD`, then
/// optionally `T` or a space and `HH:MM[:SS[.ffffff]]`, then optionally a
/// space and `Z` or a numeric offset. A `timestamp` ignores the offset, as
/// PostgreSQL does; a `timestamptz` without one takes the load's zone
/// (the session `TimeZone` of the server fallback). Other spellings, seven
/// or more fraction digits (PostgreSQL rounds them through a double),
/// `24:00`, leap seconds, and local times a zone skips or repeats go to
/// the server. Microseconds since 2000-01-01.
pub fn timestamp(v: &str, tz: &TimeZone, with_tz: bool) -> Verdict<i64> {
    let b = trim_c_space(v).as_bytes();
    let Some(days) = b.get(..10).and_then(iso_date) else {
        return Verdict::Unsure;
    };
    let mut i = 10;
    let (mut secs, mut micros) = (0i64, 0i64);
    if i < b.len() && (b[i] == b'T' || b[i] == b' ') && b.len() >= i + 6 && b[i + 3] == b':' {
        let (Some(h), Some(m)) = (digits(&b[i + 1..i + 3]), digits(&b[i + 4..i + 6])) else {
            return Verdict::Unsure;
        };
        i += 6;
        let mut s = 0;
        if i < b.len() && b[i] == b':' {
            let Some(sec) = b.get(i + 1..i + 3).and_then(digits) else {
                return Verdict::Unsure;
            };
            s = sec;
            i += 3;
            if i < b.len() && b[i] == b'.' {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j == start || j - start > 6 {
                    return Verdict::Unsure;
                }
                let mut f = digits(&b[start..j]).unwrap_or(0) as i64;
                for _ in j - start..6 {
                    f *= 10;
                }
                micros = f;
                i = j;
            }
        }
        if h > 23 || m > 59 || s > 59 {
            return Verdict::Unsure;
        }
        secs = (h * 3600 + m * 60 + s) as i64;
        if i < b.len() && b[i] == b' ' {
            i += 1;
        }
    } else if i < b.len() {
        return Verdict::Unsure;
    }
    let rest = &b[i..];
    let offset: Option<i64> = match rest {
        [] => None,
        [b'Z'] => Some(0),
        [sign @ (b'+' | b'-'), body @ ..] => {
            let hm = match body {
                [h1, h2] => digits(&[*h1, *h2]).map(|h| (h, 0)),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                    digits(&[*h1, *h2]).zip(digits(&[*m1, *m2]))
                }
                _ => None,
            };
            match hm {
                Some((h, m)) if h <= 15 && m <= 59 => {
                    let sign = if *sign == b'-' { -1 } else { 1 };
                    Some(sign * (h as i64 * 3600 + m as i64 * 60))
                }
                _ => return Verdict::Unsure,
            }
        }
        _ => return Verdict::Unsure,
    };
    let local = (days * 86_400 + secs) * 1_000_000 + micros;
    match (offset, with_tz) {
        (_, false) => Verdict::Value(local),
        (Some(off), true) => Verdict::Value(local - off * 1_000_000),
        (None, true) => local_to_utc(local, tz).map_or(Verdict::Unsure, Verdict::Value),
    }
}

/// A local time of the load's zone as UTC (both in microseconds since
/// 2000-01-01), where this side is sure of the offset; `None` leaves it
/// to the server.
pub fn local_to_utc(local: i64, tz: &TimeZone) -> Option<i64> {
    match tz {
        TimeZone::Fixed(off) => Some(local - off.local_minus_utc() as i64 * 1_000_000),
        TimeZone::Named(z) => named_zone_utc(local, z),
    }
}

/// The offset of the load's zone from UTC, in seconds, at an instant
/// (seconds since 1970).
pub fn utc_offset_at(unix_secs: i64, tz: &TimeZone) -> i32 {
    match tz {
        TimeZone::Fixed(off) => off.local_minus_utc(),
        TimeZone::Named(z) => chrono::DateTime::from_timestamp(unix_secs, 0).map_or(0, |t| {
            z.offset_from_utc_datetime(&t.naive_utc())
                .fix()
                .local_minus_utc()
        }),
    }
}

/// Microseconds since 1970 as since 2000 (PostgreSQL's epoch).
pub fn unix_to_pg_micros(unix_micros: i64) -> Option<i64> {
    unix_micros.checked_sub(PG_EPOCH_UNIX_SECS * 1_000_000)
}

/// Days since 1970 as since 2000.
pub fn unix_to_pg_days(unix_days: i64) -> i64 {
    unix_days.saturating_sub(PG_EPOCH_DAYS - days_from_civil(1970, 1, 1))
}

/// A local time in a named zone as UTC, where the zone gives it exactly
/// one offset. The fast path keeps to the years its tz database (chrono-tz)
/// and the server's agree on: from 1970 (tzdb releases have changed
/// earlier history) to 2037 (later years are projected from rules).
fn named_zone_utc(local: i64, z: &chrono_tz::Tz) -> Option<i64> {
    let base = NaiveDate::from_ymd_opt(2000, 1, 1)?.and_hms_opt(0, 0, 0)?;
    let naive = base.checked_add_signed(chrono::Duration::microseconds(local))?;
    use chrono::Datelike;
    if !(1970..=2037).contains(&naive.year()) {
        return None;
    }
    match z.from_local_datetime(&naive) {
        chrono::LocalResult::Single(dt) => Some(
            (dt.timestamp() - PG_EPOCH_UNIX_SECS) * 1_000_000 + dt.timestamp_subsec_micros() as i64,
        ),
        _ => None,
    }
}

/// Hex digit values; 0xFF for any other byte.
const HEX: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// `uuid_in`, whole: 32 hex digits, optionally in braces, with an optional
/// hyphen after any group of four digits but the last. No spaces.
pub fn uuid(v: &str) -> Verdict<[u8; 16]> {
    let bad = || Verdict::Invalid(format!("{} is not a UUID", show(v)));
    let mut b = v.as_bytes();
    // The canonical 8-4-4-4-12 form, without branching per digit.
    if b.len() == 36 && b[8] == b'-' && b[13] == b'-' && b[18] == b'-' && b[23] == b'-' {
        let mut out = [0u8; 16];
        let mut bad_digit = 0u8;
        for (k, at) in [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34]
            .into_iter()
            .enumerate()
        {
            let (hi, lo) = (HEX[b[at] as usize], HEX[b[at + 1] as usize]);
            bad_digit |= hi | lo;
            out[k] = hi << 4 | lo;
        }
        if bad_digit & 0x80 == 0 {
            return Verdict::Value(out);
        }
        return bad();
    }
    let braces = b.first() == Some(&b'{');
    if braces {
        b = &b[1..];
    }
    let hex = |c: u8| Some(HEX[c as usize]).filter(|d| *d != 0xFF);
    let mut out = [0u8; 16];
    let mut i = 0;
    for (k, byte) in out.iter_mut().enumerate() {
        let (Some(hi), Some(lo)) = (
            b.get(i).copied().and_then(hex),
            b.get(i + 1).copied().and_then(hex),
        ) else {
            return bad();
        };
        *byte = hi << 4 | lo;
        i += 2;
        if b.get(i) == Some(&b'-') && k % 2 == 1 && k < 15 {
            i += 1;
        }
    }
    if braces {
        if b.get(i) != Some(&b'}') {
            return bad();
        }
        i += 1;
    }
    if i != b.len() {
        return bad();
    }
    Verdict::Value(out)
}

/// `byteain`, whole: `\x` and hex digit pairs (spaces, tabs and line
/// breaks allowed between pairs), or the escape format (`\\` is a
/// backslash, `\ooo` an octal byte, any other byte itself).
pub fn bytea(v: &str, out: &mut Vec<u8>) -> Verdict<()> {
    let b = v.as_bytes();
    if let Some(hex) = b.strip_prefix(b"\\x") {
        let val = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut i = 0;
        while i < hex.len() {
            let c = hex[i];
            if matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                i += 1;
                continue;
            }
            let Some(hi) = val(c) else {
                return Verdict::Invalid(format!("{} has an invalid hexadecimal digit", show(v)));
            };
            let Some(lo) = hex.get(i + 1).copied().and_then(val) else {
                return Verdict::Invalid(format!(
                    "{} is not valid hex bytea: an odd number of digits or an invalid digit",
                    show(v)
                ));
            };
            out.push(hi << 4 | lo);
            i += 2;
        }
        return Verdict::Value(());
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if let [d1 @ b'0'..=b'3', d2 @ b'0'..=b'7', d3 @ b'0'..=b'7', ..] = b[i + 1..] {
            out.push(((d1 - b'0') << 6) | ((d2 - b'0') << 3) | (d3 - b'0'));
            i += 4;
        } else {
            return Verdict::Invalid(format!(
                "{} is not valid bytea: a backslash must start \\\\, \\ooo (octal) or, at the start, \\x (hex)",
                show(v)
            ));
        }
    }
    Verdict::Value(())
}

/// `varcharin`/`bpcharin` with a length: a longer value is cut to the
/// length when what is cut is only spaces, else refused. Returns the text
/// to store (`char(n)` is padded by the server).
pub fn bounded_text<'a>(v: &'a str, limit: usize, ty: &dyn std::fmt::Display) -> Verdict<&'a str> {
    let cut = if v.is_ascii() {
        (v.len() > limit).then_some(limit)
    } else {
        v.char_indices().nth(limit).map(|(at, _)| at)
    };
    match cut {
        None => Verdict::Value(v),
        Some(at) if v.as_bytes()[at..].iter().all(|c| *c == b' ') => Verdict::Value(&v[..at]),
        Some(_) => Verdict::Invalid(format!(
            "{} is {} characters, longer than {ty}",
            show(v),
            v.chars().count()
        )),
    }
}

/// Nesting beyond this goes to the server: how deep it can go depends on
/// its stack (`max_stack_depth`).
const JSON_FAST_DEPTH: usize = 256;

/// `jsonb_in`'s grammar (RFC 8259 as PostgreSQL's lexer reads it): JSON
/// white space only, `true`/`false`/`null` in lower case, no leading zeros,
/// no control characters in strings, `\u` surrogates in pairs, and no
/// `\u0000` (jsonb cannot store it). Numbers become `numeric`: very long
/// ones and large exponents go to the server, as does deep nesting.
pub fn json(v: &str) -> Verdict<()> {
    let b = v.as_bytes();
    let bad = |why: &str| Verdict::Invalid(format!("{} is not valid JSON: {why}", show(v)));
    let ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
            *i += 1;
        }
    };
    // Open containers: `{` or `[`; `after_key` marks an object awaiting a value.
    let mut stack: Vec<u8> = Vec::new();
    let mut i = 0;
    let mut unsure = false;
    loop {
        // Expect a value.
        ws(&mut i);
        let Some(&c) = b.get(i) else {
            return bad("it ends where a value should be");
        };
        match c {
            b'{' | b'[' => {
                stack.push(c);
                if stack.len() > JSON_FAST_DEPTH {
                    unsure = true;
                }
                i += 1;
                ws(&mut i);
                let close = if c == b'{' { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    stack.pop();
                    i += 1;
                } else if c == b'{' {
                    match json_key(b, &mut i, &ws) {
                        Ok(()) => continue,
                        Err(why) => return bad(why),
                    }
                } else {
                    continue;
                }
            }
            b'"' => {
                if let Err(why) = json_string(b, &mut i) {
                    return bad(why);
                }
            }
            b'-' | b'0'..=b'9' => match json_number(b, &mut i) {
                Ok(fast) => unsure |= !fast,
                Err(why) => return bad(why),
            },
            _ => {
                let start = i;
                while i < b.len() && json_word_byte(b[i]) {
                    i += 1;
                }
                if !matches!(&b[start..i], b"true" | b"false" | b"null") {
                    return bad("unexpected token");
                }
            }
        }
        // After a value: close containers, or a comma and the next member.
        loop {
            ws(&mut i);
            let Some(&top) = stack.last() else {
                if i != b.len() {
                    return bad("text after the value");
                }
                return if unsure {
                    Verdict::Unsure
                } else {
                    Verdict::Value(())
                };
            };
            let close = if top == b'{' { b'}' } else { b']' };
            match b.get(i) {
                Some(&c) if c == close => {
                    stack.pop();
                    i += 1;
                }
                Some(b',') => {
                    i += 1;
                    if top == b'{' {
                        ws(&mut i);
                        if let Err(why) = json_key(b, &mut i, &ws) {
                            return bad(why);
                        }
                    }
                    break;
                }
                _ => return bad("expected `,` or a closing bracket"),
            }
        }
    }
}

/// PostgreSQL's lexer reads a keyword as a run of these bytes.
fn json_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// An object key and its colon.
fn json_key(b: &[u8], i: &mut usize, ws: &dyn Fn(&mut usize)) -> Result<(), &'static str> {
    if b.get(*i) != Some(&b'"') {
        return Err("an object key must be a string");
    }
    json_string(b, i)?;
    ws(i);
    if b.get(*i) != Some(&b':') {
        return Err("expected `:` after an object key");
    }
    *i += 1;
    Ok(())
}

fn json_string(b: &[u8], i: &mut usize) -> Result<(), &'static str> {
    *i += 1;
    let hex4 = |at: usize| -> Option<u32> {
        let s = b.get(at..at + 4)?;
        let s = std::str::from_utf8(s).ok()?;
        if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    };
    loop {
        let Some(&c) = b.get(*i) else {
            return Err("an unterminated string");
        };
        match c {
            b'"' => {
                *i += 1;
                return Ok(());
            }
            0..=0x1f => return Err("a control character in a string must be escaped"),
            b'\\' => match b.get(*i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => *i += 2,
                Some(b'u') => {
                    let u = hex4(*i + 2).ok_or("`\\u` must be followed by four hex digits")?;
                    *i += 6;
                    if u == 0 {
                        return Err("\\u0000 cannot be stored in jsonb");
                    }
                    if (0xDC00..=0xDFFF).contains(&u) {
                        return Err("a Unicode low surrogate must follow a high surrogate");
                    }
                    if (0xD800..=0xDBFF).contains(&u) {
                        let low = (b.get(*i..*i + 2) == Some(b"\\u"))
                            .then(|| hex4(*i + 2))
                            .flatten();
                        match low {
                            Some(l) if (0xDC00..=0xDFFF).contains(&l) => *i += 6,
                            _ => {
                                return Err(
                                    "a Unicode high surrogate must be followed by a low surrogate",
                                );
                            }
                        }
                    }
                }
                _ => return Err("an invalid escape in a string"),
            },
            _ => *i += 1,
        }
    }
}

/// A JSON number; `Ok(false)` when it is too long or its exponent too large
/// for the fast path to be sure `numeric` takes it.
fn json_number(b: &[u8], i: &mut usize) -> Result<bool, &'static str> {
    let start = *i;
    if b[*i] == b'-' {
        *i += 1;
    }
    let digits = |i: &mut usize| {
        let s = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - s
    };
    match b.get(*i) {
        Some(b'0') => *i += 1,
        Some(b'1'..=b'9') => {
            digits(i);
        }
        _ => return Err("a malformed number"),
    }
    if b.get(*i) == Some(&b'.') {
        *i += 1;
        if digits(i) == 0 {
            return Err("a malformed number");
        }
    }
    let mantissa = *i - start;
    let mut exp_digits = 0;
    let mut exp_value = 0u32;
    if matches!(b.get(*i), Some(b'e' | b'E')) {
        *i += 1;
        if matches!(b.get(*i), Some(b'+' | b'-')) {
            *i += 1;
        }
        let s = *i;
        exp_digits = digits(i);
        if exp_digits == 0 {
            return Err("a malformed number");
        }
        if exp_digits <= 6 {
            exp_value = std::str::from_utf8(&b[s..*i])
                .ok()
                .and_then(|e| e.parse().ok())
                .unwrap_or(u32::MAX);
        }
    }
    if b.get(*i).is_some_and(|c| json_word_byte(*c)) {
        return Err("a malformed number");
    }
    Ok(mantissa <= NUMERIC_FAST_DIGITS
        && exp_digits <= 6
        && exp_value as i64 <= NUMERIC_MAX_EXPONENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_words(v: &str, typmod: Option<(u16, u16)>) -> Verdict<Vec<i16>> {
        let mut out = Vec::new();
        match numeric(v, typmod, &mut out) {
            Verdict::Value(_) => Verdict::Value(
                out.chunks(2)
                    .map(|c| i16::from_be_bytes([c[0], c[1]]))
                    .collect(),
            ),
            Verdict::Invalid(e) => Verdict::Invalid(e),
            Verdict::Unsure => Verdict::Unsure,
        }
    }

    #[test]
    fn numerics_match_postgres_binary() {
        let v = |w: &[i16]| Verdict::Value(w.to_vec());
        // ndigits, weight, sign, dscale, digits…
        assert_eq!(
            numeric_words("1234.5", Some((12, 2))),
            v(&[2, 0, 0, 2, 1234, 5000])
        );
        assert_eq!(numeric_words("-0.01", None), v(&[1, -1, 0x4000, 2, 100]));
        assert_eq!(numeric_words("0", Some((12, 2))), v(&[0, 0, 0, 2]));
        assert_eq!(
            numeric_words("12345678", None),
            v(&[2, 1, 0, 0, 1234, 5678])
        );
        assert_eq!(numeric_words("10000", None), v(&[1, 1, 0, 0, 1]));
        assert_eq!(
            numeric_words("1.005", Some((5, 2))),
            v(&[2, 0, 0, 2, 1, 100])
        );
        assert_eq!(numeric_words("9.995", Some((5, 2))), v(&[1, 0, 0, 2, 10]));
        assert_eq!(numeric_words("1e3", None), v(&[1, 0, 0, 0, 1000]));
        assert_eq!(numeric_words("1.50e1", None), v(&[1, 0, 0, 1, 15]));
        assert_eq!(
            numeric_words("0.00001", Some((10, 5))),
            v(&[1, -2, 0, 5, 1000])
        );
        assert_eq!(
            numeric_words("-100000000.5", None),
            v(&[4, 2, 0x4000, 1, 1, 0, 0, 5000])
        );
        assert!(matches!(
            numeric_words("123456789012", Some((12, 2))),
            Verdict::Invalid(_)
        ));
        assert!(
            matches!(
                numeric_words("9999999999.995", Some((12, 2))),
                Verdict::Invalid(_)
            ),
            "rounds up past the precision"
        );
        assert!(matches!(numeric_words("12a", None), Verdict::Unsure));
        assert!(matches!(numeric_words("", None), Verdict::Invalid(_)));
        assert!(matches!(numeric_words("1 2", None), Verdict::Invalid(_)));
    }

    /// Found by fuzzing (fuzz/corpus/values/numeric-38-digits): 38 digits
    /// overflowed the plain path's i128 when the fraction was padded.
    #[test]
    fn long_plain_decimals_agree_with_the_general_path() {
        for v in [
            "9.99222226477680223264776802233720391095",
            "9.9922222647768022326477680223372039109",
            "99999999999999999999999999999999.99",
            "0.0000000000000000000000000000000000001",
        ] {
            let plain = numeric_words(v, None);
            assert!(matches!(plain, Verdict::Value(_)), "{v}");
            assert_eq!(plain, numeric_words(&format!("{v}e0"), None), "{v}");
        }
    }

    #[test]
    fn extreme_exponents_never_allocate_by_the_exponent() {
        for v in [
            "1e-9223372036854775808",
            "1e9223372036854775807",
            "1e99999999999999999999",
            "1e-1001",
        ] {
            assert_eq!(numeric_words(v, None), Verdict::Unsure, "{v}");
        }
        assert!(matches!(numeric_words("1e-1000", None), Verdict::Value(_)));
    }

    proptest::proptest! {
        /// A decimal stored from its unscaled integer is stored as its text
        /// would be, or left to the text path, at every scale and typmod.
        #[test]
        fn decimals_from_integers_store_as_their_text(
            unscaled in proptest::prop_oneof![
                proptest::num::i128::ANY,
                -10i128.pow(20)..10i128.pow(20),
                -100_000i128..100_000,
            ],
            scale in -6i8..=40,
            typmod in proptest::option::of(proptest::strategy::Strategy::prop_flat_map(1u16..=40, |p| (proptest::strategy::Just(p), 0..=p))),
        ) {
            let text = decimal_text(unscaled.to_string(), scale);
            let mut fast = Vec::new();
            if let Some(r) = numeric_scaled(unscaled, scale, typmod, &mut fast) {
                let mut slow = Vec::new();
                match (r, numeric(&text, typmod, &mut slow)) {
                    (Ok(a), Verdict::Value(b)) => {
                        proptest::prop_assert_eq!(&fast, &slow, "{} {:?}", text, typmod);
                        // The approximation for range rules: within an
                        // ulp or two (the text path parses long ones).
                        proptest::prop_assert!((a - b).abs() <= b.abs() * 4.0 * f64::EPSILON, "{a} vs {b}");
                    }
                    (Err(_), Verdict::Invalid(_)) => {}
                    (r, v) => proptest::prop_assert!(false, "{text} {typmod:?}: {r:?} vs {v:?}"),
                }
            }
        }
    }

    proptest::proptest! {
        /// A decimal written plainly and with an exponent stores the same
        /// bytes and gives range rules the same value: the one stored.
        #[test]
        fn a_decimal_and_its_exponent_form_agree(
            unscaled in proptest::prop_oneof![
                -10i128.pow(30)..10i128.pow(30),
                -100_000i128..100_000,
            ],
            scale in 0i8..=36,
            typmod in proptest::option::of(proptest::strategy::Strategy::prop_flat_map(1u16..=40, |p| (proptest::strategy::Just(p), 0..=p))),
        ) {
            let plain = decimal_text(unscaled.to_string(), scale);
            let exponent = format!("{unscaled}e-{scale}");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            match (numeric(&plain, typmod, &mut a), numeric(&exponent, typmod, &mut b)) {
                (Verdict::Value(x), Verdict::Value(y)) => {
                    proptest::prop_assert_eq!(&a, &b, "{} {:?}", plain, typmod);
                    proptest::prop_assert!((x - y).abs() <= y.abs() * 4.0 * f64::EPSILON, "{plain} {typmod:?}: {x} vs {y}");
                }
                (Verdict::Invalid(_), Verdict::Invalid(_)) => {}
                (x, y) => proptest::prop_assert!(false, "{plain} {typmod:?}: {x:?} vs {y:?}"),
            }
        }
    }

    #[test]
    fn range_rules_judge_the_value_stored() {
        for v in ["-0.001", "-1e-3", "-0.0001e1"] {
            let mut out = Vec::new();
            let Verdict::Value(x) = numeric(v, Some((5, 2)), &mut out) else {
                panic!("{v} is a number");
            };
            assert!(x == 0.0, "{v} is stored as 0.00: {x}");
        }
        let mut out = Vec::new();
        assert_eq!(
            numeric("99.995e0", Some((5, 2)), &mut out),
            Verdict::Value(100.0)
        );
    }

    #[test]
    fn plain_decimals_take_a_fast_path_that_agrees_with_the_general_one() {
        for v in [
            "0",
            "-0.0",
            "1",
            "12.5",
            "-0.01",
            "99999.995",
            "1234567.891",
            "0.00005",
            "10000",
            "007.10",
        ] {
            for typmod in [
                None,
                Some((12, 2)),
                Some((20, 6)),
                Some((9, 0)),
                Some((40, 2)),
                Some((1000, 30)),
            ] {
                let plain = numeric_words(v, typmod);
                let general = numeric_words(&format!("{v}e0"), typmod);
                assert_eq!(plain, general, "{v} {typmod:?}");
            }
        }
    }

    #[test]
    fn floats_refuse_overflow_and_underflow() {
        assert!(matches!(double("1e309"), Verdict::Invalid(_)));
        assert!(matches!(double("1e-400"), Verdict::Invalid(_)));
        assert_eq!(double("4.9e-324"), Verdict::Value(4.9e-324));
        assert_eq!(double(" 0.0e-999 "), Verdict::Value(0.0));
        assert!(matches!(real("1e39"), Verdict::Invalid(_)));
        assert!(matches!(real("1e-46"), Verdict::Invalid(_)));
        assert_eq!(double("0x1p3"), Verdict::Unsure);
        assert_eq!(
            double("\u{a0}1"),
            Verdict::Invalid("\"\u{a0}1\" is not a number".into())
        );
        // f64 then f32 rounds twice; strtof once.
        assert_eq!(
            real("1.0000000596046447762579867"),
            Verdict::Value(1.000_000_1_f32)
        );
    }

    #[test]
    fn booleans_take_unique_prefixes() {
        for t in ["t", "tru", "TRUE", " yes\n", "ye", "on", "1"] {
            assert_eq!(boolean(t), Verdict::Value(true), "{t}");
        }
        for f in ["f", "fAlS", "n", "no", "of", "off", "0"] {
            assert_eq!(boolean(f), Verdict::Value(false), "{f}");
        }
        for x in ["o", "truex", "2", "", "onn", "yess"] {
            assert!(matches!(boolean(x), Verdict::Invalid(_)), "{x}");
        }
    }

    #[test]
    fn dates_and_timestamps() {
        let utc = TimeZone::parse("UTC").unwrap();
        assert_eq!(date("2000-01-01"), Verdict::Value(0));
        assert_eq!(date("1999-12-31"), Verdict::Value(-1));
        assert_eq!(date("2024-02-29"), Verdict::Value(8825));
        assert_eq!(date("2023-02-29"), Verdict::Unsure);
        assert_eq!(date("2020-1-5"), Verdict::Unsure);
        assert_eq!(
            timestamp("2000-01-01T00:00:01Z", &utc, true),
            Verdict::Value(1_000_000)
        );
        assert_eq!(
            timestamp("2000-01-01 01:00:00+01:00", &utc, true),
            Verdict::Value(0)
        );
        assert_eq!(
            timestamp("2000-01-01 01:00:00+01:00", &utc, false),
            Verdict::Value(3_600_000_000),
            "timestamp without time zone ignores the offset"
        );
        assert_eq!(
            timestamp("2000-01-01T00:00:00.5", &utc, true),
            Verdict::Value(500_000)
        );
        let berlin = TimeZone::parse("Europe/Berlin").unwrap();
        assert_eq!(
            timestamp("2000-01-01T01:00:00", &berlin, true),
            Verdict::Value(0)
        );
        assert_eq!(
            timestamp("2024-03-31T02:30:00", &berlin, true),
            Verdict::Unsure,
            "DST gap"
        );
        assert_eq!(
            timestamp("2024-10-27T02:30:00", &berlin, true),
            Verdict::Unsure,
            "DST repeat"
        );
        assert_eq!(
            timestamp("2024-01-01 24:00:00", &utc, true),
            Verdict::Unsure
        );
        assert_eq!(timestamp("10:11:12,5", &utc, true), Verdict::Unsure);
        assert_eq!(
            timestamp("2024-01-01 10:11:12,5", &utc, true),
            Verdict::Unsure
        );
    }

    #[test]
    fn uuids_as_postgres_reads_them() {
        let want = Verdict::Value([
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ]);
        for ok in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(uuid(ok), want, "{ok}");
        }
        for bad in [
            " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
            "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert!(matches!(uuid(bad), Verdict::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn bytea_hex_and_escape() {
        let read = |v: &str| {
            let mut out = Vec::new();
            match bytea(v, &mut out) {
                Verdict::Value(()) => Some(out),
                _ => None,
            }
        };
        assert_eq!(read("\\x41 42\n"), Some(b"AB".to_vec()));
        assert_eq!(read("a\\\\b"), Some(b"a\\b".to_vec()));
        assert_eq!(read("\\001x"), Some(vec![1, b'x']));
        assert_eq!(read("\\x4"), None);
        assert_eq!(read("\\x4 1"), None);
        assert_eq!(read("a\\b"), None);
        assert_eq!(read("\\400"), None);
    }

    #[test]
    fn bounded_text_cuts_only_spaces() {
        let ty = "varchar(5)";
        assert_eq!(bounded_text("abcde   ", 5, &ty), Verdict::Value("abcde"));
        assert!(matches!(
            bounded_text("abcde  f", 5, &ty),
            Verdict::Invalid(_)
        ));
        assert!(matches!(
            bounded_text("abcde\t", 5, &ty),
            Verdict::Invalid(_)
        ));
        assert_eq!(bounded_text("äöü  ", 3, &ty), Verdict::Value("äöü"));
    }

    #[test]
    fn json_grammar() {
        for ok in [
            "{}",
            "[]",
            " {\"a\": [1, -0.5e3, true, null, \"x\\u00e9\\ud83d\\ude00\"]} ",
            "5",
            "\"s\"",
        ] {
            assert_eq!(json(ok), Verdict::Value(()), "{ok}");
        }
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "01",
            "1.",
            "tru",
            "True",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "[1] x",
            "\"a\nb\"",
            "{'a':1}",
            "-",
        ] {
            assert!(matches!(json(bad), Verdict::Invalid(_)), "{bad}");
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(json(&deep), Verdict::Unsure);
        assert_eq!(json("1e1001"), Verdict::Unsure);
    }
}
