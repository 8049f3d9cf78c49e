//! The embedded default: with no DATABASE_URL, nexus runs a private
//! PostgreSQL from the installed server binaries, and says how to get them
//! when there are none.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{fixture, run};

/// A data directory in a private (0700) temporary directory, as a home
/// folder is; dropped, it takes its cluster with it wherever that lives.
struct Data {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Data {
    fn new() -> Data {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = tmp.path().join("data");
        Data { _tmp: tmp, path }
    }

    /// The cluster's directory: `pg` in the data directory, or where
    /// `pg.location` says (as root).
    fn cluster(&self) -> PathBuf {
        match std::fs::read_to_string(self.path.join("pg.location")) {
            Ok(p) => PathBuf::from(p.trim()),
            Err(_) => self.path.join("pg"),
        }
    }
}

impl Drop for Data {
    fn drop(&mut self) {
        if self.path.join("pg.location").exists()
            && let Some(home) = self.cluster().parent()
        {
            let _ = std::fs::remove_dir_all(home);
        }
    }
}

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
    let d = Data::new();
    let data = d.path.clone();
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
    assert!(d.cluster().join("PG_VERSION").exists());
    let port = std::fs::read_to_string(d.cluster().join("nexus.port")).unwrap();
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

fn connect(url: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("{e:?}"))?;
        tokio::spawn(conn);
        c.simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// The private cluster asks every client for the generated password, kept
/// in a file only the owner can read; a spooled stdin is private too.
#[test]
fn the_private_cluster_lets_in_only_who_holds_its_password() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    let d = Data::new();
    let data = d.path.clone();
    let mut load = nexus(&data)
        .args(["load", "--json", "--model", "customer", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let demo = std::fs::read(fixture("customers.csv")).unwrap();
    load.stdin.take().unwrap().write_all(&demo).unwrap();
    let out = load.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let secret = data.join("pg.password");
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(mode(&data.join("spool")), 0o700);
    // Keep the cluster up with a server, then knock.
    let mut serve = common::Reaped(Some(
        nexus(&data)
            .args(["serve", "--dev", "--bind", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let stderr = serve.get().stderr.take().unwrap();
    let listening = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("nexus: listening on "));
    assert!(listening);
    let port = std::fs::read_to_string(d.cluster().join("nexus.port")).unwrap();
    let port = port.trim();
    let password = std::fs::read_to_string(&secret).unwrap();
    let e = connect(&format!(
        "host=127.0.0.1 port={port} user=nexus dbname=postgres"
    ))
    .unwrap_err();
    assert!(e.contains("password missing"), "{e}");
    let e = connect(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres"
    ))
    .unwrap_err();
    assert!(e.contains("password missing"), "{e}");
    connect(&format!(
        "host=127.0.0.1 port={port} user=nexus password={} dbname=postgres",
        password.trim()
    ))
    .unwrap();
    common::sigterm(serve.get().id());
    serve.get().wait().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err(),
        "the server stopped its cluster when it exited"
    );
    // A cluster an older nexus made without a password gets one.
    std::fs::remove_file(&secret).unwrap();
    let hba = d.cluster().join("pg_hba.conf");
    std::fs::write(&hba, "host all all 127.0.0.1/32 trust\n").unwrap();
    let r = run(nexus(&data).args(["jobs", "list"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(mode(&secret), 0o600);
    assert!(
        std::fs::read_to_string(&hba)
            .unwrap()
            .contains("scram-sha-256")
    );
    assert_ne!(std::fs::read_to_string(&secret).unwrap(), password);
}

/// As root (PostgreSQL then runs as `postgres`), a data directory in a
/// private folder works without that folder being opened to anyone: the
/// cluster lives in a `postgres`-owned 0700 directory of its own, and
/// nexus says where.
#[test]
fn as_root_a_data_directory_in_a_private_folder_just_works() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = Data::new();
    let parent = d.path.parent().unwrap().to_path_buf();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&parent), 0o700);
    let r = run(nexus(&d.path).args(["migrate", "--schema-only"]));
    assert_eq!(r.code, 0, "{r:?}");
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if root {
        let cluster = d.cluster();
        assert!(
            cluster.starts_with("/var/lib/nexus/clusters"),
            "{cluster:?}"
        );
        assert!(r.stderr.contains(&cluster.display().to_string()), "{r:?}");
        let home = cluster.parent().unwrap();
        assert_eq!(mode(home), 0o700);
        assert_ne!(
            std::fs::metadata(home).unwrap().uid(),
            0,
            "owned by postgres"
        );
        assert_eq!(mode(&parent), 0o700, "the user's folder is left as it was");
        assert_eq!(mode(&d.path) & 0o007, 0, "the data directory is not opened");
    } else {
        assert_eq!(d.cluster(), d.path.join("pg"));
    }
    assert!(d.cluster().join("PG_VERSION").exists());
    // Found again on the next run, without a word.
    let r = run(nexus(&d.path).args(["jobs", "list"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("cluster lives in"), "{r:?}");
}
