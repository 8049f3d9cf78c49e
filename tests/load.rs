//! `nexus load` end to end against a real PostgreSQL: modes, rejects, NULLs,
//! encodings, compression, skip/force, exit codes and bad input.

mod common;

use std::io::Write;

use common::{TestDb, customers, fixture, run};
use serde_json::json;

#[test]
fn demo_fixture_loads_with_rejects_and_line_numbers() {
    let db = TestDb::new();
    let path = fixture("customers.csv");
    let (r, s) = db.load_json(&["--model", "customer", path.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["rows_read"], 1000);
    assert_eq!(s["rows_committed"], 995);
    assert_eq!(s["rows_rejected"], 5);
    for field in [
        "job_id",
        "model",
        "mode",
        "bytes_read",
        "duration_ms",
        "rows_per_sec",
    ] {
        assert!(!s[field].is_null(), "summary lacks {field}: {s}");
    }
    assert_eq!(db.count("customer"), 995);
    let job = s["job_id"].as_str().unwrap();
    let rejects = db.run(&["jobs", "rejects", job]);
    assert_eq!(rejects.code, 0);
    let mut lines = rejects.stdout.lines();
    assert_eq!(lines.next(), Some("line,column,reason,raw"));
    let first = lines.next().unwrap();
    // Row id 200 sits on physical line 201 (line 1 is the header).
    assert!(first.starts_with("201,country,"), "{first}");
    assert!(first.contains("ISO 3166-1"), "{first}");
    assert_eq!(rejects.stdout.lines().count(), 6);
    let show = db.run(&["jobs", "show", job]);
    let v: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(v["rows_committed"], 995);
    let list = db.run(&["jobs", "list"]);
    assert!(list.stdout.contains(job), "{list:?}");
}

#[test]
fn a_loaded_file_is_skipped_unless_forced() {
    let db = TestDb::new();
    let f = db.file("c.csv", customers(1, 10));
    let path = f.to_str().unwrap();
    let (_, first) = db.load_json(&["--model", "customer", path]);
    assert_eq!(first["status"], "succeeded");
    let (r, again) = db.load_json(&["--model", "customer", path]);
    assert_eq!(r.code, 0);
    assert_eq!(again["status"], "skipped");
    assert_eq!(db.count("customer"), 10);
    // Forced, the same rows collide with the primary key: all rejected, none
    // doubled, and a load that loaded nothing has failed.
    let (r, forced) = db.load_json(&["--model", "customer", "--force", path]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(forced["status"], "failed");
    assert_eq!(forced["rows_rejected"], 10);
    assert!(
        forced["error"].as_str().unwrap().starts_with(
            "no row was loaded: all 10 rows were rejected, for example line 2: duplicate key value violates unique constraint \"customer_pkey\""
        ),
        "{forced}"
    );
    assert_eq!(db.count("customer"), 10);
    let reason = db
        .value("SELECT reason FROM nexus.rejects ORDER BY line LIMIT 1")
        .unwrap();
    assert!(reason.contains("customer_pkey"), "{reason}");
    // The same content under another name is the same file.
    let copy = db.file("copy.csv", customers(1, 10));
    let (_, s) = db.load_json(&["--model", "customer", copy.to_str().unwrap()]);
    assert_eq!(s["status"], "skipped");
}

/// A value the table's column type refuses is a reject with its line in
/// every mode; in upsert it is refused while staging, before the merge.
#[test]
fn a_value_the_column_refuses_is_a_reject_in_append_and_upsert_alike() {
    let db = TestDb::new();
    let models = db.file(
        "m.toml",
        "[models.kv]\ntable = \"kv\"\nkey = [\"k\"]\nbatch_size = 50\n\
         [[models.kv.columns]]\nname = \"k\"\ntype = \"int\"\n\
         [[models.kv.columns]]\nname = \"v\"\ntype = \"text\"\n",
    );
    db.exec("CREATE TABLE kv (k int PRIMARY KEY, v varchar(5))");
    let mut csv = String::from("k,v\n");
    for k in 1..=120 {
        let v = if k % 40 == 7 { "far too long" } else { "ok" };
        csv.push_str(&format!("{k},{v}\n"));
    }
    let f = db.file("kv.csv", &csv);
    for mode in ["append", "upsert"] {
        db.exec("TRUNCATE kv");
        let r = db.run_with_models(
            &models,
            &[
                "load",
                "--json",
                "--force",
                "--model",
                "kv",
                "--mode",
                mode,
                f.to_str().unwrap(),
            ],
        );
        assert_eq!(r.code, 0, "{mode}: {r:?}");
        let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        assert_eq!(s["status"], "succeeded", "{mode}");
        assert_eq!(s["rows_committed"], 117, "{mode}");
        assert_eq!(s["rows_rejected"], 3, "{mode}");
        assert_eq!(db.count("kv"), 117, "{mode}");
        let job = s["job_id"].as_str().unwrap();
        let lines: Vec<i64> = db
            .sql(&format!(
                "SELECT line FROM nexus.rejects WHERE job_id = '{job}' ORDER BY line"
            ))
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(lines, [8, 48, 88], "{mode}");
        let reason = db
            .value(&format!(
                "SELECT reason FROM nexus.rejects WHERE job_id = '{job}' LIMIT 1"
            ))
            .unwrap();
        assert!(reason.contains("too long"), "{mode}: {reason}");
    }
}

#[test]
fn upsert_updates_and_the_last_row_for_a_key_wins() {
    let db = TestDb::new();
    let models = db.file(
        "m.toml",
        "[models.kv]\ntable = \"kv\"\nkey = [\"k\"]\nbatch_size = 2\n\
         [[models.kv.columns]]\nname = \"k\"\ntype = \"int\"\n\
         [[models.kv.columns]]\nname = \"v\"\ntype = \"text\"\n",
    );
    let m = models.to_str().unwrap();
    let a = db.file("a.csv", "k,v\n1,a\n2,b\n3,c\n");
    let r = db.run_with_models(&models, &["load", "--model", "kv", a.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    // Key 1 appears three times across batches of 2; the last one must win.
    let b = db.file("b.csv", "k,v\n1,x\n4,d\n1,y\n2,B\n5,e\n1,z\n");
    let r = db.run_with_models(
        &models,
        &[
            "load",
            "--json",
            "--model",
            "kv",
            "--mode",
            "upsert",
            b.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{r:?} with {m}");
    let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(s["rows_committed"], 6);
    assert_eq!(s["rows_rejected"], 0);
    let rows: Vec<(i32, String)> = db
        .sql("SELECT k, v FROM kv ORDER BY k")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        [
            (1, "z".into()),
            (2, "B".into()),
            (3, "c".into()),
            (4, "d".into()),
            (5, "e".into())
        ]
    );
}

#[test]
fn replace_empties_the_table_first() {
    let db = TestDb::new();
    let a = db.file("a.csv", customers(1, 20));
    assert_eq!(
        db.run(&["load", "--model", "customer", a.to_str().unwrap()])
            .code,
        0
    );
    let b = db.file("b.csv", customers(100, 5));
    let (r, s) = db.load_json(&[
        "--model",
        "customer",
        "--mode",
        "replace",
        b.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_committed"], 5);
    assert_eq!(db.count("customer"), 5);
    assert_eq!(
        db.value("SELECT min(id)::text FROM customer").unwrap(),
        "100"
    );
}

#[test]
fn replace_and_atomic_keep_nothing_when_rejects_exceed_the_limit() {
    let db = TestDb::new();
    let a = db.file("a.csv", customers(1, 20));
    assert_eq!(
        db.run(&["load", "--model", "customer", a.to_str().unwrap()])
            .code,
        0
    );
    let mut bad = customers(100, 30);
    bad.push_str("999,,,bad,XX,smb,1,2024-01-01,true,1\n");
    let b = db.file("b.csv", &bad);
    let r = db.run(&[
        "load",
        "--model",
        "customer",
        "--mode",
        "replace",
        "--max-rejects",
        "0",
        b.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(
        db.count("customer"),
        20,
        "replace rolled back: the old rows stay"
    );
    let r = db.run(&[
        "load",
        "--model",
        "customer",
        "--atomic",
        "--max-rejects",
        "0",
        b.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(db.count("customer"), 20, "atomic rolled back");
    // The rejects that failed the job are kept, to say why.
    assert_eq!(db.count("nexus.rejects"), 2);
    // Atomic success commits everything.
    let r = db.run(&[
        "load",
        "--model",
        "customer",
        "--atomic",
        b.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(db.count("customer"), 50);
}

/// The rejects that broke the limit were in the job's last batch: a re-run
/// has nothing left to commit, and must still find the job over its limit.
#[test]
fn a_rerun_of_a_load_over_its_reject_limit_still_fails() {
    let db = TestDb::new();
    let mut text = customers(1, 10);
    text.push_str("11,,N,bad-email,DE,smb,1,2024-01-01T00:00:00Z,true,1\n12,,N,bad,DE,smb,1,2024-01-01T00:00:00Z,true,1\n");
    let f = db.file("c.csv", &text);
    let p = f.to_str().unwrap();
    for run in 0..2 {
        let (r, s) = db.load_json(&["--model", "customer", "--max-rejects", "1", p]);
        assert_eq!(r.code, 3, "run {run}: {r:?}");
        assert_eq!(s["status"], "failed", "run {run}");
        assert_eq!(s["rows_rejected"], 2, "run {run}");
        assert_eq!(s["resumed"], run == 1, "run {run}");
    }
    // Run again under a limit it meets, the job succeeds.
    let (r, s) = db.load_json(&["--model", "customer", "--max-rejects", "2", p]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["status"], "succeeded");
}

#[test]
fn max_rejects_and_ratio_exit_3() {
    let db = TestDb::new();
    let mut text = customers(1, 10);
    text.push_str("11,,N,bad-email,DE,smb,1,2024-01-01T00:00:00Z,true,1\n12,,N,bad,DE,smb,1,2024-01-01T00:00:00Z,true,1\n");
    let f = db.file("c.csv", &text);
    let p = f.to_str().unwrap();
    let (r, s) = db.load_json(&["--model", "customer", "--max-rejects", "1", p]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(s["status"], "failed");
    assert!(s["error"].as_str().unwrap().contains("max-rejects"), "{s}");
    let db2 = TestDb::new();
    let f = db2.file("c.csv", &text);
    let (r, _) = db2.load_json(&[
        "--model",
        "customer",
        "--max-reject-ratio",
        "0.1",
        f.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    let (r, s) = db2.load_json(&[
        "--model",
        "customer",
        "--max-reject-ratio",
        "0.5",
        f.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_rejected"], 2);
}

#[test]
fn null_semantics_follow_postgres_csv() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int PRIMARY KEY, a text, b text)");
    let f = db.file("n.csv", "id,a,b\n1,,\"\"\n2,NULL,\\N\n");
    let r = db.run(&["load", "--table", "public.t", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let rows: Vec<(Option<String>, Option<String>)> = db
        .sql("SELECT a, b FROM t ORDER BY id")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows[0],
        (None, Some(String::new())),
        "unquoted empty = NULL, quoted empty = ''"
    );
    assert_eq!(
        rows[1],
        (Some("NULL".into()), Some("\\N".into())),
        "NULL and \\N are text by default"
    );
    // Listed tokens become NULL.
    db.sql("TRUNCATE t");
    let r = db.run(&[
        "load",
        "--table",
        "public.t",
        "--force",
        "--null",
        "NULL",
        "--null",
        "\\N",
        f.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let rows: Vec<(Option<String>, Option<String>)> = db
        .sql("SELECT a, b FROM t ORDER BY id")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows[1], (None, None));
    assert_eq!(
        rows[0],
        (Some(String::new()), Some(String::new())),
        "as with COPY's NULL option"
    );
}

#[test]
fn encodings_are_transcoded_and_bad_utf8_is_rejected() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int PRIMARY KEY, name text)");
    let latin1 = db.file("l.csv", b"id,name\n1,Jos\xe9\n2,\x80\n");
    let r = db.run(&[
        "load",
        "--table",
        "t",
        "--encoding",
        "latin1",
        latin1.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(db.value("SELECT name FROM t WHERE id = 1").unwrap(), "José");
    assert_eq!(
        db.value("SELECT name FROM t WHERE id = 2").unwrap(),
        "\u{80}"
    );
    db.sql("TRUNCATE t");
    let r = db.run(&[
        "load",
        "--table",
        "t",
        "--encoding",
        "windows-1252",
        "--force",
        latin1.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(db.value("SELECT name FROM t WHERE id = 2").unwrap(), "€");
    db.sql("TRUNCATE t");
    let bad = db.file("b.csv", b"id,name\n1,ok\n2,bad\xff\xfe\n3,fine\n");
    let (r, s) = db.load_json(&["--table", "t", bad.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_committed"], 2);
    assert_eq!(s["rows_rejected"], 1);
    let reason = db
        .value("SELECT line || ': ' || reason FROM nexus.rejects")
        .unwrap();
    assert!(reason.starts_with("3: invalid UTF-8"), "{reason}");
}

#[test]
fn gzip_zstd_and_stdin_inputs() {
    let db = TestDb::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(customers(1, 50).as_bytes()).unwrap();
    let gz = db.file("c.csv.gz", gz.finish().unwrap());
    let (r, s) = db.load_json(&["--model", "customer", gz.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_committed"], 50);
    let zst = db.file(
        "c.csv.zst",
        zstd::encode_all(customers(51, 50).as_bytes(), 3).unwrap(),
    );
    let (r, s) = db.load_json(&["--model", "customer", zst.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_committed"], 50);
    // stdin, itself compressed.
    let mut child = db
        .nexus()
        .args(["load", "--json", "--model", "customer", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(customers(101, 7).as_bytes()).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&gz.finish().unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["rows_committed"], 7);
    assert_eq!(db.count("customer"), 107);
}

#[test]
fn no_header_maps_by_position() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int PRIMARY KEY, a text, b int)");
    let f = db.file("n.csv", "1,x,10\n2,y\n3,z,30\n");
    let (r, s) = db.load_json(&["--table", "t", "--no-header", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_committed"], 2);
    let reason = db
        .value("SELECT line || ': ' || reason FROM nexus.rejects")
        .unwrap();
    assert_eq!(reason, "2: expected 3 fields, found 2");
}

#[test]
fn derived_models_cover_every_supported_type() {
    let db = TestDb::new();
    db.sql(
        "CREATE TABLE everything (
            i8 bigint PRIMARY KEY, i4 integer, i2 smallint, n numeric(10,3), r real, d double precision,
            t text, vc varchar(5), c char(3), b boolean, dt date, ts timestamp, tz timestamptz,
            u uuid, j jsonb, by bytea)",
    );
    let header = "i8,i4,i2,n,r,d,t,vc,c,b,dt,ts,tz,u,j,by\n";
    let good = "1,-2147483648,32767,-1234.5678,1.5,2.25,hello,abcde,ab,yes,2024-02-29,2024-01-02 03:04:05.123456,2024-01-02T03:04:05+02:00,a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,\"{\"\"a\"\": [1, 2]}\",\\x00ff\n";
    let bad = [
        "2,2147483648,,,,,,,,,,,,,,\n",
        "3,,32768,,,,,,,,,,,,,\n",
        "4,,,12345678.1,,,,,,,,,,,,\n",
        "5,,,,abc,,,,,,,,,,,\n",
        "6,,,,,,,abcdef,,,,,,,,\n",
        "7,,,,,,,,abcd,,,,,,,\n",
        "8,,,,,,,,,maybe,,,,,,\n",
        "9,,,,,,,,,,2023-02-29,,,,,\n",
        "10,,,,,,,,,,,noon,,,,\n",
        "11,,,,,,,,,,,,,not-a-uuid,,\n",
        "12,,,,,,,,,,,,,,{bad,\n",
        "13,,,,,,,,,,,,,,,\\xZZ\n",
    ];
    let mut text = String::from(header);
    text.push_str(good);
    for b in bad {
        text.push_str(b);
    }
    let f = db.file("e.csv", &text);
    let (r, s) = db.load_json(&["--table", "public.everything", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_committed"], 1, "{s}");
    assert_eq!(s["rows_rejected"], bad.len());
    let row = db.value(
        "SELECT concat_ws('|', i4, i2, n, r, d, t, vc, c, b, dt, ts, tz AT TIME ZONE 'UTC', u, j::text, encode(by, 'hex'))
         FROM everything",
    );
    assert_eq!(
        row.unwrap(),
        "-2147483648|32767|-1234.568|1.5|2.25|hello|abcde|ab |t|2024-02-29|2024-01-02 03:04:05.123456|2024-01-02 01:04:05|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|{\"a\": [1, 2]}|00ff"
    );
    let columns: Vec<String> = db
        .sql("SELECT \"column\" FROM nexus.rejects ORDER BY line")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        columns,
        [
            "i4", "i2", "n", "r", "vc", "c", "b", "dt", "ts", "u", "j", "by"
        ]
    );
    // models import prints a model file that loads back.
    let imported = db.run(&["models", "import", "--table", "public.everything"]);
    assert_eq!(imported.code, 0, "{imported:?}");
    assert!(
        imported.stdout.contains("type = \"numeric(10,3)\""),
        "{}",
        imported.stdout
    );
    let m = db.file("imported.toml", &imported.stdout);
    let check = db.run(&["models", "check", m.to_str().unwrap()]);
    assert_eq!(check.code, 0, "{check:?}");
}

#[test]
fn constraint_violations_are_narrowed_to_rows() {
    let db = TestDb::new();
    db.exec(
        "CREATE TABLE parent (id int PRIMARY KEY);
         INSERT INTO parent VALUES (1), (2);
         CREATE TABLE child (
            id int PRIMARY KEY,
            parent_id int CONSTRAINT child_parent_fk REFERENCES parent (id),
            qty int CONSTRAINT qty_positive CHECK (qty > 0),
            label text NOT NULL DEFAULT 'x',
            code text CONSTRAINT code_unique UNIQUE)",
    );
    let mut text = String::from("id,parent_id,qty,label,code\n");
    for i in 1..=40 {
        let (parent, qty, label, code) = match i {
            7 => (3, 1, "l".to_string(), format!("c{i}")),
            13 => (1, 0, "l".to_string(), format!("c{i}")),
            21 => (1, 1, String::new(), format!("c{i}")),
            30 => (1, 1, "l".to_string(), "c5".to_string()),
            _ => (1 + i % 2, 1, "l".to_string(), format!("c{i}")),
        };
        text.push_str(&format!("{i},{parent},{qty},{label},{code}\n"));
    }
    text.push_str("5,1,1,l,c99\n");
    let f = db.file("c.csv", &text);
    let (r, s) = db.load_json(&["--table", "child", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_committed"], 36);
    assert_eq!(s["rows_rejected"], 5);
    assert_eq!(db.count("child"), 36);
    let rejects: Vec<(i64, String)> = db
        .sql("SELECT line, reason FROM nexus.rejects ORDER BY line")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect = [
        (8, "child_parent_fk"),
        (14, "qty_positive"),
        (22, "not-null"),
        (31, "code_unique"),
        (42, "child_pkey"),
    ];
    for ((line, reason), (want_line, want)) in rejects.iter().zip(expect) {
        assert_eq!(*line, want_line);
        assert!(
            reason.contains(want),
            "line {line}: {reason} should name {want}"
        );
    }
}

#[test]
fn header_problems_fail_before_any_row_loads() {
    let db = TestDb::new();
    let cases: [(&str, &str); 4] = [
        (
            "id,external_id,name,email,nickname\n1,,a,a@b.de,x\n",
            "`nickname` not in model",
        ),
        ("id,name\n1,a\n", "required column `email` missing"),
        ("id,name,email,ID\n1,a,a@b.de,1\n", "appears more than once"),
        ("", "empty"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = db.file(&format!("h{i}.csv"), text);
        let r = db.run(&["load", "--model", "customer", f.to_str().unwrap()]);
        assert_eq!(r.code, 1, "{text:?}: {r:?}");
        assert!(r.stdout.contains(want), "{text:?}: {}", r.stdout);
    }
    assert_eq!(db.count("customer"), 0);
    // A header without rows is a successful load of nothing.
    let f = db.file("only.csv", "id,name,email\n");
    let (r, s) = db.load_json(&["--model", "customer", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_read"], 0);
}

#[test]
fn unterminated_quote_and_huge_line_become_rejects() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int PRIMARY KEY, a text)");
    let f = db.file("q.csv", "id,a\n1,ok\n2,\"never closed\n3,x\n");
    let (r, s) = db.load_json(&["--table", "t", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_committed"], 1);
    assert_eq!(s["rows_rejected"], 1);
    let reason = db
        .value("SELECT line || ': ' || reason FROM nexus.rejects")
        .unwrap();
    assert!(
        reason.starts_with("3: unterminated quoted field"),
        "{reason}"
    );

    let mut big = b"id,a\n10,before\n11,".to_vec();
    big.extend(std::iter::repeat_n(b'x', 50 << 20));
    big.extend_from_slice(b"\n12,after\n");
    let f = db.file("big.csv", &big);
    let (r, s) = db.load_json(&["--table", "t", "--force", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_rejected"], 1);
    assert_eq!(db.value("SELECT a FROM t WHERE id = 12").unwrap(), "after");
    let reason = db
        .value("SELECT line || ': ' || reason FROM nexus.rejects WHERE reason LIKE '%limit%'")
        .unwrap();
    assert!(
        reason.starts_with("3: record is longer than the limit"),
        "{reason}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let db = TestDb::new();
    let f = db.file("c.csv", customers(1, 1));
    let p = f.to_str().unwrap();
    let r = db.run(&["load", "--model", "nope", p]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown model `nope`"), "{r:?}");
    assert!(
        r.stderr.contains("customer"),
        "the message lists known models: {r:?}"
    );
    assert_eq!(db.run(&["load", p]).code, 2, "neither --model nor --table");
    assert_eq!(
        db.run(&["load", "--model", "customer", "--mode", "merge", p])
            .code,
        2
    );
    assert_eq!(
        db.run(&["load", "--model", "customer", "--encoding", "ebcdic", p])
            .code,
        2
    );
    assert_eq!(
        db.run(&["load", "--model", "customer", "--timezone", "Mars/Base", p])
            .code,
        2
    );
    let missing = db.run(&["load", "--model", "customer", "/nonexistent.csv"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("no such file"), "{missing:?}");
    let bad = db.file("bad.toml", "[models.x]\ntable = 't'\n");
    let r = db.run(&["models", "check", bad.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("columns"), "{r:?}");
}

#[test]
fn names_that_look_like_sql_stay_names() {
    let db = TestDb::new();
    let evil = "t\"; DROP TABLE victim; --";
    db.sql("CREATE TABLE victim (x int)");
    db.sql(&format!(
        "CREATE TABLE \"{}\" (\"id\"\"; DROP TABLE victim; --\" int, \"a b\" text)",
        evil.replace('"', "\"\"")
    ));
    let f = db.file("e.csv", "\"id\"\"; DROP TABLE victim; --\",a b\n1,x\n");
    let (r, s) = db.load_json(&["--table", &format!("public.{evil}"), f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_committed"], 1);
    assert_eq!(db.count("victim"), 0, "the victim table still exists");
    let r = db.run(&[
        "load",
        "--table",
        "public.x'; DROP TABLE victim; --",
        f.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    assert_eq!(db.count("victim"), 0);
}

#[test]
fn timezone_applies_to_naive_timestamps() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz)");
    let f = db.file(
        "t.csv",
        "id,at\n1,2024-07-01 12:00:00\n2,2024-07-01T12:00:00Z\n",
    );
    let r = db.run(&[
        "load",
        "--table",
        "t",
        "--timezone",
        "Europe/Berlin",
        f.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let got: Vec<String> = db
        .sql("SELECT to_char(at AT TIME ZONE 'UTC', 'HH24:MI') FROM t ORDER BY id")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, ["10:00", "12:00"]);
}

#[test]
fn migrate_is_idempotent_and_creates_model_tables() {
    let db = TestDb::new();
    let r = db.run(&["migrate"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("applied migrations [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]"),
        "{r:?}"
    );
    let r = db.run(&["migrate"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("up to date"), "{r:?}");
    for t in [
        "customer",
        "company",
        "quote",
        "document",
        "product_classification",
        "classification_cache",
    ] {
        assert_eq!(db.count(t), 0);
    }
    let list = db.run(&["models", "list"]);
    assert_eq!(list.stdout.lines().count(), 7, "{list:?}");
    let show = db.run(&["models", "show", "customer"]);
    assert!(show.stdout.contains("format = \"email\""), "{show:?}");
}

#[test]
fn a_wide_hostile_header_fails_fast_with_a_bounded_message_on_stderr_too() {
    let db = TestDb::new();
    // 200,000 unknown columns: a quadratic duplicate check would take
    // minutes, an unbounded message would break the job notification.
    let header: Vec<String> = (0..200_000)
        .map(|i| format!("column_{i}_{}", "x".repeat(40)))
        .collect();
    let f = db.file("wide.csv", format!("id,{}\n1\n", header.join(",")));
    let started = std::time::Instant::now();
    let (r, s) = db.load_json(&["--model", "customer", f.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(s["status"], "failed");
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("and 199980 more"), "{error}");
    assert!(error.chars().count() <= 2100, "{} characters", error.len());
    assert!(
        r.stderr.contains("not in model"),
        "the reason is on stderr: {}",
        r.stderr
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    let dup = db.file(
        "dup.csv",
        format!("id,{},ID\n", header[..100_000].join(",")),
    );
    let r = db.run(&["load", "--model", "customer", dup.to_str().unwrap()]);
    assert!(r.stdout.contains("appears more than once"), "{r:?}");
    assert_eq!(r.code, 1, "{r:?}");
}

#[test]
fn nul_bytes_and_deep_documents_are_rejected_rows_not_failed_jobs() {
    let db = TestDb::new();
    db.sql("CREATE TABLE t (id int, doc jsonb, note text)");
    let deep = "[".repeat(200_000) + &"]".repeat(200_000);
    let body = format!(
        "id,doc,note\n1,{{}},fine\n2,\"{deep}\",deep\n3,[],nul\0here\n4,\"{{\"\"a\"\": [1, 2]}}\",fine\n"
    );
    let f = db.file("t.csv", body);
    let (r, s) = db.load_json(&["--table", "t", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        (s["rows_committed"].as_i64(), s["rows_rejected"].as_i64()),
        (Some(2), Some(2))
    );
    let rejects: Vec<(i64, String)> = db
        .sql("SELECT line, reason FROM nexus.rejects ORDER BY line")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rejects[0].0, 3);
    assert!(rejects[0].1.contains("stack depth"), "{rejects:?}");
    assert_eq!(rejects[1].0, 4);
    assert!(rejects[1].1.contains("NUL"), "{rejects:?}");
}

#[test]
fn unique_conflicts_are_rejected_in_one_pass_with_their_index_and_key() {
    let db = TestDb::new();
    db.exec(
        "CREATE TABLE acct (
            id int PRIMARY KEY,
            email text CONSTRAINT acct_email UNIQUE,
            region text,
            code text);
         CREATE UNIQUE INDEX acct_code_eu ON acct (code) WHERE region = 'eu';
         INSERT INTO acct SELECT g, 'e' || g, 'us', 'c' || g FROM generate_series(1, 100) g;",
    );
    // ids 51..=150: 50 collide with the table; id 120 appears twice; row
    // 140's email collides with row 1's; NULL emails never collide; one
    // partial-index conflict is left to bisection.
    let mut text = String::from("id,email,region,code\n");
    for id in 51..=150 {
        let email = match id {
            140 => "e1".to_string(),
            130..=135 => String::new(),
            _ => format!("e{id}"),
        };
        let (region, code) = if id == 145 || id == 146 {
            ("eu", "shared")
        } else {
            ("us", "x")
        };
        text.push_str(&format!("{id},{email},{region},{code}\n"));
    }
    text.push_str("120,e9999,us,x\n");
    let f = db.file("a.csv", &text);
    let (r, s) = db.load_json(&["--table", "acct", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(s["rows_read"], 101);
    assert_eq!(s["rows_rejected"], 53, "{s}");
    assert_eq!(db.count("acct"), 148);
    let rejects: Vec<(i64, String)> = db
        .sql("SELECT line, reason FROM nexus.rejects ORDER BY line")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rejects.len(), 53);
    assert_eq!(
        rejects[0],
        (
            2,
            "duplicate key value violates unique constraint \"acct_pkey\": Key (id)=(51) already exists.".to_string()
        )
    );
    let find = |line: i64| rejects.iter().find(|r| r.0 == line).map(|r| r.1.as_str());
    assert!(
        find(91)
            .unwrap()
            .contains("\"acct_email\": Key (email)=(e1)"),
        "{rejects:?}"
    );
    assert!(find(97).unwrap().contains("acct_code_eu"), "{rejects:?}");
    assert!(
        find(102).unwrap().contains("Key (id)=(120)"),
        "the later duplicate in the file: {rejects:?}"
    );
    assert_eq!(
        db.value("SELECT email FROM acct WHERE id = 120").as_deref(),
        Some("e120")
    );

    // Loading the same rows again: every row is a duplicate, nothing
    // loads, and the job says so.
    let (r, s) = db.load_json(&["--table", "acct", "--force", f.to_str().unwrap()]);
    assert_eq!((r.code, s["status"].as_str()), (1, Some("failed")), "{r:?}");
    assert_eq!(
        (s["rows_committed"].as_i64(), s["rows_rejected"].as_i64()),
        (Some(0), Some(101))
    );
    assert_eq!(db.count("acct"), 148);

    // Keys read from the COPY body: a negative smallint, a uuid.
    db.exec(
        "CREATE TABLE tiny (k smallint PRIMARY KEY, u uuid CONSTRAINT tiny_u UNIQUE);
         INSERT INTO tiny VALUES (-5, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');",
    );
    let f = db.file(
        "tiny.csv",
        "k,u\n-5,00000000-0000-0000-0000-000000000001\n7,A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11\n\
         8,00000000-0000-0000-0000-000000000002\n8,00000000-0000-0000-0000-000000000003\n9,\n10,\n",
    );
    let (r, s) = db.load_json(&["--table", "tiny", f.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let reasons: Vec<String> = db
        .sql("SELECT r.reason FROM nexus.rejects r JOIN nexus.jobs j ON j.id = r.job_id WHERE j.target LIKE '%tiny' ORDER BY line")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(s["rows_rejected"], 3, "{reasons:?}");
    assert!(
        reasons[0].ends_with("\"tiny_pkey\": Key (k)=(-5) already exists."),
        "{reasons:?}"
    );
    assert!(
        reasons[1].ends_with(
            "\"tiny_u\": Key (u)=(a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11) already exists."
        ),
        "{reasons:?}"
    );
    assert!(
        reasons[2].ends_with("Key (k)=(8) already exists."),
        "{reasons:?}"
    );
    assert_eq!(db.count("tiny"), 4, "two NULL uuids never collide");
}

/// Loads that start at once into a model whose table does not exist yet
/// all create it (one of them does) and all succeed.
#[test]
fn concurrent_first_loads_create_the_table_once() {
    let db = TestDb::new();
    let models = common::small_batch_model(&db);
    let children: Vec<_> = (0..12)
        .map(|k| {
            let mut csv = String::from("id,payload\n");
            for i in 0..500 {
                csv.push_str(&format!("{},{k}\n", k * 1000 + i));
            }
            let f = db.file(&format!("c{k}.csv"), csv);
            db.nexus()
                .env("NEXUS_MODELS", &models)
                .args(["load", "--model", "ev"])
                .arg(f)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(db.count("ev"), 6000);
}

/// The schema's CHECK constraints hold the same words as the one mapping
/// of statuses and modes (`nexus_loaders::vocab`), no more, no fewer.
#[test]
fn the_schema_knows_exactly_the_statuses_and_modes_of_the_code() {
    let db = TestDb::new();
    assert_eq!(db.run(&["migrate", "--schema-only"]).code, 0);
    let words = |column: &str| -> std::collections::BTreeSet<String> {
        let def = db
            .value(&format!(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE conrelid = 'nexus.jobs'::regclass AND contype = 'c'
                   AND pg_get_constraintdef(oid) LIKE '%({column} %'"
            ))
            .expect("a CHECK constraint");
        def.split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let of = |v: Vec<String>| v.into_iter().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        words("status"),
        of(nexus_loaders::JobStatus::ALL
            .iter()
            .map(|s| s.to_string())
            .collect())
    );
    assert_eq!(
        words("mode"),
        of(nexus_loaders::Mode::ALL
            .iter()
            .map(|m| m.to_string())
            .collect())
    );
}

/// A failed load is retried with corrected options: the same options
/// resume the job (under the file's new name), other options start a new
/// job and end the old one, which keeps what it committed.
#[test]
fn a_failed_load_is_retried_with_corrected_options_as_a_new_job() {
    let db = TestDb::new();
    let body = customers(1, 20);
    let headerless: String = body.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let f = db.file("nohdr.csv", &headerless);
    let path = f.to_str().unwrap();
    let (r, first) = db.load_json(&["--model", "customer", path]);
    assert_eq!((r.code, &first["status"]), (1, &json!("failed")), "{r:?}");
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("if the file has no header row, load it with --no-header"),
        "{first}"
    );
    // The same options, a copy under another name: the same job, renamed.
    let copy = db.file("renamed.csv", &headerless);
    let (r, again) = db.load_json(&["--model", "customer", copy.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(again["job_id"], first["job_id"]);
    assert!(
        again["file_name"]
            .as_str()
            .unwrap()
            .ends_with("renamed.csv")
    );
    // The corrected options: a new job, and the old one is over.
    let (r, fixed) = db.load_json(&["--model", "customer", "--no-header", path]);
    assert_eq!(
        (r.code, &fixed["status"]),
        (0, &json!("succeeded")),
        "{r:?}"
    );
    assert_ne!(fixed["job_id"], first["job_id"]);
    assert_eq!(fixed["superseded"]["job_id"], first["job_id"]);
    assert_eq!(fixed["superseded"]["rows_committed"], 0);
    assert_eq!(db.count("customer"), 20);
    let old = first["job_id"].as_str().unwrap();
    let (status, error) = (
        db.value(&format!("SELECT status FROM nexus.jobs WHERE id = '{old}'")),
        db.value(&format!("SELECT error FROM nexus.jobs WHERE id = '{old}'")),
    );
    assert_eq!(status.as_deref(), Some("cancelled"));
    let new = fixed["job_id"].as_str().unwrap();
    assert!(error.unwrap().contains(&format!("superseded by job {new}")));
    // --force starts a new job too, even with the same options.
    let half = db.file("half.csv", customers(100, 10));
    db.exec("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'down for a moment'; END $$");
    db.exec("CREATE TRIGGER refuse BEFORE INSERT ON nexus.job_batches FOR EACH STATEMENT EXECUTE FUNCTION refuse()");
    let (r, broken) = db.load_json(&["--model", "customer", half.to_str().unwrap()]);
    assert_eq!((r.code, &broken["status"]), (1, &json!("failed")), "{r:?}");
    db.exec("DROP TRIGGER refuse ON nexus.job_batches");
    let (r, forced) = db.load_json(&["--model", "customer", "--force", half.to_str().unwrap()]);
    assert_eq!(
        (r.code, &forced["status"]),
        (0, &json!("succeeded")),
        "{r:?}"
    );
    assert_eq!(forced["superseded"]["job_id"], broken["job_id"]);
    assert_eq!(db.count("customer"), 30);
}

/// A load that committed nothing while rows were rejected fails, says why,
/// and leaves the file not loaded: the right encoding then loads it.
#[test]
fn a_load_that_commits_nothing_fails_and_the_file_stays_unloaded() {
    let db = TestDb::new();
    let mut latin1 =
        b"id,external_id,name,email,country,segment,credit_limit,created_at,active,score\n"
            .to_vec();
    for i in 1..=30 {
        latin1
            .extend_from_slice(format!("{i},{},Ren", uuid::Uuid::from_u128(i as u128)).as_bytes());
        latin1.push(0xE9); // é in Latin-1; not UTF-8
        latin1.extend_from_slice(
            format!("e {i},r{i}@example.com,FR,smb,10.00,2021-01-01T00:00:00Z,true,{i}\n")
                .as_bytes(),
        );
    }
    let f = db.file("latin1.csv", &latin1);
    let path = f.to_str().unwrap();
    let r = db.run(&["load", "--model", "customer", path]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.starts_with("failed:"), "{r:?}");
    assert!(
        r.stdout.contains(
            "no row was loaded: all 30 rows were rejected, for example line 2: invalid UTF-8"
        ),
        "{r:?}"
    );
    assert!(r.stdout.contains("encoding latin1"), "{r:?}");
    assert_eq!(
        db.value("SELECT count(*)::text FROM nexus.loaded_files")
            .as_deref(),
        Some("0")
    );
    let (r, fixed) = db.load_json(&["--model", "customer", "--encoding", "latin1", path]);
    assert_eq!(
        (r.code, &fixed["status"]),
        (0, &json!("succeeded")),
        "{r:?}"
    );
    assert_eq!(fixed["rows_committed"], 30);
    assert_eq!(
        db.value("SELECT name FROM customer WHERE id = 7")
            .as_deref(),
        Some("Renée 7")
    );
    // One row committed among rejects is a success with rejects.
    let mixed = db.file(
        "mixed.csv",
        format!("{}\n{}", customers(500, 1).trim_end(), "x,y,z\n"),
    );
    let (r, s) = db.load_json(&["--model", "customer", mixed.to_str().unwrap()]);
    assert_eq!((r.code, &s["status"]), (0, &json!("succeeded")), "{r:?}");
    assert_eq!(
        (s["rows_committed"].clone(), s["rows_rejected"].clone()),
        (json!(1), json!(1))
    );
}

/// Connection mistakes say what failed and where, at once (no retries);
/// settings that are wrong exit 2.
#[test]
fn connection_mistakes_say_what_failed_at_once() {
    let db = TestDb::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = &db.url[..db.url.rfind('/').unwrap()];
    let at = |url: &str| run(db.nexus().env("DATABASE_URL", url).args(["jobs", "list"]));
    let refused = at(&format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "could not connect to 127.0.0.1:{port}: connection refused"
        )),
        "{refused:?}"
    );
    assert!(!refused.stderr.contains("retrying"), "{refused:?}");
    let nobody = at(&base.replace("postgres@", "nobody_here@"));
    assert_eq!(nobody.code, 2, "{nobody:?}");
    assert!(
        nobody
            .stderr
            .contains("role \"nobody_here\" does not exist"),
        "{nobody:?}"
    );
    let no_db = at(&format!("{}/no_such_db", base));
    assert_eq!(no_db.code, 2, "{no_db:?}");
    assert!(
        no_db
            .stderr
            .contains("database \"no_such_db\" does not exist"),
        "{no_db:?}"
    );
    let garbled = at(&format!("{}/x?sslmode=sometimes", base));
    assert_eq!(garbled.code, 2, "{garbled:?}");
    assert!(
        garbled.stderr.contains("invalid connection string"),
        "{garbled:?}"
    );
}

/// Small mistakes get answers that name the fix.
#[test]
fn small_mistakes_get_clear_answers() {
    let db = TestDb::new();
    let f = db.file("c.csv", customers(1, 3));
    let path = f.to_str().unwrap();
    let r = db.run(&["load", path]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("--model <MODEL>|--table <TABLE>"),
        "{r:?}"
    );
    let r = db.run(&["load", "--model", "customer", "--encoding", "ebcdic", path]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--encoding: "), "{r:?}");
    assert!(r.stderr.contains("ebcdic"), "{r:?}");
    let r = db.run(&["load", "--model", "customer", "--delimiter", "ab", path]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--delimiter: "), "{r:?}");
    let help = db.run(&["serve", "--help"]);
    assert!(help.stdout.contains("dashboard"), "{help:?}");
    // A job by a unique start of its id.
    let (_, s) = db.load_json(&["--model", "customer", path]);
    let id = s["job_id"].as_str().unwrap();
    let shown = db.run(&["jobs", "show", &id[..8]]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(shown.stdout.contains(id), "{shown:?}");
    let none = db.run(&["jobs", "show", "ffffffff-ffff"]);
    assert_eq!(none.code, 1, "{none:?}");
    assert!(none.stderr.contains("no job id starts with"), "{none:?}");
    let short = db.run(&["jobs", "cancel", "ab"]);
    assert_eq!(short.code, 2, "{short:?}");
}

/// `--dry-run` reads and checks a file as a load would — rules, and values
/// by PostgreSQL's own input functions — and writes nothing.
#[test]
fn a_dry_run_reports_what_a_load_would_reject_and_writes_nothing() {
    let db = TestDb::new();
    let demo = fixture("customers.csv");
    let r = db.run(&[
        "load",
        "--dry-run",
        "--model",
        "customer",
        demo.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("1000 rows read, 995 would load, 5 rejected; nothing was written"),
        "{r:?}"
    );
    // A value only the server reads (no 30 February), by its line.
    assert!(
        r.stdout
            .contains("line 801, column created_at: date/time field value out of range"),
        "{r:?}"
    );
    assert_eq!(
        db.value("SELECT count(*)::text FROM nexus.jobs").as_deref(),
        Some("0")
    );
    assert_eq!(db.value("SELECT to_regclass('customer')::text"), None);
    let (r, v) = {
        let r = db.run(&[
            "load",
            "--dry-run",
            "--json",
            "--model",
            "customer",
            "--max-rejects",
            "2",
            demo.to_str().unwrap(),
        ]);
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        (r, v)
    };
    assert_eq!(r.code, 3, "over --max-rejects, as a load would be: {r:?}");
    assert_eq!(
        (v["rows_valid"].clone(), v["rows_rejected"].clone()),
        (json!(995), json!(5))
    );
    assert_eq!(v["rejects"][0]["line"], 201);
}
