//! `nexus perf report`: throughput of recent jobs and latency percentiles of
//! recent requests. Servers record each minute's request latencies per route
//! as HdrHistograms (flushed each minute and at shutdown), which merge exactly
//! across minutes and processes.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Args;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use nexus_pipeline::duration::parse_duration;
use serde::Serialize;

use crate::config::Config;
use crate::db::Database;
use crate::exit;

#[derive(Debug, Args)]
pub struct PerfArgs {
    /// How far back to look (e.g. 15m, 1h, 7d).
    #[arg(long, default_value = "1h")]
    since: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize, Default)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
}

#[derive(Debug, Serialize)]
struct JobsReport {
    finished: i64,
    succeeded: i64,
    failed: i64,
    rows: i64,
    rows_per_sec: Percentiles,
    duration_ms: Percentiles,
}

#[derive(Debug, Serialize)]
struct RouteReport {
    route: String,
    requests: i64,
    errors: i64,
    latency_ms: Percentiles,
}

#[derive(Debug, Serialize)]
struct Report {
    since: String,
    jobs: JobsReport,
    requests: Vec<RouteReport>,
}

fn ms(h: &Histogram<u64>) -> Percentiles {
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    Percentiles {
        p50: q(0.5),
        p95: q(0.95),
        p99: q(0.99),
    }
}

pub async fn run(config: &Config, args: PerfArgs) -> anyhow::Result<u8> {
    let since = parse_duration(&args.since).map_err(|e| exit::usage(format!("--since: {e}")))?;
    let database = Database::open(config).await?;
    let result = async {
        let mut db = database.connect().await?;
        nexus_loaders::migrate::migrate(&mut db).await?;
        let secs = since.as_secs_f64();
        let j = db
            .query_one(
                nexus_loaders::status_sql!("WITH j AS (
                    SELECT status, rows_read, duration_ms,
                           rows_read * 1000.0 / nullif(duration_ms, 0) AS rate
                    FROM nexus.jobs
                    WHERE finished_at > now() - make_interval(secs => $1) AND status <> {skipped})
                 SELECT count(*), count(*) FILTER (WHERE status = {succeeded}),
                        count(*) FILTER (WHERE status = {failed}), coalesce(sum(rows_read), 0)::bigint,
                        coalesce(percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY rate), ARRAY[0, 0, 0]::float8[]),
                        coalesce(percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms), ARRAY[0, 0, 0]::float8[])
                 FROM j"),
                &[&secs],
            )
            .await?;
        let p = |v: Vec<Option<f64>>| Percentiles {
            p50: v.first().copied().flatten().unwrap_or(0.0).round(),
            p95: v.get(1).copied().flatten().unwrap_or(0.0).round(),
            p99: v.get(2).copied().flatten().unwrap_or(0.0).round(),
        };
        let jobs = JobsReport {
            finished: j.get(0),
            succeeded: j.get(1),
            failed: j.get(2),
            rows: j.get(3),
            rows_per_sec: p(j.get(4)),
            duration_ms: p(j.get(5)),
        };
        let rows = db
            .query(
                "SELECT route, requests, errors, histogram FROM nexus.request_stats
                 WHERE minute > now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await?;
        let mut merged: BTreeMap<String, (i64, i64, Histogram<u64>)> = BTreeMap::new();
        let mut all = Histogram::<u64>::new(3)?;
        let (mut all_requests, mut all_errors) = (0i64, 0i64);
        let mut de = Deserializer::new();
        for r in rows {
            let bytes: Vec<u8> = r.get(3);
            let Ok(h) = de.deserialize::<u64, _>(&mut &bytes[..]) else { continue };
            let (req, err): (i64, i64) = (r.get(1), r.get(2));
            let e = merged
                .entry(r.get(0))
                .or_insert_with(|| (0, 0, Histogram::new(3).expect("histogram")));
            e.0 += req;
            e.1 += err;
            e.2.add(&h)?;
            all.add(&h)?;
            all_requests += req;
            all_errors += err;
        }
        let mut requests: Vec<RouteReport> = merged
            .into_iter()
            .map(|(route, (requests, errors, h))| RouteReport {
                route,
                requests,
                errors,
                latency_ms: ms(&h),
            })
            .collect();
        if all_requests > 0 {
            requests.push(RouteReport {
                route: "(all)".into(),
                requests: all_requests,
                errors: all_errors,
                latency_ms: ms(&all),
            });
        }
        let report = Report {
            since: args.since.clone(),
            jobs,
            requests,
        };
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else {
            let j = &report.jobs;
            writeln!(out, "jobs finished in the last {}: {} ({} succeeded, {} failed), {} rows", report.since, j.finished, j.succeeded, j.failed, j.rows)?;
            writeln!(
                out,
                "  rows/s  p50 {:>10}  p95 {:>10}  p99 {:>10}",
                j.rows_per_sec.p50, j.rows_per_sec.p95, j.rows_per_sec.p99
            )?;
            writeln!(
                out,
                "  ms      p50 {:>10}  p95 {:>10}  p99 {:>10}",
                j.duration_ms.p50, j.duration_ms.p95, j.duration_ms.p99
            )?;
            writeln!(out, "requests (latency ms):")?;
            writeln!(out, "  {:<32} {:>9} {:>7} {:>9} {:>9} {:>9}", "route", "requests", "errors", "p50", "p95", "p99")?;
            for r in &report.requests {
                writeln!(
                    out,
                    "  {:<32} {:>9} {:>7} {:>9.2} {:>9.2} {:>9.2}",
                    r.route, r.requests, r.errors, r.latency_ms.p50, r.latency_ms.p95, r.latency_ms.p99
                )?;
            }
        }
        Ok(0)
    }
    .await;
    database.close().await;
    result
}
