//! `nexus user add|list|disable` and `nexus sessions cleanup`.

use std::io::{BufRead, Write};

use clap::Subcommand;

use crate::auth::store::{self, Audit};
use crate::auth::{Role, passwords};
use crate::config::Config;
use crate::db::Database;
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from stdin.
    Add {
        name: String,
        #[arg(long, value_parser = ["admin", "uploader", "viewer"])]
        role: String,
        /// Read the password from the first line of stdin.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Users and their roles.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable a user; their sessions end at once.
    Disable { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Delete expired and revoked sessions; prints how many.
    Cleanup,
}

/// Shortest password `user add` accepts.
const MIN_PASSWORD: usize = 8;

pub async fn user(config: &Config, command: UserCommand) -> anyhow::Result<u8> {
    let password = match &command {
        UserCommand::Add { name, .. } => {
            if name.trim().is_empty()
                || name.len() > 100
                || name.chars().any(|c| c.is_control() || c == ':')
            {
                return Err(exit::usage(
                    "a user name is 1 to 100 printable characters other than `:` \
                     (jobs from the command line are owned by `cli:<account>`)",
                ));
            }
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let pw = line.trim_end_matches(['\r', '\n']).to_string();
            if pw.chars().count() < MIN_PASSWORD {
                return Err(exit::usage(format!(
                    "the password must have at least {MIN_PASSWORD} characters"
                )));
            }
            Some(pw)
        }
        _ => None,
    };
    let database = Database::open(config).await?;
    let result = async {
        let mut db = database.connect().await?;
        nexus_loaders::migrate::migrate(&mut db).await?;
        let mut out = std::io::stdout().lock();
        match command {
            UserCommand::Add { name, role, .. } => {
                let role = Role::parse(&role).ok_or_else(|| exit::usage("unknown role"))?;
                let hash = passwords::hash(password.unwrap_or_default()).await?;
                let id = store::add_user(&db, &name, &hash, role)
                    .await?
                    .ok_or_else(|| exit::failed(format!("user `{name}` already exists")))?;
                store::audit(
                    &db,
                    Audit {
                        event: "user_created",
                        username: Some(&name),
                        user_id: Some(id),
                        detail: Some(&format!("role {} (command line)", role.as_str())),
                        ..Default::default()
                    },
                )
                .await?;
                writeln!(out, "created user {name} ({})", role.as_str())?;
            }
            UserCommand::List { json } => {
                let users = store::list_users(&db).await?;
                if json {
                    writeln!(out, "{}", serde_json::to_string(&users)?)?;
                } else {
                    writeln!(
                        out,
                        "{:<24}  {:<8}  {:<8}  created",
                        "user", "role", "status"
                    )?;
                    for u in users {
                        writeln!(
                            out,
                            "{:<24}  {:<8}  {:<8}  {}",
                            u.username,
                            u.role.as_str(),
                            if u.disabled { "disabled" } else { "active" },
                            u.created_at.format("%Y-%m-%d %H:%M:%S")
                        )?;
                    }
                }
            }
            UserCommand::Disable { name } => {
                let id = store::disable_user(&db, &name)
                    .await?
                    .ok_or_else(|| exit::failed(format!("no user `{name}`")))?;
                store::audit(
                    &db,
                    Audit {
                        event: "user_disabled",
                        username: Some(&name),
                        user_id: Some(id),
                        ..Default::default()
                    },
                )
                .await?;
                writeln!(out, "disabled user {name}; their sessions are revoked")?;
            }
        }
        Ok(0)
    }
    .await;
    database.close().await;
    result
}

pub async fn sessions(config: &Config, command: SessionsCommand) -> anyhow::Result<u8> {
    let database = Database::open(config).await?;
    let result = async {
        let mut db = database.connect().await?;
        nexus_loaders::migrate::migrate(&mut db).await?;
        match command {
            SessionsCommand::Cleanup => {
                let n = store::cleanup_sessions(&db).await?;
                println!("deleted {n} expired or revoked sessions");
            }
        }
        Ok(0)
    }
    .await;
    database.close().await;
    result
}
