//! The deploy binary: runs this workspace's migrations.
//!
//! It follows sea-orm-migration's command set, but not `cli::run_cli`
//! itself: that panics when the server is unreachable, has no embedded
//! default database, and its `fresh` drops every table in the schema, which on
//! a database shared with LangBot is all of LangBot's data.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use migration::lock::{MigrationLock, sqlite_file};
use migration::m20261125_000001_create_agent_runner_state::{Dialect, TABLE, drift};
use migration::{Migrator, MigratorTrait, catalog};
use sea_orm_migration::MigrationStatus;
use sea_orm_migration::sea_orm::Database;
use sea_orm_migration::sea_orm::{DatabaseConnection, DbErr};
use service::connection::{
    DEFAULT_SQLITE_URL, batch_connect_options, probe, read_only_connect_options,
};

/// Exit code of `status` (and `plan`) when migrations are pending.
const EXIT_PENDING: u8 = 3;

/// Exit code of `check` when the live schema differs.
const EXIT_DRIFT: u8 = 4;

#[derive(Parser)]
#[command(
    name = "migration",
    version,
    about = "Create, adopt and migrate LangBot's agent_runner_state table",
    after_help = "Without DATABASE_URL or -u, uses the embedded SQLite file ./agent_runner_state.db.\n\
                  Exit codes: 0 success; 1 error; 2 usage error; 3 `status` or `plan` found pending\n\
                  migrations; 4 `check` found schema drift."
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

    /// Wait at most this many seconds for another migration process (another
    /// replica) to finish.
    #[arg(
        long,
        env = "MIGRATION_LOCK_TIMEOUT",
        default_value_t = 600,
        global = true
    )]
    lock_timeout: u64,

    /// Rows per batch in the data migrations.
    #[arg(long, env = "MIGRATION_BATCH_SIZE", default_value_t = migration::settings::DEFAULT_BATCH_SIZE, global = true)]
    batch_size: u64,

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
        #[arg(short = 'n', long, conflicts_with = "to")]
        num: Option<u32>,
        /// Apply the pending migrations up to and including this one (by
        /// name), never one after it.
        #[arg(long, value_name = "MIGRATION")]
        to: Option<String>,
    },
    /// Roll back applied migrations.
    Down {
        /// Roll back this many.
        #[arg(short = 'n', long, default_value_t = 1, conflicts_with = "to")]
        num: u32,
        /// Roll back every applied migration after this one, and this one
        /// (by name).
        #[arg(long, value_name = "MIGRATION")]
        to: Option<String>,
    },
    /// List applied and pending migrations without writing anything; exits 3
    /// when any is pending.
    Status,
    /// Print the pending migrations and the statements they would run on
    /// this database, without running them; exits 3 when any is pending.
    Plan,
    /// Compare the live agent_runner_state with the schema the migrations
    /// produce; exits 4 and prints the differences when they differ.
    Check,
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
    migration::m20261125_000002_port_legacy_runner_blocks::BACKUP_TABLE,
    migration::m20261125_000003_rename_runner_ids::CONFIG_BACKUP_TABLE,
    migration::m20261125_000003_rename_runner_ids::RENAME_LOG_TABLE,
    migration::m20261125_000003_rename_runner_ids::CONFLICTS_TABLE,
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
    migration::settings::set_batch_size(cli.batch_size);
    let command = cli.command.unwrap_or(Command::Up {
        num: None,
        to: None,
    });
    let read_only = matches!(command, Command::Status | Command::Plan | Command::Check);
    let url = match sqlite_file(&url) {
        // Asking must not create the database: a missing file is an empty one.
        Some(path) if read_only && !path.exists() => {
            tracing::info!(
                "{} does not exist yet: reporting on an empty database",
                path.display()
            );
            "sqlite::memory:".to_owned()
        }
        _ => url,
    };
    wait_for_server(&url, Duration::from_secs(cli.wait_for_db)).await?;
    // One connection: the migration lock belongs to the session holding it.
    let options = if read_only {
        read_only_connect_options(&url)
    } else {
        batch_connect_options(&url)
    };
    let db = Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect to {}: {}", redact(&url), db_message(&e)))?;
    let result = match command {
        Command::Status => status(&db).await,
        Command::Plan => plan(&db).await,
        Command::Check => check(&db).await,
        command => {
            let lock =
                MigrationLock::acquire(&db, &url, Duration::from_secs(cli.lock_timeout)).await;
            match lock {
                Ok(lock) => {
                    let result = change(&db, command).await;
                    let released = lock.release(&db).await;
                    result.and(released).map(|()| ExitCode::SUCCESS)
                }
                Err(e) => Err(e),
            }
        }
    };
    let code = result.map_err(|e| db_message(&e))?;
    db.close().await.ok();
    Ok(code)
}

/// The commands that change the schema; run under the migration lock.
async fn change(db: &DatabaseConnection, command: Command) -> Result<(), DbErr> {
    match command {
        Command::Up { num, to: None } => Migrator::up(db, num).await,
        Command::Up { to: Some(name), .. } => match steps_up_to(db, &name).await? {
            0 => {
                tracing::info!("{name} is already applied: nothing to do");
                Ok(())
            }
            steps => Migrator::up(db, Some(steps)).await,
        },
        Command::Down { num, to: None } => Migrator::down(db, Some(num)).await,
        Command::Down { to: Some(name), .. } => match steps_down_to(db, &name).await? {
            0 => {
                tracing::info!("{name} is not applied: nothing to roll back");
                Ok(())
            }
            steps => Migrator::down(db, Some(steps)).await,
        },
        Command::Fresh(guard) => {
            guard_foreign_tables(db, &guard, "fresh").await?;
            Migrator::reset(db).await?;
            Migrator::up(db, None).await
        }
        Command::Refresh(guard) => {
            guard_foreign_tables(db, &guard, "refresh").await?;
            Migrator::refresh(db).await
        }
        Command::Reset(guard) => {
            guard_foreign_tables(db, &guard, "reset").await?;
            Migrator::reset(db).await
        }
        Command::Status | Command::Plan | Command::Check => Ok(()),
    }
}

/// How many pending migrations `up` must apply to reach `name` (0 when it is
/// already applied).
async fn steps_up_to(db: &DatabaseConnection, name: &str) -> Result<u32, DbErr> {
    known_migration(name)?;
    let pending = Migrator::get_pending_migrations(db).await?;
    Ok(pending
        .iter()
        .position(|m| m.name() == name)
        .map_or(0, |i| i as u32 + 1))
}

/// How many applied migrations `down` must roll back to undo `name` (0 when
/// it is not applied).
async fn steps_down_to(db: &DatabaseConnection, name: &str) -> Result<u32, DbErr> {
    known_migration(name)?;
    let applied = Migrator::get_applied_migrations(db).await?;
    Ok(applied
        .iter()
        .rev()
        .position(|m| m.name() == name)
        .map_or(0, |i| i as u32 + 1))
}

fn known_migration(name: &str) -> Result<(), DbErr> {
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    if names.iter().any(|n| n == name) {
        Ok(())
    } else {
        Err(DbErr::Custom(format!(
            "no migration named {name:?}; the migrations are: {}",
            names.join(", ")
        )))
    }
}

/// Prints the pending migrations and what each would run.
async fn plan(db: &DatabaseConnection) -> Result<ExitCode, DbErr> {
    let pending = Migrator::get_pending_migrations_read_only(db).await?;
    if pending.is_empty() {
        println!("nothing to do: every migration is applied");
        return Ok(ExitCode::SUCCESS);
    }
    for m in &pending {
        println!("-- {}", m.name());
        for line in migration::plan(db, m.name()).await? {
            println!("{line}");
        }
    }
    Ok(ExitCode::from(EXIT_PENDING))
}

/// Prints the schema drift of agent_runner_state, if any.
async fn check(db: &DatabaseConnection) -> Result<ExitCode, DbErr> {
    let dialect = Dialect::detect(db).await?;
    let live = catalog::read_table(db, TABLE).await?;
    let found = drift(dialect, live.as_ref());
    for note in &found.notes {
        println!("note: {note}");
    }
    if found.problems.is_empty() {
        println!("{TABLE}: no drift");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{TABLE}: {} difference(s) from the migrated schema:",
        found.problems.len()
    );
    for problem in &found.problems {
        println!("  {problem}");
    }
    Ok(ExitCode::from(EXIT_DRIFT))
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
