//! `nexus load`: runs loads in-process, for people and for cron. Per file:
//! hash it (stdin and URLs are spooled first), run the shared load path, show a
//! progress bar on a terminal, and print one summary (a line, or JSON).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{HumanCount, HumanDuration, ProgressBar, ProgressStyle};
use nexus_loaders::catalog;
use nexus_loaders::jobs::JobRecord;
use nexus_loaders::load::{LoadOutcome, LoadRequest, run_load};
use nexus_loaders::{JobStatus, Mode};
use nexus_pipeline::Model;
use nexus_pipeline::model::{InputDef, InputFormat};
use nexus_pipeline::progress::Progress;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::{self, Database};
use crate::exit::{self, FAILED, TOO_MANY_REJECTS};
use crate::remote::Remote;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("into").required(true).args(["model", "table"])))]
pub struct LoadArgs {
    /// The model to load into (or --table).
    #[arg(long, conflicts_with = "table")]
    model: Option<String>,
    /// Load into an existing table (SCHEMA.TABLE); the model is derived from its columns.
    #[arg(long)]
    table: Option<String>,
    /// Files to load; `-` reads stdin, `s3://bucket/key` and `https://…`
    /// are fetched (streamed to the spool). `.gz` and `.zst` are decompressed.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// append, upsert (by the model's key; the last row for a key wins) or
    /// replace (empty the table and load, in one transaction).
    #[arg(long, default_value_t = Mode::Append, value_parser = str::parse::<Mode>)]
    mode: Mode,
    /// Input format: csv, ndjson (one JSON object per line), parquet,
    /// arrow (IPC file or stream), or auto: Parquet and Arrow by their
    /// magic bytes, then by the file's name (`.ndjson`, `.jsonl` through
    /// `.gz`/`.zst`, `.parquet`, `.arrow`), else the model's (csv unless it
    /// says).
    #[arg(long, default_value = "auto", value_parser = parse_format)]
    format: FormatArg,
    /// Field delimiter (one ASCII character; `\t` for tab).
    #[arg(long)]
    delimiter: Option<String>,
    /// Quote character.
    #[arg(long)]
    quote: Option<String>,
    /// An unquoted field text meaning NULL (repeatable; default: the empty field).
    #[arg(long = "null")]
    null: Vec<String>,
    /// Input encoding: utf-8, latin1 or windows-1252.
    #[arg(long)]
    encoding: Option<String>,
    /// Timezone for timestamps without an offset (IANA name or +HH:MM).
    #[arg(long)]
    timezone: Option<String>,
    /// The file has no header row: fields map to the model's columns by position.
    #[arg(long)]
    no_header: bool,
    /// Fail (exit 3) once more than N rows are rejected.
    #[arg(long)]
    max_rejects: Option<u64>,
    /// Fail (exit 3) when more than this fraction of rows is rejected.
    #[arg(long)]
    max_reject_ratio: Option<f64>,
    /// Load the whole file in one transaction: all or nothing.
    #[arg(long)]
    atomic: bool,
    /// Load even if this file was already loaded into this model.
    #[arg(long)]
    force: bool,
    /// Print one JSON summary object per file on stdout.
    #[arg(long)]
    json: bool,
    /// Read and check the file (header, rules, every value) and report,
    /// writing nothing; keys and other table constraints are checked only
    /// by a load.
    #[arg(long)]
    dry_run: bool,
}

impl LoadArgs {
    /// Each input flag given, alone, so that a bad value is named by its flag.
    fn each_override(&self) -> Vec<(&'static str, InputDef)> {
        let all = self.overrides();
        let mut each = Vec::new();
        macro_rules! one {
            ($flag:literal, $field:ident) => {
                if all.$field.is_some() {
                    each.push((
                        $flag,
                        InputDef {
                            $field: all.$field.clone(),
                            ..Default::default()
                        },
                    ));
                }
            };
        }
        one!("--null", null);
        one!("--timezone", timezone);
        one!("--encoding", encoding);
        one!("--delimiter", delimiter);
        one!("--quote", quote);
        one!("--max-rejects", max_rejects);
        one!("--max-reject-ratio", max_reject_ratio);
        each
    }

    fn overrides(&self) -> InputDef {
        InputDef {
            format: None,
            null: (!self.null.is_empty()).then(|| self.null.clone()),
            timezone: self.timezone.clone(),
            encoding: self.encoding.clone(),
            delimiter: self.delimiter.clone(),
            quote: self.quote.clone(),
            max_rejects: self.max_rejects,
            max_reject_ratio: self.max_reject_ratio,
            max_record_bytes: None,
        }
    }
}

pub async fn run(config: &Config, args: LoadArgs) -> anyhow::Result<u8> {
    let models = db::models(config)?;
    let named = match &args.model {
        Some(name) => Some(models.get(name).map_err(|e| exit::usage(e.to_string()))?),
        None => None,
    };
    for f in &args.files {
        match Remote::of(f) {
            Some(remote) => {
                remote.map_err(exit::usage)?;
            }
            None if !crate::is_stdin(f) && !f.is_file() => {
                return Err(exit::failed(format!("{}: no such file", f.display())));
            }
            None => {}
        }
    }
    let database = Database::open(config).await?;
    let result = load_all(config, &args, named, &database).await;
    database.close().await;
    result
}

async fn load_all(
    config: &Config,
    args: &LoadArgs,
    named: Option<Arc<Model>>,
    database: &Database,
) -> anyhow::Result<u8> {
    let (model, model_key, create_table) = match named {
        Some(m) => {
            let key = m.name.clone();
            (m, key, true)
        }
        None => {
            let table = args.table.as_deref().unwrap_or_default();
            let client = database.connect().await?;
            let m = catalog::model_from_table(&client, table)
                .await
                .map_err(|e| match e {
                    catalog::CatalogError::Db(e) => exit::failed(nexus_loaders::pg::describe(&e)),
                    other => exit::usage(other.to_string()),
                })?;
            let key = catalog::table_key(&m);
            (Arc::new(m), key, false)
        }
    };
    for (flag, one) in args.each_override() {
        model
            .with_input(&one)
            .map_err(|e| exit::usage(format!("{flag}: {e}")))?;
    }
    let model = Arc::new(
        model
            .with_input(&args.overrides())
            .map_err(|e| exit::usage(e.to_string()))?,
    );
    let mode = args.mode;
    if mode == Mode::Upsert && model.key.is_empty() {
        return Err(exit::usage(format!(
            "--mode upsert needs a key, and `{}` has none (give the table a primary key or the model a key)",
            model.name
        )));
    }
    let cache = super::cache::open(config, false, Default::default())?;
    let interrupt = CancellationToken::new();
    spawn_signal_handler(interrupt.clone());
    let mut code = 0u8;
    for file in &args.files {
        let spool = if crate::is_stdin(file) {
            Some(spool_stdin(&config.data_dir).await?)
        } else if let Some(Ok(remote)) = Remote::of(file) {
            let fetched = remote
                .fetch(&config.data_dir.join("spool"))
                .await
                .map_err(|e| exit::failed(format!("{}: {e}", file.display())))?;
            Some(fetched)
        } else {
            None
        };
        // A local file is hashed by the load, beside its first batches.
        let (path, hash) = match &spool {
            Some((p, h)) => (p.clone(), Some(h.clone())),
            None => (file.clone(), None),
        };
        let format = args
            .format
            .0
            .or_else(|| InputFormat::of_name(&Remote::name(file)))
            .unwrap_or(model.input.format);
        let model = if format == model.input.format {
            model.clone()
        } else {
            let input = InputDef {
                format: Some(format),
                ..Default::default()
            };
            Arc::new(
                model
                    .with_input(&input)
                    .map_err(|e| exit::usage(e.to_string()))?,
            )
        };
        let req = LoadRequest {
            model: model.clone(),
            model_key: model_key.clone(),
            bytes_total: std::fs::metadata(&path).ok().map(|m| m.len()),
            path,
            file_name: Some(file.display().to_string()),
            file_hash: hash,
            mode,
            atomic: args.atomic,
            force: args.force,
            has_header: !args.no_header,
            copy_connections: config.copy_connections,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            create_table,
            owner: Some(local_owner("cli")),
            interrupt: interrupt.clone(),
            retry: config.db_retry,
            job: None,
            cache: Some(cache.clone()),
        };
        if args.dry_run {
            let checked = nexus_loaders::load::dry_run(&database.url, req).await;
            if let Some((p, _)) = &spool {
                let _ = std::fs::remove_file(p);
            }
            code = code.max(print_dry_run(file, &model, checked, args.json)?);
            continue;
        }
        let progress = Arc::new(Progress::default());
        let outcome = if !args.json && std::io::stderr().is_terminal() {
            let bar = progress_bar(&req);
            // The bar is drawn while the load runs, and no longer.
            let outcome = tokio::select! {
                outcome = run_load(&database.url, req, progress.clone()) => outcome,
                never = show_progress(&bar, progress.clone()) => match never {},
            };
            bar.finish_and_clear();
            outcome
        } else {
            run_load(&database.url, req, progress.clone()).await
        };
        let progress_earlier = progress.snapshot().earlier_rows;
        if let Some((p, _)) = spool {
            let _ = std::fs::remove_file(p);
        }
        let outcome = outcome.map_err(|e| exit::failed(e.to_string()))?;
        print_summary(&outcome, progress_earlier, args.json)?;
        code = code.max(exit_code(&outcome));
        if interrupt.is_cancelled() {
            break;
        }
    }
    super::cache::finish(&cache, database).await?;
    Ok(code)
}

/// `--format`: a format, or none (`auto`).
#[derive(Debug, Clone, Copy)]
struct FormatArg(Option<InputFormat>);

fn parse_format(v: &str) -> Result<FormatArg, String> {
    match v {
        "auto" => Ok(FormatArg(None)),
        other => other.parse().map(|f| FormatArg(Some(f))),
    }
}

fn exit_code(o: &LoadOutcome) -> u8 {
    match o.job.status {
        JobStatus::Succeeded | JobStatus::Skipped => 0,
        _ if o.rejects_exceeded => TOO_MANY_REJECTS,
        _ => FAILED,
    }
}

/// SIGINT/SIGTERM stop the load at the next batch boundary; it stays resumable.
fn spawn_signal_handler(interrupt: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!(
            "nexus: stopping at the next batch boundary (run the same command again to resume)"
        );
        interrupt.cancel();
    });
}

/// The owner of a job started on this machine (`cli`, or `mcp` over
/// stdio): the channel, `:` and the account's name. A service user name
/// cannot hold `:`, so no HTTP user sees these jobs as their own (admins
/// see every job).
pub fn local_owner(channel: &str) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{channel}:{user}")
}

/// Copies stdin to a spool file while hashing it, so that a piped load has a
/// content identity (for skip and resume) like a file does.
async fn spool_stdin(data_dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let dir = data_dir.join("spool");
    crate::jobs::storage::private_dir(&dir)
        .map_err(|e| exit::failed(format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("stdin-{}", uuid::Uuid::new_v4()));
    let p = path.clone();
    let hash = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)?;
        let mut out = std::io::BufWriter::new(file);
        let hash = nexus_pipeline::source::hash_reader(&mut std::io::stdin().lock(), |chunk| {
            out.write_all(chunk)
        })?;
        out.flush()?;
        Ok(hash)
    })
    .await?
    .map_err(|e| exit::failed(format!("reading stdin: {e}")))?;
    Ok((path, hash))
}

fn progress_bar(req: &LoadRequest) -> ProgressBar {
    let bar = ProgressBar::new(req.bytes_total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {percent:>3}% {wide_bar} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// How far back the rate and the ETA look.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Keeps `bar` up to date with `progress`, for as long as it is polled;
/// draws nothing before the first row is read (connecting, waiting for the
/// database, checking the header). The bar follows the input as far as
/// committed batches reach, not the reading ahead of them; the rate and
/// the ETA come from this run's commits over the last few seconds.
async fn show_progress(bar: &ProgressBar, progress: Arc<Progress>) -> std::convert::Infallible {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut seen: std::collections::VecDeque<(std::time::Instant, u64, u64)> = Default::default();
    loop {
        tick.tick().await;
        let s = progress.snapshot();
        let this_run = s.rows_read.saturating_sub(s.earlier_rows);
        if this_run == 0 {
            continue;
        }
        let position = match bar.length() {
            Some(total) if total > 0 => s.bytes_committed.min(total),
            _ => s.bytes_committed,
        };
        bar.set_position(position);
        let now = std::time::Instant::now();
        seen.push_back((now, this_run, position));
        while seen.len() > 2
            && seen
                .front()
                .is_some_and(|s| now.duration_since(s.0) > RATE_WINDOW)
        {
            seen.pop_front();
        }
        let Some(&(t0, rows0, pos0)) = seen.front() else {
            continue;
        };
        let secs = now.duration_since(t0).as_secs_f64();
        let (rate, eta) = if secs > 0.2 {
            let rate = (this_run - rows0) as f64 / secs;
            let byte_rate = (position - pos0) as f64 / secs;
            let left = bar.length().unwrap_or(0).saturating_sub(position) as f64;
            let eta = (byte_rate > 0.0 && left > 0.0).then(|| {
                let secs = (left / byte_rate).ceil() as u64;
                format!(", ETA {}", HumanDuration(Duration::from_secs(secs)))
            });
            (Some(rate), eta)
        } else {
            (None, None)
        };
        bar.set_message(format!(
            "{} rows, {} rejected{}{}",
            HumanCount(s.rows_read),
            HumanCount(s.rows_rejected),
            rate.map(|r| format!(", {}/s", HumanCount(r as u64)))
                .unwrap_or_default(),
            eta.unwrap_or_default(),
        ));
    }
}

/// Prints what a dry run found; its exit code as a load's would be.
fn print_dry_run(
    file: &std::path::Path,
    model: &nexus_pipeline::Model,
    checked: Result<nexus_loaders::load::DryRun, nexus_loaders::LoadError>,
    json: bool,
) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    let d = match checked {
        Ok(d) => d,
        Err(e @ nexus_loaders::LoadError::Read(_)) => {
            if json {
                let v = serde_json::json!({"file": file.display().to_string(), "dry_run": true, "error": e.to_string()});
                writeln!(out, "{v}")?;
            }
            eprintln!("nexus: {}: {e}", file.display());
            return Ok(FAILED);
        }
        Err(e) => return Err(exit::failed(e.to_string())),
    };
    let over_limit = model.input.max_rejects.is_some_and(|m| d.rows_rejected > m)
        || model
            .input
            .max_reject_ratio
            .is_some_and(|r| d.rows_read > 0 && d.rows_rejected as f64 / d.rows_read as f64 > r);
    let code = if d.rows_valid == 0 && d.rows_rejected > 0 {
        FAILED
    } else if over_limit {
        TOO_MANY_REJECTS
    } else {
        0
    };
    if json {
        let mut v = serde_json::to_value(&d)?;
        v["file"] = file.display().to_string().into();
        v["model"] = model.name.clone().into();
        v["dry_run"] = true.into();
        writeln!(out, "{v}")?;
        return Ok(code);
    }
    writeln!(
        out,
        "dry run: {} → {}: {} rows read, {} would load, {} rejected; nothing was written \
         (keys and other constraints of the table are checked only by a load)",
        file.display(),
        model.name,
        d.rows_read,
        d.rows_valid,
        d.rows_rejected
    )?;
    for r in &d.rejects {
        let column = r
            .column
            .as_deref()
            .map(|c| format!(", column {c}"))
            .unwrap_or_default();
        writeln!(out, "  line {}{column}: {}", r.line, r.reason)?;
    }
    if d.rows_rejected > d.rejects.len() as u64 {
        writeln!(
            out,
            "  … and {} more",
            d.rows_rejected - d.rejects.len() as u64
        )?;
    }
    Ok(code)
}

/// Prints a load's summary; `earlier` rows were settled by earlier runs of
/// a resumed job, so the rate is this run's.
fn print_summary(o: &LoadOutcome, earlier: u64, json: bool) -> anyhow::Result<()> {
    let mut job = o.job.clone();
    let this_run = (job.rows_read as u64).saturating_sub(earlier);
    if job.duration_ms > 0 {
        job.rows_per_sec = (this_run as f64 * 1000.0 / job.duration_ms as f64).round();
    }
    let j: &JobRecord = &job;
    let mut out = std::io::stdout().lock();
    if json {
        let mut v = serde_json::to_value(j)?;
        v["resumed"] = serde_json::Value::Bool(o.resumed);
        v["earlier_rows"] = earlier.into();
        if let Some(old) = &o.superseded {
            v["superseded"] = serde_json::to_value(old)?;
        }
        writeln!(out, "{v}")?;
        // The object stays on stdout for machines; a person (or a cron
        // mail) still reads why a load failed on stderr.
        if let Some(e) = &j.error {
            eprintln!(
                "nexus: {} {}: {e}",
                j.file_name.as_deref().unwrap_or("-"),
                j.status
            );
        }
        return Ok(());
    }
    let file = j.file_name.as_deref().unwrap_or("-");
    if j.status == JobStatus::Skipped {
        writeln!(
            out,
            "skipped: {file} was already loaded into {} (use --force to load it again) [job {}]",
            j.model, j.job_id
        )?;
        return Ok(());
    }
    write!(
        out,
        "{}: {} → {} ({}{}): {} rows read, {} committed, {} rejected in {:.2}s ({} rows/s) [job {}]",
        j.status,
        file,
        j.target,
        j.mode,
        if j.atomic { ", atomic" } else { "" },
        j.rows_read,
        j.rows_committed,
        j.rows_rejected,
        j.duration_ms as f64 / 1000.0,
        j.rows_per_sec,
        j.job_id
    )?;
    if o.resumed {
        write!(
            out,
            " (resumed: {earlier} of the rows were settled by earlier runs)"
        )?;
    }
    if let Some(old) = &o.superseded {
        write!(
            out,
            "\n  replaces job {} (this file with other options or --force), now cancelled; its {} committed rows stay in the table",
            old.job_id, old.rows_committed
        )?;
    }
    if let Some(e) = &j.error {
        write!(out, "\n  error: {e}")?;
    }
    if j.rows_rejected > 0 {
        write!(out, "\n  see the rejects: nexus jobs rejects {}", j.job_id)?;
    }
    writeln!(out)?;
    Ok(())
}
