//! The deploy binary: runs this workspace's migrations.
//!
//! It follows sea-orm-migration's command set, but not `cli::run_cli`
//! itself: that panics when the server is unreachable, has no embedded
//! default database, and its `fresh` drops every table in the schema, which on
//! a database shared with LangBot is all of LangBot's data.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use migration::{Migrator, MigratorTrait, catalog};
use sea_orm_migration::MigrationStatus;
use sea_orm_migration::sea_orm::{DatabaseConnection, DbErr};
use service::connection::{DEFAULT_SQLITE_URL, connect, probe};

/// Exit code of `status` when migrations are pending.
const EXIT_PENDING: u8 = 3;

#[derive(Parser)]
#[command(
    name = "migration",
    version,
    about = "Create, adopt and migrate LangBot's agent_runner_state table",
    after_help = "Without DATABASE_URL or -u, uses the embedded SQLite file ./agent_runner_state.db.\n\
                  Exit codes: 0 success; 1 error; 3 `status` found pending migrations."
)]
struct Cli {
    /// Database URL (postgres://, mysql://, sqlite://).
    #[arg(short = 'u', long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,

    /// Keep retrying an unreachable server for this many seconds (a deploy
    /// may start before its database); 0 tries once.
    #[arg(
        long,
        env = "MIGRATION_WAIT_FOR_DB",
        default_value_t = 0,
        global = true
    )]
    wait_for_db: u64,

    /// Show debug messages.
    #[arg(short = 'v', long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations (the default).
    Up {
        /// Apply at most this many.
        #[arg(short = 'n', long)]
        num: Option<u32>,
    },
    /// Roll back applied migrations.
    Down {
        /// Roll back this many.
        #[arg(short = 'n', long, default_value_t = 1)]
        num: u32,
    },
    /// List applied and pending migrations without writing anything; exits 3
    /// when any is pending.
    Status,
    /// Roll back every migration of this workspace, then apply them all.
    Fresh(Guard),
    /// Roll back every migration, then apply them all.
    Refresh(Guard),
    /// Roll back every migration and remove this workspace's history table.
    Reset(Guard),
}

#[derive(clap::Args)]
struct Guard {
    /// Proceed although the database holds tables this workspace does not own
    /// (LangBot's). Even then only this workspace's tables are dropped.
    #[arg(long)]
    force: bool,
}

/// Tables this workspace may create and drop. `agent_runner_state` is only
/// dropped when the migration created it; an adopted one is handed back.
const OWNED_TABLES: &[&str] = &[
    "seaql_migrations",
    migration::m20261125_000001_create_agent_runner_state::TABLE,
    migration::m20261125_000001_create_agent_runner_state::ORIGIN_TABLE,
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match run(cli).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if verbose {
        "debug"
    } else {
        "info,sqlx=warn,sea_orm=warn"
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let url = match cli.database_url.filter(|u| !u.trim().is_empty()) {
        Some(url) => url,
        None => {
            tracing::info!(
                "no DATABASE_URL or -u given: using embedded SQLite ./agent_runner_state.db"
            );
            DEFAULT_SQLITE_URL.to_owned()
        }
    };
    wait_for_server(&url, Duration::from_secs(cli.wait_for_db)).await?;
    let db = connect(&url)
        .await
        .map_err(|e| format!("cannot connect to {}: {}", redact(&url), db_message(&e)))?;
    let command = cli.command.unwrap_or(Command::Up { num: None });
    let result = match command {
        Command::Up { num } => Migrator::up(&db, num).await,
        Command::Down { num } => Migrator::down(&db, Some(num)).await,
        Command::Status => return status(&db).await.map_err(|e| db_message(&e)),
        Command::Fresh(guard) => match guard_foreign_tables(&db, &guard, "fresh").await {
            Ok(()) => match Migrator::reset(&db).await {
                Ok(()) => Migrator::up(&db, None).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        Command::Refresh(guard) => match guard_foreign_tables(&db, &guard, "refresh").await {
            Ok(()) => Migrator::refresh(&db).await,
            Err(e) => Err(e),
        },
        Command::Reset(guard) => match guard_foreign_tables(&db, &guard, "reset").await {
            Ok(()) => Migrator::reset(&db).await,
            Err(e) => Err(e),
        },
    };
    result.map_err(|e| db_message(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// Tries a plain connection, with backoff until `patience` runs out, so that
/// the error names the cause (refused, bad password...) rather than a pool
/// timeout.
async fn wait_for_server(url: &str, patience: Duration) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    let mut delay = Duration::from_millis(250);
    loop {
        match probe(url).await {
            Ok(()) => return Ok(()),
            Err(cause) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || cause.contains("scheme") || cause.contains("parse") {
                    return Err(format!("cannot connect to {}: {cause}", redact(url)));
                }
                tracing::warn!(
                    "database not reachable yet ({cause}); retrying for {}s more",
                    left.as_secs()
                );
                tokio::time::sleep(delay.min(left)).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Prints each migration and whether it is applied; never writes (no
/// history table is created by asking).
async fn status(db: &DatabaseConnection) -> Result<ExitCode, DbErr> {
    let migrations = Migrator::get_migration_with_status_read_only(db).await?;
    let mut pending = 0;
    for m in &migrations {
        let status = m.status();
        if status == MigrationStatus::Pending {
            pending += 1;
        }
        println!("{status:<8} {}", m.name());
    }
    println!("{} applied, {pending} pending", migrations.len() - pending);
    Ok(if pending > 0 {
        ExitCode::from(EXIT_PENDING)
    } else {
        ExitCode::SUCCESS
    })
}

/// `fresh`, `refresh` and `reset` roll back this workspace's migrations;
/// next to other tables (LangBot's), they want `--force` to say so.
async fn guard_foreign_tables(
    db: &DatabaseConnection,
    guard: &Guard,
    command: &str,
) -> Result<(), DbErr> {
    let foreign: Vec<String> = catalog::table_names(db)
        .await?
        .into_iter()
        .filter(|t| !OWNED_TABLES.contains(&t.as_str()))
        .collect();
    if foreign.is_empty() || guard.force {
        return Ok(());
    }
    Err(DbErr::Custom(format!(
        "refusing `{command}`: the database also holds tables this workspace does not own ({}); \
         rerun with --force to roll back only this workspace's migrations and tables",
        foreign.join(", ")
    )))
}

/// The error text without SeaORM's variant wrappers, on one line.
fn db_message(e: &DbErr) -> String {
    e.to_string().replace('\n', " ")
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
