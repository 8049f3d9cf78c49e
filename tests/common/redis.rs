//! Redis for tests: the shared server (`NEXUS_TEST_REDIS`, else
//! 127.0.0.1:6379) with a key and channel prefix of the test's own, whose
//! keys are deleted when the test ends.

pub fn redis_url() -> String {
    std::env::var("NEXUS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestRedis {
    pub url: String,
    pub prefix: String,
}

impl TestRedis {
    pub fn new() -> TestRedis {
        TestRedis {
            url: redis_url(),
            prefix: format!("nexus_t_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// The server settings that point a `nexus` at this Redis and prefix.
    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("REDIS_URL", self.url.as_str()),
            ("NEXUS_REDIS_PREFIX", self.prefix.as_str()),
        ]
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to Redis")
    }

    /// Every key under the test's prefix.
    pub fn keys(&self) -> Vec<String> {
        let mut c = self.connection();
        let found: redis::Iter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{}:*", self.prefix))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut c)
            .expect("SCAN");
        found.filter_map(Result::ok).collect()
    }
}

/// A cached entry as Nexus stores it (`version|expires|json`), given as
/// `prefix:model:key`, in whichever layout holds it (a key of its own, or a
/// field of its hash); a model's flush marker (`prefix:~flush:model`) as is.
pub fn cached(c: &mut redis::Connection, path: &str) -> Option<String> {
    use nexus_loaders::cache::{Layout, place};
    let mut parts = path.splitn(3, ':');
    let (Some(prefix), Some(model), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("not prefix:model:key: {path}")
    };
    let own: Option<String> = redis::cmd("GET").arg(path).query(c).unwrap();
    if own.is_some() || model == "~flush" {
        return own;
    }
    redis::cmd("HGET")
        .arg(place(prefix, model, Layout::Hashes, key))
        .arg(key)
        .query(c)
        .unwrap()
}

/// How many entries (live or not) a model has under `prefix`: its keys
/// and the fields of its hashes.
pub fn cached_count(c: &mut redis::Connection, prefix: &str, model: &str) -> usize {
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:{model}:*"))
        .query(c)
        .unwrap();
    found
        .iter()
        .map(|k| {
            let kind: String = redis::cmd("TYPE").arg(k).query(c).unwrap();
            match kind.as_str() {
                "hash" => redis::cmd("HLEN").arg(k).query::<usize>(c).unwrap(),
                _ => 1,
            }
        })
        .sum()
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let keys = self.keys();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg(&keys).query(&mut self.connection());
        }
    }
}

/// A Redis server of the test's own (Debian's `redis-server`, nothing on
/// disk), for tests that stop and restart it. Stopped when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    /// Where `SAVE` writes and a restart reads its data back.
    dir: tempfile::TempDir,
    /// Serving TLS only, with these certificate, key and CA.
    tls: Option<[std::path::PathBuf; 3]>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        PrivateRedis::start_with(None)
    }

    /// A server that takes TLS connections only (`rediss://`), with the
    /// server certificate of `certs`.
    pub fn start_tls(certs: &super::tls::Certs) -> PrivateRedis {
        PrivateRedis::start_with(Some([
            certs.server_cert.clone(),
            certs.server_key.clone(),
            certs.ca.clone(),
        ]))
    }

    fn start_with(tls: Option<[std::path::PathBuf; 3]>) -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut r = PrivateRedis {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            tls,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            None => redis::Client::open(self.url().as_str()),
            Some([_, _, ca]) => redis::Client::build_with_tls(
                self.url().as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).unwrap()),
                },
            ),
        }
    }

    /// (Re)starts the server on its port with what the last `SAVE` wrote
    /// (nothing is saved on its own), and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = std::process::Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some([cert, key, ca]) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        super::wait_for(
            "the private Redis to answer",
            std::time::Duration::from_secs(10),
            || {
                self.client()
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            },
        );
    }

    /// Kills the server at once (as a crash or a network cut would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn connection(&self) -> redis::Connection {
        self.client()
            .and_then(|c| c.get_connection())
            .expect("connect to the private Redis")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
