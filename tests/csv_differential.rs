//! CSV semantics identical to PostgreSQL's own `COPY … (FORMAT csv)`:
//! seeded random adversarial files (quotes toggling mid-field, doubled
//! quotes, embedded CR/LF, CRLF line ends, a BOM, NULL vs "", odd
//! delimiters, multi-byte text) are loaded both by PostgreSQL's COPY and by
//! `nexus load` into twin tables, which must match row for row.

mod common;

use std::pin::pin;

use futures_util::SinkExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::NoTls;

use common::TestDb;

const POOL: &[&str] = &[
    "a", "b", "z", "0", "9", " ", "  ", "\t", ",", ";", "|", "\"", "\r", "\n", "\r\n", "é", "日本",
    "🦀", "\\", "\\N", "N", "NULL", ".", "'",
];

/// One field in CSV form: unquoted and quoted segments, quoting toggled
/// anywhere as PostgreSQL allows.
fn field(rng: &mut StdRng, delimiter: char, plain: bool) -> String {
    match rng.random_range(0..10) {
        0 => return String::new(),
        1 if !plain => return "\"\"".into(),
        _ => {}
    }
    let mut out = String::new();
    for _ in 0..rng.random_range(1..=4) {
        let quoted = !plain && rng.random_bool(0.5);
        if quoted {
            out.push('"');
        }
        for _ in 0..rng.random_range(0..6) {
            let piece = POOL[rng.random_range(0..POOL.len())];
            if quoted {
                out.push_str(&piece.replace('"', "\"\""));
            } else if !piece.contains(['"', '\r', '\n', delimiter]) {
                out.push_str(piece);
            }
        }
        if quoted {
            out.push('"');
        }
    }
    out
}

fn file(rng: &mut StdRng, columns: usize, rows: usize, delimiter: char) -> Vec<u8> {
    let eol = if rng.random_bool(0.5) { "\r\n" } else { "\n" };
    let mut s = String::new();
    if rng.random_bool(0.3) {
        s.push('\u{feff}');
    }
    let header: Vec<String> = std::iter::once("id".to_string())
        .chain((1..=columns).map(|i| format!("c{i}")))
        .collect();
    s.push_str(&header.join(&delimiter.to_string()));
    for id in 1..=rows {
        s.push_str(eol);
        s.push_str(&id.to_string());
        // Some records have no quote at all, which is read apart.
        let plain = rng.random_bool(0.3);
        for _ in 0..columns {
            s.push(delimiter);
            s.push_str(&field(rng, delimiter, plain));
        }
    }
    if rng.random_bool(0.5) {
        s.push_str(eol);
    }
    s.into_bytes()
}

fn rows(db: &TestDb, table: &str, columns: usize) -> Vec<Vec<Option<String>>> {
    db.sql(&format!("SELECT * FROM {table} ORDER BY id"))
        .iter()
        .map(|r| {
            let mut v = vec![Some(r.get::<_, i32>(0).to_string())];
            v.extend((1..=columns).map(|i| r.get::<_, Option<String>>(i)));
            v
        })
        .collect()
}

#[test]
fn nexus_reads_csv_exactly_as_postgres_copy_does() {
    let db = TestDb::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for seed in 0..30u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let columns = rng.random_range(1..=5);
        let delimiter = [',', ',', ';', '\t', '|'][rng.random_range(0..5)];
        let n = rng.random_range(1..=300);
        let bytes = file(&mut rng, columns, n, delimiter);
        let cols: Vec<String> = (1..=columns).map(|i| format!("c{i} text")).collect();
        for t in ["by_pg", "by_nexus"] {
            db.exec(&format!(
                "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int, {})",
                cols.join(", ")
            ));
        }
        let delim_sql = if delimiter == '\t' {
            "E'\\t'".to_string()
        } else {
            format!("'{delimiter}'")
        };
        runtime.block_on(async {
            let (client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
            tokio::spawn(conn);
            let sink = client
                .copy_in::<_, bytes::Bytes>(&format!(
                    "COPY by_pg FROM STDIN (FORMAT csv, HEADER, DELIMITER {delim_sql})"
                ))
                .await
                .unwrap();
            let mut sink = pin!(sink);
            sink.send(bytes::Bytes::from(bytes.clone())).await.unwrap();
            sink.as_mut()
                .finish()
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: PostgreSQL refused the file: {e:?}"));
        });
        let path = db.file(&format!("seed{seed}.csv"), &bytes);
        let delim_arg = if delimiter == '\t' {
            "\\t".to_string()
        } else {
            delimiter.to_string()
        };
        let (r, s) = db.load_json(&[
            "--table",
            "by_nexus",
            "--delimiter",
            &delim_arg,
            path.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "seed {seed}: {r:?}");
        assert_eq!(s["rows_rejected"], 0, "seed {seed}: {s}");
        let (a, b) = (rows(&db, "by_pg", columns), rows(&db, "by_nexus", columns));
        assert_eq!(a.len(), n, "seed {seed}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "seed {seed}: row differs");
        }
        assert_eq!(a.len(), b.len(), "seed {seed}");
    }
}
