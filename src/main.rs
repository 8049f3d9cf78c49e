//! `nexus`: bulk ingestion into PostgreSQL. This file is the command line:
//! argument parsing, logging, exit codes, and dispatch to `cmd/`.

mod api;
mod auth;
mod background;
mod cmd;
mod config;
mod db;
mod embedded;
mod events;
mod exit;
mod https;
mod jobs;
mod mcp;
mod read_cache;
mod remote;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::Exit;

#[derive(Parser)]
#[command(
    name = "nexus",
    version,
    about = "Bulk ingestion into PostgreSQL: validated, resumable, faster than psql \\copy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load files into a model's table (or any table), in-process; for cron.
    Load(Box<cmd::load::LoadArgs>),
    /// The MCP server over stdio (for a desktop assistant that launches
    /// it): load files, follow jobs, explain rejects, as an admin of this
    /// installation.
    Mcp,
    /// Inspect and cancel jobs.
    Jobs {
        #[command(subcommand)]
        command: cmd::jobs::JobsCommand,
    },
    /// Show, check and derive model definitions.
    Models {
        #[command(subcommand)]
        command: cmd::models::ModelsCommand,
    },
    /// The service: the dashboard at http://HOST:PORT/ (uploads, live jobs,
    /// rejects), the HTTP API (jobs, auth, models, records, health,
    /// metrics, OpenAPI at /api/v2/openapi.json) and queue workers.
    Serve(cmd::serve::ServeArgs),
    /// Manage users.
    User {
        #[command(subcommand)]
        command: cmd::users::UserCommand,
    },
    /// Session housekeeping.
    Sessions {
        #[command(subcommand)]
        command: cmd::users::SessionsCommand,
    },
    /// The record cache: warm, stats, invalidate.
    Cache {
        #[command(subcommand)]
        command: cmd::cache::CacheCommand,
    },
    /// Performance reports.
    Perf {
        #[command(subcommand)]
        command: PerfCommand,
    },
    /// Create or upgrade the `nexus` schema and the model tables (idempotent).
    Migrate {
        /// Only the service schema; leave model tables alone.
        #[arg(long)]
        schema_only: bool,
    },
}

#[derive(Subcommand)]
enum PerfCommand {
    /// Throughput of recent jobs and latency percentiles of recent requests.
    Report(cmd::perf::PerfArgs),
}

fn init_logging(format: Option<&str>) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    let json = match format {
        Some("json") => true,
        Some("pretty") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nexus: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format.as_deref());
    nexus_loaders::tls::install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nexus: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Load(args) => cmd::load::run(&config, *args).await,
            Command::Jobs { command } => cmd::jobs::run(&config, command).await,
            Command::Mcp => cmd::mcp::run(config).await,
            Command::Cache { command } => cmd::cache::run(&config, command).await,
            Command::Models { command } => cmd::models::run(&config, command).await,
            Command::Migrate { schema_only } => cmd::models::migrate(&config, schema_only).await,
            Command::Perf {
                command: PerfCommand::Report(args),
            } => cmd::perf::run(&config, args).await,
            Command::Serve(args) => cmd::serve::run(config, args).await,
            Command::User { command } => cmd::users::user(&config, command).await,
            Command::Sessions { command } => cmd::users::sessions(&config, command).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let (code, message) = match e.downcast_ref::<Exit>() {
                Some(exit) => (exit.code, exit.message.clone()),
                None => (1, format!("{e:#}")),
            };
            eprintln!("nexus: {message}");
            ExitCode::from(code)
        }
    }
}

/// A path argument that may be `-` for stdin.
pub fn is_stdin(p: &std::path::Path) -> bool {
    p.as_os_str() == "-"
}
