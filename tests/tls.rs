//! TLS to PostgreSQL as the URL's `sslmode` asks, against a private server
//! that takes TLS connections only, with certificates made by openssl: the
//! CLI's load (control connection and COPY writers) and the server (pool,
//! event listener, workers).

mod common;

use common::redis::PrivateRedis;
use common::server::{ADMIN_PW, Server, accepted};
use common::tls::{Certs, TlsPostgres};
use common::{Run, TestDb, customers, run};

fn load(db: &TestDb, url: &str, first: i64) -> Run {
    let csv = db.file(&format!("c{first}.csv"), customers(first, 50));
    run(db
        .nexus()
        .env("DATABASE_URL", url)
        .args(["load", "--json", "--model", "customer"])
        .arg(csv))
}

#[test]
fn postgres_is_reached_over_tls_as_sslmode_asks() {
    let certs = Certs::make();
    let pg = TlsPostgres::start(&certs);
    let db = TestDb::new();
    let ca = certs.ca.display().to_string();
    let by_name = |params: &str| {
        // A name the certificate does not carry, at the address it serves.
        format!(
            "postgres://postgres@localhost:{}/postgres?hostaddr=127.0.0.1&{params}",
            pg.port
        )
    };

    // Accepted: the chain and the name checked; the chain only; no check.
    let mut first = 1;
    for url in [
        pg.url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        by_name(&format!("sslmode=verify-ca&sslrootcert={ca}")),
        pg.url("127.0.0.1", "sslmode=require"),
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={ca}",
            pg.port
        ),
    ] {
        let r = load(&db, &url, first);
        assert_eq!(r.code, 0, "{url}: {r:?}");
        let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        assert_eq!(s["rows_committed"], 50, "{url}: {s}");
        first += 50;
    }

    // Refused at once, saying why: no retry can change a certificate.
    for (url, says) in [
        (
            pg.url(
                "127.0.0.1",
                &format!(
                    "sslmode=verify-full&sslrootcert={}",
                    certs.other_ca.display()
                ),
            ),
            "UnknownIssuer",
        ),
        (
            by_name(&format!("sslmode=verify-full&sslrootcert={ca}")),
            "not valid for name",
        ),
        (
            pg.url(
                "127.0.0.1",
                "sslmode=verify-full&sslrootcert=/no/such/ca.pem",
            ),
            "sslrootcert /no/such/ca.pem: cannot read the CA certificates",
        ),
        (
            pg.url(
                "127.0.0.1",
                "sslmode=verify-full&sslrootcert=%2Fetc%2Fhostname",
            ),
            "holds no certificate",
        ),
        // Without sslmode Nexus does not encrypt, and this server says so.
        (pg.url("127.0.0.1", "application_name=x"), "no encryption"),
        (pg.url("127.0.0.1", "sslmode=sometimes"), "sslmode"),
    ] {
        let r = load(&db, &url, first);
        assert_eq!(r.code, 2, "{url}: {r:?}");
        assert!(r.stderr.contains(says), "{url}: {r:?}");
        assert!(!r.stderr.contains("retrying"), "{url}: {r:?}");
    }
}

#[test]
fn the_server_reaches_postgres_over_tls() {
    let certs = Certs::make();
    let pg = TlsPostgres::start(&certs);
    let db = TestDb::new();
    let url = pg.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", certs.ca.display()),
    );
    let server = Server::start(&db, &[("DATABASE_URL", &url)]);
    let (token, _) = server.tokens("admin", ADMIN_PW);
    let id = accepted(server.upload(
        &token,
        "model=customer",
        customers(1, 200).into_bytes(),
        &[],
    ));
    let job = server.wait_status(&token, &id, "succeeded");
    assert_eq!(job["rows_committed"], 200, "{job}");
}

#[test]
fn the_cache_reaches_redis_over_tls() {
    let certs = Certs::make();
    let redis = PrivateRedis::start_tls(&certs);
    let db = TestDb::new();
    let models = db.file(
        "models.toml",
        "[models.wt]\ntable = \"wt\"\nkey = [\"id\"]\n\
         cache = { strategy = \"write_through\", ttl = \"30m\" }\n\
         [[models.wt.columns]]\nname = \"id\"\ntype = \"bigint\"\n\
         [[models.wt.columns]]\nname = \"name\"\ntype = \"text\"\n",
    );
    let csv = db.file("wt.csv", "id,name\n1,a\n2,b\n3,c\n");
    let nexus = |ca: &std::path::Path| {
        let mut c = db.nexus();
        c.env("NEXUS_MODELS", &models)
            .env("REDIS_URL", redis.url())
            .env("NEXUS_REDIS_CA", ca);
        c
    };
    let loaded = run(nexus(&certs.ca).args(["load", "--model", "wt"]).arg(&csv));
    assert_eq!(loaded.code, 0, "{loaded:?}");
    assert_eq!(
        common::redis::cached_count(&mut redis.connection(), "nexus", "wt"),
        3
    );
    let stats = run(nexus(&certs.ca).args(["cache", "stats"]));
    assert!(stats.stdout.contains("redis: up"), "{stats:?}");

    // Someone else's CA: the server is not believed, and the cache says why.
    let stats = run(nexus(&certs.other_ca).args(["cache", "stats"]));
    assert!(stats.stdout.contains("redis: down ("), "{stats:?}");
    assert!(
        stats.stdout.to_lowercase().contains("certificate"),
        "{stats:?}"
    );
    let unread = run(nexus(std::path::Path::new("/no/such/ca.pem")).args(["cache", "stats"]));
    assert_eq!(unread.code, 2, "{unread:?}");
    assert!(
        unread.stderr.contains("NEXUS_REDIS_CA: /no/such/ca.pem"),
        "{unread:?}"
    );
}

/// `curl` against the HTTPS server, trusting `ca`: (status, body).
fn curl(ca: &std::path::Path, args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A `ping` over `wss://` (rustls trusting `ca`), and what answers it.
fn wss_ping(base: &str, ca: &std::path::Path, token: &str) -> serde_json::Value {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let addr = base.strip_prefix("https://").unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let tls =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "127.0.0.1".try_into().unwrap())
            .unwrap();
    let stream = rustls::StreamOwned::new(tls, tcp);
    let url = format!("wss://{addr}/api/v2/ws?access_token={token}");
    let (mut ws, _) = tungstenite::client(url, stream).unwrap();
    ws.send(tungstenite::Message::Text(r#"{"type": "ping"}"#.into()))
        .unwrap();
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[test]
fn serve_speaks_https_with_its_own_certificate() {
    let certs = Certs::make();
    let db = TestDb::new();
    let (cert, key) = (
        certs.server_cert.display().to_string(),
        certs.server_key.display().to_string(),
    );
    let server = Server::start(&db, &[("NEXUS_TLS_CERT", &cert), ("NEXUS_TLS_KEY", &key)]);
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    let (status, body) = curl(&certs.ca, &[&server.url("/health")]);
    assert_eq!(status, 200, "{body}");

    // A client that does not trust the CA refuses the server.
    let (status, body) = curl(&certs.other_ca, &[&server.url("/health")]);
    assert_eq!(status, 0, "{body}");
    assert!(body.contains("certificate"), "{body}");
    // Plain HTTP is not answered as HTTP.
    let plain = server.url("/health").replace("https://", "http://");
    let (status, _) = curl(&certs.ca, &[&plain]);
    assert_ne!(status, 200);

    // Log in, upload, follow the job: all over HTTPS; and the WebSocket
    // over wss://.
    let (status, body) = curl(
        &certs.ca,
        &[
            "-H",
            "content-type: application/json",
            "-d",
            &format!(r#"{{"username": "admin", "password": "{ADMIN_PW}"}}"#),
            &server.url("/api/v2/auth/login"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let login: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = login["access_token"].as_str().expect("a token").to_string();
    assert_eq!(wss_ping(&server.base, &certs.ca, &token)["type"], "pong");
    let csv = db.file("c.csv", customers(1, 30));
    let auth = format!("authorization: Bearer {token}");
    let (status, body) = curl(
        &certs.ca,
        &[
            "-H",
            &auth,
            "-H",
            "content-type: text/csv",
            "--data-binary",
            &format!("@{}", csv.display()),
            &server.url("/api/v2/jobs?model=customer"),
        ],
    );
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["job_id"]
        .as_str()
        .expect("a job id")
        .to_string();
    let mut job = serde_json::Value::Null;
    common::wait_for(
        "the job to succeed",
        std::time::Duration::from_secs(60),
        || {
            let (_, body) = curl(
                &certs.ca,
                &["-H", &auth, &server.url(&format!("/api/v2/jobs/{id}"))],
            );
            job = serde_json::from_str(&body).unwrap_or_default();
            assert_ne!(job["status"], "failed", "{job}");
            job["status"] == "succeeded"
        },
    );
    assert_eq!(job["rows_committed"], 30, "{job}");
}

#[test]
fn https_needs_both_certificate_and_key_and_says_which_file_is_wrong() {
    let certs = Certs::make();
    let db = TestDb::new();
    let serve = |env: &[(&str, &str)]| {
        let mut c = db.nexus();
        c.args(["serve", "--bind", "127.0.0.1:0"])
            .env("NEXUS_JWT_SECRET", common::server::SECRET)
            .env_remove("NEXUS_TLS_CERT")
            .env_remove("NEXUS_TLS_KEY");
        for (k, v) in env {
            c.env(k, v);
        }
        run(&mut c)
    };
    let cert = certs.server_cert.display().to_string();
    let only_cert = serve(&[("NEXUS_TLS_CERT", &cert)]);
    assert_eq!(only_cert.code, 2, "{only_cert:?}");
    assert!(
        only_cert
            .stderr
            .contains("NEXUS_TLS_CERT: set without NEXUS_TLS_KEY"),
        "{only_cert:?}"
    );
    let swapped = serve(&[("NEXUS_TLS_CERT", &cert), ("NEXUS_TLS_KEY", &cert)]);
    assert_eq!(swapped.code, 2, "{swapped:?}");
    assert!(swapped.stderr.contains("NEXUS_TLS_KEY"), "{swapped:?}");
}
