//! Upload storage in S3 and loads of remote files, against a real S3 API
//! server (moto) and a real HTTPS server: a job uploaded to one server is
//! run by another with its own data directory; an upload cut off leaves no
//! object or open multipart upload behind; `nexus load s3://…` and
//! `https://…` stream the file and then load, resume and skip it like a
//! local one.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::s3::Moto;
use common::server::{ADMIN_PW, Server, accepted, assert_problem};
use common::tls::Certs;
use common::{Reaped, TestDb, customers, wait_for};

fn s(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A server keeping uploads in `bucket` of `moto`, with its own data
/// directory and `workers` job workers.
fn s3_server(db: &TestDb, moto: &Moto, bucket: &str, data: &str, extra: &[(&str, &str)]) -> Server {
    let storage = format!("s3://{bucket}/uploads");
    let data = s(&db.dir.path().join(data));
    let aws = moto.env();
    let mut env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([
        ("NEXUS_STORAGE", storage.as_str()),
        ("NEXUS_DATA_DIR", data.as_str()),
    ]);
    env.extend_from_slice(extra);
    Server::start(db, &env)
}

#[test]
fn a_job_uploaded_to_one_server_is_run_by_another_from_the_bucket() {
    let db = TestDb::new();
    let moto = Moto::start();
    moto.create_bucket("shared");
    // A takes uploads but runs no job; B runs them. Each has its own disk.
    let a = s3_server(&db, &moto, "shared", "a", &[("NEXUS_WORKERS", "0")]);
    let token = a.tokens("admin", ADMIN_PW).0;
    let body = customers(1, 20_000).into_bytes();
    let id = accepted(a.upload(&token, "model=customer", body, &[]));
    let (keys, open) = moto.keys("shared");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("uploads/"), "{keys:?}");
    assert_eq!(open, 0);
    assert!(!db.dir.path().join("a/uploads").exists());

    let b = s3_server(&db, &moto, "shared", "b", &[("NEXUS_WORKERS", "1")]);
    let done = b.wait_status(&token, &id, "succeeded");
    assert_eq!(done["rows_committed"], 20_000);
    assert_eq!(db.count("customer"), 20_000);
    // A succeeded job's upload goes, from the bucket and from B's disk.
    wait_for("the upload removed", Duration::from_secs(30), || {
        moto.keys("shared").0.is_empty()
    });
    let fetched = std::fs::read_dir(db.dir.path().join("b/fetched")).unwrap();
    assert_eq!(fetched.count(), 0);
}

#[test]
fn an_upload_over_the_limit_leaves_nothing_in_the_bucket() {
    let db = TestDb::new();
    let moto = Moto::start();
    moto.create_bucket("limited");
    let server = s3_server(
        &db,
        &moto,
        "limited",
        "data",
        &[("NEXUS_MAX_UPLOAD", "12MB")],
    );
    let token = server.tokens("admin", ADMIN_PW).0;
    // Past one multipart part (8 MiB) before the limit is crossed.
    let body = customers(1, 200_000).into_bytes();
    assert!(body.len() > 12_000_000, "{}", body.len());
    assert_problem(server.upload(&token, "model=customer", body, &[]), 413);
    assert_eq!(moto.keys("limited"), (vec![], 0));
    // The storage still takes the next upload.
    let id = accepted(server.upload(&token, "model=customer", customers(1, 10).into_bytes(), &[]));
    server.wait_status(&token, &id, "succeeded");
}

#[test]
fn nexus_load_streams_an_s3_object_and_skips_it_the_second_time() {
    let db = TestDb::new();
    let moto = Moto::start();
    moto.create_bucket("drop");
    let file = db.file("c.csv", customers(1, 5_000));
    moto.put("drop", "in/2026/c.csv", &file);
    let load = |url: &str| {
        let mut c = db.nexus();
        for (k, v) in moto.env() {
            c.env(k, v);
        }
        common::run(c.args(["load", "--model", "customer", url]))
    };
    let first = load("s3://drop/in/2026/c.csv");
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.starts_with("succeeded"), "{}", first.stdout);
    assert_eq!(db.count("customer"), 5_000);
    let again = load("s3://drop/in/2026/c.csv");
    assert!(again.stdout.starts_with("skipped"), "{}", again.stdout);
    let missing = load("s3://drop/in/2026/none.csv");
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("has no object `in/2026/none.csv`"),
        "{}",
        missing.stderr
    );
    let bad = load("s3://drop");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    // Nothing is left in the spool.
    let spool = db.dir.path().join("data/spool");
    assert_eq!(std::fs::read_dir(spool).unwrap().count(), 0);
}

/// A static HTTPS file server (Python's own) with the test CA's certificate.
fn https_files(certs: &Certs, dir: &std::path::Path) -> (Reaped, String) {
    let script = "import http.server, ssl, sys, functools\n\
        h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])\n\
        srv = http.server.HTTPServer(('127.0.0.1', 0), h)\n\
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
        ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n\
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n\
        print(srv.server_address[1], flush=True)\n\
        srv.serve_forever()\n";
    let mut child = Reaped(Some(
        Command::new("python3")
            .args(["-c", script])
            .args([s(&certs.server_cert), s(&certs.server_key), s(dir)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3's HTTPS server"),
    ));
    let mut port = String::new();
    BufReader::new(child.get().stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    (child, format!("https://127.0.0.1:{}", port.trim()))
}

#[test]
fn nexus_load_streams_an_https_file_checked_against_the_trusted_cas() {
    let db = TestDb::new();
    let certs = Certs::make();
    let files = db.dir.path().join("www");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("c.ndjson"), {
        let mut out = String::new();
        for i in 1..=300 {
            out.push_str(&format!(
                "{{\"id\": {i}, \"name\": \"N{i}\", \"email\": \"n{i}@example.com\"}}\n"
            ));
        }
        out
    })
    .unwrap();
    let (_server, base) = https_files(&certs, &files);
    let load = |url: &str, ca: &std::path::Path| {
        common::run(
            db.nexus()
                .env("SSL_CERT_FILE", ca)
                .args(["load", "--model", "customer", url]),
        )
    };
    // The format is told by the URL's path, the query aside.
    let url = format!("{base}/c.ndjson?token=abc");
    let done = load(&url, &certs.ca);
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(db.count("customer"), 300);
    // A server whose certificate no trusted CA signed is refused.
    let refused = load(&format!("{base}/c.ndjson?again"), &certs.other_ca);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains(&base), "{}", refused.stderr);
    let missing = load(&format!("{base}/none.csv"), &certs.ca);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("404"), "{}", missing.stderr);
}
