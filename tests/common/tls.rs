//! TLS for the tests: a certificate authority made with openssl, and a
//! private PostgreSQL from the installed server binaries that takes TLS
//! connections only.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A CA, a server certificate it signed for `127.0.0.1` (an IP name only,
/// so `localhost` does not match it), and a second CA that signed nothing.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [("ca", "nexus test CA"), ("other-ca", "someone else's CA")] {
            let mut args = vec!["req", "-x509", "-days", "2"];
            args.extend(ec);
            let (key, pem, subj) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN={cn}"),
            );
            args.extend(["-keyout", &key, "-out", &pem, "-subj", &subj]);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(d, &args);
        }
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=nexus test server",
        ]);
        openssl(d, &args);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        Certs {
            ca: d.join("ca.pem"),
            other_ca: d.join("other-ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            dir,
        }
    }
}

/// Where `initdb` and `pg_ctl` are.
fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop().expect("initdb")
}

/// The `postgres` user's ids when running as root (the server refuses
/// root).
fn server_user() -> Option<(u32, u32)> {
    let id = |flag: &str, who: &str| -> u32 {
        let out = Command::new("id").args([flag, who]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let me = Command::new("id").arg("-u").output().unwrap();
    (String::from_utf8_lossy(&me.stdout).trim() == "0")
        .then(|| (id("-u", "postgres"), id("-g", "postgres")))
}

/// A private PostgreSQL cluster on its own port that refuses connections
/// without TLS (`hostnossl … reject`), with `certs`' server certificate.
/// Stopped when dropped.
pub struct TlsPostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    user: Option<(u32, u32)>,
    pub port: u16,
}

impl TlsPostgres {
    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bindir.join(tool));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, c: &mut Command) {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {out:?}");
    }

    pub fn start(certs: &Certs) -> TlsPostgres {
        let dir = tempfile::tempdir().unwrap();
        let user = server_user();
        let chown = |p: &Path| {
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        };
        chown(dir.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = TlsPostgres {
            bindir: bindir(),
            user,
            port,
            dir,
        };
        let data = pg.dir.path().join("data");
        pg.run(pg.command("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        // The server reads its key only when it alone can.
        for (from, to) in [
            (&certs.server_cert, "server.pem"),
            (&certs.server_key, "server.key"),
        ] {
            let to = data.join(to);
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            chown(&to);
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        pg.run(
            pg.command("pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
                     -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key -c fsync=off"
                )),
        );
        pg
    }

    /// A URL for this server with `params` (`sslmode=…&…`).
    pub fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w"])
            .output();
    }
}
