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
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("nexus:wt:*")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
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
