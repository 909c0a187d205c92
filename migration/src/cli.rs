//! The deploy binary's commands, as a library (`main.rs` only parses and
//! calls [`main`]).
//!
//! It follows sea-orm-migration's command set, but not `cli::run_cli`
//! itself: that panics when the server is unreachable, has no embedded
//! default database, and its `fresh` drops every table in the schema, which on
//! a database shared with LangBot is all of LangBot's data.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sea_orm_migration::sea_orm::{Database, DatabaseConnection, DatabaseExecutor, DbErr};
use service::connection::{
    CONNECT_TIMEOUT, ConnectError, DEFAULT_SQLITE_URL, DbUrl, Pooler, batch_connect_options, probe,
    read_only_connect_options, redact,
};

use crate::drift::drift;
use crate::history::{self, History};
use crate::lock::{LockError, MigrationLock, sqlite_file};
use crate::schema::{Dialect, TABLE};
use crate::{Migrator, MigratorTrait, catalog};
use service::logging::LogFormat;

/// Why a command failed; printed as one line by [`main`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The URL is unusable or the server cannot be reached.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The migration lock could not be had or was lost.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// `fresh`, `refresh` or `reset` beside tables this workspace does not own.
    #[error(
        "refusing `{command}`: the database also holds tables this workspace does not own ({tables}); \
         rerun with --force to roll back only this workspace's migrations and tables"
    )]
    ForeignTables {
        /// The command refused.
        command: &'static str,
        /// The other tables.
        tables: String,
    },
    /// `--to` names no migration.
    #[error("no migration named {name:?}; the migrations are: {known}")]
    UnknownMigration {
        /// The name given.
        name: String,
        /// Every migration's name.
        known: String,
    },
    /// A newer release's migrations are in the way.
    #[error(transparent)]
    Ahead(#[from] crate::history::AheadError),
    /// The connection to the server was lost and it did not come back in
    /// time (`--wait-for-db`).
    #[error(
        "{}; what was committed stays, and rerunning `migration up` resumes where this run \
         stopped (--wait-for-db N waits for a server that comes back)",
        crate::failure::describe_lost(.0)
    )]
    ConnectionLost(#[source] DbErr),
    /// The server stopped answering long enough for the lease to be lost,
    /// and did not come back in time (`--wait-for-db`).
    #[error(
        "the database server stopped answering, and this run stopped before its migration lock's \
         lease ran out; what was committed stays, and rerunning `migration up` resumes where \
         this run stopped (--wait-for-db N waits for a server that comes back)"
    )]
    ServerGone(#[source] ConnectError),
    /// The database failed.
    #[error("{}", crate::failure::describe(.0))]
    Db(#[source] DbErr),
}

impl From<DbErr> for MigrateError {
    fn from(e: DbErr) -> Self {
        if crate::lock::is_fence_failure(&e) {
            Self::Lock(LockError::Lost)
        } else if crate::failure::is_connection_lost(&e) {
            Self::ConnectionLost(e)
        } else {
            Self::Db(e)
        }
    }
}

impl MigrateError {
    /// The database error of a lost connection as [`Self::ConnectionLost`]
    /// (whichever layer it came through); other errors as they are.
    fn into_connection_lost(self) -> Self {
        match self {
            Self::Lock(LockError::Db(e))
            | Self::Db(e)
            | Self::Ahead(crate::history::AheadError::Db(e))
                if crate::failure::is_connection_lost(&e) =>
            {
                Self::ConnectionLost(e)
            }
            other => other,
        }
    }

    /// Whether rerunning the command once the server answers resumes it.
    fn is_connection_lost(&self) -> bool {
        match self {
            Self::ConnectionLost(_) => true,
            Self::Lock(LockError::Db(e)) | Self::Db(e) => crate::failure::is_connection_lost(e),
            Self::Ahead(crate::history::AheadError::Db(e)) => crate::failure::is_connection_lost(e),
            _ => false,
        }
    }
}

/// `e` and its causes on one line, up to the first database error, which
/// the line above it already described in words of our own.
fn error_line(e: &MigrateError) -> String {
    service::error_line_until(e, |cause| cause.is::<DbErr>())
}

/// Parses nothing: runs the parsed command line, prints any error as one
/// line (`error: ...`) and gives the exit code.
pub async fn main(cli: Cli) -> ExitCode {
    let format = cli.log_format;
    init_tracing(cli.verbose, format);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let line = error_line(&e);
            match format {
                LogFormat::Text => eprintln!("error: {line}"),
                LogFormat::Json => tracing::error!(error = %line, "the command failed"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Exit code of `status` (and `plan`) when migrations are pending.
const EXIT_PENDING: u8 = 3;

/// Exit code of `check` when the live schema differs.
const EXIT_DRIFT: u8 = 4;

/// The command line.
#[derive(Parser)]
#[command(
    name = "migration",
    version,
    about = "Create, adopt and migrate LangBot's agent_runner_state table",
    after_help = "Without DATABASE_URL or -u, uses the embedded SQLite file ./agent_runner_state.db.\n\
                  Exit codes: 0 success; 1 error; 2 usage error; 3 `status` or `plan` found pending\n\
                  migrations; 4 `check` found schema drift."
)]
pub struct Cli {
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

    /// How long the migration lock's lease lasts unless renewed (it is
    /// renewed every sixth of it): the longest a crashed migrator can block
    /// the next one.
    #[arg(
        long,
        env = "MIGRATION_LOCK_LEASE",
        default_value_t = crate::lock::DEFAULT_LEASE.as_secs_f64(),
        global = true
    )]
    lock_lease: f64,

    /// Rows per batch in the data migrations.
    #[arg(long, env = "MIGRATION_BATCH_SIZE", default_value_t = crate::settings::DEFAULT_BATCH_SIZE, global = true)]
    batch_size: u64,

    /// Show debug messages.
    #[arg(short = 'v', long, global = true)]
    verbose: bool,

    /// Log lines on stderr as `text` (colour only on a terminal, never with
    /// NO_COLOR) or `json` (one object per line).
    #[arg(
        long,
        env = "MIGRATION_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

/// The commands.
#[derive(Clone, Subcommand)]
pub enum Command {
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
    Status {
        /// `text`, or `json`: `{"applied": [names], "pending": [names]}`.
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Print the pending migrations and the statements they would run on
    /// this database, without running them; exits 3 when any is pending.
    Plan {
        /// `text`, or `json`: `{"pending": [{"name", "statements"}]}`.
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Compare the live agent_runner_state with the schema the migrations
    /// produce; exits 4 and prints the differences when they differ.
    Check {
        /// `text`, or `json`: `{"table", "drift": [{"kind", "object",
        /// "expected", "actual", "message"}], "notes": [...]}`.
        #[arg(long, value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Roll back every migration of this workspace, then apply them all.
    Fresh(Guard),
    /// Roll back every migration, then apply them all.
    Refresh(Guard),
    /// Roll back every migration and remove this workspace's history table.
    Reset(Guard),
    /// See or clear the migration lock by hand.
    Lock {
        /// What to do.
        #[command(subcommand)]
        action: LockAction,
    },
}

/// `migration lock ...`
#[derive(Clone, Subcommand)]
pub enum LockAction {
    /// Who holds the migration lock's lease, and until when.
    Status,
    /// Clear the lease of a migrator that is gone: only an expired lease,
    /// unless --force.
    Release {
        /// Clear a lease that has not expired (its holder may still run!).
        #[arg(long)]
        force: bool,
    },
}

/// The guard of the destructive commands.
#[derive(Clone, clap::Args)]
pub struct Guard {
    /// Proceed although the database holds tables this workspace does not own
    /// (LangBot's). Even then only this workspace's tables are dropped.
    #[arg(long)]
    force: bool,
}

/// Tables this workspace may create and drop. `agent_runner_state` is only
/// dropped when the migration created it; an adopted one is handed back.
const OWNED_TABLES: &[&str] = &[
    "seaql_migrations",
    crate::schema::TABLE,
    crate::m20261125_000001_create_agent_runner_state::ORIGIN_TABLE,
    crate::m20261125_000002_port_legacy_runner_blocks::BACKUP_TABLE,
    crate::m20261125_000003_rename_runner_ids::CONFIG_BACKUP_TABLE,
    crate::m20261125_000003_rename_runner_ids::RENAME_LOG_TABLE,
    crate::m20261125_000003_rename_runner_ids::CONFLICTS_TABLE,
    // Made by the lock every run holds; not dropped by `reset` (it is in use).
    crate::lock::LOCK_TABLE,
];

fn init_tracing(verbose: bool, format: LogFormat) {
    let default = if verbose {
        "debug"
    } else {
        // sqlx's own warnings (a failed check of a connection) are not
        // ours to print: what they mean reaches the user as our error.
        "info,sqlx=off,sea_orm=warn,sea_orm_migration=warn"
    };
    service::logging::init(format, default);
}

async fn run(cli: Cli) -> Result<ExitCode, MigrateError> {
    let url = match service::connection::given_url(cli.database_url) {
        Some(url) => url,
        None => {
            tracing::info!(
                "no DATABASE_URL or -u given: using embedded SQLite ./agent_runner_state.db"
            );
            DEFAULT_SQLITE_URL.to_owned()
        }
    };
    crate::settings::set_batch_size(cli.batch_size);
    let command = cli.command.unwrap_or(Command::Up {
        num: None,
        to: None,
    });
    let read_only = matches!(
        command,
        Command::Status { .. }
            | Command::Plan { .. }
            | Command::Check { .. }
            | Command::Lock { .. }
    );
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
    let connect_error = |source| MigrateError::Connect {
        url: redact(&url),
        source,
    };
    let pooler = DbUrl::parse(&url).map_err(connect_error)?.pooler();
    wait_for_server(&url, Duration::from_secs(cli.wait_for_db))
        .await
        .map_err(connect_error)?;
    let lease = Duration::from_secs_f64(cli.lock_lease.max(0.3));
    let mut options = if read_only {
        read_only_connect_options(&url)
    } else {
        batch_connect_options(&url)
    }
    .map_err(connect_error)?;
    if !url.starts_with("sqlite:") {
        crate::lock::session_limits(
            &mut options,
            &DbUrl::parse(&url).map_err(connect_error)?,
            lease,
        );
    }
    let db = Database::connect(options)
        .await
        .map_err(|e| MigrateError::Connect {
            url: redact(&url),
            source: ConnectError::Pool(e),
        })?;
    let result = match command {
        Command::Lock { action } => lock_command(&db, &url, pooler, action).await,
        command if read_only => in_session(&db, pooler, command).await,
        command => {
            let locking = Locking {
                url: &url,
                timeout: Duration::from_secs(cli.lock_timeout),
                lease,
                wait_for_db: Duration::from_secs(cli.wait_for_db),
            };
            change_resuming(&db, pooler, command, &locking).await
        }
    };
    // A server that went away does not hold the exit up.
    tokio::time::timeout(Duration::from_secs(5), db.close())
        .await
        .ok();
    result
}

/// How a changing command takes the lock and waits for the server.
struct Locking<'a> {
    url: &'a str,
    timeout: Duration,
    lease: Duration,
    wait_for_db: Duration,
}

/// Most times one run resumes after losing its connection.
const MAX_RESUMES: u32 = 20;

/// Runs a command that changes the schema under the migration lock. When
/// the connection to the server is lost mid-run (a restart, a failover, a
/// proxy or the server closing it), and the server answers again within
/// `--wait-for-db` (at once, without it), the command runs again from
/// where the database stands: every step is idempotent or was committed
/// whole. A lease lost meanwhile is taken again first. The run stops at
/// once when the lease is lost any other way.
async fn change_resuming(
    db: &DatabaseConnection,
    pooler: Pooler,
    command: Command,
    locking: &Locking<'_>,
) -> Result<ExitCode, MigrateError> {
    let mut lock = MigrationLock::acquire(locking.url, locking.timeout, locking.lease).await?;
    // `-n` counts from where the database stands: a rerun after a step
    // committed would count again. Under the lock, name the target instead.
    let command = match named_target(db, pooler, command).await {
        Ok(command) => command,
        Err(e) => {
            lock.release().await.ok();
            return Err(e);
        }
    };
    let mut resumes = 0;
    loop {
        let result = tokio::select! {
            result = in_session(db, pooler, command.clone()) => result,
            () = lock.lost() => Err(LockError::Lost.into()),
        };
        let lost_lease = matches!(result, Err(MigrateError::Lock(LockError::Lost)));
        // A lost connection resumes once the server answers; a lost lease
        // only when the operator asked to wait (the lock is taken again
        // first, behind whoever holds it now).
        let resumable = resumes < MAX_RESUMES
            && match &result {
                Err(e) => e.is_connection_lost() || (lost_lease && !locking.wait_for_db.is_zero()),
                Ok(_) => false,
            };
        if !resumable {
            let released = lock.release().await;
            if lost_lease && let Err(down) = probe_in_time(locking.url, CONNECT_TIMEOUT).await {
                // Lost for want of renewals while the server was away.
                return Err(MigrateError::ServerGone(down));
            }
            let code = result?;
            released?;
            return Ok(code);
        }
        let Err(e) = result else {
            unreachable!("resumable only on an error")
        };
        tracing::warn!("{}; waiting for the database server", error_line(&e));
        if let Err(down) = wait_for_server(locking.url, locking.wait_for_db).await {
            lock.release().await.ok();
            return Err(match e {
                MigrateError::Lock(LockError::Lost) => MigrateError::ServerGone(down),
                e => e.into_connection_lost(),
            });
        }
        resumes += 1;
        if lock.is_lost() {
            lock.release().await.ok();
            lock = MigrationLock::acquire(locking.url, locking.timeout, locking.lease).await?;
        }
        tracing::warn!("the database server answers again: resuming the run");
    }
}

/// Runs `command` on the connection; behind a transaction pooler, in one
/// transaction that drops its prepared statements before it ends (the work
/// itself runs in a savepoint, so that a failure can still drop them).
async fn in_session(
    db: &DatabaseConnection,
    pooler: Pooler,
    command: Command,
) -> Result<ExitCode, MigrateError> {
    if pooler != Pooler::Transaction {
        return dispatch(db.into(), command).await;
    }
    tracing::info!("through a transaction pooler: the command runs as one transaction");
    let session = service::connection::PooledSession::begin(db).await?;
    let result = dispatch(DatabaseExecutor::Transaction(session.work()), command).await;
    // The run is one transaction: its commit is fenced once.
    let result = match result {
        Ok(code) => crate::lock::fence_at_commit(session.work())
            .await
            .map(|()| code)
            .map_err(MigrateError::from),
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => {
            session.commit().await?;
            Ok(code)
        }
        Err(e) => {
            session.rollback().await.ok();
            Err(e)
        }
    }
}

async fn dispatch(db: DatabaseExecutor<'_>, command: Command) -> Result<ExitCode, MigrateError> {
    match command {
        Command::Status { .. } | Command::Plan { .. } | Command::Check { .. } => {
            report(db, command).await
        }
        command => change(db, command).await,
    }
}

/// The read-only commands.
async fn report(db: DatabaseExecutor<'_>, command: Command) -> Result<ExitCode, MigrateError> {
    match command {
        Command::Status { format } => status(&db, format).await,
        Command::Plan { format } => plan(&db, format).await,
        Command::Check { format } => check(&db, format).await,
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `migration lock status|release`.
async fn lock_command(
    db: &DatabaseConnection,
    url: &str,
    pooler: Pooler,
    action: LockAction,
) -> Result<ExitCode, MigrateError> {
    if sqlite_file(url).is_some() || url.starts_with("sqlite:") {
        println!(
            "SQLite: the migration lock is an OS lock on <database>.migration-lock; it is \
             released when its holder ends, and needs no clearing"
        );
        return Ok(ExitCode::SUCCESS);
    }
    match action {
        LockAction::Status => match crate::lock::read_lock(db, pooler).await? {
            None => println!("free: no migrator holds the lock"),
            Some(row) if row.remaining_ms > 0 => println!(
                "held by {} for {:.1}s; its lease ends in {:.1}s unless renewed",
                row.holder,
                row.held_for_ms as f64 / 1000.0,
                row.remaining_ms as f64 / 1000.0
            ),
            Some(row) => println!(
                "expired: {} took it {:.1}s ago and stopped renewing {:.1}s ago; the next \
                 migrator takes it over",
                row.holder,
                row.held_for_ms as f64 / 1000.0,
                -row.remaining_ms as f64 / 1000.0
            ),
        },
        LockAction::Release { force } => match crate::lock::clear(db, pooler, force).await? {
            None => println!("free: nothing to release"),
            Some(row) => println!("released the lock of {}", row.holder),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// The commands that change the schema; run under the migration lock.
async fn change(db: DatabaseExecutor<'_>, command: Command) -> Result<ExitCode, MigrateError> {
    if matches!(
        command,
        Command::Fresh(_) | Command::Refresh(_) | Command::Reset(_)
    ) {
        history::refuse_under_newer(&History::read(&db).await?)?;
    }
    match command {
        Command::Up { num, to: None } => history::up(&db, num).await?,
        Command::Up { to: Some(name), .. } => match steps_up_to(&db, &name).await? {
            0 => tracing::info!("{name} is already applied: nothing to do"),
            steps => history::up(&db, Some(steps)).await?,
        },
        Command::Down { num, to: None } => history::down(&db, num).await?,
        Command::Down { to: Some(name), .. } => match steps_down_to(&db, &name).await? {
            0 => tracing::info!("{name} is not applied: nothing to roll back"),
            steps => history::down(&db, steps).await?,
        },
        Command::Fresh(guard) => {
            guard_foreign_tables(&db, &guard, "fresh").await?;
            history::down(&db, u32::MAX).await?;
            Migrator::uninstall(history::reborrow(&db)).await?;
            history::up(&db, None).await?;
        }
        Command::Refresh(guard) => {
            guard_foreign_tables(&db, &guard, "refresh").await?;
            history::down(&db, u32::MAX).await?;
            history::up(&db, None).await?;
        }
        Command::Reset(guard) => {
            guard_foreign_tables(&db, &guard, "reset").await?;
            history::down(&db, u32::MAX).await?;
            Migrator::uninstall(db).await?;
        }
        Command::Status { .. }
        | Command::Plan { .. }
        | Command::Check { .. }
        | Command::Lock { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// How many pending migrations `up` must apply to reach `name` (0 when it is
/// already applied).
async fn steps_up_to(db: &DatabaseExecutor<'_>, name: &str) -> Result<u32, MigrateError> {
    known_migration(name)?;
    let pending = History::read(db).await?.pending;
    Ok(pending
        .iter()
        .position(|m| m == name)
        .map_or(0, |i| i as u32 + 1))
}

/// How many applied migrations `down` must roll back to undo `name` (0 when
/// it is not applied).
async fn steps_down_to(db: &DatabaseExecutor<'_>, name: &str) -> Result<u32, MigrateError> {
    known_migration(name)?;
    let history = History::read(db).await?;
    history::refuse_under_newer(&history)?;
    Ok(history
        .applied
        .iter()
        .rev()
        .position(|m| m == name)
        .map_or(0, |i| i as u32 + 1))
}

fn known_migration(name: &str) -> Result<(), MigrateError> {
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    if names.iter().any(|n| n == name) {
        Ok(())
    } else {
        Err(MigrateError::UnknownMigration {
            name: name.to_owned(),
            known: names.join(", "),
        })
    }
}

/// Prints the pending migrations and what each would run.
async fn plan(db: &DatabaseExecutor<'_>, format: OutputFormat) -> Result<ExitCode, MigrateError> {
    let pending = History::read(db).await?.pending;
    let mut planned = Vec::new();
    for name in &pending {
        planned.push((name.clone(), crate::plan(db, name).await?));
    }
    match format {
        OutputFormat::Json => print_json(&serde_json::json!({
            "pending": planned
                .iter()
                .map(|(name, lines)| serde_json::json!({"name": name, "statements": lines}))
                .collect::<Vec<_>>(),
        })),
        OutputFormat::Text if planned.is_empty() => {
            println!("nothing to do: every migration is applied");
        }
        OutputFormat::Text => {
            for (name, lines) in &planned {
                println!("-- {name}");
                for line in lines {
                    println!("{line}");
                }
            }
        }
    }
    Ok(if planned.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PENDING)
    })
}

/// Prints the schema drift of agent_runner_state, if any.
async fn check(db: &DatabaseExecutor<'_>, format: OutputFormat) -> Result<ExitCode, MigrateError> {
    let dialect = Dialect::detect(db).await?;
    let live = catalog::read_table(db, TABLE).await?;
    let found = drift(dialect, live.as_ref());
    let code = if found.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DRIFT)
    };
    if format == OutputFormat::Json {
        print_json(&serde_json::json!({
            "table": TABLE,
            "drift": found.problems,
            "notes": found.notes,
        }));
        return Ok(code);
    }
    for note in &found.notes {
        println!("note: {note}");
    }
    if found.problems.is_empty() {
        println!("{TABLE}: no drift");
        return Ok(code);
    }
    println!(
        "{TABLE}: {} difference(s) from the migrated schema:",
        found.problems.len()
    );
    for problem in &found.problems {
        println!("  {problem}");
    }
    Ok(code)
}

/// Tries a plain connection, with backoff until `patience` runs out, so that
/// the error names the cause (refused, bad password...) rather than a pool
/// timeout.
async fn wait_for_server(url: &str, patience: Duration) -> Result<(), ConnectError> {
    let deadline = Instant::now() + patience;
    let mut delay = Duration::from_millis(250);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match probe_in_time(url, CONNECT_TIMEOUT.min(left.max(Duration::from_secs(1)))).await {
            Ok(()) => return Ok(()),
            // Waiting cannot mend a URL or a TLS setting.
            Err(
                e @ (ConnectError::BadUrl(_)
                | ConnectError::UnsupportedScheme(_)
                | ConnectError::BadPooler(_)
                | ConnectError::Tls(_)
                | ConnectError::TlsRequired(_)),
            ) => return Err(e),
            Err(cause) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(cause);
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

/// [`probe`] with a deadline: a server that does not answer at all (a
/// black-holed route) counts as unreachable once it passes.
async fn probe_in_time(url: &str, deadline: Duration) -> Result<(), ConnectError> {
    match tokio::time::timeout(deadline, probe(url)).await {
        Ok(probed) => probed,
        Err(_) => Err(ConnectError::Driver(
            sea_orm_migration::sea_orm::sqlx::Error::PoolTimedOut,
        )),
    }
}

/// `up -n N` and `down -n N` as `--to <name>`, read from the history under
/// the lock, so that a run resumed after a lost connection stops where the
/// first one was asked to. Other commands as they are.
async fn named_target(
    db: &DatabaseConnection,
    pooler: Pooler,
    command: Command,
) -> Result<Command, MigrateError> {
    let needs_history = matches!(
        command,
        Command::Up {
            num: Some(_),
            to: None
        } | Command::Down { to: None, .. }
    );
    if !needs_history {
        return Ok(command);
    }
    let history = if pooler == Pooler::Transaction {
        let session = service::connection::PooledSession::begin(db).await?;
        let read = History::read(session.work()).await;
        session.commit().await?;
        read?
    } else {
        History::read(db).await?
    };
    Ok(match command {
        Command::Up { num: Some(0), .. } => command,
        Command::Up { num: Some(n), .. } => match history.pending.get(n as usize - 1) {
            Some(name) => Command::Up {
                num: None,
                to: Some(name.clone()),
            },
            None => Command::Up {
                num: None,
                to: None,
            },
        },
        Command::Down { num, .. } if num > 0 && !history.applied.is_empty() => {
            let first = history.applied.len().saturating_sub(num as usize);
            Command::Down {
                num,
                to: Some(history.applied[first].clone()),
            }
        }
        command => command,
    })
}

/// Prints each migration and whether it is applied; never writes (no
/// history table is created by asking).
async fn status(db: &DatabaseExecutor<'_>, format: OutputFormat) -> Result<ExitCode, MigrateError> {
    let History {
        applied,
        pending,
        ahead,
    } = History::read(db).await?;
    match format {
        OutputFormat::Json => print_json(&serde_json::json!({
            "applied": applied,
            "pending": pending,
            "ahead": ahead,
        })),
        OutputFormat::Text => {
            for name in crate::history::names() {
                let status = if applied.contains(&name) {
                    "Applied"
                } else {
                    "Pending"
                };
                println!("{status:<8} {name}");
            }
            for name in &ahead {
                println!("Applied  {name} (by a newer release; this binary does not have it)");
            }
            if ahead.is_empty() {
                println!("{} applied, {} pending", applied.len(), pending.len());
            } else {
                println!(
                    "{} applied, {} pending, {} applied by a newer release",
                    applied.len(),
                    pending.len(),
                    ahead.len()
                );
            }
        }
    }
    Ok(if pending.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PENDING)
    })
}

/// The output of `status`, `plan` and `check`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// `fresh`, `refresh` and `reset` roll back this workspace's migrations;
/// next to other tables (LangBot's), they want `--force` to say so.
async fn guard_foreign_tables(
    db: &DatabaseExecutor<'_>,
    guard: &Guard,
    command: &'static str,
) -> Result<(), MigrateError> {
    let foreign: Vec<String> = catalog::table_names(db)
        .await?
        .into_iter()
        .filter(|t| !OWNED_TABLES.contains(&t.as_str()))
        .collect();
    if foreign.is_empty() || guard.force {
        return Ok(());
    }
    Err(MigrateError::ForeignTables {
        command,
        tables: foreign.join(", "),
    })
}
