//! The embedded default database: with no `DATABASE_URL`, a private
//! PostgreSQL cluster under `$NEXUS_DATA_DIR/pg`, made with the server
//! binaries installed on the machine and listening on a private port on
//! loopback. Started (or reused, if another nexus process runs it) on
//! demand and stopped on exit by the process that started it, unless other
//! clients are still connected.
//!
//! Its superuser `nexus` has a generated password (scram-sha-256) kept in
//! `$NEXUS_DATA_DIR/pg.password`, readable by the owner alone, and the
//! server has no Unix socket: another local account cannot log in (and run
//! `COPY … TO PROGRAM`). A cluster made by an older nexus with `trust` is
//! given a password the first time it is started.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no DATABASE_URL is set and no PostgreSQL server binaries were found \
         (looked at `pg_config --bindir` and /usr/lib/postgresql/*/bin).\n\
         Install them (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL."
    )]
    NoBinaries,
    #[error("embedded PostgreSQL: {0}")]
    Failed(String),
}

pub struct EmbeddedPg {
    bindir: PathBuf,
    dir: PathBuf,
    pub url: String,
    started_here: bool,
    run_as: Option<(u32, u32)>,
}

/// Where `initdb` and `pg_ctl` are.
pub fn find_bindir() -> Option<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("NEXUS_PG_BINDIR").map(PathBuf::from) {
        return has_tools(&d).then_some(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&d) {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_tools(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

/// PostgreSQL refuses to run as root: then the cluster belongs to the
/// `postgres` system user, which the server package creates.
fn run_as() -> Result<Option<(u32, u32)>, EmbeddedError> {
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .map(Some)
        .ok_or_else(|| {
            EmbeddedError::Failed(
                "running as root, but there is no `postgres` user to run the server as".into(),
            )
        })
}

/// As root, the cluster's owner must be able to reach the data directory:
/// it is opened to others for traversal (not listing), and every ancestor
/// must already allow it.
fn reachable_by(data_dir: &Path, uid: u32) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(data_dir).map_err(|e| EmbeddedError::Failed(e.to_string()))?;
    let mode = meta.permissions().mode();
    if mode & 0o001 == 0 {
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(mode | 0o001))
            .map_err(|e| EmbeddedError::Failed(e.to_string()))?;
    }
    for dir in data_dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(dir) else {
            continue;
        };
        if m.uid() != uid && m.permissions().mode() & 0o001 == 0 {
            return Err(EmbeddedError::Failed(format!(
                "running as root, the server runs as user `postgres`, which cannot reach {} \
                 (no search permission on {}); set NEXUS_DATA_DIR to a directory it can reach",
                data_dir.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Where clusters of root's data directories live, each in a directory of
/// its own owned by `postgres` (0700), named by its data directory.
const SYSTEM_CLUSTERS: &str = "/var/lib/nexus/clusters";

/// In the data directory, where the cluster lives when it is not `pg`.
const LOCATION_FILE: &str = "pg.location";

/// Where the cluster lives: `DATA_DIR/pg`, or, as root, under
/// [`SYSTEM_CLUSTERS`] — PostgreSQL then runs as `postgres`, which must not
/// need the user's folders opened to it (a home is usually 0700). A
/// cluster that an earlier version made in the data directory stays there.
fn cluster_dir(data_dir: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf, EmbeddedError> {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let local = data_dir.join("pg");
    let Some((uid, gid)) = run_as else {
        return Ok(local);
    };
    if local.join("PG_VERSION").exists() {
        reachable_by(data_dir, uid)?;
        return Ok(local);
    }
    let fail =
        |what: &Path, e: std::io::Error| EmbeddedError::Failed(format!("{}: {e}", what.display()));
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let home = Path::new(SYSTEM_CLUSTERS).join(name);
    std::fs::create_dir_all(&home).map_err(|e| fail(&home, e))?;
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).map_err(|e| fail(&home, e))?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(&home, e))?;
    let dir = home.join("pg");
    let location = data_dir.join(LOCATION_FILE);
    if std::fs::read_to_string(&location).ok().as_deref() != Some(&*dir.to_string_lossy()) {
        std::fs::write(&location, dir.to_string_lossy().as_bytes())
            .map_err(|e| fail(&location, e))?;
        eprintln!(
            "nexus: the embedded PostgreSQL cluster lives in {} (as root, PostgreSQL runs as user postgres)",
            dir.display()
        );
    }
    Ok(dir)
}

/// How long stopping waits for other clients (this process's own closing
/// connections among them) to leave before it leaves the server running.
const OWN_CONNECTIONS_CLOSE: std::time::Duration = std::time::Duration::from_secs(3);

/// Where the password of the cluster's `nexus` user is kept.
const PASSWORD_FILE: &str = "pg.password";

/// Client authentication: a password over loopback TCP, nothing else.
const HBA: &str = "# Written by nexus: a password (scram-sha-256) over loopback only.\n\
host all all 127.0.0.1/32 scram-sha-256\n\
host all all ::1/128 scram-sha-256\n";

fn new_password() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file only its owner can read (mode 0600), owned by `owner`
/// when given.
fn write_private(path: &Path, contents: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

impl EmbeddedPg {
    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bindir.join(tool));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, mut c: Command, what: &str) -> Result<(), EmbeddedError> {
        let out = c
            .output()
            .map_err(|e| EmbeddedError::Failed(format!("{what}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(EmbeddedError::Failed(format!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            )))
        }
    }

    /// Creates the cluster if needed and makes sure it runs.
    pub fn start(data_dir: &Path) -> Result<EmbeddedPg, EmbeddedError> {
        let bindir = find_bindir().ok_or(EmbeddedError::NoBinaries)?;
        let fail = |m: String| EmbeddedError::Failed(m);
        // A new data directory is private: it holds the cluster's password.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(data_dir)
            .map_err(|e| fail(format!("{}: {e}", data_dir.display())))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|e| fail(format!("{}: {e}", data_dir.display())))?;
        // One process at a time creates or starts the cluster.
        let lock =
            std::fs::File::create(data_dir.join("pg.lock")).map_err(|e| fail(e.to_string()))?;
        lock.lock().map_err(|e| fail(e.to_string()))?;
        let run_as = run_as()?;
        let dir = cluster_dir(&data_dir, run_as)?;
        let mut pg = EmbeddedPg {
            bindir,
            dir: dir.clone(),
            url: String::new(),
            started_here: false,
            run_as,
        };
        if !dir.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
            if let Some((uid, gid)) = pg.run_as {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                    .map_err(|e| fail(e.to_string()))?;
            }
            let password = new_password();
            write_private(&data_dir.join(PASSWORD_FILE), &password, None)
                .map_err(|e| fail(format!("{PASSWORD_FILE}: {e}")))?;
            // initdb reads the password from a file its user can read:
            // beside the cluster's directory.
            let pwfile = dir.with_file_name("pg.initdb.pw");
            write_private(&pwfile, &password, pg.run_as).map_err(|e| fail(e.to_string()))?;
            let mut c = pg.command("initdb");
            c.args(["-D"]).arg(&dir).args([
                "-U",
                "nexus",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ]);
            c.arg(format!("--pwfile={}", pwfile.display()));
            let made = pg.run(c, "initdb");
            let _ = std::fs::remove_file(&pwfile);
            made?;
        }
        let port_file = dir.join("nexus.port");
        let port: u16 = match std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            Some(p) => p,
            None => {
                let l =
                    std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail(e.to_string()))?;
                let p = l.local_addr().map_err(|e| fail(e.to_string()))?.port();
                std::fs::write(&port_file, p.to_string()).map_err(|e| fail(e.to_string()))?;
                p
            }
        };
        let mut status = pg.command("pg_ctl");
        status.arg("status").arg("-D").arg(&dir);
        let running = status.output().map(|o| o.status.success()).unwrap_or(false);
        if !running {
            let mut c = pg.command("pg_ctl");
            c.arg("start")
                .arg("-D")
                .arg(&dir)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=on"
                ));
            pg.run(c, "pg_ctl start")?;
            pg.started_here = true;
        }
        let secret = data_dir.join(PASSWORD_FILE);
        if !secret.exists() {
            pg.require_password(port, &secret)?;
        }
        let password = std::fs::read_to_string(&secret)
            .map_err(|e| fail(format!("{}: {e}", secret.display())))?;
        pg.url = format!(
            "host=127.0.0.1 port={port} user=nexus password={} dbname=postgres",
            password.trim()
        );
        Ok(pg)
    }

    /// A cluster an older nexus made with `trust`: gives `nexus` a password,
    /// then asks for it from every client.
    fn require_password(&self, port: u16, secret: &Path) -> Result<(), EmbeddedError> {
        let fail = |m: String| EmbeddedError::Failed(m);
        let password = new_password();
        let url = format!("host=127.0.0.1 port={port} user=nexus dbname=postgres");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(e.to_string()))?;
        rt.block_on(async {
            let c = nexus_loaders::pg::connect(&url).await.map_err(|e| {
                fail(format!(
                    "{} is missing and the cluster does not let nexus in without it ({}); \
                     restore the file or remove {} to start afresh",
                    secret.display(),
                    nexus_loaders::pg::describe(&e),
                    self.dir.display()
                ))
            })?;
            // Hex: nothing to quote.
            c.batch_execute(&format!(
                "SET password_encryption = 'scram-sha-256'; ALTER ROLE nexus PASSWORD '{password}'"
            ))
            .await
            .map_err(|e| fail(nexus_loaders::pg::describe(&e)))
        })?;
        write_private(secret, &password, None).map_err(|e| fail(e.to_string()))?;
        write_private(&self.dir.join("pg_hba.conf"), HBA, self.run_as)
            .map_err(|e| fail(e.to_string()))?;
        let mut c = self.command("pg_ctl");
        c.arg("reload").arg("-D").arg(&self.dir);
        self.run(c, "pg_ctl reload")
    }

    /// Stops the cluster if this process started it and nobody else is connected.
    pub async fn stop(self) {
        if !self.started_here {
            return;
        }
        if let Ok(c) = nexus_loaders::pg::connect(&self.url).await {
            // This process's own connections may take a moment to close.
            let deadline = tokio::time::Instant::now() + OWN_CONNECTIONS_CLOSE;
            loop {
                let others: i64 = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                if others == 0 {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        let mut c = self.command("pg_ctl");
        c.arg("stop")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-w"]);
        if let Err(e) = self.run(c, "pg_ctl stop") {
            tracing::warn!(error = %e, "stopping the embedded PostgreSQL failed");
        }
    }
}
