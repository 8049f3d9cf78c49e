//! The MCP channel driven by the official MCP client (the Python SDK `mcp`,
//! in the venv `scripts/test.sh` makes): over stdio (`nexus mcp`, the
//! initialize handshake) and over Streamable HTTP (`/mcp` in `nexus serve`,
//! the 2026 protocol and the handshake). `tests/mcp/client.py` makes the
//! calls and checks the answers; these tests set up the database, files and
//! server, and check the tables afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestDb;
use common::server::{ADMIN_PW, Server, add_user};
use serde_json::Value;

/// Rows of the good file, and the lines (1-based, the header is line 1)
/// whose `age` breaks the model's rule.
const GOOD_ROWS: i64 = 3000;
const REJECT_LINES: [i64; 3] = [5, 700, 2999];
/// Rows of the file cancelled while it loads (in batches of 200): seconds
/// of loading even unhindered, where a cancel lands in a fraction of one.
const BIG_ROWS: i64 = 1_000_000;

fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/.venv/bin/python");
    assert!(
        venv.is_file(),
        "the MCP client's venv is missing: run scripts/test.sh, or \
         python3 -m venv tests/mcp/.venv && tests/mcp/.venv/bin/pip install -r tests/mcp/requirements.txt"
    );
    venv
}

struct Files {
    models: PathBuf,
    root: PathBuf,
    good: PathBuf,
    big: PathBuf,
    outside: PathBuf,
    link: PathBuf,
}

fn files(db: &TestDb) -> Files {
    let models = db.file(
        "models.toml",
        "[models.ev]\ntable = \"ev\"\nbatch_size = 200\n\
         [[models.ev.columns]]\nname = \"id\"\ntype = \"bigint\"\nrequired = true\n\
         [[models.ev.columns]]\nname = \"payload\"\ntype = \"text\"\n\
         [models.person]\ntable = \"person\"\nkey = [\"id\"]\n\
         [[models.person.columns]]\nname = \"id\"\ntype = \"bigint\"\nrequired = true\n\
         [[models.person.columns]]\nname = \"age\"\ntype = \"integer\"\nmin = 0\n",
    );
    let root = db.dir.path().join("root");
    let outside_dir = db.dir.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside_dir).unwrap();
    let mut good = String::from("id,age\n");
    for i in 1..=GOOD_ROWS {
        let line = i + 1;
        let age = if REJECT_LINES.contains(&line) {
            -1
        } else {
            i % 90
        };
        good.push_str(&format!("{i},{age}\n"));
    }
    let mut big = String::from("id,payload\n");
    for i in 1..=BIG_ROWS {
        big.push_str(&format!("{i},row {i}\n"));
    }
    let outside = outside_dir.join("secret.csv");
    std::fs::write(&outside, "id,age\n1,1\n").unwrap();
    let link = root.join("link.csv");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let good_path = root.join("people.csv");
    std::fs::write(&good_path, good).unwrap();
    let big_path = root.join("events.csv");
    std::fs::write(&big_path, big).unwrap();
    Files {
        models,
        root,
        good: good_path,
        big: big_path,
        outside,
        link,
    }
}

/// Runs the client with `env`; returns its facts.
fn client(env: &[(&str, String)]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py"))
        .env_remove("REDIS_URL")
        .env_remove("NEXUS_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the MCP client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn file_env(f: &Files) -> Vec<(&'static str, String)> {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    vec![
        ("MCP_GOOD_FILE", s(&f.good)),
        ("MCP_GOOD_ROWS", GOOD_ROWS.to_string()),
        (
            "MCP_REJECT_LINES",
            REJECT_LINES
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("MCP_BIG_FILE", s(&f.big)),
        ("MCP_OUTSIDE_FILE", s(&f.outside)),
        ("MCP_LINK_FILE", s(&f.link)),
    ]
}

/// What the client's loads left in the tables: the good file's valid rows,
/// the two inline files' (2 each) and `extra` more; of the cancelled loads,
/// exactly what their jobs committed.
fn check_tables(db: &TestDb, facts: &Value, extra: i64) {
    assert_eq!(
        db.count("person"),
        GOOD_ROWS - REJECT_LINES.len() as i64 + 4 + extra
    );
    let cancelled: i64 = ["cancelled_by_call", "cancelled_by_tool"]
        .iter()
        .map(|k| facts[k]["rows_committed"].as_i64().unwrap())
        .sum();
    assert!(
        facts["cancelled_by_tool"]["rows_committed"]
            .as_i64()
            .unwrap()
            < BIG_ROWS,
        "cancelled before the end: {facts}"
    );
    assert_eq!(db.count("ev"), cancelled, "{facts}");
    assert_eq!(
        db.count("nexus.rejects"),
        REJECT_LINES.len() as i64,
        "only the good file's rejects"
    );
}

#[test]
fn mcp_over_stdio() {
    let db = TestDb::new();
    let f = files(&db);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut env = file_env(&f);
    env.extend([
        ("MCP_TRANSPORT", "stdio".to_string()),
        ("MCP_MODE", "legacy".to_string()),
        ("NEXUS_BIN", env!("CARGO_BIN_EXE_nexus").to_string()),
        ("DATABASE_URL", db.url.clone()),
        ("NEXUS_DATA_DIR", s(&db.dir.path().join("data"))),
        ("NEXUS_MODELS", s(&f.models)),
        ("RUST_LOG", "warn".to_string()),
    ]);
    let facts = client(&env);
    // And the row loaded by table name.
    check_tables(&db, &facts, 1);
    // Jobs started over stdio belong to the launching account's `mcp:` owner.
    let owners =
        db.value("SELECT string_agg(DISTINCT split_part(owner, ':', 1), ',') FROM nexus.jobs");
    assert_eq!(owners.as_deref(), Some("mcp"));
    assert!(facts["progress_notifications"].as_u64().unwrap() >= 1);
}

/// A load running over stdio when the client goes stops at a batch
/// boundary, and `nexus load` of the same file resumes it: every row once.
#[test]
fn a_stdio_load_left_running_resumes_from_the_command_line() {
    let db = TestDb::new();
    let f = files(&db);
    let left = f.root.join("left.csv");
    std::fs::copy(&f.big, &left).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let data = db.dir.path().join("data");
    let env = [
        ("MCP_TRANSPORT", "stdio".to_string()),
        ("MCP_MODE", "legacy".to_string()),
        ("MCP_SCENARIOS", "leave_running".to_string()),
        ("MCP_LEFT_FILE", s(&left)),
        ("NEXUS_BIN", env!("CARGO_BIN_EXE_nexus").to_string()),
        ("DATABASE_URL", db.url.clone()),
        ("NEXUS_DATA_DIR", s(&data)),
        ("NEXUS_MODELS", s(&f.models)),
        ("RUST_LOG", "warn".to_string()),
    ];
    let facts = client(&env);
    let id = facts["left_running"].as_str().unwrap();
    // As for `nexus load` stopped by a signal: failed, saying it resumes.
    let state = db.value(&format!(
        "SELECT status || ': ' || error FROM nexus.jobs WHERE id = '{id}'"
    ));
    assert!(
        state
            .as_deref()
            .is_some_and(|s| s.starts_with("failed: interrupted") && s.contains("resume")),
        "stopped, resumable: {state:?}"
    );
    let stopped_at = db.count("ev");
    assert!(stopped_at < BIG_ROWS, "it stopped before the end");
    let (run, summary) = db.load_json_with_models(&f.models, &["--model", "ev", &s(&left)]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(summary["job_id"], id, "the same job resumed: {summary}");
    assert_eq!(summary["resumed"], true, "{summary}");
    assert_eq!(db.count("ev"), BIG_ROWS);
    assert_eq!(
        db.count("(SELECT DISTINCT id FROM ev) d"),
        BIG_ROWS,
        "no row twice"
    );
}

fn http_env(db: &TestDb, f: &Files, s: &Server) -> Vec<(&'static str, String)> {
    add_user(db, "loader", "uploader", "loader-password-1");
    add_user(db, "watcher", "viewer", "watcher-password-1");
    let (token, _) = s.tokens("loader", "loader-password-1");
    let (viewer, _) = s.tokens("watcher", "watcher-password-1");
    let mut env = file_env(f);
    env.extend([
        ("MCP_TRANSPORT", "http".to_string()),
        ("MCP_URL", s.url("/mcp")),
        ("MCP_TOKEN", token),
        ("MCP_VIEWER_TOKEN", viewer),
    ]);
    env
}

/// A server for the client's scenarios, which poll job status often: the
/// rate limit has its own test (below).
fn http_server(db: &TestDb, f: &Files) -> Server {
    Server::start(
        db,
        &[
            ("NEXUS_MODELS", f.models.to_str().unwrap()),
            ("NEXUS_MCP_ROOTS", f.root.to_str().unwrap()),
            ("NEXUS_RATE_LIMIT", "1000000"),
            ("NEXUS_RATE_BURST", "100000"),
        ],
    )
}

#[test]
fn mcp_over_streamable_http() {
    let db = TestDb::new();
    let f = files(&db);
    let s = http_server(&db, &f);
    let mut env = http_env(&db, &f, &s);
    env.push(("MCP_MODE", "auto".to_string()));
    let facts = client(&env);
    // And the row loaded by table name.
    check_tables(&db, &facts, 1);
    // Loads over HTTP are queued jobs of the token's user, like uploads.
    let owners = db.value("SELECT string_agg(DISTINCT owner, ',') FROM nexus.jobs");
    assert_eq!(owners.as_deref(), Some("loader"));
    // The admin sees them through the REST API too.
    let (admin, _) = s.tokens("admin", ADMIN_PW);
    let id = facts["good_job"].as_str().unwrap();
    let job: Value = s.get(&format!("/api/v2/jobs/{id}"), &admin).json().unwrap();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["owner"], "loader");
}

#[test]
fn mcp_over_streamable_http_with_the_initialize_handshake() {
    let db = TestDb::new();
    let f = files(&db);
    let s = http_server(&db, &f);
    let mut env = http_env(&db, &f, &s);
    env.push(("MCP_MODE", "legacy".to_string()));
    env.push((
        "MCP_SCENARIOS",
        "describe,load_with_progress,malformed".to_string(),
    ));
    let facts = client(&env);
    assert!(facts["protocol"].as_str().unwrap() < "2026", "{facts}");
    assert_eq!(db.count("person"), GOOD_ROWS - REJECT_LINES.len() as i64);
}

#[test]
fn mcp_over_http_is_rate_limited_like_the_api() {
    let db = TestDb::new();
    let s = Server::start(&db, &[("NEXUS_RATE_LIMIT", "1"), ("NEXUS_RATE_BURST", "2")]);
    let (token, _) = s.tokens("admin", ADMIN_PW);
    let ping = || {
        s.http
            .post(s.url("/mcp"))
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    // Logging in took one request of the burst.
    let statuses: Vec<u16> = (0..3).map(|_| ping()).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_ne!(statuses[0], 429, "{statuses:?}");
}
