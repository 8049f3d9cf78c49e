//! NDJSON input: a value reads as the same text would in a CSV field, so
//! PostgreSQL is the reference — seeded random files are loaded as NDJSON by
//! `nexus load` and, written as CSV with the same texts, by PostgreSQL's
//! COPY into twin tables, which must match row for row. Then the lines that
//! are not objects of the model's columns, each a reject with its line;
//! compressed files; and uploads that say they are NDJSON.

mod common;

use std::io::Write;
use std::pin::pin;

use futures_util::SinkExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

use common::TestDb;
use common::server::{ADMIN_PW, Server, accepted};

const TABLE: &str = "(id int PRIMARY KEY, n numeric, i bigint, f double precision, b boolean, \
     t text, d date, ts timestamptz, j jsonb)";
const COLUMNS: [&str; 8] = ["n", "i", "f", "b", "t", "d", "ts", "j"];

/// One value of a column: its JSON text in the line (None: the key is
/// left out), and the text PostgreSQL reads from the CSV (None: NULL).
fn value(rng: &mut StdRng, column: &str) -> (Option<String>, Option<String>) {
    let pick = |rng: &mut StdRng, from: &[&str]| from[rng.random_range(0..from.len())].to_string();
    if rng.random_range(0..8) == 0 {
        return if rng.random_bool(0.5) {
            (Some("null".into()), None)
        } else {
            (None, None)
        };
    }
    let as_string = rng.random_bool(0.5);
    let text = match column {
        "n" => pick(
            rng,
            &[
                "0",
                "-1.50",
                "12345678901234567890.0123456789",
                "1e3",
                "-2.5E-3",
                "7",
            ],
        ),
        "i" => pick(
            rng,
            &["0", "-9223372036854775808", "9223372036854775807", "42"],
        ),
        "f" => pick(
            rng,
            &[
                "1.5",
                "-0",
                "1e-10",
                "3.141592653589793",
                "1.7976931348623157e308",
            ],
        ),
        "b" => pick(rng, &["true", "false"]),
        "t" => {
            let words = [
                "a", "é", "日本", "🦀", "\"", "\\", "\t", " ", "NULL", "\\N", ",",
            ];
            (0..rng.random_range(0..5))
                .map(|_| pick(rng, &words))
                .collect()
        }
        "d" => pick(rng, &["2024-02-29", "1999-12-31", "0001-01-01"]),
        "ts" => pick(
            rng,
            &[
                "2024-01-02 03:04:05+02",
                "2024-06-30T23:59:59.123456Z",
                "1970-01-01 00:00:00+00",
            ],
        ),
        "j" => pick(
            rng,
            &[
                r#"{"a": [1, 2.50, null], "b": {"c": "d"}}"#,
                "[]",
                "3",
                r#""s""#,
                "true",
            ],
        ),
        _ => unreachable!(),
    };
    // Written as it is (a number, boolean or nested value, exactly as the
    // text), or as a JSON string holding the text.
    let native = match column {
        "t" | "d" | "ts" => false,
        _ => serde_json::from_str::<Value>(&text).is_ok_and(|v| !v.is_string()),
    };
    let json = if native && !as_string {
        text.clone()
    } else {
        serde_json::to_string(&text).unwrap()
    };
    (Some(json), Some(text))
}

fn csv_field(text: &Option<String>) -> String {
    match text {
        None => String::new(),
        Some(t) => format!("\"{}\"", t.replace('"', "\"\"")),
    }
}

#[test]
fn ndjson_values_load_as_postgres_reads_the_same_texts() {
    let db = TestDb::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(1..=200);
        let (mut lines, mut csv) = (String::new(), format!("id,{}\n", COLUMNS.join(",")));
        for id in 1..=n {
            let mut members = vec![format!("\"id\": {id}")];
            let mut fields = vec![id.to_string()];
            for c in COLUMNS {
                let (j, text) = value(&mut rng, c);
                if let Some(j) = j {
                    members.push(format!("\"{c}\": {j}"));
                }
                fields.push(csv_field(&text));
            }
            lines.push_str(&format!("{{{}}}\n", members.join(", ")));
            csv.push_str(&fields.join(","));
            csv.push('\n');
        }
        for t in ["by_pg", "by_nexus"] {
            db.exec(&format!(
                "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} {TABLE}"
            ));
        }
        runtime.block_on(async {
            let (client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
            tokio::spawn(conn);
            let sink = client
                .copy_in::<_, bytes::Bytes>("COPY by_pg FROM STDIN (FORMAT csv, HEADER)")
                .await
                .unwrap();
            let mut sink = pin!(sink);
            sink.send(bytes::Bytes::from(csv.clone())).await.unwrap();
            sink.as_mut().finish().await.unwrap_or_else(|e| {
                panic!("seed {seed}: PostgreSQL refused the CSV: {e:?}\n{csv}")
            });
        });
        let path = db.file(&format!("seed{seed}.ndjson"), &lines);
        let (r, s) = db.load_json(&["--table", "by_nexus", path.to_str().unwrap()]);
        assert_eq!(r.code, 0, "seed {seed}: {r:?}");
        if s["rows_rejected"] != 0 {
            let why = db.sql("SELECT line::text || ' ' || coalesce(\"column\", '') || ': ' || reason || ' ' || raw FROM nexus.rejects LIMIT 3");
            let why: Vec<String> = why.iter().map(|r| r.get(0)).collect();
            panic!("seed {seed}: {s}: {why:?}");
        }
        let (a, b) = (
            db.rows_as_text("by_pg", &COLUMNS),
            db.rows_as_text("by_nexus", &COLUMNS),
        );
        assert_eq!(a.len(), n as usize, "seed {seed}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "seed {seed}: row differs");
        }
        assert_eq!(a.len(), b.len(), "seed {seed}");
    }
}

/// A model of the test table with a required key and a rule.
fn model(db: &TestDb) -> std::path::PathBuf {
    db.file(
        "models.toml",
        "[models.item]\ntable = \"item\"\nkey = [\"id\"]\n\
         [[models.item.columns]]\nname = \"id\"\ntype = \"bigint\"\nrequired = true\n\
         [[models.item.columns]]\nname = \"qty\"\ntype = \"integer\"\nmin = 0\n\
         [[models.item.columns]]\nname = \"Label\"\nsource = \"label\"\ntype = \"text\"\n\
         [[models.item.columns]]\nname = \"attrs\"\ntype = \"jsonb\"\n",
    )
}

#[test]
fn lines_that_are_not_objects_of_the_model_are_rejects_with_their_line() {
    let db = TestDb::new();
    let models = model(&db);
    let lines = [
        r#"{"id": 1, "qty": 2, "LABEL": "case-insensitive key", "attrs": {"k": [1, 2]}}"#,
        r#"[1, 2]"#,
        r#"{"id": 2, "qty": -1}"#,
        r#"{"qty": 3}"#,
        r#"{"id": 3, "qty": {"n": 1}}"#,
        r#"{"id": 4, "colour": "red"}"#,
        r#"{"id": 5, "id": 6}"#,
        r#"{"id": 7"#,
        "",
        r#"{"id": 8, "qty": "12", "label": null}"#,
        r#"{"id": 9, "attrs": "not json"}"#,
    ];
    let path = db.file("items.jsonl", lines.join("\n") + "\n");
    let r = db.run_with_models(
        &models,
        &["load", "--json", "--model", "item", path.to_str().unwrap()],
    );
    let s: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_read"], 11, "{s}");
    assert_eq!(s["rows_committed"], 2, "{s}");
    assert_eq!(
        db.value("SELECT string_agg(id || ':' || coalesce(qty::text, '-') || ':' || coalesce(\"Label\", '-') || ':' || coalesce(attrs::text, '-'), ' ' ORDER BY id) FROM item")
            .as_deref(),
        Some(r#"1:2:case-insensitive key:{"k": [1, 2]} 8:12:-:-"#)
    );
    let rejects: Vec<(i64, Option<String>, String)> = db
        .sql("SELECT line, \"column\", reason FROM nexus.rejects ORDER BY line")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expect: [(i64, Option<&str>, &str); 9] = [
        (2, None, "not a JSON object"),
        (3, Some("qty"), "below"),
        (4, Some("id"), "required but null or absent"),
        (5, Some("qty"), "not a JSON object"),
        (6, None, "`colour` names no column"),
        (7, Some("id"), "more than once"),
        (8, None, "not valid JSON"),
        (9, None, "empty line"),
        (11, Some("attrs"), "not valid JSON"),
    ];
    assert_eq!(rejects.len(), expect.len(), "{rejects:?}");
    for ((line, column, reason), (l, c, says)) in rejects.iter().zip(expect) {
        assert_eq!((*line, column.as_deref()), (l, c), "{rejects:?}");
        assert!(reason.contains(says), "line {l}: {reason}");
    }
}

#[test]
fn compressed_ndjson_and_ndjson_uploads_load() {
    let db = TestDb::new();
    let models = model(&db);
    let mut body = String::new();
    for i in 1..=500 {
        body.push_str(&json!({"id": i, "qty": i % 7, "label": format!("item {i}")}).to_string());
        body.push('\n');
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body.as_bytes()).unwrap();
    let path = db.file("items.ndjson.gz", gz.finish().unwrap());
    let r = db.run_with_models(
        &models,
        &["load", "--model", "item", path.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(db.count("item"), 500);
    // The same rows as an upload that says what it is: by Content-Type, and
    // by `format` with a file name that says nothing.
    let s = Server::start(&db, &[("NEXUS_MODELS", models.to_str().unwrap())]);
    let (token, _) = s.tokens("admin", ADMIN_PW);
    let upsert = body.replace("item ", "changed ");
    for (query, content_type) in [
        ("model=item&mode=upsert", "application/x-ndjson"),
        (
            "model=item&mode=upsert&format=ndjson&force=true",
            "application/octet-stream",
        ),
    ] {
        let id = accepted(s.upload(
            &token,
            query,
            upsert.as_bytes().to_vec(),
            &[("content-type", content_type)],
        ));
        let done = s.wait_status(&token, &id, "succeeded");
        assert_eq!(done["rows_committed"], 500, "{query}: {done}");
    }
    assert_eq!(
        db.value("SELECT count(*)::text FROM item WHERE \"Label\" LIKE 'changed %'")
            .as_deref(),
        Some("500")
    );
}
