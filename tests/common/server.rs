//! A `nexus serve` process for tests, with a blocking HTTP client.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

use super::{Reaped, TestDb};

pub const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";
pub const ADMIN_PW: &str = "admin-password-1";

pub struct Server {
    pub child: Reaped,
    pub base: String,
    pub http: Client,
    /// What the server printed on stderr before it listened.
    pub startup: Vec<String>,
}

impl Server {
    /// Starts a server with `env` on top of the tests' settings (an empty
    /// value removes the variable).
    pub fn start(db: &TestDb, env: &[(&str, &str)]) -> Server {
        let mut cmd = db.nexus();
        cmd.args(["serve", "--bind", "127.0.0.1:0"])
            .env("NEXUS_JWT_SECRET", SECRET)
            .env("NEXUS_ADMIN_PASSWORD", ADMIN_PW)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped());
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = Reaped(Some(cmd.spawn().unwrap()));
        let stderr = child.get().stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut startup = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("nexus: listening on ") {
                    let _ = tx.send((addr.to_string(), std::mem::take(&mut startup)));
                } else {
                    startup.push(line);
                }
            }
        });
        let (base, startup) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server reports its address");
        let http = super::http().build().unwrap();
        Server {
            child,
            base,
            http,
            startup,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn login(&self, user: &str, password: &str) -> Response {
        self.http
            .post(self.url("/api/v2/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .unwrap()
    }

    pub fn tokens(&self, user: &str, password: &str) -> (String, String) {
        let r = self.login(user, password);
        assert_eq!(r.status(), 200);
        let v: Value = r.json().unwrap();
        assert_eq!(v["token_type"], "Bearer");
        (
            v["access_token"].as_str().unwrap().to_string(),
            v["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    pub fn get(&self, path: &str, token: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .unwrap()
    }

    /// The Prometheus text of `/metrics`.
    /// Posts `body` as a new job's file: `text/csv` unless `headers` name
    /// another Content-Type.
    pub fn upload(
        &self,
        token: &str,
        query: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = self
            .http
            .post(self.url(&format!("/api/v2/jobs?{query}")))
            .bearer_auth(token)
            .body(body);
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "text/csv");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().unwrap()
    }

    /// The job as `GET /api/v2/jobs/{id}` shows it.
    pub fn job(&self, token: &str, id: &str) -> Value {
        self.get(&format!("/api/v2/jobs/{id}"), token)
            .json()
            .unwrap()
    }

    /// Waits for the job to reach `want`; one that ends otherwise fails
    /// the test at once.
    pub fn wait_status(&self, token: &str, id: &str, want: &str) -> Value {
        let mut last = Value::Null;
        super::wait_for(
            &format!("job {id} to be {want}"),
            Duration::from_secs(120),
            || {
                last = self.job(token, id);
                let ended = ["succeeded", "failed", "cancelled", "skipped"]
                    .iter()
                    .any(|s| last["status"] == *s);
                assert!(
                    !ended || last["status"] == want,
                    "the job ended otherwise: {last}"
                );
                last["status"] == want
            },
        );
        last
    }

    pub fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    pub fn refresh(&self, refresh: &str) -> Response {
        self.http
            .post(self.url("/api/v2/auth/refresh"))
            .json(&json!({"refresh_token": refresh}))
            .send()
            .unwrap()
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.get()
    }
}

/// Accepted (202, queued or running already): the new job's id.
pub fn accepted(r: Response) -> String {
    assert_eq!(r.status(), 202, "{:?}", r.text());
    let v: Value = r.json().unwrap();
    // A worker may have claimed it already.
    assert!(v["status"] == "queued" || v["status"] == "running", "{v}");
    v["job_id"].as_str().unwrap().to_string()
}

pub fn add_user(db: &TestDb, name: &str, role: &str, password: &str) {
    let mut child = db
        .nexus()
        .args(["user", "add", name, "--role", role, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

pub fn assert_problem(r: Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: Value = r.json().unwrap();
    assert_eq!(v["status"], status);
    assert_eq!(v["type"], "about:blank");
    assert!(v["title"].is_string());
    v
}
