//! Text → PostgreSQL binary COPY values, with the model's rules checked on
//! the way. Hand-written because this is the hot path: the server skips
//! its own text parsing for binary input, so every value parsed here is CPU
//! taken off the database (DESIGN.md, "Why binary pays").

use chrono::{NaiveDate, TimeZone as _};

use crate::model::{Column, Rules, TimeZone};
use crate::types::ColumnType;

/// `PGCOPY\n\377\r\n\0`, flags, header extension length.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
pub const COPY_TRAILER: &[u8] = &[0xff, 0xff];

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
/// PostgreSQL's epoch in the day count of [`days_from_civil`].
const PG_EPOCH_DAYS: i64 = days_from_civil(2000, 1, 1);

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

/// Encodes one non-NULL value of `col` (length word and bytes) into `out`,
/// or says why it does not fit the column.
pub fn encode_field(col: &Column, tz: &TimeZone, v: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let rules = &col.rules;
    match col.ty {
        ColumnType::SmallInt => {
            let n = parse_int(v, i16::MIN as i64, i16::MAX as i64, "smallint")?;
            check_range(rules, n as f64, v)?;
            put_i32(out, 2);
            put_i16(out, n as i16);
        }
        ColumnType::Int => {
            let n = parse_int(v, i32::MIN as i64, i32::MAX as i64, "integer")?;
            check_range(rules, n as f64, v)?;
            put_i32(out, 4);
            put_i32(out, n as i32);
        }
        ColumnType::BigInt => {
            let n = parse_int(v, i64::MIN, i64::MAX, "bigint")?;
            check_range(rules, n as f64, v)?;
            put_i32(out, 8);
            put_i64(out, n);
        }
        ColumnType::Real => {
            let f = parse_float(v)?;
            if f.is_finite() && (f as f32).is_infinite() {
                return Err(format!("{} is out of range for real", show(v)));
            }
            check_range(rules, f, v)?;
            put_i32(out, 4);
            out.extend_from_slice(&(f as f32).to_be_bytes());
        }
        ColumnType::Double => {
            let f = parse_float(v)?;
            check_range(rules, f, v)?;
            put_i32(out, 8);
            out.extend_from_slice(&f.to_be_bytes());
        }
        ColumnType::Numeric(typmod) => {
            let len_at = out.len();
            put_i32(out, 0);
            let approx = encode_numeric(v, typmod, out)?;
            check_range(rules, approx, v)?;
            let len = (out.len() - len_at - 4) as i32;
            out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
        ColumnType::Text | ColumnType::Varchar(_) | ColumnType::Char(_) => {
            check_text(col, v)?;
            put_i32(out, v.len() as i32);
            out.extend_from_slice(v.as_bytes());
        }
        ColumnType::Boolean => {
            let b = parse_bool(v).ok_or_else(|| {
                format!(
                    "{} is not a boolean (use true/false, t/f, yes/no, on/off or 1/0)",
                    show(v)
                )
            })?;
            put_i32(out, 1);
            out.push(b as u8);
        }
        ColumnType::Date => {
            let days = parse_date(v.trim())
                .ok_or_else(|| format!("{} is not a date (use YYYY-MM-DD)", show(v)))?;
            put_i32(out, 4);
            put_i32(out, days as i32);
        }
        ColumnType::Timestamp | ColumnType::Timestamptz => {
            let micros = parse_timestamp(v, tz, col.ty == ColumnType::Timestamptz)?;
            put_i32(out, 8);
            put_i64(out, micros);
        }
        ColumnType::Uuid => {
            let u = uuid::Uuid::try_parse(v.trim())
                .map_err(|_| format!("{} is not a UUID", show(v)))?;
            put_i32(out, 16);
            out.extend_from_slice(u.as_bytes());
        }
        ColumnType::Jsonb => {
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(v) {
                return Err(format!("{} is not valid JSON: {e}", show(v)));
            }
            if v.contains("\\u0000") {
                return Err("JSON text contains \\u0000, which jsonb cannot store".into());
            }
            put_i32(out, v.len() as i32 + 1);
            out.push(1);
            out.extend_from_slice(v.as_bytes());
        }
        ColumnType::Bytea => {
            if let Some(hex) = v.strip_prefix("\\x") {
                let bytes = decode_hex(hex)
                    .ok_or_else(|| format!("{} is not valid \\x hex bytea", show(v)))?;
                put_i32(out, bytes.len() as i32);
                out.extend_from_slice(&bytes);
            } else if v.contains('\\') {
                return Err("bytea with backslashes must be in \\x hex format".into());
            } else {
                put_i32(out, v.len() as i32);
                out.extend_from_slice(v.as_bytes());
            }
        }
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
    if v.as_bytes().contains(&0) {
        return Err("contains a NUL byte, which PostgreSQL text cannot store".into());
    }
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

/// Integers as PostgreSQL reads them: optional surrounding spaces and sign.
fn parse_int(v: &str, min: i64, max: i64, ty: &str) -> Result<i64, String> {
    let t = match v.as_bytes() {
        [first, .., last] if !first.is_ascii_whitespace() && !last.is_ascii_whitespace() => v,
        _ => v.trim_matches(|c: char| c.is_ascii_whitespace()),
    };
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} is not an integer", show(v)));
    }
    let mut n: i128 = 0;
    for b in digits.bytes() {
        n = n * 10 + (b - b'0') as i128;
        if n > i64::MAX as i128 + 1 {
            break;
        }
    }
    let n = if neg { -n } else { n };
    if n < min as i128 || n > max as i128 {
        return Err(format!("{} is out of range for {ty}", show(v)));
    }
    Ok(n as i64)
}

fn parse_float(v: &str) -> Result<f64, String> {
    v.trim()
        .parse::<f64>()
        .map_err(|_| format!("{} is not a number", show(v)))
}

fn parse_bool(v: &str) -> Option<bool> {
    let t = v.trim();
    const TRUE: &[&str] = &["t", "true", "y", "yes", "on", "1"];
    const FALSE: &[&str] = &["f", "false", "n", "no", "off", "0"];
    if TRUE.iter().any(|s| s.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if FALSE.iter().any(|s| s.eq_ignore_ascii_case(t)) {
        Some(false)
    } else {
        None
    }
}

fn decode_hex(h: &str) -> Option<Vec<u8>> {
    let b = h.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let val = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    b.chunks(2)
        .map(|p| Some(val(p[0])? << 4 | val(p[1])?))
        .collect()
}

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
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |a, d| a * 10 + (d - b'0') as u32))
}

/// `YYYY-MM-DD` → days since 2000-01-01.
fn parse_date(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (
        digits(&b[..4])? as i64,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    );
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) - PG_EPOCH_DAYS)
}

/// ISO 8601 / RFC 3339 timestamps (`T` or space, optional seconds, fraction
/// and offset) → microseconds since 2000-01-01 UTC (`timestamptz`) or local
/// wall time (`timestamp`). Naive input takes the model's timezone.
fn parse_timestamp(v: &str, tz: &TimeZone, with_tz: bool) -> Result<i64, String> {
    let bad = || {
        format!(
            "{} is not an ISO 8601 timestamp (e.g. 2024-05-01T12:30:00Z)",
            show(v)
        )
    };
    let t = v.trim();
    let b = t.as_bytes();
    let days = parse_date(t.get(..10).ok_or_else(bad)?).ok_or_else(bad)?;
    let mut i = 10;
    let (mut secs, mut micros) = (0i64, 0i64);
    if i < b.len()
        && (b[i] == b'T' || b[i] == b't' || b[i] == b' ')
        && b.len() >= i + 6
        && b[i + 3] == b':'
    {
        let h = digits(&b[i + 1..i + 3]).ok_or_else(bad)?;
        let m = digits(&b[i + 4..i + 6]).ok_or_else(bad)?;
        i += 6;
        let mut s = 0;
        if i < b.len() && b[i] == b':' {
            s = digits(b.get(i + 1..i + 3).ok_or_else(bad)?).ok_or_else(bad)?;
            i += 3;
            if i < b.len() && (b[i] == b'.' || b[i] == b',') {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if j == start {
                    return Err(bad());
                }
                let frac = &b[start..j.min(start + 6)];
                let mut f = digits(frac).ok_or_else(bad)? as i64;
                for _ in frac.len()..6 {
                    f *= 10;
                }
                // Round half up on the seventh digit, as PostgreSQL does.
                if j > start + 6 && b[start + 6] >= b'5' {
                    f += 1;
                }
                micros = f;
                i = j;
            }
        }
        if h > 23 || m > 59 || s > 59 {
            return Err(bad());
        }
        secs = (h * 3600 + m * 60 + s) as i64;
    }
    let rest = t[i..].trim_start();
    let offset: Option<i64> = if rest.is_empty() {
        None
    } else if rest == "Z" || rest == "z" || rest.eq_ignore_ascii_case("utc") {
        Some(0)
    } else {
        let rb = rest.as_bytes();
        let sign = match rb[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let body: Vec<u8> = rb[1..].iter().copied().filter(|c| *c != b':').collect();
        let (h, m) = match body.len() {
            2 => (digits(&body).ok_or_else(bad)?, 0),
            4 => (
                digits(&body[..2]).ok_or_else(bad)?,
                digits(&body[2..]).ok_or_else(bad)?,
            ),
            _ => return Err(bad()),
        };
        if h > 15 || m > 59 {
            return Err(bad());
        }
        Some(sign * (h as i64 * 3600 + m as i64 * 60))
    };
    let local_micros = (days * 86_400 + secs) * 1_000_000 + micros;
    let utc_from_local = |local: i64| -> Result<i64, String> {
        match tz {
            TimeZone::Fixed(off) => Ok(local - off.local_minus_utc() as i64 * 1_000_000),
            TimeZone::Named(z) => {
                let naive = naive_from_pg_micros(local).ok_or_else(bad)?;
                z.from_local_datetime(&naive)
                    .earliest()
                    .map(|dt| {
                        (dt.timestamp() - PG_EPOCH_UNIX_SECS) * 1_000_000
                            + dt.timestamp_subsec_micros() as i64
                    })
                    .ok_or_else(|| {
                        format!("{} does not exist in timezone {z} (a DST gap)", show(v))
                    })
            }
        }
    };
    let local_from_utc = |utc: i64| -> i64 {
        match tz {
            TimeZone::Fixed(off) => utc + off.local_minus_utc() as i64 * 1_000_000,
            TimeZone::Named(z) => {
                let unix = utc.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS;
                let off = chrono::DateTime::from_timestamp(unix, 0)
                    .map(|dt| {
                        use chrono::Offset;
                        z.offset_from_utc_datetime(&dt.naive_utc())
                            .fix()
                            .local_minus_utc()
                    })
                    .unwrap_or(0);
                utc + off as i64 * 1_000_000
            }
        }
    };
    Ok(match (offset, with_tz) {
        (Some(off), true) => local_micros - off * 1_000_000,
        (None, true) => utc_from_local(local_micros)?,
        (Some(off), false) => local_from_utc(local_micros - off * 1_000_000),
        (None, false) => local_micros,
    })
}

fn naive_from_pg_micros(m: i64) -> Option<chrono::NaiveDateTime> {
    let base = NaiveDate::from_ymd_opt(2000, 1, 1)?.and_hms_opt(0, 0, 0)?;
    base.checked_add_signed(chrono::Duration::microseconds(m))
}

/// Parses a decimal (`-12.345`, `1e3`) and writes PostgreSQL's binary
/// numeric (base-10000 digits), rounded to the column's scale half away
/// from zero as PostgreSQL rounds. Returns the value as f64 for range rules.
fn encode_numeric(v: &str, typmod: Option<(u16, u16)>, out: &mut Vec<u8>) -> Result<f64, String> {
    let t = v.trim();
    if let Some(result) = encode_plain_decimal(t, typmod, out) {
        return result.map_err(|(p, s)| {
            format!(
                "{} does not fit numeric({p},{s}): at most {} digits before the decimal point",
                show(v),
                p - s
            )
        });
    }
    let not_num = || format!("{} is not a number", show(v));
    if t.eq_ignore_ascii_case("nan") {
        put_i16(out, 0);
        put_i16(out, 0);
        out.extend_from_slice(&0xC000u16.to_be_bytes());
        put_i16(out, 0);
        return Ok(f64::NAN);
    }
    let b = t.as_bytes();
    let (neg, mut i) = match b.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let mut ds: Vec<u8> = Vec::with_capacity(b.len());
    let mut point: i64 = -1;
    while i < b.len() {
        match b[i] {
            c @ b'0'..=b'9' => ds.push(c - b'0'),
            b'.' if point < 0 => point = ds.len() as i64,
            _ => break,
        }
        i += 1;
    }
    if ds.is_empty() {
        return Err(not_num());
    }
    if point < 0 {
        point = ds.len() as i64;
    }
    if i < b.len() {
        if b[i] != b'e' && b[i] != b'E' {
            return Err(not_num());
        }
        let exp: i64 = t[i + 1..].parse().map_err(|_| not_num())?;
        if exp.abs() > 1000 {
            return Err(format!("{} is out of range for numeric", show(v)));
        }
        point += exp;
    }
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
    let frac_len = ds.len() - point;
    let dscale = match typmod {
        Some((_, s)) => s as usize,
        None => frac_len,
    };
    if frac_len > dscale {
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
        return Err(format!(
            "{} does not fit numeric({p},{s}): at most {} digits before the decimal point",
            show(v),
            p - s
        ));
    }
    if int_digits > 131_072 {
        return Err(format!("{} is out of range for numeric", show(v)));
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
    let is_zero = groups.is_empty();
    put_i16(out, groups.len() as i16);
    put_i16(out, if is_zero { 0 } else { weight as i16 });
    out.extend_from_slice(&(if neg && !is_zero { 0x4000u16 } else { 0 }).to_be_bytes());
    put_i16(out, dscale as i16);
    for g in &groups {
        put_i16(out, *g);
    }
    let approx: f64 = t.parse().unwrap_or(0.0);
    Ok(approx)
}

/// The common case without allocating: `[+-]digits[.digits]` of at most 38
/// digits, as an i128 scaled by the scale. `None`: use the general path.
/// `Some(Err((p, s)))`: the value does not fit the column's precision.
fn encode_plain_decimal(
    t: &str,
    typmod: Option<(u16, u16)>,
    out: &mut Vec<u8>,
) -> Option<Result<f64, (u16, u16)>> {
    let b = t.as_bytes();
    let (neg, body) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    let (int, frac) = match memchr::memchr(b'.', body) {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &body[..0]),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.iter().all(u8::is_ascii_digit)
        || !frac.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let dscale = typmod.map_or(frac.len(), |(_, s)| s as usize);
    let kept = frac.len().min(dscale);
    if int.len() + dscale > 38 {
        return None;
    }
    let mut value: i128 = 0;
    for d in int.iter().chain(&frac[..kept]) {
        value = value * 10 + (d - b'0') as i128;
    }
    for _ in kept..dscale {
        value *= 10;
    }
    if frac.len() > dscale && frac[dscale] >= b'5' {
        value += 1;
    }
    let pow = |n: usize| 10i128.pow(n as u32);
    if let Some((p, s)) = typmod
        && value >= pow(p as usize)
    {
        return Some(Err((p, s)));
    }
    let (ipart, fpart) = (value / pow(dscale), value % pow(dscale));
    let frac_groups = dscale.div_ceil(4);
    let mut groups = [0i16; 24];
    let mut n = 0;
    let mut i = ipart;
    while i > 0 {
        groups[n] = (i % 10_000) as i16;
        i /= 10_000;
        n += 1;
    }
    groups[..n].reverse();
    let int_groups = n;
    let mut f = fpart * pow(frac_groups * 4 - dscale);
    for k in (0..frac_groups).rev() {
        groups[n + k] = (f % 10_000) as i16;
        f /= 10_000;
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
    put_i16(out, digits.len() as i16);
    put_i16(out, if zero { 0 } else { weight });
    out.extend_from_slice(&(if neg && !zero { 0x4000u16 } else { 0 }).to_be_bytes());
    put_i16(out, dscale as i16);
    for g in digits {
        put_i16(out, *g);
    }
    let approx = value as f64 / 10f64.powi(dscale as i32);
    Some(Ok(if neg { -approx } else { approx }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(v: &str, typmod: Option<(u16, u16)>) -> Result<Vec<i16>, String> {
        let mut out = Vec::new();
        encode_numeric(v, typmod, &mut out)?;
        Ok(out
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect())
    }

    #[test]
    fn numerics_match_postgres_binary() {
        // ndigits, weight, sign, dscale, digits…
        assert_eq!(
            numeric("1234.5", Some((12, 2))).unwrap(),
            [2, 0, 0, 2, 1234, 5000]
        );
        assert_eq!(numeric("-0.01", None).unwrap(), [1, -1, 0x4000, 2, 100]);
        assert_eq!(numeric("0", Some((12, 2))).unwrap(), [0, 0, 0, 2]);
        assert_eq!(numeric("12345678", None).unwrap(), [2, 1, 0, 0, 1234, 5678]);
        assert_eq!(numeric("10000", None).unwrap(), [1, 1, 0, 0, 1]);
        assert_eq!(
            numeric("1.005", Some((5, 2))).unwrap(),
            [2, 0, 0, 2, 1, 100]
        );
        assert_eq!(numeric("9.995", Some((5, 2))).unwrap(), [1, 0, 0, 2, 10]);
        assert_eq!(numeric("1e3", None).unwrap(), [1, 0, 0, 0, 1000]);
        assert_eq!(
            numeric("0.00001", Some((10, 5))).unwrap(),
            [1, -2, 0, 5, 1000]
        );
        assert_eq!(
            numeric("-100000000.5", None).unwrap(),
            [4, 2, 0x4000, 1, 1, 0, 0, 5000]
        );
        assert!(numeric("123456789012", Some((12, 2))).is_err());
        assert!(
            numeric("9999999999.995", Some((12, 2))).is_err(),
            "rounds up past the precision"
        );
        assert!(numeric("12a", None).is_err());
        assert!(numeric("", None).is_err());
    }

    #[test]
    fn plain_decimals_take_a_fast_path_that_agrees_with_the_general_one() {
        // An exponent sends the same value down the general path.
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
            for typmod in [None, Some((12, 2)), Some((20, 6)), Some((9, 0))] {
                let plain = numeric(v, typmod);
                let general = numeric(&format!("{v}e0"), typmod);
                assert_eq!(plain, general, "{v} {typmod:?}");
            }
        }
    }

    #[test]
    fn dates_and_timestamps() {
        let utc = TimeZone::parse("UTC").unwrap();
        assert_eq!(parse_date("2000-01-01"), Some(0));
        assert_eq!(parse_date("1999-12-31"), Some(-1));
        assert_eq!(parse_date("2024-02-29"), Some(8825));
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(
            parse_timestamp("2000-01-01T00:00:01Z", &utc, true).unwrap(),
            1_000_000
        );
        assert_eq!(
            parse_timestamp("2000-01-01 01:00:00+01:00", &utc, true).unwrap(),
            0
        );
        assert_eq!(
            parse_timestamp("2000-01-01T00:00:00.5", &utc, true).unwrap(),
            500_000
        );
        let berlin = TimeZone::parse("Europe/Berlin").unwrap();
        assert_eq!(
            parse_timestamp("2000-01-01T01:00:00", &berlin, true).unwrap(),
            0,
            "a naive timestamp takes the model's zone"
        );
        assert!(
            parse_timestamp("2024-03-31T02:30:00", &berlin, true).is_err(),
            "DST gap"
        );
        assert!(parse_timestamp("yesterday", &utc, true).is_err());
        assert!(parse_timestamp("2024-01-01T25:00:00Z", &utc, true).is_err());
    }

    #[test]
    fn ints_and_bools() {
        assert_eq!(parse_int(" 42 ", i64::MIN, i64::MAX, "bigint"), Ok(42));
        assert!(parse_int("99999999999", i32::MIN as i64, i32::MAX as i64, "integer").is_err());
        assert!(parse_int("1.0", i64::MIN, i64::MAX, "bigint").is_err());
        assert_eq!(parse_bool("YES"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
