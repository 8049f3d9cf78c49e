//! Jobs over HTTP: streamed uploads (raw, multipart, gzip), the size limit,
//! ownership, rejects, cancel, and the shared queue — a server restarted or
//! killed mid-job, and another finishing the job with exact counts.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::server::{ADMIN_PW, Server, accepted, add_user, assert_problem};
use common::{TestDb, customers, wait_for};
use serde_json::Value;

const ROWS: i64 = 200_000;

#[test]
fn raw_multipart_and_gzip_uploads_become_jobs() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let raw = accepted(s.upload(
        &a,
        "model=customer",
        customers(1, 10).into_bytes(),
        &[("x-filename", "../../etc/passwd")],
    ));
    let done = s.wait_status(&a, &raw, "succeeded");
    assert_eq!(done["rows_committed"], 10);
    assert_eq!(done["file_name"], "passwd", "a client name is only a label");
    assert_eq!(done["owner"], "admin");

    // Load options as fields before the file: here, a file without a header.
    let boundary = "nexusboundary";
    let multipart = |field: &str, value: &str, data: &str| {
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.csv\"\r\nContent-Type: text/csv\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(data.as_bytes());
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        s.http
            .post(s.url("/api/v2/jobs?model=customer"))
            .bearer_auth(&a)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
            .unwrap()
    };
    let rows = customers(11, 20);
    let headerless = &rows[rows.find('\n').unwrap() + 1..];
    let multi = accepted(multipart("header", "false", headerless));
    let done = s.wait_status(&a, &multi, "succeeded");
    assert_eq!(done["rows_committed"], 20);
    assert_eq!(done["file_name"], "c.csv");
    let p = assert_problem(multipart("note", "hello", &rows), 400);
    assert!(p["detail"].as_str().unwrap().contains("note"), "{p}");

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(customers(31, 5).as_bytes()).unwrap();
    let zipped = accepted(s.upload(
        &a,
        "model=customer",
        gz.finish().unwrap(),
        &[("content-encoding", "gzip")],
    ));
    let done = s.wait_status(&a, &zipped, "succeeded");
    assert_eq!(done["rows_committed"], 5);
    assert_eq!(db.count("customer"), 35);
    // The same bytes again: skipped, as with `nexus load`.
    let again = accepted(s.upload(&a, "model=customer", customers(1, 10).into_bytes(), &[]));
    s.wait_status(&a, &again, "skipped");

    assert_problem(s.upload(&a, "model=nope", b"x".to_vec(), &[]), 400);
    assert_problem(
        s.upload(&a, "model=customer&mode=merge", b"x".to_vec(), &[]),
        400,
    );
    // An empty file is a job like any other, and fails as `nexus load` does.
    let empty = accepted(s.upload(&a, "model=customer", Vec::new(), &[]));
    let failed = s.wait_status(&a, &empty, "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("empty"),
        "{failed}"
    );
    let page: Value = s.get("/api/v2/jobs?limit=2", &a).json().unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = s
        .get(&format!("/api/v2/jobs?limit=2&cursor={cursor}"), &a)
        .json()
        .unwrap();
    assert_eq!(rest["jobs"].as_array().unwrap().len(), 2);
    assert_ne!(rest["jobs"][0]["job_id"], page["jobs"][0]["job_id"]);
    let ok: Value = s.get("/api/v2/jobs?status=succeeded", &a).json().unwrap();
    assert_eq!(ok["jobs"].as_array().unwrap().len(), 3);
}

#[test]
fn uploads_over_the_limit_are_refused() {
    let db = TestDb::new();
    let s = Server::start(&db, &[("NEXUS_MAX_UPLOAD", "1KiB")]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    assert_problem(
        s.upload(&a, "model=customer", customers(1, 100).into_bytes(), &[]),
        413,
    );
    assert_eq!(db.count("nexus.jobs"), 0);
    let stored: Vec<PathBuf> = std::fs::read_dir(db.dir.path().join("data/uploads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(stored.is_empty(), "nothing is left behind: {stored:?}");
}

#[test]
fn users_see_their_own_jobs_and_rejects() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    add_user(&db, "ann", "uploader", "ann-password");
    add_user(&db, "bob", "uploader", "bob-password");
    add_user(&db, "val", "viewer", "val-password");
    let (ann, _) = s.tokens("ann", "ann-password");
    let (bob, _) = s.tokens("bob", "bob-password");
    let (val, _) = s.tokens("val", "val-password");
    let (admin, _) = s.tokens("admin", ADMIN_PW);
    assert_problem(
        s.upload(&val, "model=customer", b"id\n1\n".to_vec(), &[]),
        403,
    );
    let demo = std::fs::read(common::fixture("customers.csv")).unwrap();
    let id = accepted(s.upload(&ann, "model=customer", demo, &[]));
    let done = s.wait_status(&ann, &id, "succeeded");
    assert_eq!(done["rows_rejected"], 5);
    assert_problem(s.get(&format!("/api/v2/jobs/{id}"), &bob), 404);
    assert_problem(s.get(&format!("/api/v2/jobs/{id}/rejects"), &bob), 404);
    let r = s
        .http
        .post(s.url(&format!("/api/v2/jobs/{id}/cancel")))
        .bearer_auth(&bob)
        .send()
        .unwrap();
    assert_problem(r, 404);
    let bobs: Value = s.get("/api/v2/jobs", &bob).json().unwrap();
    assert!(bobs["jobs"].as_array().unwrap().is_empty());
    let all: Value = s.get("/api/v2/jobs", &admin).json().unwrap();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);
    let csv = s.get(&format!("/api/v2/jobs/{id}/rejects"), &ann);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = csv.text().unwrap();
    assert!(
        text.starts_with("line,column,reason,raw\n201,country,"),
        "{text}"
    );
    let json: Value = s
        .http
        .get(s.url(&format!("/api/v2/jobs/{id}/rejects")))
        .bearer_auth(&ann)
        .header("accept", "application/json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 5);
    assert_eq!(json[0]["line"], 201);
    // A finished job cannot be cancelled.
    let r = s
        .http
        .post(s.url(&format!("/api/v2/jobs/{id}/cancel")))
        .bearer_auth(&ann)
        .send()
        .unwrap();
    assert_problem(r, 409);
}

/// A model whose batches are small, on a table without a primary key.
fn big_job_setup(db: &TestDb) -> (PathBuf, Vec<u8>) {
    let models = common::small_batch_model(db);
    let mut csv = String::from("id,payload\n");
    for i in 1..=ROWS {
        csv.push_str(&format!("{i},row {i}\n"));
    }
    (models, csv.into_bytes())
}

fn exactly_once(db: &TestDb) {
    assert_eq!(db.count("ev"), ROWS);
    assert_eq!(
        db.count("(SELECT DISTINCT id FROM ev) d"),
        ROWS,
        "no row twice"
    );
}

#[test]
fn cancel_stops_a_running_job() {
    let db = TestDb::new();
    let (models, csv) = big_job_setup(&db);
    let m = models.to_str().unwrap();
    let s = Server::start(&db, &[("NEXUS_MODELS", m)]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let id = accepted(s.upload(&a, "model=ev", csv, &[]));
    wait_for("batches to commit", Duration::from_secs(120), || {
        common::batches(&db) >= 2
    });
    let r = common::cancel_while_held(&db, "ev", || {
        s.http
            .post(s.url(&format!("/api/v2/jobs/{id}/cancel")))
            .bearer_auth(&a)
            .send()
            .unwrap()
    });
    assert_eq!(r.status(), 202);
    let done = s.wait_status(&a, &id, "cancelled");
    let committed = done["rows_committed"].as_i64().unwrap();
    assert!(committed < ROWS, "stopped early");
    assert_eq!(db.count("ev"), committed);
}

/// A cancel answered 2xx wins, whenever it lands: before a worker claims
/// the job, while it claims it, or while it runs; none of these jobs may end
/// `succeeded`.
#[test]
fn a_cancel_right_after_the_upload_always_wins() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let body = customers(1, 2000).into_bytes();
    let mut ids = Vec::new();
    for _ in 0..12 {
        let id = accepted(s.upload(&a, "model=customer&mode=upsert", body.clone(), &[]));
        let r = s
            .http
            .post(s.url(&format!("/api/v2/jobs/{id}/cancel")))
            .bearer_auth(&a)
            .send()
            .unwrap();
        if r.status() == 409 {
            // Finished before the cancel: the answer names what it became.
            let v: Value = r.json().unwrap();
            panic!("a 2000-row job finished before an immediate cancel: {v}");
        }
        assert_eq!(r.status(), 202);
        ids.push(id);
    }
    for id in &ids {
        let done = s.wait_status(&a, id, "cancelled");
        assert_eq!(done["status"], "cancelled", "{done}");
        assert_eq!(
            done["rows_read"].as_i64().unwrap(),
            done["rows_committed"].as_i64().unwrap() + done["rows_rejected"].as_i64().unwrap()
        );
    }
    // A finished job answers 409 with its status.
    let r = s
        .http
        .post(s.url(&format!("/api/v2/jobs/{}/cancel", ids[0])))
        .bearer_auth(&a)
        .send()
        .unwrap();
    let v = assert_problem(r, 409);
    assert!(v["detail"].as_str().unwrap().contains("cancelled"), "{v}");
}

#[test]
fn a_restarted_server_resumes_its_job() {
    let db = TestDb::new();
    let (models, csv) = big_job_setup(&db);
    let m = models.to_str().unwrap();
    let mut s = Server::start(&db, &[("NEXUS_MODELS", m)]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let id = accepted(s.upload(&a, "model=ev", csv, &[]));
    wait_for("batches to commit", Duration::from_secs(120), || {
        common::batches(&db) >= 3
    });
    common::sigterm(s.child().id());
    assert_eq!(s.child().wait().unwrap().code(), Some(0));
    let status = db
        .value(&format!("SELECT status FROM nexus.jobs WHERE id = '{id}'"))
        .unwrap();
    assert_eq!(status, "queued", "SIGTERM hands the job back to the queue");
    assert!(db.count("ev") < ROWS);
    let s2 = Server::start(&db, &[("NEXUS_MODELS", m)]);
    let (a2, _) = s2.tokens("admin", ADMIN_PW);
    let done = s2.wait_status(&a2, &id, "succeeded");
    assert_eq!(done["rows_committed"], ROWS);
    exactly_once(&db);
}

#[test]
fn when_one_of_two_servers_dies_the_other_finishes_the_job() {
    let db = TestDb::new();
    let (models, csv) = big_job_setup(&db);
    let m = models.to_str().unwrap();
    let env = [("NEXUS_MODELS", m), ("NEXUS_JOB_LEASE", "2s")];
    let mut first = Server::start(&db, &env);
    let (a, _) = first.tokens("admin", ADMIN_PW);
    let id = accepted(first.upload(&a, "model=ev", csv, &[]));
    wait_for(
        "the first server to run the job",
        Duration::from_secs(120),
        || common::batches(&db) >= 3,
    );
    let second = Server::start(&db, &env);
    first.child().kill().unwrap();
    first.child().wait().unwrap();
    let (a2, _) = second.tokens("admin", ADMIN_PW);
    let done = second.wait_status(&a2, &id, "succeeded");
    assert_eq!(done["rows_committed"], ROWS);
    assert_eq!(done["rows_read"], ROWS);
    exactly_once(&db);
}

/// Servers answer job reads from memory; a change made by another process
/// (here the CLI) still shows at once, announced by the trigger.
#[test]
fn a_job_changed_by_another_process_reads_fresh() {
    let db = TestDb::new();
    let s = Server::start(&db, &[("NEXUS_WORKERS", "0")]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let id = accepted(s.upload(&a, "model=customer", customers(1, 3).into_bytes(), &[]));
    for _ in 0..3 {
        assert_eq!(s.job(&a, &id)["status"], "queued");
    }
    let out = db.run(&["jobs", "cancel", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    s.wait_status(&a, &id, "cancelled");
    // And a session revoked elsewhere (another server, an operator) is refused.
    db.exec("UPDATE nexus.sessions SET revoked_at = now()");
    wait_for(
        "the revoked session to be refused",
        Duration::from_secs(5),
        || s.get("/api/v2/models", &a).status() == 401,
    );
}

#[test]
fn a_job_whose_worker_died_twice_without_progress_is_failed_not_retried() {
    let db = TestDb::new();
    // No workers: the uploads stay queued for us to stage their history.
    let s = Server::start(&db, &[("NEXUS_WORKERS", "0")]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let poisoned = accepted(s.upload(&a, "model=customer", customers(1, 10).into_bytes(), &[]));
    let progressed = accepted(s.upload(&a, "model=customer", customers(100, 10).into_bytes(), &[]));
    // Both jobs' workers died once before, and now their leases ran out
    // again: one without a batch committed since, one after some progress.
    let expired = |id: &str, claimed_done: i64| {
        db.exec(&format!(
            "UPDATE nexus.jobs SET status = 'running', lease_owner = 'dead/0',
                    lease_expires_at = now() - interval '1 second', stalled_leases = 1,
                    claimed_done = {claimed_done}
             WHERE id = '{id}'"
        ))
    };
    expired(&poisoned, 0);
    expired(&progressed, -1);
    drop(s);
    let s = Server::start(&db, &[("NEXUS_WORKERS", "1")]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let failed = s.wait_status(&a, &poisoned, "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("stopped 2 times without committing a batch"),
        "{failed}"
    );
    assert_eq!(failed["rows_committed"], 0);
    let loaded = s.wait_status(&a, &progressed, "succeeded");
    assert_eq!(loaded["rows_committed"], 10);
}

/// Sets a file's last-modified time `ago` in the past.
fn age_file(path: &std::path::Path, ago: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - ago).unwrap();
}

/// A server sweeps its upload store at startup: the upload of a job that
/// finished longer ago than the retention, partial uploads left idle, and
/// files no job refers to go; a partial upload still being written and the
/// uploads of recent jobs stay. Uploads are private to the server.
#[test]
fn uploads_of_old_jobs_and_cut_off_parts_are_swept() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    // A file whose header names no column of the model fails its job.
    let old = accepted(s.upload(&a, "model=customer", b"foo,bar\n1,2\n".to_vec(), &[]));
    let recent = accepted(s.upload(&a, "model=customer", b"foo,baz\n1,2\n".to_vec(), &[]));
    s.wait_status(&a, &old, "failed");
    s.wait_status(&a, &recent, "failed");
    drop(s);
    let uploads = db.dir.path().join("data/uploads");
    let key = |id: &str| {
        db.value(&format!(
            "SELECT storage_key FROM nexus.jobs WHERE id = '{id}'"
        ))
    };
    let (old_key, recent_key) = (key(&old).unwrap(), key(&recent).unwrap());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&uploads), 0o700);
    assert_eq!(mode(&uploads.join(&old_key)), 0o600);
    db.exec(&format!(
        "UPDATE nexus.jobs SET finished_at = now() - interval '8 days' WHERE id = '{old}'"
    ));
    let cut_off = uploads.join(format!("{}.part", uuid::Uuid::new_v4()));
    let writing = uploads.join(format!("{}.part", uuid::Uuid::new_v4()));
    let orphan = uploads.join(uuid::Uuid::new_v4().to_string());
    for p in [&cut_off, &writing, &orphan] {
        std::fs::write(p, "id\n1\n").unwrap();
    }
    age_file(&cut_off, Duration::from_secs(3600));
    age_file(&orphan, Duration::from_secs(2 * 3600));
    let _s = Server::start(&db, &[]);
    wait_for("the startup sweep", Duration::from_secs(60), || {
        !uploads.join(&old_key).exists() && !cut_off.exists() && !orphan.exists()
    });
    assert!(writing.exists(), "a part still being written stays");
    assert!(
        uploads.join(&recent_key).exists(),
        "a recent job's upload stays"
    );
    assert_eq!(key(&old), None, "the job no longer names its upload");
    assert_eq!(key(&recent), Some(recent_key));
}

/// `nexus jobs purge --older-than` deletes old finished jobs with their
/// rejects and uploads; the files they loaded stay loaded.
#[test]
fn jobs_purge_deletes_old_jobs_their_rejects_and_uploads() {
    let db = TestDb::new();
    let demo = common::fixture("customers.csv");
    let (r, old) = db.load_json(&["--model", "customer", demo.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(old["rows_rejected"], 5);
    let other = db.file("other.csv", customers(5000, 10));
    let (r, recent) = db.load_json(&["--model", "customer", other.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let old_id = old["job_id"].as_str().unwrap();
    // As if the old job had been uploaded: its upload is in the store.
    let uploads = db.dir.path().join("data/uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let key = uuid::Uuid::new_v4().to_string();
    std::fs::write(uploads.join(&key), "x").unwrap();
    db.exec(&format!(
        "UPDATE nexus.jobs SET storage_key = '{key}', created_at = now() - interval '41 days',
                finished_at = now() - interval '40 days' WHERE id = '{old_id}'"
    ));
    let r = db.run(&["jobs", "purge", "--older-than", "30d", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"jobs": 1, "rejects": 5, "uploads": 1})
    );
    assert_eq!(db.count("nexus.jobs"), 1);
    assert_eq!(
        db.value("SELECT id::text FROM nexus.jobs").as_deref(),
        recent["job_id"].as_str()
    );
    assert_eq!(db.count("nexus.rejects"), 0);
    assert_eq!(
        db.count(&format!("nexus.job_batches WHERE job_id = '{old_id}'")),
        0
    );
    assert!(!uploads.join(&key).exists());
    // The purged job's file is still loaded.
    let (r, again) = db.load_json(&["--model", "customer", demo.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(again["status"], "skipped");
    let r = db.run(&["jobs", "purge", "--older-than", "soon"]);
    assert_eq!(r.code, 2, "{r:?}");
}

/// The same file uploaded twice (a client retrying a lost answer) with two
/// workers free: the jobs never run together; the second finds the file
/// loaded and is skipped, and every row is in the table once.
#[test]
fn the_same_file_uploaded_twice_loads_once() {
    let db = TestDb::new();
    let (models, csv) = big_job_setup(&db);
    let m = models.to_str().unwrap();
    let s = Server::start(&db, &[("NEXUS_MODELS", m), ("NEXUS_WORKERS", "2")]);
    let (a, _) = s.tokens("admin", ADMIN_PW);
    let first = accepted(s.upload(&a, "model=ev", csv.clone(), &[]));
    let second = accepted(s.upload(&a, "model=ev", csv, &[]));
    let ends: Vec<String> = [&first, &second]
        .iter()
        .map(|id| {
            let mut last = Value::Null;
            wait_for("the job to end", Duration::from_secs(120), || {
                last = s.job(&a, id);
                last["status"] == "succeeded" || last["status"] == "skipped"
            });
            last["status"].as_str().unwrap().to_string()
        })
        .collect();
    let mut sorted = ends.clone();
    sorted.sort();
    assert_eq!(sorted, ["skipped", "succeeded"], "{ends:?}");
    exactly_once(&db);
}

/// An upload carries the command line's load options; an unknown or bad
/// one is a 400 naming it, never silently ignored.
#[test]
fn uploads_carry_load_options_and_refuse_unknown_ones() {
    let db = TestDb::new();
    let s = Server::start(&db, &[]);
    let (token, _) = s.tokens("admin", ADMIN_PW);
    // Latin-1, `;`-separated, without a header, with a NULL word.
    let mut body = Vec::new();
    for i in 1..=5 {
        body.extend_from_slice(format!("{i};{};Ren", uuid::Uuid::from_u128(i as u128)).as_bytes());
        body.push(0xE9);
        body.extend_from_slice(
            format!(";r{i}@example.com;FR;-;10.00;2021-01-01T00:00:00Z;true;{i}\n").as_bytes(),
        );
    }
    let id = accepted(s.upload(
        &token,
        "model=customer&encoding=latin1&delimiter=%3B&header=false&null=-&max_rejects=0",
        body.clone(),
        &[],
    ));
    let done = s.wait_status(&token, &id, "succeeded");
    assert_eq!(done["rows_committed"], 5, "{done}");
    assert_eq!(
        db.value("SELECT name FROM customer WHERE id = 3")
            .as_deref(),
        Some("René")
    );
    assert_eq!(
        db.value("SELECT count(*)::text FROM customer WHERE segment IS NULL")
            .as_deref(),
        Some("5")
    );
    // The same file again: skipped, unless forced.
    let again = accepted(s.upload(
        &token,
        "model=customer&encoding=latin1&delimiter=%3B&header=false&null=-",
        body.clone(),
        &[],
    ));
    s.wait_status(&token, &again, "skipped");
    let forced = accepted(s.upload(
        &token,
        "model=customer&encoding=latin1&delimiter=%3B&header=false&null=-&force=true",
        body,
        &[],
    ));
    let f = s.wait_status(&token, &forced, "failed");
    assert_eq!(f["rows_rejected"], 5, "duplicates, all rejected: {f}");
    // Grouped by kind: the keys differ, the kind does not.
    let groups: Value = s
        .get(&format!("/api/v2/jobs/{forced}/rejects/summary"), &token)
        .json()
        .unwrap();
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["count"], 5, "{groups}");
    assert!(
        groups[0]["kind"]
            .as_str()
            .unwrap()
            .contains("Key (…)=(…) already exists"),
        "{groups}"
    );
    assert_eq!(
        groups[0]["examples"].as_array().unwrap().len(),
        3,
        "{groups}"
    );
    assert_eq!(groups[0]["examples"][0]["line"], 1, "{groups}");
    // Unknown and bad options.
    let p = assert_problem(
        s.upload(
            &token,
            "model=customer&encodng=latin1",
            b"id\n1\n".to_vec(),
            &[],
        ),
        400,
    );
    assert!(p["detail"].as_str().unwrap().contains("encodng"), "{p}");
    let p = assert_problem(
        s.upload(
            &token,
            "model=customer&encoding=ebcdic",
            b"id\n1\n".to_vec(),
            &[],
        ),
        400,
    );
    assert!(p["detail"].as_str().unwrap().contains("ebcdic"), "{p}");
    let p = assert_problem(
        s.upload(
            &token,
            "model=customer&delimiter=ab",
            b"id\n1\n".to_vec(),
            &[],
        ),
        400,
    );
    assert!(p["detail"].as_str().unwrap().contains("delimiter"), "{p}");
}
