//! Test harness: each test gets its own PostgreSQL database (dropped when the
//! test ends) and its own data directory, and runs the real `nexus` binary.

#![allow(dead_code)]

pub mod proxy;
pub mod redis;
pub mod s3;
pub mod server;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{NoTls, Row};

/// The server the tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("NEXUS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn exec(url: &str, sql: &str) -> Vec<Row> {
    runtime().block_on(async {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(conn);
        client
            .simple_query("SET client_min_messages = warning")
            .await
            .unwrap();
        client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    })
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub fn new() -> TestDb {
        let name = format!("nexus_t_{}", uuid::Uuid::new_v4().simple());
        exec(&admin_url(), &format!("CREATE DATABASE {name}"));
        let base = admin_url();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        TestDb {
            name,
            url,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn sql(&self, sql: &str) -> Vec<Row> {
        exec(&self.url, sql)
    }

    /// [`TestDb::sql`] in a session with the output settings every session
    /// of Nexus pins (`nexus_loaders::tls::PINNED_OUTPUT`).
    pub fn sql_pinned(&self, sql: &str) -> Vec<Row> {
        let options = nexus_loaders::tls::PINNED_OUTPUT
            .replace(' ', "%20")
            .replace('=', "%3D");
        exec(&format!("{}?options={options}", self.url), sql)
    }

    /// Runs statements that return nothing (several allowed).
    pub fn exec(&self, sql: &str) {
        runtime().block_on(async {
            let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
            tokio::spawn(conn);
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        })
    }

    pub fn count(&self, table: &str) -> i64 {
        self.sql(&format!("SELECT count(*) FROM {table}"))[0].get(0)
    }

    /// One text value (NULL as None).
    pub fn value(&self, sql: &str) -> Option<String> {
        self.sql(sql).first().and_then(|r| r.get(0))
    }

    /// Each row of `table` as PostgreSQL prints it (`id`, then `columns`,
    /// `|`-separated, NULL as `<null>`), by `id`: what differential tests
    /// compare.
    pub fn rows_as_text(&self, table: &str, columns: &[impl AsRef<str>]) -> Vec<String> {
        self.sql(&format!(
            "SELECT concat_ws('|', id, {}) FROM {table} ORDER BY id",
            columns
                .iter()
                .map(|c| format!("coalesce({}::text, '<null>')", c.as_ref()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    /// Writes a file into the test's directory.
    pub fn file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    /// The nexus command against this database.
    pub fn nexus(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nexus"));
        c.env("DATABASE_URL", &self.url)
            .env("NEXUS_DATA_DIR", self.dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .env_remove("NEXUS_MODELS")
            .env_remove("NEXUS_CONFIG")
            .env_remove("REDIS_URL")
            .env_remove("NEXUS_REDIS_PREFIX")
            .stdin(Stdio::null());
        c
    }

    /// Runs nexus with `args` and returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> Run {
        run(self.nexus().args(args))
    }

    pub fn run_with_models(&self, models: &Path, args: &[&str]) -> Run {
        run(self.nexus().env("NEXUS_MODELS", models).args(args))
    }

    /// `nexus load … --json` and its parsed summary.
    pub fn load_json(&self, args: &[&str]) -> (Run, serde_json::Value) {
        Self::summary(self.run(&Self::load_args(args)))
    }

    /// As [`TestDb::load_json`], with a model file.
    pub fn load_json_with_models(&self, models: &Path, args: &[&str]) -> (Run, serde_json::Value) {
        Self::summary(self.run_with_models(models, &Self::load_args(args)))
    }

    fn load_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["load", "--json"];
        all.extend_from_slice(args);
        all
    }

    fn summary(r: Run) -> (Run, serde_json::Value) {
        let v = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {r:?}"));
        (r, v)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        exec(
            &admin_url(),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(c: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().expect("run nexus");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// An HTTP client's builder. reqwest's TLS takes the process's rustls
/// provider (as the binary's does), so one is installed first.
pub fn http() -> reqwest::blocking::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
}

/// Polls `cond` until it holds or the deadline passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The repository's fixtures folder.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A customer CSV of `n` valid rows, ids from `first`.
pub fn customers(first: i64, n: i64) -> String {
    let mut s = String::from(
        "id,external_id,name,email,country,segment,credit_limit,created_at,active,score\n",
    );
    for i in first..first + n {
        s.push_str(&format!(
            "{i},{},Name {i},user{i}@example.com,DE,smb,{}.50,2024-01-02T03:04:05Z,true,{}\n",
            uuid::Uuid::from_u128(i as u128),
            i % 1000,
            i % 1001
        ));
    }
    s
}

/// A child process that is killed if the test panics before waiting for it.
pub struct Reaped(pub Option<std::process::Child>);

impl Reaped {
    pub fn get(&mut self) -> &mut std::process::Child {
        self.0.as_mut().unwrap()
    }

    pub fn take(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Asks a process to stop (SIGTERM), as a service manager would.
pub fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

/// A model `ev` with small batches (many checkpoints) on a table without a
/// primary key, where a row loaded twice would show.
pub fn small_batch_model(db: &TestDb) -> PathBuf {
    db.file(
        "small-batches.toml",
        "[models.ev]\ntable = \"ev\"\nbatch_size = 200\n\
         [[models.ev.columns]]\nname = \"id\"\ntype = \"bigint\"\nrequired = true\n\
         [[models.ev.columns]]\nname = \"payload\"\ntype = \"text\"\n",
    )
}

/// Runs `cancel` (which asks the running load into `table` to cancel)
/// while the table is held against writes, and lets go of it only once the
/// load has looked for its cancel since: the load cannot end before it
/// sees the cancel, however fast it runs (it looks every 600 ms).
pub fn cancel_while_held<T>(db: &TestDb, table: &str, cancel: impl FnOnce() -> T) -> T {
    let rt = runtime();
    let holder = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN SHARE MODE"))
            .await
            .unwrap();
        c
    });
    let out = cancel();
    let asked = db.value("SELECT now()::text").unwrap();
    wait_for(
        "the load to look for its cancel",
        Duration::from_secs(30),
        || {
            db.value(&format!(
                "SELECT count(*)::text FROM pg_stat_activity
                 WHERE datname = current_database()
                   AND query LIKE 'SELECT cancel_requested FROM nexus.jobs%'
                   AND state = 'idle' AND query_start > '{asked}'::timestamptz"
            ))
            .as_deref()
                != Some("0")
        },
    );
    rt.block_on(holder.batch_execute("COMMIT")).unwrap();
    out
}

/// How many batches have committed, across all jobs.
pub fn batches(db: &TestDb) -> i64 {
    db.value("SELECT count(*)::text FROM nexus.job_batches")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0)
}
