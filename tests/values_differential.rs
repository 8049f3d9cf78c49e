//! Every value as PostgreSQL reads it, proved against the server.
//!
//! For each supported type, proptest generators make thousands of inputs —
//! well-formed, near misses and random text. Each is given to PostgreSQL
//! by a one-row `COPY … (FORMAT csv)` of its own (the reference: what
//! `psql \copy` would store or refuse) and to Nexus twice:
//!
//! - the encoder's fast path alone ([`encode_field`]): a value it accepts
//!   must be one the server accepts, a value it refuses one the server
//!   refuses; the rest it defers;
//! - `nexus load --table` of all the values as one file (fast path,
//!   server fallback, COPY): the rows it rejects must be exactly the ones
//!   the server refused, and every stored value, read back as text, must
//!   equal the reference's.

mod common;

use std::collections::BTreeMap;
use std::pin::pin;

use futures_util::SinkExt;
use nexus_pipeline::encode::{FieldError, encode_field};
use nexus_pipeline::model::{Column, Rules, TimeZone};
use nexus_pipeline::types::ColumnType;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tokio_postgres::NoTls;

use common::TestDb;

/// Values generated per case.
const PER_CASE: usize = 2000;

/// One type under one session time zone.
struct Case {
    sql_type: &'static str,
    /// `--timezone` for the load.
    zone: &'static str,
    /// The same zone for the reference session, spelled independently.
    reference_zone: &'static str,
    values: BoxedStrategy<String>,
}

fn pick(words: &'static [&'static str]) -> BoxedStrategy<String> {
    proptest::sample::select(words)
        .prop_map(str::to_string)
        .boxed()
}

fn re(pattern: &'static str) -> BoxedStrategy<String> {
    proptest::string::string_regex(pattern).unwrap().boxed()
}

/// C's spaces, a Unicode space, or nothing, around a value.
fn padded(inner: BoxedStrategy<String>) -> BoxedStrategy<String> {
    let pad = || {
        pick(&[
            "", "", "", " ", "  ", "\t", "\n", "\u{b}", "\u{c}", "\r", "\u{a0}",
        ])
    };
    (pad(), inner, pad())
        .prop_map(|(a, v, b)| format!("{a}{v}{b}"))
        .boxed()
}

/// Random text from characters that matter to the readers.
fn noise(chars: &'static str, max: usize) -> BoxedStrategy<String> {
    let chars: Vec<char> = chars.chars().collect();
    proptest::collection::vec(proptest::sample::select(chars), 0..=max)
        .prop_map(|v| v.into_iter().collect())
        .boxed()
}

fn integers() -> BoxedStrategy<String> {
    let bounds = pick(&[
        "32767",
        "32768",
        "-32768",
        "-32769",
        "2147483647",
        "2147483648",
        "-2147483648",
        "-2147483649",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999999",
        "0",
        "-0",
        "+0",
        "007",
        "+",
        "-",
        "",
        "1_000",
        "0x1F",
        "0X1f",
        "0o17",
        "0b101",
        "1.0",
        "1e3",
        "١٢",
        "1 2",
        "--1",
        "+-1",
    ]);
    prop_oneof![
        3 => padded(any::<i64>().prop_map(|n| n.to_string()).boxed()),
        2 => padded(any::<i32>().prop_map(|n| n.to_string()).boxed()),
        2 => padded(any::<i16>().prop_map(|n| format!("{n:+}")).boxed()),
        3 => padded(bounds),
        2 => noise("0123456789+-_ xXoObBaf.e\t", 10),
    ]
    .boxed()
}

fn decimals() -> BoxedStrategy<String> {
    prop_oneof![
        4 => padded(re("[+-]?[0-9]{0,12}(\\.[0-9]{0,12})?([eE][+-]?[0-9]{1,3})?")),
        1 => padded(re("[+-]?[0-9]{1,40}\\.[0-9]{0,40}")),
        // Around the 38 digits of an i128 (a fuzzing finding).
        1 => re("-?[0-9]{1,6}\\.[0-9]{28,38}"),
        2 => padded(any::<f64>().prop_map(|f| f.to_string()).boxed()),
        1 => padded(any::<f64>().prop_map(|f| format!("{f:e}")).boxed()),
        1 => padded(any::<f32>().prop_map(|f| f.to_string()).boxed()),
        2 => padded(pick(&[
            "NaN", "nan", "-nan", "+NaN", "Infinity", "-Infinity", "+Infinity", "inf", "-inf",
            "+inf", "infinity", "INF", "0x1p3", "0x1.8p-2", "-0x10", "1e309", "-1e309", "1e-400",
            "4.9e-324", "2.4e-324", "2.5e-324", "1.7976931348623157e308", "1.7976931348623159e308",
            "3.4028235e38", "3.4028236e38", "3.5e38", "1.4e-45", "7e-46", "7.1e-46", "1e-46",
            "1.17549435e-38", "1e1000", "1e-1000", "1e1001", "1e-1001", "1e-9223372036854775808",
            "1e9223372036854775807", "1e99999999999999999999", ".", "+.", "1.", ".5", "-.5e1",
            "1e", "1e+", "e5", "1_000.5", "1,5", "", "0.0e-999", "-0", "-0.0",
            "9999999999.995", "99999.995", "0.005", "-0.005", "12345678901234567890.123456789",
        ])),
        1 => noise("0123456789+-.eEnaNIfinityx_ ", 12),
    ]
    .boxed()
}

fn booleans() -> BoxedStrategy<String> {
    prop_oneof![
        4 => padded(re("(?i)(t|tr|tru|true|truex|f|fa|fal|fals|false|falsey|y|ye|yes|yess|n|no|non|o|on|onn|of|off|offf|1|0|2|10|)")),
        1 => noise("tTrRuUeEfFaAlLsSyYnNoO01 ", 6),
    ]
    .boxed()
}

fn dates() -> BoxedStrategy<String> {
    let ymd = (0u32..=10000, 0u32..=13, 0u32..=32);
    prop_oneof![
        5 => padded(ymd.clone().prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")).boxed()),
        1 => ymd.clone().prop_map(|(y, m, d)| format!("{y}-{m}-{d}")).boxed(),
        1 => ymd.clone().prop_map(|(y, m, d)| format!("{y:04}/{m:02}/{d:02}")).boxed(),
        1 => ymd.clone().prop_map(|(y, m, d)| format!("{m:02}/{d:02}/{y:04}")).boxed(),
        1 => ymd.clone().prop_map(|(y, m, d)| format!("{y:04}{m:02}{d:02}")).boxed(),
        1 => (0usize..12, 1u32..=31, 1900u32..=2100).prop_map(|(m, d, y)| {
            const M: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
            format!("{} {d} {y}", M[m])
        }).boxed(),
        1 => pick(&[
            "epoch", "infinity", "-infinity", "J2451545", "2020-01-01 BC", "0001-01-01",
            "9999-12-31", "10000-01-01", "5874897-12-31", "5874898-01-01", "4714-11-24 BC",
            "4714-11-23 BC", "", "2020-02-30", "2020-01-01T00:00", "2020-01-01 12:00+02",
            "20-01-05", "2020.01.05", "January 5, 2020", "5 Jan 2020", "2020-Jan-05",
        ]),
        1 => noise("0123456789-/. :TJanBC", 12),
    ]
    .boxed()
}

fn timestamps() -> BoxedStrategy<String> {
    let date = (1u32..=9999, 1u32..=12, 1u32..=28)
        .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
        .boxed();
    let recent = (1965u32..=2045, 1u32..=12, 1u32..=28)
        .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
        .boxed();
    let time = prop_oneof![
        3 => (0u32..=24, 0u32..=60, 0u32..=60).prop_map(|(h, m, s)| format!("{h:02}:{m:02}:{s:02}")),
        1 => (0u32..=23, 0u32..=59).prop_map(|(h, m)| format!("{h:02}:{m:02}")),
        2 => (0u32..=23, 0u32..=59, 0u32..=59, re("[0-9]{1,9}")).prop_map(|(h, m, s, f)| format!("{h:02}:{m:02}:{s:02}.{f}")),
        1 => pick(&["24:00:00", "23:59:60", "12:00 AM", "12:00 PM", "1:2:3", "10:11:12,5", "02:30:00", "02:30"]),
    ];
    let sep = pick(&["T", " ", " ", "t", "  "]);
    let zone = pick(&[
        "",
        "",
        "",
        "",
        "Z",
        "z",
        " Z",
        "+00",
        "+01",
        "-05",
        "+05:30",
        "-0330",
        "+1545",
        "+15:59",
        "+16:00",
        "-12:00:30",
        " +02:00",
        " UTC",
        " utc",
        " PST",
        " EST",
        " CEST",
        " Europe/Berlin",
        " America/New_York",
        " Asia/Kolkata",
        " Mars/Base",
        "+1",
        "+01:6",
    ]);
    let composed = (prop_oneof![3 => recent, 1 => date], sep, time, zone)
        .prop_map(|(d, s, t, z)| format!("{d}{s}{t}{z}"));
    prop_oneof![
        6 => padded(composed.boxed()),
        1 => padded(re("20(2[0-9])-(03-(2[5-9]|3[01])|10-(2[5-9]|3[01])|11-0[1-7]) 0[0-3]:[0-5][0-9](:[0-5][0-9])?")),
        1 => pick(&[
            "epoch", "infinity", "-infinity", "2020-01-01", "2020-01-01 BC 12:00", "J2451545",
            "Jan 5 2020 10:00", "2020-01-05 10:00:00 +01 BC", "allballs", "", "2020-01-01T",
            "2020-01-01 12:00:00.", "2020-01-01 12:00:00.1234565", "2020-01-01 12:00:00.0000005",
            "2020-01-01 12:00:00.9999995", "1900-06-01 12:00", "1850-06-01 12:00",
            "2040-07-01 12:00", "2100-01-01 00:00", "294276-12-31 23:59:59", "294277-01-01",
        ]),
        1 => noise("0123456789-: T.+Z", 20),
    ]
    .boxed()
}

fn uuids() -> BoxedStrategy<String> {
    let hex = re("[0-9a-fA-F]{32}");
    prop_oneof![
        2 => hex.clone().prop_map(|h| format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])).boxed(),
        1 => hex.clone(),
        1 => hex.clone().prop_map(|h| format!("{{{h}}}")).boxed(),
        2 => (hex.clone(), proptest::collection::vec(any::<bool>(), 16)).prop_map(|(h, dash)| {
            // A hyphen after some groups of four digits.
            let mut s = String::new();
            for (k, c) in h.chars().enumerate() {
                s.push(c);
                if (k + 1) % 4 == 0 && dash[k / 4] && k < 31 {
                    s.push('-');
                }
            }
            s
        }).boxed(),
        2 => (hex, 0usize..34, pick(&["-", " ", "g", "{", "}", ""]), any::<bool>()).prop_map(|(h, at, ins, cut)| {
            let mut s = h;
            let at = at.min(s.len());
            if cut && at < s.len() {
                s.remove(at);
            } else {
                s.insert_str(at, &ins);
            }
            s
        }).boxed(),
        1 => padded(pick(&["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"])),
    ]
    .boxed()
}

/// JSON documents from serde_json's writer, then near misses of them.
fn json_docs() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| n.into()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.into()),
        ".{0,8}".prop_map(serde_json::Value::String),
    ];
    let value = leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z\"\\\\]{0,3}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let doc = value.prop_map(|v| v.to_string()).boxed();
    let mutated = (
        doc.clone(),
        any::<prop::sample::Index>(),
        pick(&[
            "",
            "\"",
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\\",
            "0",
            "-",
            ".",
            "e",
            " ",
            "\n",
            "\u{1}",
            "\\u0000",
            "\\ud800",
            "\\udc00",
            "\\ud800\\udc00",
            "tru",
            "NULL",
            "\u{a0}",
        ]),
        any::<bool>(),
    )
        .prop_map(|(d, at, ins, cut)| {
            let mut s = d;
            let mut at = at.index(s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            if cut && at < s.len() {
                s.remove(at);
            } else {
                s.insert_str(at, &ins);
            }
            s
        });
    prop_oneof![
        4 => doc,
        4 => mutated.boxed(),
        1 => pick(&[
            "1e1000", "1e1001", "-1e-1000", "1e-1001", "[1e99999]", "01", "-0", "1.", ".5", "+1",
            "\"\\u0000\"", "\"\\ud83d\\ude00\"", "\"\\ude00\"", "\"\\ud83d\"", "\"\\ud83dx\"",
            "\"\\/\"", "\"\\a\"", "True", "nul", "\"\t\"", "{\"a\":1,}", "[1,]", "", " ", "{} {}",
        ]),
        1 => (1usize..400).prop_map(|n| "[".repeat(n) + &"]".repeat(n)).boxed(),
        1 => pick(&["100000", "10000", "3000"]).prop_map(|n| {
            let n: usize = n.parse().unwrap();
            "[".repeat(n) + &"]".repeat(n)
        }).boxed(),
    ]
    .boxed()
}

fn byteas() -> BoxedStrategy<String> {
    prop_oneof![
        3 => re("\\\\x([0-9a-fA-F]{2}[ \t\n\r]?){0,8}"),
        2 => re("\\\\[xX][0-9a-fA-FgG \t\u{b}]{0,10}"),
        3 => re("([a-z]|\\\\\\\\|\\\\[0-7]{1,3}|\\\\[0-9a-z]){0,6}"),
        1 => noise("\\x0123456789abcdefg 47", 10),
    ]
    .boxed()
}

fn texts() -> BoxedStrategy<String> {
    prop_oneof![
        4 => ".{0,12}".boxed(),
        2 => noise("a \t\r\n\\\"',é日🦀\u{a0}", 10),
    ]
    .boxed()
}

fn short_texts() -> BoxedStrategy<String> {
    noise("ab  \t\u{3000}é日", 9)
}

fn cases() -> Vec<Case> {
    let case = |sql_type, values| Case {
        sql_type,
        zone: "UTC",
        reference_zone: "SET TIME ZONE 'UTC'",
        values,
    };
    vec![
        case("smallint", integers()),
        case("integer", integers()),
        case("bigint", integers()),
        case("numeric", decimals()),
        case("numeric(12,2)", decimals()),
        case("numeric(5,5)", decimals()),
        case("numeric(30,0)", decimals()),
        case("numeric(40,2)", decimals()),
        case("numeric(1000,30)", decimals()),
        case("real", decimals()),
        case("double precision", decimals()),
        case("boolean", booleans()),
        case("date", dates()),
        case("timestamp", timestamps()),
        case("timestamptz", timestamps()),
        Case {
            sql_type: "timestamptz",
            zone: "Europe/Berlin",
            reference_zone: "SET TIME ZONE 'Europe/Berlin'",
            values: timestamps(),
        },
        Case {
            sql_type: "timestamptz",
            zone: "+05:30",
            reference_zone: "SET TIME ZONE INTERVAL '+05:30' HOUR TO MINUTE",
            values: timestamps(),
        },
        Case {
            sql_type: "timestamp",
            zone: "America/New_York",
            reference_zone: "SET TIME ZONE 'America/New_York'",
            values: timestamps(),
        },
        case("uuid", uuids()),
        case("jsonb", json_docs()),
        case("bytea", byteas()),
        case("text", texts()),
        case("varchar(5)", short_texts()),
        case("char(3)", short_texts()),
    ]
}

fn csv_field(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

/// What the server does with each value: its stored text, or its refusal.
async fn reference(
    db: &TestDb,
    case: &Case,
    table: &str,
    values: &[String],
) -> Vec<Result<String, String>> {
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(case.reference_zone).await.unwrap();
        client
    };
    // Four connections, each taking every fourth value: one COPY per value.
    let lanes = 4;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let client = connect().await;
        let values: Vec<(usize, String)> = values
            .iter()
            .cloned()
            .enumerate()
            .skip(lane)
            .step_by(lanes)
            .collect();
        let copy = format!("COPY {table} (i, v) FROM STDIN (FORMAT csv)");
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for (i, v) in values {
                let line = format!("{i},{}\n", csv_field(&v));
                let result = async {
                    let sink = client.copy_in::<_, bytes::Bytes>(&copy).await?;
                    let mut sink = pin!(sink);
                    sink.send(bytes::Bytes::from(line)).await?;
                    sink.as_mut().finish().await
                }
                .await;
                out.push((
                    i,
                    result.map_err(|e| {
                        e.as_db_error()
                            .map_or(e.to_string(), |d| d.message().to_string())
                    }),
                ));
            }
            out
        }));
    }
    let mut verdicts: Vec<Option<Result<(), String>>> = vec![None; values.len()];
    for t in tasks {
        for (i, r) in t.await.unwrap() {
            verdicts[i] = Some(r.map(|_| ()));
        }
    }
    let stored = stored_texts(db, case, table).await;
    verdicts
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v.unwrap() {
            Ok(()) => Ok(stored.get(&(i as i32)).cloned().expect("a stored row")),
            Err(e) => Err(e),
        })
        .collect()
}

/// `i → v::text` of a table, read in the case's zone.
async fn stored_texts(db: &TestDb, case: &Case, table: &str) -> BTreeMap<i32, String> {
    let (client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(case.reference_zone).await.unwrap();
    client
        .batch_execute("SET extra_float_digits = 3")
        .await
        .unwrap();
    client
        .query(&format!("SELECT i, v::text FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect()
}

#[test]
fn every_type_reads_values_as_postgres_does() {
    let db = TestDb::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::deterministic();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (k, case) in cases().iter().enumerate() {
        let values: Vec<String> = (0..PER_CASE)
            .map(|_| case.values.new_tree(&mut runner).unwrap().current())
            .collect();
        let (reference_table, nexus_table) = (format!("ref_{k}"), format!("nx_{k}"));
        db.exec(&format!(
            "CREATE TABLE {reference_table} (i int, v {ty}); CREATE TABLE {nexus_table} (i int, v {ty});",
            ty = case.sql_type
        ));
        let expected = rt.block_on(reference(&db, case, &reference_table, &values));

        // The fast path alone.
        let column = Column {
            name: "v".into(),
            ty: ColumnType::parse(case.sql_type).unwrap(),
            required: false,
            rules: Rules::default(),
            source: None,
        };
        let zone = TimeZone::parse(case.zone).unwrap();
        let (mut fast, mut refused, mut deferred) = (0, 0, 0);
        for (v, want) in values.iter().zip(&expected) {
            if v.contains('\0') {
                // Refused for the whole record, before any field is read.
                assert!(want.is_err(), "PostgreSQL took a NUL byte: {v:?}");
                refused += 1;
                continue;
            }
            let mut out = Vec::new();
            match (encode_field(&column, &zone, v, &mut out), want) {
                (Ok(()), Ok(_)) => fast += 1,
                (Err(FieldError::Invalid(_)), Err(_)) => refused += 1,
                (Err(FieldError::Defer), _) => deferred += 1,
                (Ok(()), Err(e)) => failures.push(format!(
                    "{}: fast path accepted {v:?}; PostgreSQL: {e}",
                    case.sql_type
                )),
                (Err(FieldError::Invalid(why)), Ok(s)) => failures.push(format!(
                    "{}: fast path refused {v:?} ({why}); PostgreSQL stores {s:?}",
                    case.sql_type
                )),
            }
        }

        // The whole load.
        let mut csv = String::from("i,v\n");
        for (i, v) in values.iter().enumerate() {
            csv.push_str(&format!("{i},{}\n", csv_field(v)));
        }
        let file = db.file(&format!("case{k}.csv"), csv);
        let run = db.run(&[
            "load",
            "--table",
            &nexus_table,
            "--timezone",
            case.zone,
            "--json",
            file.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 0, "{}: {run:?}", case.sql_type);
        let stored = rt.block_on(stored_texts(&db, case, &nexus_table));
        let rejected: BTreeMap<usize, String> = db
            .sql("SELECT raw, reason FROM nexus.rejects r JOIN nexus.jobs j ON j.id = r.job_id ORDER BY j.created_at DESC, line")
            .iter()
            .filter_map(|r| {
                let raw: String = r.get(0);
                let i: usize = raw.split(',').next()?.parse().ok()?;
                Some((i, r.get(1)))
            })
            .collect();
        for (i, (v, want)) in values.iter().zip(&expected).enumerate() {
            let got = match (stored.get(&(i as i32)), rejected.get(&i)) {
                (Some(s), None) => Ok(s.clone()),
                (None, Some(why)) => Err(why.clone()),
                other => panic!(
                    "{}: value {i} {v:?} is both or neither stored and rejected: {other:?}",
                    case.sql_type
                ),
            };
            match (&got, want) {
                (Ok(g), Ok(w)) if g == w => {}
                (Err(_), Err(_)) => {}
                _ => failures.push(format!(
                    "{} (zone {}): {v:?}: nexus {got:?}, PostgreSQL {want:?}",
                    case.sql_type, case.zone
                )),
            }
        }
        db.exec("DELETE FROM nexus.rejects");
        let accepted = expected.iter().filter(|e| e.is_ok()).count();
        report.push(format!(
            "{:<18} {:<16} {PER_CASE} values: PostgreSQL accepts {accepted}; fast path accepts {fast}, refuses {refused}, defers {deferred}",
            case.sql_type, case.zone
        ));
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
