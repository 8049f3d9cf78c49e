//! Exactly once across crashes: a load SIGKILLed at arbitrary moments, then
//! run again, leaves every row exactly once — on a table without a primary
//! key, where a duplicate would show.

mod common;

use std::io::Read as _;

use std::process::Stdio;
use std::time::Duration;

use common::{Reaped, TestDb, wait_for};

const ROWS: i64 = 300_000;

fn setup(db: &TestDb) -> (std::path::PathBuf, std::path::PathBuf) {
    let models = common::small_batch_model(db);
    let mut csv = String::from("id,payload\n");
    for i in 1..=ROWS {
        csv.push_str(&format!("{i},\"row {i}, with a comma\"\n"));
        if i % 1000 == 0 {
            csv.push_str("bad,row\n");
        }
    }
    let r = db.run(&["migrate", "--schema-only"]);
    assert_eq!(r.code, 0, "{r:?}");
    (models, db.file("ev.csv", csv))
}

/// [`setup`], and the table `ev` without a key (where a duplicate shows).
fn setup_with_table(db: &TestDb) -> (std::path::PathBuf, std::path::PathBuf) {
    let made = setup(db);
    create_ev(db);
    made
}

fn create_ev(db: &TestDb) {
    db.exec("CREATE TABLE ev (id bigint NOT NULL, payload text)");
}

#[test]
fn sigkill_at_any_moment_then_rerun_loads_every_row_once() {
    let db = TestDb::new();
    let (models, file) = setup_with_table(&db);
    let args = ["load", "--json", "--model", "ev", file.to_str().unwrap()];
    let listed = || {
        let r = db.run(&["jobs", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        v[0].clone()
    };
    // Kill three times, each later than the last.
    for min_batches in [3, 150, 400] {
        let mut child = Reaped(Some(
            db.nexus()
                .env("NEXUS_MODELS", &models)
                .env("NEXUS_COPY_CONNECTIONS", "2")
                .args(args)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ));
        wait_for("batches to commit", Duration::from_secs(120), || {
            common::batches(&db) >= min_batches || child.get().try_wait().unwrap().is_some()
        });
        assert!(
            child.get().try_wait().unwrap().is_none(),
            "the load finished before it could be killed"
        );
        assert_eq!(
            listed()["interrupted"],
            false,
            "a live load is not interrupted"
        );
        drop(child);
        let status = db.value("SELECT status FROM nexus.jobs").unwrap();
        assert_eq!(status, "running", "a killed job is left as it was");
        // Listed, it shows what it committed, and that its process is gone
        // (once its database sessions have noticed).
        let committed: i64 = db
            .value("SELECT sum(rows_committed)::text FROM nexus.job_batches")
            .unwrap()
            .parse()
            .unwrap();
        wait_for(
            "the job to show as interrupted",
            Duration::from_secs(30),
            || listed()["interrupted"] == true,
        );
        let job = listed();
        assert_eq!(job["status"], "running");
        assert_eq!(job["rows_committed"], committed);
        let text = db.run(&["jobs", "list"]).stdout;
        assert!(
            text.lines().nth(1).unwrap().contains(" interrupted "),
            "{text}"
        );
    }
    let before = db.count("ev");
    assert!(before > 0 && before < ROWS, "partially loaded: {before}");
    let settled: i64 = db
        .value("SELECT (sum(rows_committed) + sum(rows_rejected))::text FROM nexus.job_batches")
        .unwrap()
        .parse()
        .unwrap();
    let r = common::run(db.nexus().env("NEXUS_MODELS", &models).args(args));
    assert_eq!(r.code, 0, "{r:?}");
    let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["resumed"], true);
    // The summary's rate is this run's: rows earlier runs settled are said, not counted.
    assert_eq!(s["earlier_rows"], settled);
    let this_run = s["rows_read"].as_i64().unwrap() - settled;
    let duration = s["duration_ms"].as_i64().unwrap().max(1);
    assert_eq!(
        s["rows_per_sec"].as_f64().unwrap(),
        (this_run as f64 * 1000.0 / duration as f64).round()
    );
    assert_eq!(s["rows_committed"], ROWS);
    assert_eq!(s["rows_rejected"], ROWS / 1000);
    assert_eq!(s["rows_read"], ROWS + ROWS / 1000);
    assert_eq!(db.count("ev"), ROWS);
    assert_eq!(
        db.count("(SELECT DISTINCT id FROM ev) d"),
        ROWS,
        "no row twice"
    );
    assert_eq!(db.count("nexus.rejects"), ROWS / 1000, "no reject twice");
    assert_eq!(db.count("nexus.jobs"), 1, "the same job resumed");
    // And now it is done: the same file is skipped.
    let r = common::run(db.nexus().env("NEXUS_MODELS", &models).args(args));
    let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(s["status"], "skipped");
}

#[test]
fn sigterm_stops_at_a_batch_boundary_and_stays_resumable() {
    let db = TestDb::new();
    let (models, file) = setup_with_table(&db);
    let args = ["load", "--json", "--model", "ev", file.to_str().unwrap()];
    let mut child = Reaped(Some(
        db.nexus()
            .env("NEXUS_MODELS", &models)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    wait_for("batches to commit", Duration::from_secs(120), || {
        common::batches(&db) >= 5
    });
    common::sigterm(child.get().id());
    let out = child.take().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "failed");
    assert!(s["error"].as_str().unwrap().contains("resume"), "{s}");
    assert_eq!(
        s["rows_read"].as_i64().unwrap(),
        s["rows_committed"].as_i64().unwrap() + s["rows_rejected"].as_i64().unwrap()
    );
    let r = common::run(db.nexus().env("NEXUS_MODELS", &models).args(args));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(db.count("ev"), ROWS);
    assert_eq!(db.count("(SELECT DISTINCT id FROM ev) d"), ROWS);
}

#[test]
fn a_second_concurrent_run_of_the_same_file_refuses() {
    let db = TestDb::new();
    let (models, file) = setup_with_table(&db);
    let args = ["load", "--model", "ev", file.to_str().unwrap()];
    let mut first = Reaped(Some(
        db.nexus()
            .env("NEXUS_MODELS", &models)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_for("the first run to commit", Duration::from_secs(120), || {
        common::batches(&db) >= 1
    });
    let second = common::run(db.nexus().env("NEXUS_MODELS", &models).args(args));
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("being loaded by another process"),
        "{second:?}"
    );
    assert!(first.get().wait().unwrap().success());
    assert_eq!(db.count("ev"), ROWS);
}

/// A job's end and the record of its file as loaded commit together: when
/// the ledger cannot be written, the job is not `succeeded` either, and the
/// next run resumes it instead of loading the file again.
#[test]
fn a_job_succeeds_only_with_its_file_recorded_as_loaded() {
    let db = TestDb::new();
    let (models, file) = setup_with_table(&db);
    db.exec(
        "CREATE FUNCTION refuse_ledger() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'the ledger is unavailable'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON nexus.loaded_files
           FOR EACH ROW EXECUTE FUNCTION refuse_ledger();",
    );
    let load = || {
        db.run_with_models(
            &models,
            &["load", "--json", "--model", "ev", file.to_str().unwrap()],
        )
    };
    let r = load();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("ledger is unavailable"), "{r:?}");
    let status = db.value("SELECT status FROM nexus.jobs").unwrap();
    assert_ne!(status, "succeeded", "no success without the ledger");
    db.exec("DROP TRIGGER refuse ON nexus.loaded_files");
    let r = load();
    assert_eq!(r.code, 0, "{r:?}");
    let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(s["resumed"], true, "{s}");
    assert_eq!(db.count("nexus.jobs"), 1);
    assert_eq!(db.count("ev"), ROWS, "every row once");
    assert_eq!(db.count("(SELECT DISTINCT id FROM ev) d"), ROWS);
    let r = load();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("\"skipped\""), "{r:?}");
}

#[test]
fn jobs_cancel_stops_a_running_load() {
    let db = TestDb::new();
    let (models, file) = setup_with_table(&db);
    let child = Reaped(Some(
        db.nexus()
            .env("NEXUS_MODELS", &models)
            .args(["load", "--json", "--model", "ev", file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    wait_for("batches to commit", Duration::from_secs(120), || {
        common::batches(&db) >= 2
    });
    let id = db.value("SELECT id::text FROM nexus.jobs").unwrap();
    let r = common::cancel_while_held(&db, "ev", || db.run(&["jobs", "cancel", &id]));
    assert_eq!(r.code, 0, "{r:?}");
    let out = child.take().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "cancelled");
    let committed = s["rows_committed"].as_i64().unwrap();
    assert!(committed < ROWS, "stopped early");
    assert_eq!(db.count("ev"), committed, "the counters match the table");
}

#[test]
fn writer_connections_killed_mid_load_are_retried_without_loss_or_duplicates() {
    let db = TestDb::new();
    let (models, file) = setup_with_table(&db);
    let mut child = Reaped(Some(
        db.nexus()
            .env("NEXUS_MODELS", &models)
            .env("NEXUS_COPY_CONNECTIONS", "2")
            .args(["load", "--json", "--model", "ev", file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    // Terminate the COPY sessions twice while batches flow (SQLSTATE 57P01,
    // then a closed connection): the writers reconnect and carry on.
    for at in [5, 200] {
        wait_for("batches to commit", Duration::from_secs(120), || {
            if common::batches(&db) >= at {
                return true;
            }
            // A load that ended short says why at once.
            if let Ok(Some(status)) = child.get().try_wait() {
                let mut said = String::new();
                for out in [
                    child
                        .get()
                        .stdout
                        .take()
                        .map(|s| Box::new(s) as Box<dyn std::io::Read>),
                    child
                        .get()
                        .stderr
                        .take()
                        .map(|s| Box::new(s) as Box<dyn std::io::Read>),
                ]
                .into_iter()
                .flatten()
                {
                    let _ = { out }.read_to_string(&mut said);
                }
                panic!("the load ended ({status}) before {at} batches: {said}");
            }
            false
        });
        let killed = db.value(
            "SELECT count(pg_terminate_backend(pid))::text FROM pg_stat_activity
             WHERE application_name = 'nexus writer' AND datname = current_database()",
        );
        assert_ne!(killed.as_deref(), Some("0"), "there were writers to kill");
    }
    let out = child.take().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["rows_committed"], ROWS);
    assert_eq!(db.count("ev"), ROWS);
    assert_eq!(db.count("(SELECT DISTINCT id FROM ev) d"), ROWS);
    assert_eq!(db.count("nexus.rejects"), ROWS / 1000);
}

/// `nexus load` through a proxy that the test cuts like a failover.
fn load_through(db: &TestDb, proxy: &common::proxy::Proxy, retry: &str) -> Reaped {
    let (models, file) = (
        db.dir.path().join("small-batches.toml"),
        db.dir.path().join("ev.csv"),
    );
    Reaped(Some(
        db.nexus()
            .env("DATABASE_URL", proxy.url(&db.url))
            .env("NEXUS_MODELS", &models)
            .env("NEXUS_DB_RETRY", retry)
            .args(["load", "--json", "--model", "ev", file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

/// PostgreSQL out of reach for 12 s mid-load (longer than the ~11 s the
/// writers used to retry) is ridden out under the default window.
#[test]
fn a_failover_within_the_retry_window_is_ridden_out() {
    let db = TestDb::new();
    setup_with_table(&db);
    let proxy = common::proxy::Proxy::start("127.0.0.1:5432");
    let child = load_through(&db, &proxy, "60s");
    wait_for("batches to commit", Duration::from_secs(120), || {
        common::batches(&db) >= 5
    });
    proxy.cut();
    let cut_at = std::time::Instant::now();
    // The outage lasts 12 s, and the load keeps trying all along.
    wait_for(
        "the load to retry for 12 s",
        Duration::from_secs(60),
        || proxy.refused() >= 2 && cut_at.elapsed() >= Duration::from_secs(12),
    );
    let refused = proxy.refused();
    proxy.restore();
    let out = child.take().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "succeeded");
    assert!(refused >= 2, "it retried during the outage");
    assert_eq!(db.count("ev"), ROWS, "every row");
    assert_eq!(db.count("(SELECT DISTINCT id FROM ev) d"), ROWS, "once");
    assert_eq!(s["rows_committed"], ROWS);
}

/// An outage longer than the window: the load gives up, still prints its
/// summary (exit 1) and leaves the job resumable; the next run finishes it.
#[test]
fn a_load_that_outlasts_the_retry_window_prints_its_summary_and_resumes() {
    let db = TestDb::new();
    setup_with_table(&db);
    let proxy = common::proxy::Proxy::start("127.0.0.1:5432");
    let child = load_through(&db, &proxy, "2s");
    wait_for("batches to commit", Duration::from_secs(120), || {
        common::batches(&db) >= 5
    });
    proxy.cut();
    let out = child.take().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("a JSON summary: {e}: {out:?}"));
    assert_eq!(s["status"], "failed", "{s}");
    assert!(s["error"].as_str().unwrap().contains("resumable"), "{s}");
    let committed = s["rows_committed"].as_i64().unwrap();
    assert!(committed > 0 && committed < ROWS, "{s}");
    proxy.restore();
    let out = load_through(&db, &proxy, "60s")
        .take()
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["resumed"], true);
    assert_eq!(db.count("nexus.jobs"), 1);
    assert_eq!(db.count("ev"), ROWS, "every row");
    assert_eq!(db.count("(SELECT DISTINCT id FROM ev) d"), ROWS, "once");
}

/// A job whose stored options do not read back is not resumed with
/// guessed ones (its batches could be cut otherwise): the run fails,
/// saying why.
#[test]
fn a_job_whose_stored_options_do_not_read_back_is_not_resumed() {
    use sha2::Digest;
    let db = TestDb::new();
    let (models, file) = setup(&db);
    let hash: String = sha2::Sha256::digest(std::fs::read(&file).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    db.exec(&format!(
        "INSERT INTO nexus.jobs (id, model, target, mode, atomic, status, file_hash, options)
         VALUES (gen_random_uuid(), 'ev', 'ev', 'append', false, 'failed', '{hash}', '{{}}')"
    ));
    let r = db.run_with_models(&models, &["load", "--model", "ev", file.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("stored options"), "{r:?}");
    assert_eq!(common::batches(&db), 0, "nothing loaded");
}

/// A load claims a file of a size its model has not had before the file's
/// hash is known, so that its first COPYs need not wait for the hash; but
/// no batch of it commits before the hash is recorded with the job (a
/// re-run finds a file's jobs by their hash). Here the recording waits for
/// the test's lock until rows are being copied; a deferred trigger checks
/// at every batch's commit that its job has its hash.
#[test]
fn no_batch_commits_before_its_jobs_file_hash_is_recorded() {
    let db = TestDb::new();
    let (models, file) = setup_with_table(&db);
    db.exec(
        "CREATE FUNCTION hash_first() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF (SELECT file_hash FROM nexus.jobs WHERE id = NEW.job_id) IS NULL THEN
             RAISE EXCEPTION 'batch % committed before its file hash', NEW.seq;
           END IF;
           RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER hash_first AFTER INSERT ON nexus.job_batches
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hash_first();
         CREATE FUNCTION hash_waits() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$;
         CREATE TRIGGER hash_waits BEFORE UPDATE OF file_hash ON nexus.jobs
           FOR EACH ROW EXECUTE FUNCTION hash_waits();",
    );
    let rt = common::runtime();
    let holder = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.execute("SELECT pg_advisory_lock(4242)", &[])
            .await
            .unwrap();
        c
    });
    let mut child = Reaped(Some(
        db.nexus()
            .env("NEXUS_MODELS", &models)
            .args(["load", "--json", "--model", "ev", file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let count = |sql: &str| db.value(sql).unwrap_or_default();
    wait_for(
        "rows to be copied while the hash's recording waits",
        Duration::from_secs(60),
        || {
            child.get().try_wait().unwrap().is_some()
                || (count(
                    "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                ) != "0"
                    && count(
                        "SELECT count(*)::text FROM pg_stat_progress_copy WHERE datname = current_database()",
                    ) != "0")
        },
    );
    assert_eq!(common::batches(&db), 0, "nothing committed yet");
    rt.block_on(holder.execute("SELECT pg_advisory_unlock(4242)", &[]))
        .unwrap();
    let out = child.take().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["file_hash"].as_str().map(str::len), Some(64), "{s}");
    assert_eq!(db.count("ev"), ROWS);
    let size = std::fs::metadata(&file).unwrap().len().to_string();
    assert_eq!(
        db.value("SELECT file_size::text FROM nexus.loaded_files")
            .as_deref(),
        Some(size.as_str()),
        "the ledger keeps the loaded file's size"
    );
}

/// A file of the size of one loaded before needs its hash to be claimed:
/// another file of that size loads, the same file is skipped.
#[test]
fn files_of_one_size_are_told_apart_by_their_hash() {
    let db = TestDb::new();
    let models = common::small_batch_model(&db);
    create_ev(&db);
    let text = |tag: &str| {
        let mut csv = String::from("id,payload\n");
        for i in 1..=2_000 {
            csv.push_str(&format!("{i},{tag}\n"));
        }
        csv
    };
    let a = db.file("a.csv", text("aaaa"));
    let b = db.file("b.csv", text("bbbb"));
    let load = |f: &std::path::Path| {
        let r = db.run_with_models(
            &models,
            &["load", "--json", "--model", "ev", f.to_str().unwrap()],
        );
        assert_eq!(r.code, 0, "{r:?}");
        let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        s["status"].as_str().unwrap().to_string()
    };
    assert_eq!(load(&a), "succeeded");
    assert_eq!(load(&b), "succeeded", "another file of the same size");
    assert_eq!(load(&a), "skipped");
    assert_eq!(load(&b), "skipped");
    assert_eq!(db.count("ev"), 4_000);
    assert_eq!(db.count("ev WHERE payload = 'bbbb'"), 2_000);
}

/// A load that died after claiming its file, before recording its hash,
/// committed nothing; the next claim of a file of that size fails its job
/// (it would otherwise stay `running`) and loads the file once.
#[test]
fn a_job_whose_load_died_before_recording_its_hash_is_failed_by_the_next() {
    let db = TestDb::new();
    let models = common::small_batch_model(&db);
    create_ev(&db);
    let mut csv = String::from("id,payload\n");
    for i in 1..=3_000 {
        csv.push_str(&format!("{i},p\n"));
    }
    let file = db.file("ev.csv", csv);
    let size = std::fs::metadata(&file).unwrap().len();
    let r = db.run(&["migrate", "--schema-only"]);
    assert_eq!(r.code, 0, "{r:?}");
    db.exec(&format!(
        "INSERT INTO nexus.jobs (id, model, target, mode, atomic, status, file_hash, bytes_total, options)
         VALUES (gen_random_uuid(), 'ev', 'ev', 'append', false, 'running', NULL, {size}, '{{}}')"
    ));
    let r = db.run_with_models(
        &models,
        &["load", "--json", "--model", "ev", file.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["resumed"], false);
    assert_eq!(db.count("ev"), 3_000);
    let dead = db
        .value("SELECT status || ': ' || error FROM nexus.jobs WHERE file_hash IS NULL")
        .unwrap();
    assert!(
        dead.starts_with("failed: interrupted while its file was being hashed"),
        "{dead}"
    );
}

/// Two first runs of one file at once: one loads it, the other is refused
/// or finds it loaded; every row is there once.
#[test]
fn two_first_runs_of_one_file_at_once_load_it_once() {
    let db = TestDb::new();
    let (models, file) = setup_with_table(&db);
    let args = ["load", "--json", "--model", "ev", file.to_str().unwrap()];
    let spawn = || {
        db.nexus()
            .env("NEXUS_MODELS", &models)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let mut outcomes: Vec<String> = [first, second]
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) => {
                    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    s["status"].as_str().unwrap().to_string()
                }
                Some(1) if stderr.contains("being loaded by another process") => "refused".into(),
                other => panic!("{other:?}: {stderr}"),
            }
        })
        .collect();
    outcomes.sort();
    assert!(
        outcomes == ["refused", "succeeded"] || outcomes == ["skipped", "succeeded"],
        "{outcomes:?}"
    );
    assert_eq!(db.count("ev"), ROWS);
    assert_eq!(db.count("(SELECT DISTINCT id FROM ev) d"), ROWS);
}
