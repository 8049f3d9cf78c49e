//! Rows as JSON, proved against the server: thousands of generated rows
//! over every supported type (random bit patterns for numbers, dates and
//! timestamps across their whole ranges, non-canonical numerics, jsonb with
//! duplicate keys and escapes, text with control characters) are COPYed in
//! binary into a table, and `RowJson` of each COPY row must print exactly
//! what `row_to_json` prints for the stored row, in a session with the
//! settings the cache pins — from the rows as sent and from the rows as the
//! server sends them back.

mod common;

use std::pin::pin;

use futures_util::{SinkExt, StreamExt};
use nexus_pipeline::encode::{COPY_HEADER, COPY_TRAILER};
use nexus_pipeline::row_json::RowJson;
use nexus_pipeline::types::ColumnType;
use nexus_pipeline::values::{self, Verdict};
use tokio_postgres::NoTls;

use common::TestDb;

const ROWS: usize = 20_000;

/// A small deterministic generator (splitmix64); the seed is printed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo.wrapping_add((self.next() % (hi.wrapping_sub(lo) as u64)) as i64)
    }
}

/// Characters that matter to JSON escaping and to character counts.
const CHARS: &[&str] = &[
    "a", "Z", "0", " ", "\"", "\\", "/", "\n", "\r", "\t", "\u{8}", "\u{c}", "\u{1}", "\u{1f}",
    "\u{7f}", "é", "ß", "中", "😀", "\u{2028}", "{", "}", ",", ":",
];

fn text(g: &mut Gen, max: u64) -> String {
    let n = g.below(max + 1);
    (0..n).map(|_| *g.pick(CHARS)).collect()
}

/// A JSON number in one of the spellings jsonb normalises.
fn json_number(g: &mut Gen) -> String {
    let int = g.below(100_000).to_string();
    let mut s = match g.below(6) {
        0 => "0".to_string(),
        1 => format!("-{int}"),
        _ => int,
    };
    if g.chance(50) {
        s.push('.');
        s.push_str(&g.below(10_000).to_string());
        if g.chance(30) {
            s.push_str("000");
        }
    }
    if g.chance(30) {
        let e: &&str = g.pick(&["e", "E", "e+", "e-", "E-"]);
        s.push_str(e);
        s.push_str(&g.below(40).to_string());
    }
    s
}

fn json_string(g: &mut Gen) -> String {
    let mut s = String::from("\"");
    for _ in 0..g.below(6) {
        s.push_str(match g.below(12) {
            0 => "\\\"",
            1 => "\\\\",
            2 => "\\/",
            3 => "\\n",
            4 => "\\u00e9",
            5 => "\\ud83d\\ude00",
            6 => "\\u001f",
            7 => "\\b",
            8 => "é",
            9 => "k",
            10 => "kk",
            _ => "x y",
        });
    }
    s.push('"');
    s
}

fn json(g: &mut Gen, depth: u32) -> String {
    let ws = |g: &mut Gen| g.pick(&["", "", " ", "\n", " \t "]).to_string();
    let kind = if depth > 3 { g.below(4) } else { g.below(6) };
    match kind {
        0 => json_number(g),
        1 => json_string(g),
        2 => g.pick(&["true", "false", "null"]).to_string(),
        3 if depth > 0 => json_number(g),
        3 | 4 => {
            let items: Vec<String> = (0..g.below(4))
                .map(|_| format!("{}{}{}", ws(g), json(g, depth + 1), ws(g)))
                .collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            // Few distinct keys, so duplicates are common.
            let keys = [
                "\"a\"",
                "\"b\"",
                "\"aa\"",
                "\"ab\"",
                "\"\"",
                "\"\\u00e9\"",
                "\"é\"",
            ];
            let members: Vec<String> = (0..g.below(5))
                .map(|_| {
                    let k = g.pick(&keys).to_string();
                    format!("{}{k}{}:{}{}", ws(g), ws(g), ws(g), json(g, depth + 1))
                })
                .collect();
            format!("{{{}}}", members.join(","))
        }
    }
}

/// `numeric_recv`'s input: any digit groups (leading and trailing zeros
/// included), weight, sign and display scale.
fn raw_numeric(g: &mut Gen) -> Vec<u8> {
    let sign: u16 = *g.pick(&[0, 0, 0, 0x4000, 0x4000, 0xC000, 0xD000, 0xF000]);
    let special = sign >= 0xC000;
    let n = if special { 0 } else { g.below(6) as u16 };
    let mut v = Vec::new();
    v.extend_from_slice(&n.to_be_bytes());
    v.extend_from_slice(&(g.range(-6, 6) as i16).to_be_bytes());
    v.extend_from_slice(&sign.to_be_bytes());
    v.extend_from_slice(&(if special { 0 } else { g.below(25) as u16 }).to_be_bytes());
    for _ in 0..n {
        let d = if g.chance(20) {
            0
        } else {
            g.below(10_000) as u16
        };
        v.extend_from_slice(&d.to_be_bytes());
    }
    v
}

/// A numeric as the encoder writes it from text.
fn typed_numeric(g: &mut Gen, typmod: Option<(u16, u16)>) -> Vec<u8> {
    loop {
        let text = match typmod {
            Some(_) => format!(
                "{}{}.{}",
                g.pick(&["", "-"]),
                g.below(10_000_000_000),
                g.below(1000)
            ),
            None => json_number(g),
        };
        let mut out = Vec::new();
        if let Verdict::Value(_) = values::numeric(&text, typmod, &mut out) {
            return out;
        }
    }
}

fn float8(g: &mut Gen) -> f64 {
    match g.below(4) {
        0 => f64::from_bits(g.next()),
        1 => *g.pick(&[
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e15,
            1e14,
            1e-4,
            1e-5,
            123456789012345.6,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
        ]),
        _ => (g.range(-1_000_000, 1_000_000) as f64) * 10f64.powi(g.range(-25, 25) as i32),
    }
}

fn float4(g: &mut Gen) -> f32 {
    match g.below(4) {
        0 => f32::from_bits(g.next() as u32),
        1 => *g.pick(&[
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e6,
            1e5,
            999999.0,
            1e-4,
            1e-5,
            f32::MAX,
            1e-45,
        ]),
        _ => (g.range(-100_000, 100_000) as f32) * 10f32.powi(g.range(-12, 12) as i32),
    }
}

/// Valid dates and timestamps (PostgreSQL's range) and the infinities.
const MIN_DATE: i64 = -2_451_545;
const END_DATE: i64 = 2_145_031_949;
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

fn date(g: &mut Gen) -> i32 {
    match g.below(5) {
        0 => *g.pick(&[
            i32::MIN,
            i32::MAX,
            MIN_DATE as i32,
            END_DATE as i32 - 1,
            0,
            -730_120,
            -730_121,
        ]),
        1 => g.range(-800_000, -700_000) as i32,
        2 => g.range(-40_000, 40_000) as i32,
        _ => g.range(MIN_DATE, END_DATE) as i32,
    }
}

fn timestamp(g: &mut Gen) -> i64 {
    match g.below(5) {
        0 => *g.pick(&[
            i64::MIN,
            i64::MAX,
            MIN_TIMESTAMP,
            END_TIMESTAMP - 1,
            0,
            -1,
            1,
            500_000,
        ]),
        1 => g.range(-63_200_000_000_000_000, -63_000_000_000_000_000),
        2 => g.range(-4_000_000_000_000_000, 4_000_000_000_000_000) / 1000 * 1000,
        _ => g.range(MIN_TIMESTAMP, END_TIMESTAMP),
    }
}

/// The table: every type, a name that needs escaping, and a column the
/// COPY leaves out (NULL).
const TABLE: &str = r#"CREATE TABLE t (
    n int, b boolean, i2 smallint, i4 int, i8 bigint, f4 real, f8 double precision,
    num numeric, num2 numeric(12,2), num5 numeric(20,5), tx text, vc varchar(20), ch char(5), c1 char,
    d date, ts timestamp, tz timestamptz, u uuid, j jsonb, by bytea, "we""ird \ é" int, skipped text)"#;
const COPIED: usize = 21;

fn field(v: Option<&[u8]>, row: &mut Vec<u8>) {
    match v {
        None => row.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            row.extend_from_slice(&(v.len() as i32).to_be_bytes());
            row.extend_from_slice(v);
        }
    }
}

fn row(g: &mut Gen, n: i32) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&(COPIED as i16).to_be_bytes());
    field(Some(&n.to_be_bytes()), &mut r);
    for col in 1..COPIED {
        if g.chance(8) {
            field(None, &mut r);
            continue;
        }
        let v: Vec<u8> = match col {
            1 => vec![g.below(2) as u8],
            2 => (g.next() as i16).to_be_bytes().to_vec(),
            3 => (g.next() as i32).to_be_bytes().to_vec(),
            4 => (g.next() as i64).to_be_bytes().to_vec(),
            5 => float4(g).to_be_bytes().to_vec(),
            6 => float8(g).to_be_bytes().to_vec(),
            7 if g.chance(50) => raw_numeric(g),
            7 => typed_numeric(g, None),
            8 => typed_numeric(g, Some((12, 2))),
            9 => typed_numeric(g, Some((20, 5))),
            10 => text(g, 12).into_bytes(),
            11 => text(g, 20).into_bytes(),
            12 => text(g, 5).into_bytes(),
            13 => text(g, 1).into_bytes(),
            14 => date(g).to_be_bytes().to_vec(),
            15 | 16 => timestamp(g).to_be_bytes().to_vec(),
            17 => (0..16).map(|_| g.next() as u8).collect(),
            18 => {
                let mut v = vec![1];
                v.extend_from_slice(json(g, 0).as_bytes());
                v
            }
            19 => (0..g.below(8)).map(|_| g.next() as u8).collect(),
            _ => (g.next() as i32).to_be_bytes().to_vec(),
        };
        field(Some(&v), &mut r);
    }
    r
}

/// The COPY rows of a binary COPY body.
fn split_rows(body: &[u8]) -> Vec<&[u8]> {
    let mut rows = Vec::new();
    // Header: signature (11), flags (4), extension length (4) and area.
    let ext = u32::from_be_bytes(body[15..19].try_into().unwrap()) as usize;
    let mut at = 19 + ext;
    loop {
        let count = i16::from_be_bytes([body[at], body[at + 1]]);
        if count < 0 {
            return rows;
        }
        let start = at;
        at += 2;
        for _ in 0..count {
            let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
            at += 4 + len.max(0) as usize;
        }
        rows.push(&body[start..at]);
    }
}

#[test]
fn row_json_is_row_to_json() {
    let db = TestDb::new();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(compare(&db));
}

async fn compare(db: &TestDb) {
    let seed = std::env::var("NEXUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    eprintln!("seed {seed} (NEXUS_SEED repeats it)");
    let mut g = Gen(seed);
    let (client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "{TABLE}; SET TimeZone = 'UTC'; SET extra_float_digits = 1; SET bytea_output = 'hex'"
        ))
        .await
        .unwrap();

    let rows: Vec<Vec<u8>> = (0..ROWS).map(|n| row(&mut g, n as i32)).collect();
    let mut body = COPY_HEADER.to_vec();
    rows.iter().for_each(|r| body.extend_from_slice(r));
    body.extend_from_slice(COPY_TRAILER);
    let columns: Vec<String> = client
        .query(
            "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .take(COPIED)
        .collect();
    let copy = format!("COPY t ({}) FROM STDIN (FORMAT binary)", columns.join(", "));
    let sink = client.copy_in::<_, bytes::Bytes>(&copy).await.unwrap();
    let mut sink = pin!(sink);
    sink.send(bytes::Bytes::from(body)).await.unwrap();
    sink.as_mut().finish().await.unwrap();

    let table: Vec<(String, ColumnType)> = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = 't'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), ColumnType::parse(r.get(1)).unwrap()))
        .collect();
    let shape = RowJson::new(
        table
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| (name.as_str(), *ty, (i < COPIED).then_some(i))),
    );
    let expected: Vec<String> = client
        .query("SELECT row_to_json(t)::text FROM t ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(expected.len(), ROWS);

    // The server's own binary form of the stored rows.
    let out = client
        .copy_out(&format!(
            "COPY (SELECT {} FROM t ORDER BY n) TO STDOUT (FORMAT binary)",
            columns.join(", ")
        ))
        .await
        .unwrap();
    let mut out = pin!(out);
    let mut returned = Vec::new();
    while let Some(chunk) = out.next().await {
        returned.extend_from_slice(&chunk.unwrap());
    }
    let returned = split_rows(&returned);

    let mut wrong = Vec::new();
    for (n, want) in expected.iter().enumerate() {
        for (what, r) in [("as sent", &rows[n][..]), ("as returned", returned[n])] {
            let mut got = Vec::new();
            let got = match shape.write(r, &mut got) {
                Ok(()) => String::from_utf8(got).unwrap(),
                Err(e) => format!("<{e}>"),
            };
            if got != *want {
                wrong.push(format!("row {n} {what}:\n  server {want}\n  nexus  {got}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows differ (seed {seed}); first:\n{}",
        wrong.len(),
        2 * ROWS,
        wrong[..wrong.len().min(8)].join("\n")
    );
}
