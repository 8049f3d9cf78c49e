//! The fault campaign: SIGKILLs at random moments of `nexus load` and of two
//! `nexus serve` processes sharing one database, while jobs run and cancels
//! are in flight. After each kill the survivors, a restarted server or a
//! re-run finish the work. At the end every job has ended, no row is in the
//! table twice, every succeeded job's valid rows are all there, and every
//! job's counters match the table (`rows_read = committed + rejected`).
//! The seed is printed (`NEXUS_FAULT_SEED` replays a campaign).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::server::{ADMIN_PW, Server};
use common::{Reaped, TestDb, wait_for};
use serde_json::Value;

const KILLS: usize = 20;
/// Rows per file; every `BAD_EVERY`th is a reject.
const ROWS: i64 = 60_000;
const BAD_EVERY: i64 = 997;

/// A small, seeded generator: the campaign can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// One input file: ids `first..first + ROWS`, some of them bad.
struct Input {
    path: PathBuf,
    first: i64,
    valid: i64,
    bad: i64,
}

fn make_input(db: &TestDb, n: usize) -> Input {
    let first = (n as i64 + 1) * 1_000_000;
    let mut csv = String::from("id,payload\n");
    let mut bad = 0;
    for i in 0..ROWS {
        if i % BAD_EVERY == BAD_EVERY - 1 {
            csv.push_str(&format!("x{i},bad\n"));
            bad += 1;
        } else {
            csv.push_str(&format!("{},file {n} row {i}\n", first + i));
        }
    }
    Input {
        path: db.file(&format!("in-{n}.csv"), csv),
        first,
        valid: ROWS - bad,
        bad,
    }
}

struct Campaign<'a> {
    db: &'a TestDb,
    env: Vec<(&'a str, String)>,
    servers: [Option<Server>; 2],
    token: String,
    rng: Rng,
    inputs: Vec<Input>,
    /// Uploaded inputs by job id.
    uploaded: HashMap<String, usize>,
    /// Inputs loaded by the command line, and the one running now.
    cli_inputs: Vec<usize>,
    cli: Option<(Reaped, usize)>,
    kills: HashMap<&'static str, usize>,
    /// Jobs whose cancel answered 202: each must end `cancelled`.
    cancelled: std::collections::HashSet<String>,
}

impl Campaign<'_> {
    fn start_server(&self) -> Server {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start(self.db, &env)
    }

    fn live_server(&self) -> &Server {
        self.servers.iter().flatten().next().expect("a server")
    }

    fn new_input(&mut self) -> usize {
        let n = self.inputs.len();
        self.inputs.push(make_input(self.db, n));
        n
    }

    fn upload(&mut self) {
        let n = self.new_input();
        let body = std::fs::read(&self.inputs[n].path).unwrap();
        let s = self.live_server();
        let r = s
            .http
            .post(s.url("/api/v2/jobs?model=ev"))
            .bearer_auth(&self.token)
            .header("x-filename", format!("in-{n}.csv"))
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().unwrap()["job_id"]
            .as_str()
            .unwrap()
            .to_string();
        self.uploaded.insert(id, n);
    }

    /// Starts `nexus load` of input `n` (a re-run resumes its job).
    fn start_cli(&mut self, n: usize) {
        let models = self.db.dir.path().join("small-batches.toml");
        let child = self
            .db
            .nexus()
            .env("NEXUS_MODELS", &models)
            .args(["load", "--json", "--model", "ev"])
            .arg(&self.inputs[n].path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.cli = Some((Reaped(Some(child)), n));
    }

    /// Keeps a command-line load and two service jobs going.
    fn keep_busy(&mut self) {
        let finished = match &mut self.cli {
            Some((c, _)) => c.get().try_wait().unwrap().is_some(),
            None => true,
        };
        if finished {
            // An unfinished one (killed) runs again; else a new input.
            let next = self.cli_inputs.iter().copied().find(|&n| {
                self.job_of_path(n)
                    .is_none_or(|s| !matches!(s.as_str(), "succeeded" | "skipped"))
            });
            let n = match next {
                Some(n) => n,
                None => {
                    let n = self.new_input();
                    self.cli_inputs.push(n);
                    n
                }
            };
            self.start_cli(n);
        }
        let open: i64 = self
            .db
            .value(
                "SELECT count(*)::text FROM nexus.jobs
                 WHERE status IN ('queued', 'running') AND storage_key IS NOT NULL",
            )
            .unwrap()
            .parse()
            .unwrap();
        for _ in open..2 {
            self.upload();
        }
    }

    fn job_of_path(&self, n: usize) -> Option<String> {
        self.db.value(&format!(
            "SELECT status FROM nexus.jobs WHERE file_name = '{}' ORDER BY created_at DESC LIMIT 1",
            self.inputs[n].path.display()
        ))
    }

    /// A random moment: every job a server holds has committed since it was
    /// claimed (so that no job is failed as one that stops its workers), and
    /// a random number of batches more have committed.
    fn wait_for_a_moment(&mut self) {
        let more = 1 + self.rng.below(12) as i64;
        let before = common::batches(self.db);
        wait_for("a moment to kill", Duration::from_secs(120), || {
            // Work that ended meanwhile is replaced, so that batches flow.
            self.keep_busy();
            common::batches(self.db) >= before + more
                && self.db.count(
                    "nexus.jobs j WHERE j.status = 'running' AND j.lease_owner IS NOT NULL
                       AND (SELECT coalesce(sum(rows_read), 0) FROM nexus.job_batches b
                            WHERE b.job_id = j.id) <= coalesce(j.claimed_done, 0)",
                ) == 0
        });
    }

    fn kill(&mut self) {
        let running_cli = self.cli.is_some();
        let victim = self.rng.below(if running_cli { 3 } else { 2 });
        match victim {
            0 | 1 => {
                let i = victim as usize;
                if let Some(mut s) = self.servers[i].take() {
                    s.child().kill().unwrap();
                    s.child().wait().unwrap();
                }
                *self.kills.entry("serve").or_default() += 1;
                self.servers[i] = Some(self.start_server());
            }
            _ => {
                if let Some((mut c, _)) = self.cli.take() {
                    let _ = c.get().kill();
                    let _ = c.get().wait();
                }
                *self.kills.entry("load").or_default() += 1;
            }
        }
    }

    /// Cancels one of the open service jobs.
    fn cancel_one(&mut self) {
        let open: Vec<String> = self
            .db
            .sql(
                "SELECT id::text FROM nexus.jobs
                 WHERE status IN ('queued', 'running') AND storage_key IS NOT NULL ORDER BY id",
            )
            .iter()
            .map(|r| r.get(0))
            .collect();
        if open.is_empty() {
            return;
        }
        let id = &open[self.rng.below(open.len() as u64) as usize];
        let s = self.live_server();
        let r = s
            .http
            .post(s.url(&format!("/api/v2/jobs/{id}/cancel")))
            .bearer_auth(&self.token)
            .send()
            .unwrap();
        // It may have finished meanwhile (409); a 202 must win.
        assert!(r.status() == 202 || r.status() == 409, "{}", r.status());
        if r.status() == 202 {
            self.cancelled.insert(id.clone());
        }
    }
}

#[test]
fn sigkills_at_random_moments_lose_and_duplicate_nothing() {
    let db = TestDb::new();
    let models = common::small_batch_model(&db);
    db.exec("CREATE TABLE ev (id bigint NOT NULL, payload text)");
    assert_eq!(db.run(&["migrate", "--schema-only"]).code, 0);
    let seed = std::env::var("NEXUS_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("fault campaign seed {seed} (NEXUS_FAULT_SEED replays it)");
    let env = vec![
        ("NEXUS_MODELS", models.display().to_string()),
        ("NEXUS_JOB_LEASE", "2s".to_string()),
        ("NEXUS_WORKERS", "1".to_string()),
    ];
    let mut c = Campaign {
        db: &db,
        env,
        servers: [None, None],
        token: String::new(),
        rng: Rng(seed),
        inputs: Vec::new(),
        uploaded: HashMap::new(),
        cli_inputs: Vec::new(),
        cli: None,
        kills: HashMap::new(),
        cancelled: Default::default(),
    };
    c.servers = [Some(c.start_server()), Some(c.start_server())];
    c.token = c.live_server().tokens("admin", ADMIN_PW).0;
    let started = std::time::Instant::now();
    for k in 0..KILLS {
        c.keep_busy();
        c.wait_for_a_moment();
        if k % 5 == 2 {
            c.cancel_one();
        }
        c.kill();
    }
    // The work left: command-line inputs run again until they are done,
    // service jobs are finished by the servers.
    if let Some((mut child, _)) = c.cli.take() {
        child.get().wait().unwrap();
    }
    for n in c.cli_inputs.clone() {
        if c.job_of_path(n)
            .is_some_and(|s| matches!(s.as_str(), "succeeded" | "skipped"))
        {
            continue;
        }
        let models = db.dir.path().join("small-batches.toml");
        let r = common::run(
            db.nexus()
                .env("NEXUS_MODELS", &models)
                .args(["load", "--json", "--model", "ev"])
                .arg(&c.inputs[n].path),
        );
        assert_eq!(r.code, 0, "{r:?}");
    }
    wait_for("every job to end", Duration::from_secs(300), || {
        db.count("nexus.jobs WHERE status IN ('queued', 'running')") == 0
    });
    // The verdict.
    let duplicated: i64 = db
        .value("SELECT (count(*) - count(DISTINCT id))::text FROM ev")
        .unwrap()
        .parse()
        .unwrap();
    let jobs = db.sql(
        "SELECT id::text, status, file_name, rows_read, rows_committed, rows_rejected, error
         FROM nexus.jobs ORDER BY created_at",
    );
    let (mut lost, mut rows, mut statuses) = (0i64, 0i64, HashMap::<String, usize>::new());
    for j in &jobs {
        let (id, status, file): (String, String, Option<String>) = (j.get(0), j.get(1), j.get(2));
        let (read, committed, rejected): (i64, i64, i64) = (j.get(3), j.get(4), j.get(5));
        *statuses.entry(status.clone()).or_default() += 1;
        assert_eq!(read, committed + rejected, "job {id}: {status}");
        assert_eq!(
            status == "cancelled",
            c.cancelled.contains(&id),
            "job {id} ended {status}: a cancel that answered 202 wins, and only it cancels"
        );
        let n = match c.uploaded.get(&id) {
            Some(&n) => n,
            None => c
                .inputs
                .iter()
                .position(|i| Some(i.path.display().to_string()) == file)
                .unwrap_or_else(|| panic!("job {id} of an unknown file {file:?}")),
        };
        let input = &c.inputs[n];
        if status == "skipped" {
            // Its file was loaded by an earlier job, checked on its own.
            assert_eq!(committed, 0, "job {id}");
            continue;
        }
        let in_table = db.count(&format!(
            "ev WHERE id >= {} AND id < {}",
            input.first,
            input.first + ROWS
        ));
        assert_eq!(
            in_table, committed,
            "job {id} ({status}): its rows in the table"
        );
        match status.as_str() {
            "succeeded" => {
                lost += input.valid - committed;
                assert_eq!(rejected, input.bad, "job {id}");
            }
            "cancelled" => assert!(committed <= input.valid),
            other => panic!(
                "job {id} ended {other}: {:?}",
                j.get::<_, Option<String>>(6)
            ),
        }
        rows += committed;
    }
    eprintln!(
        "fault campaign: {} kills ({:?}), {} cancels, {} jobs ({statuses:?}), {rows} rows, \
         lost {lost}, duplicated {duplicated}, {:.0?}",
        KILLS,
        c.kills,
        c.cancelled.len(),
        jobs.len(),
        started.elapsed()
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    assert_eq!(c.kills.values().sum::<usize>(), KILLS);
}
