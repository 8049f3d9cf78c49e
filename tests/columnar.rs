//! Parquet and Arrow IPC input, with files written by pyarrow (in a venv
//! that `scripts/test.sh` makes): PostgreSQL is the reference — seeded
//! random rows of every supported Arrow type are loaded by `nexus load`
//! from Parquet (each codec, several row groups, dictionaries), an Arrow
//! IPC file and an Arrow IPC stream, and by PostgreSQL's COPY from the
//! same values as CSV text; the tables must match row for row. Then the
//! files that cannot load (a column of the wrong type, truncated, not the
//! format), rows that do not fit (rejects by row number across row
//! groups), uploads that say they are Parquet, and memory bounded by a
//! batch for a file of one huge row group.

mod common;

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Command;

use futures_util::SinkExt;
use serde_json::Value;
use tokio_postgres::NoTls;

use common::TestDb;
use common::server::{ADMIN_PW, Server, accepted};

/// Runs one of the pyarrow scripts of `tests/columnar/`.
fn python(script: &str, args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/columnar");
    let out = Command::new(dir.join(".venv/bin/python"))
        .arg(dir.join(script))
        .args(args)
        .output()
        .expect("the pyarrow venv (scripts/test.sh makes it)");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn copy_csv(db: &TestDb, table: &str, csv: &Path) {
    let csv = std::fs::read(csv).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        // Zoneless values into timestamptz read in the load's zone: UTC.
        client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        let sink = client
            .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN (FORMAT csv, HEADER)"))
            .await
            .unwrap();
        let mut sink = pin!(sink);
        sink.send(bytes::Bytes::from(csv)).await.unwrap();
        sink.as_mut()
            .finish()
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL refused the CSV: {e:?}"));
    });
}

#[test]
fn columnar_values_load_as_postgres_reads_their_text() {
    let db = TestDb::new();
    for (seed, codec) in [
        (1, "snappy"),
        (2, "zstd"),
        (3, "gzip"),
        (4, "none"),
        (5, "snappy"),
    ] {
        let dir = db.dir.path().join(format!("seed{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        let spec: Value = serde_json::from_str(&python(
            "write.py",
            &[dir.to_str().unwrap(), &seed.to_string(), "300", codec],
        ))
        .unwrap();
        let columns: Vec<String> = spec["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        let table = spec["table"].as_str().unwrap();
        db.exec(&format!(
            "DROP TABLE IF EXISTS by_pg; CREATE TABLE by_pg {table}"
        ));
        copy_csv(&db, "by_pg", &dir.join("data.csv"));
        let expected = db.rows_as_text("by_pg", &columns);
        assert_eq!(expected.len(), 300);
        for file in [
            "data.parquet",
            "data.arrow",
            "data.arrows",
            "data.feather",
            "data.zstd.arrows",
        ] {
            db.exec(&format!(
                "DROP TABLE IF EXISTS by_nexus; CREATE TABLE by_nexus {table}"
            ));
            let path = dir.join(file);
            let (r, s) = db.load_json(&["--table", "by_nexus", path.to_str().unwrap()]);
            assert_eq!(r.code, 0, "seed {seed} {file}: {r:?}");
            if s["rows_rejected"] != 0 {
                let why = db.sql("SELECT line::text || ' ' || coalesce(\"column\", '') || ': ' || reason FROM nexus.rejects LIMIT 3");
                let why: Vec<String> = why.iter().map(|r| r.get(0)).collect();
                panic!("seed {seed} {file}: {s}: {why:?}");
            }
            let got = db.rows_as_text("by_nexus", &columns);
            for (x, y) in expected.iter().zip(&got) {
                assert_eq!(x, y, "seed {seed} {codec} {file}: row differs");
            }
            assert_eq!(expected.len(), got.len(), "seed {seed} {file}");
        }
    }
}

fn cases(db: &TestDb, big_rows: Option<u64>) -> PathBuf {
    let dir = db.dir.path().join("cases");
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec![dir.to_str().unwrap().to_string()];
    args.extend(big_rows.map(|n| n.to_string()));
    python(
        "cases.py",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    dir
}

#[test]
fn files_that_cannot_load_fail_before_any_row_and_rows_that_do_not_fit_are_rejects() {
    let db = TestDb::new();
    let dir = cases(&db, None);
    db.exec("CREATE TABLE item (id bigint PRIMARY KEY, qty smallint, note text)");
    let load = |file: &Path, extra: &[&str]| {
        let mut args = vec!["--table", "item"];
        args.extend_from_slice(extra);
        args.push(file.to_str().unwrap());
        db.load_json(&args)
    };
    // A column whose type cannot become its column's: nothing loads.
    let (r, s) = load(&dir.join("mismatch.parquet"), &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("`qty`") && error.contains("Boolean") && error.contains("smallint"),
        "{error}"
    );
    // Truncated, or not the format at all: a clear error, no panic.
    let whole = std::fs::read(dir.join("items.parquet")).unwrap();
    let truncated = db.file("truncated.parquet", &whole[..whole.len() / 2]);
    let not_parquet = db.file("rows.parquet", "id,qty\n1,2\n");
    for (file, extra) in [
        (&truncated, &[][..]),
        (&not_parquet, &["--format", "parquet"][..]),
    ] {
        let (r, s) = load(file, extra);
        assert_eq!(r.code, 1, "{r:?}");
        let error = s["error"].as_str().unwrap();
        assert!(error.contains("cannot read the parquet file"), "{error}");
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
    let stream = {
        let (r, _) = db.load_json(&[
            "--table",
            "item",
            dir.join("items.parquet").to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{r:?}");
        db.exec("TRUNCATE item");
        // The same rows as an Arrow stream, cut short.
        let out = db.dir.path().join("items.arrows");
        python_convert(&dir.join("items.parquet"), &out);
        let bytes = std::fs::read(&out).unwrap();
        db.file("cut.arrows", &bytes[..bytes.len() * 2 / 3])
    };
    let (r, s) = load(&stream, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("cannot read the arrow file"),
        "{s}"
    );
    assert_eq!(db.count("item"), s["rows_committed"].as_i64().unwrap());
    // A footer whose lists claim billions of empty elements (found by the
    // fuzz target: parquet-rs skipped them for half a minute): refused
    // before parquet-rs reads it.
    let hostile =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/columnar/footer-skip-hang.parquet");
    let (r, s) = load(&hostile, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("footer (file metadata) is malformed"),
        "{error}"
    );
    // A compressed buffer that claims 1 TiB: refused before anything is
    // allocated for it.
    let (r, s) = load(&dir.join("claims.arrows"), &[]);
    assert_eq!(r.code, 1, "{r:?}");
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("claims more than 1024 MiB"), "{error}");
    db.exec("TRUNCATE item; DELETE FROM nexus.rejects");
    // Rows that do not fit: rejects by row number across row groups of 3,
    // each with its row as JSON.
    let (r, s) = load(&dir.join("ranges.parquet"), &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        (s["rows_committed"].as_i64(), s["rows_rejected"].as_i64()),
        (Some(7), Some(3)),
        "{s}"
    );
    let rejects: Vec<(i64, String, String, String)> = db
        .sql("SELECT line, \"column\", reason, raw FROM nexus.rejects ORDER BY line")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let lines: Vec<i64> = rejects.iter().map(|r| r.0).collect();
    assert_eq!(lines, [5, 8, 9], "{rejects:?}");
    assert_eq!(rejects[0].1, "qty");
    assert!(
        rejects[0].2.contains("out of range for type smallint"),
        "{rejects:?}"
    );
    assert_eq!(rejects[0].3, r#"{"id":5,"qty":40000,"note":"e"}"#);
    assert!(rejects[1].2.contains("required"), "{rejects:?}");
    assert!(rejects[2].2.contains("NUL"), "{rejects:?}");
    // Loaded again, the same file is skipped: it is the same job.
    let (r, s) = load(&dir.join("ranges.parquet"), &[]);
    assert_eq!((r.code, s["status"].as_str()), (0, Some("skipped")), "{s}");
}

/// Rewrites a Parquet file as an Arrow IPC stream, with pyarrow.
fn python_convert(parquet: &Path, arrows: &Path) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/columnar");
    let out = Command::new(dir.join(".venv/bin/python"))
        .args([
            "-c",
            "import sys, pyarrow.parquet as pq, pyarrow.ipc as ipc\n\
             t = pq.read_table(sys.argv[1])\n\
             with ipc.new_stream(sys.argv[2], t.schema) as w: w.write_table(t, max_chunksize=100)",
        ])
        .arg(parquet)
        .arg(arrows)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn parquet_uploads_load_by_content_type_and_by_magic() {
    let db = TestDb::new();
    let dir = cases(&db, None);
    let models = db.file(
        "models.toml",
        "[models.item]\ntable = \"item\"\nkey = [\"id\"]\n\
         [[models.item.columns]]\nname = \"id\"\ntype = \"bigint\"\nrequired = true\n\
         [[models.item.columns]]\nname = \"qty\"\ntype = \"smallint\"\n\
         [[models.item.columns]]\nname = \"note\"\ntype = \"text\"\n",
    );
    let body = std::fs::read(dir.join("items.parquet")).unwrap();
    let s = Server::start(&db, &[("NEXUS_MODELS", models.to_str().unwrap())]);
    let (token, _) = s.tokens("admin", ADMIN_PW);
    for (query, content_type) in [
        ("model=item&mode=upsert", "application/vnd.apache.parquet"),
        // A name and a type that say nothing: the magic bytes do.
        (
            "model=item&mode=upsert&force=true",
            "application/octet-stream",
        ),
    ] {
        let id = accepted(s.upload(
            &token,
            query,
            body.clone(),
            &[("content-type", content_type)],
        ));
        let done = s.wait_status(&token, &id, "succeeded");
        assert_eq!(done["rows_committed"], 1000, "{query}: {done}");
    }
    assert_eq!(db.count("item"), 1000);
}

/// One row group of 1M rows: decoded a batch at a time, the load's peak
/// resident memory (GNU time's report) stays far below the decoded group.
#[test]
fn a_row_group_larger_than_the_batch_is_read_a_batch_at_a_time() {
    let db = TestDb::new();
    // 1M rows of ~70 bytes of text each in one row group (~80 MB decoded).
    let dir = cases(&db, Some(1_000_000));
    db.exec("CREATE TABLE item (id bigint PRIMARY KEY, qty smallint, note text)");
    let big = dir.join("big.parquet");
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_nexus"))
        .args(["load", "--json", "--table", "item", big.to_str().unwrap()])
        .env("DATABASE_URL", &db.url)
        .env("NEXUS_DATA_DIR", db.dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .output()
        .expect("/usr/bin/time (Debian's `time`; scripts/test.sh installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let kib: u64 = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {stderr}"));
    assert_eq!(db.count("item"), 1_000_000);
    assert!(kib < 256 * 1024, "peak RSS {kib} KiB");
}

/// Exactly once across crashes, as for CSV: a Parquet load SIGKILLed twice,
/// then run again, leaves every row once (no primary key, where a
/// duplicate would show) and every reject once, across row groups.
#[test]
fn a_killed_parquet_load_resumes_and_loads_every_row_once() {
    const ROWS: i64 = 300_000;
    let db = TestDb::new();
    let dir = cases(&db, None);
    let models = common::small_batch_model(&db);
    assert_eq!(db.run(&["migrate", "--schema-only"]).code, 0);
    db.exec("CREATE TABLE ev (id bigint NOT NULL, payload text)");
    let file = dir.join("ev.parquet");
    let args = ["load", "--json", "--model", "ev", file.to_str().unwrap()];
    for min_batches in [3, 150] {
        let mut child = common::Reaped(Some(
            db.nexus()
                .env("NEXUS_MODELS", &models)
                .args(args)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        ));
        common::wait_for(
            "batches to commit",
            std::time::Duration::from_secs(120),
            || common::batches(&db) >= min_batches || child.get().try_wait().unwrap().is_some(),
        );
        assert!(
            child.get().try_wait().unwrap().is_none(),
            "the load finished before it could be killed"
        );
        drop(child);
    }
    let before = db.count("ev");
    assert!(before > 0 && before < ROWS, "partially loaded: {before}");
    let r = common::run(db.nexus().env("NEXUS_MODELS", &models).args(args));
    assert_eq!(r.code, 0, "{r:?}");
    let s: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        (s["status"].as_str(), s["resumed"].as_bool()),
        (Some("succeeded"), Some(true)),
        "{s}"
    );
    assert_eq!(s["rows_committed"], ROWS - ROWS / 1000);
    assert_eq!(s["rows_rejected"], ROWS / 1000);
    assert_eq!(db.count("ev"), ROWS - ROWS / 1000);
    assert_eq!(
        db.count("(SELECT DISTINCT id FROM ev) d"),
        ROWS - ROWS / 1000
    );
    assert_eq!(db.count("nexus.rejects"), ROWS / 1000);
    let lines: Vec<i64> = db
        .sql("SELECT line FROM nexus.rejects ORDER BY line LIMIT 3")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(lines, [1000, 2000, 3000]);
}
