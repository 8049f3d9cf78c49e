//! The embedded default: with no DATABASE_URL, nexus runs a private
//! PostgreSQL from the installed server binaries, and says how to get them
//! when there are none.

mod common;

use std::process::Command;

use common::{fixture, run};

fn nexus(data: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nexus"));
    c.env_remove("DATABASE_URL")
        .env_remove("NEXUS_MODELS")
        .env("NEXUS_DATA_DIR", data)
        .env("RUST_LOG", "warn");
    c
}

#[test]
fn without_server_binaries_it_says_how_to_install_them() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(nexus(dir.path())
        .env("NEXUS_PG_BINDIR", "/nonexistent")
        .args(["migrate"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("apt-get install postgresql"), "{r:?}");
}

#[test]
fn loads_into_a_private_cluster_and_stops_it_after() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let demo = fixture("customers.csv");
    let r = run(nexus(&data).args([
        "load",
        "--json",
        "--model",
        "customer",
        demo.to_str().unwrap(),
    ]));
    assert_eq!(r.code, 0, "{r:?}");
    let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(s["rows_committed"], 995);
    assert!(data.join("pg/PG_VERSION").exists());
    let port = std::fs::read_to_string(data.join("pg/nexus.port")).unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port.trim().parse::<u16>().unwrap())).is_err(),
        "the server was stopped when nexus exited"
    );
    // Started again on demand, with the data kept: the file is now skipped.
    let r = run(nexus(&data).args([
        "load",
        "--json",
        "--model",
        "customer",
        demo.to_str().unwrap(),
    ]));
    assert_eq!(r.code, 0, "{r:?}");
    let s: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(s["status"], "skipped");
}
