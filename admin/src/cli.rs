//! The `state-admin` command line: options, and printing around
//! [`service::admin`], which does the work. `main.rs` only parses.
//!
//! Same URL rules as the migration binary: `-u`, else `DATABASE_URL`, else
//! the embedded SQLite file `./agent_runner_state.db` (which must exist:
//! inspecting never creates a database).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait};
use serde_json::json;
use service::admin::transfer::{self, TransferError};
use service::admin::{AdminError, Filter};
use service::connection::{ConnectError, DbUrl, PooledSession, Pooler};
use service::{
    Actor, Binding, Event, IdentityColumns, Scope, StateContext, StateError, StateStore, Subject,
};

/// What the commands run on: the pool, or (behind a transaction pooler) one
/// transaction.
trait Db: ConnectionTrait + TransactionTrait + 'static {}
impl<T: ConnectionTrait + TransactionTrait + 'static> Db for T {}

/// Why a command failed; printed as one line, causes included, by [`main`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Options that do not make a command.
    #[error("{0}")]
    Usage(&'static str),
    /// No `-u`, no `DATABASE_URL`, and no default file to inspect.
    #[error(
        "no DATABASE_URL or -u given, and no ./{} here",
        service::connection::DEFAULT_SQLITE_FILE
    )]
    NoDatabase,
    /// The URL is unusable or the server cannot be reached.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// `copy` through a transaction pooler (it commits per batch).
    #[error("copy needs a direct URL, not one through a transaction pooler: {url}")]
    CopyThroughPooler {
        /// The URL, without its password.
        url: String,
    },
    /// `get` found no value.
    #[error("no value for key {0:?}")]
    NoValue(String),
    /// Writing to stdout failed.
    #[error("write")]
    Write(#[from] std::io::Error),
    /// Stats, list, export or purge failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// Import or copy failed (boxed: it is much larger than the others).
    #[error(transparent)]
    Transfer(Box<TransferError>),
    /// The state store refused or failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The database failed.
    #[error("database error")]
    Db(#[from] DbErr),
}

impl From<TransferError> for CliError {
    fn from(e: TransferError) -> Self {
        Self::Transfer(Box::new(e))
    }
}

/// The command line.
#[derive(Parser)]
#[command(
    name = "state-admin",
    version,
    about = "Inspect, export and purge LangBot's agent runner state",
    after_help = "Without DATABASE_URL or -u, uses the SQLite file ./agent_runner_state.db.\n\
                  Exit codes: 0 success; 1 error; 2 usage error."
)]
pub struct Cli {
    /// Database URL (postgres://, mysql://, sqlite://).
    #[arg(short = 'u', long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,

    /// Log lines on stderr as `text` (colour only on a terminal, never with
    /// NO_COLOR) or `json` (one object per line).
    #[arg(
        long,
        env = "STATE_ADMIN_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: service::logging::LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Rows and value bytes per runner and per scope.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rows matching the filters, one per line (no values).
    List(Filter),
    /// Rows matching the filters as JSON lines: the stored text and the
    /// decoded value.
    Export(Filter),
    /// Read `export` lines on stdin and write the rows, all or nothing;
    /// rows already there unchanged are skipped.
    Import {
        /// Replace rows that exist with other columns (else: refuse, write
        /// nothing).
        #[arg(long)]
        overwrite: bool,
    },
    /// Copy every row from one database to another (export | import), then
    /// verify row count and digest on both sides. The target must be
    /// migrated (`migration up`).
    Copy {
        /// Source database URL.
        #[arg(long)]
        from: String,
        /// Target database URL.
        #[arg(long)]
        to: String,
        /// Replace rows that exist in the target with other columns.
        #[arg(long)]
        overwrite: bool,
    },
    /// One value, by scope key and state key, or by identity.
    Get(GetArgs),
    /// The binding identity and every scope key of an identity: why does a
    /// runner not see its state?
    ScopeKey(IdentityArgs),
    /// Delete the rows of an actor, a conversation, a runner or a binding.
    /// A dry run unless --yes is given.
    Purge(PurgeArgs),
}

/// An event's identity, as the run API gets it.
#[derive(Args)]
pub struct IdentityArgs {
    /// Runner id (required).
    #[arg(long)]
    runner: Option<String>,
    /// The binding's id.
    #[arg(long)]
    binding_id: Option<String>,
    /// The binding's scope type (with --binding-scope-id when no --binding-id).
    #[arg(long)]
    binding_scope_type: Option<String>,
    /// The binding's scope id.
    #[arg(long)]
    binding_scope_id: Option<String>,
    /// Event: bot id.
    #[arg(long)]
    bot: Option<String>,
    /// Event: workspace id.
    #[arg(long)]
    workspace: Option<String>,
    /// Event: conversation id.
    #[arg(long)]
    conversation: Option<String>,
    /// Event: thread id.
    #[arg(long)]
    thread: Option<String>,
    /// Event: actor type (`user` when absent).
    #[arg(long)]
    actor_type: Option<String>,
    /// Event: actor id.
    #[arg(long)]
    actor_id: Option<String>,
    /// Event: subject type (`unknown` when absent).
    #[arg(long)]
    subject_type: Option<String>,
    /// Event: subject id.
    #[arg(long)]
    subject_id: Option<String>,
}

impl IdentityArgs {
    fn context(&self) -> Result<StateContext, CliError> {
        let runner = self
            .runner
            .as_deref()
            .ok_or(CliError::Usage("--runner is required"))?;
        let binding = Binding {
            binding_id: self.binding_id.clone(),
            scope_type: self.binding_scope_type.clone(),
            scope_id: self.binding_scope_id.clone(),
        };
        let actor = (self.actor_type.is_some() || self.actor_id.is_some()).then(|| Actor {
            actor_type: self.actor_type.clone(),
            actor_id: self.actor_id.clone(),
        });
        let subject = (self.subject_type.is_some() || self.subject_id.is_some()).then(|| Subject {
            subject_type: self.subject_type.clone(),
            subject_id: self.subject_id.clone(),
        });
        let event = Event {
            bot_id: self.bot.clone(),
            workspace_id: self.workspace.clone(),
            conversation_id: self.conversation.clone(),
            thread_id: self.thread.clone(),
            actor,
            subject,
        };
        Ok(StateContext::new(IdentityColumns::from_event(
            runner, &binding, &event,
        )))
    }
}

/// `get`: which value.
#[derive(Args)]
pub struct GetArgs {
    /// The state key.
    #[arg(long)]
    key: String,
    /// A raw scope key (else give --scope and the identity).
    #[arg(long, conflicts_with = "scope")]
    scope_key: Option<String>,
    /// The scope, with the identity below.
    #[arg(long)]
    scope: Option<Scope>,
    #[command(flatten)]
    identity: IdentityArgs,
}

/// `purge`: which rows, and whether for real.
#[derive(Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    filter: Filter,
    /// Delete for real, in one transaction (default: a dry run).
    #[arg(long)]
    yes: bool,
}

/// Runs the parsed command line, prints any error as one line (`error:
/// ...` with its causes) and gives the exit code.
pub async fn main(cli: Cli) -> ExitCode {
    let format = cli.log_format;
    service::logging::init(format, "warn");
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            service::logging::report_failure(format, &e);
            match e {
                // As clap exits on options it cannot parse.
                CliError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::ScopeKey(identity) => print_scope_keys(&identity),
        Command::Copy {
            from,
            to,
            overwrite,
        } => copy(&from, &to, overwrite).await,
        command => {
            let url = match service::connection::given_url(cli.database_url) {
                Some(url) => url,
                None if std::path::Path::new(service::connection::DEFAULT_SQLITE_FILE).exists() => {
                    service::connection::DEFAULT_SQLITE_URL_EXISTING.to_owned()
                }
                None => return Err(CliError::NoDatabase),
            };
            let (db, pooler) = open(&url).await?;
            let result = if pooler == Pooler::Transaction {
                // Through a transaction pooler, the whole command is one
                // transaction that drops its prepared statements before it
                // ends; the work runs in a savepoint, so that a failure can
                // still drop them.
                let session = PooledSession::begin(&db).await?;
                match execute(session.work(), command).await {
                    Ok(()) => session.commit().await.map_err(CliError::from),
                    Err(e) => {
                        session.rollback().await.ok();
                        Err(e)
                    }
                }
            } else {
                execute(&db, command).await
            };
            db.close().await.ok();
            result
        }
    }
}

async fn execute<C: Db>(db: &C, command: Command) -> Result<(), CliError> {
    match command {
        Command::Stats { json } => stats(db, json).await,
        Command::List(filter) => list(db, &filter, false).await,
        Command::Export(filter) => list(db, &filter, true).await,
        Command::Get(args) => get(db, &args).await,
        Command::Purge(args) => purge(db, &args).await,
        Command::Import { overwrite } => {
            let summary = transfer::import(db, std::io::stdin().lock(), overwrite).await?;
            println!("{}", json!(summary));
            Ok(())
        }
        Command::ScopeKey(_) | Command::Copy { .. } => {
            unreachable!("run() handles the commands without one database")
        }
    }
}

/// Checks `url`, asks the server why it cannot be reached (a pool only says
/// it timed out), and connects: every command's way in.
async fn open(url: &str) -> Result<(DatabaseConnection, Pooler), CliError> {
    let fail = |source| CliError::Connect {
        url: service::connection::redact(url),
        source,
    };
    let pooler = DbUrl::parse(url).map_err(fail)?.pooler();
    service::connection::probe(url).await.map_err(fail)?;
    let db = service::connection::connect(url)
        .await
        .map_err(|e| fail(ConnectError::Pool(e)))?;
    Ok((db, pooler))
}

/// `state-admin copy`: both ends reached as any command reaches its one.
async fn copy(from: &str, to: &str, overwrite: bool) -> Result<(), CliError> {
    for url in [from, to] {
        if let Ok(u) = DbUrl::parse(url)
            && u.pooler() == Pooler::Transaction
        {
            return Err(CliError::CopyThroughPooler { url: u.redacted() });
        }
    }
    let (source, target) = (open(from).await?.0, open(to).await?.0);
    let result = transfer::copy(&source, &target, overwrite).await;
    source.close().await.ok();
    target.close().await.ok();
    println!("{}", json!(result?));
    Ok(())
}

fn print_scope_keys(identity: &IdentityArgs) -> Result<(), CliError> {
    let ctx = identity.context()?;
    println!("binding_identity\t{}", ctx.columns().binding_identity);
    for scope in Scope::ALL {
        match ctx.scope_key(scope) {
            Some(key) => println!("{scope}\t{key}"),
            None => println!("{scope}\t(no identity for this scope)"),
        }
    }
    Ok(())
}

async fn stats<C: Db>(db: &C, as_json: bool) -> Result<(), CliError> {
    let stats = service::admin::stats(db).await?;
    if as_json {
        println!("{}", stats.to_json());
        return Ok(());
    }
    for (section, groups) in [
        ("by_runner_id", &stats.by_runner_id),
        ("by_scope", &stats.by_scope),
    ] {
        println!("{section}:");
        for g in groups {
            println!(
                "  {:<60} {:>10} rows {:>14} bytes",
                g.name, g.rows, g.value_bytes
            );
        }
    }
    Ok(())
}

async fn list<C: Db>(db: &C, filter: &Filter, export: bool) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if !export {
        writeln!(
            out,
            "id\trunner_id\tbinding_identity\tscope\tstate_key\tvalue_bytes\tupdated_at"
        )?;
    }
    service::admin::for_each_row(db, filter, |row| -> Result<(), CliError> {
        if export {
            writeln!(out, "{}", service::admin::export_line(row))?;
        } else {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                row.id,
                row.runner_id,
                row.binding_identity,
                row.scope,
                row.state_key,
                row.value_json.as_ref().map_or(0, String::len),
                row.updated_at
            )?;
        }
        Ok(())
    })
    .await?;
    out.flush()?;
    Ok(())
}

async fn get<C: Db>(db: &C, args: &GetArgs) -> Result<(), CliError> {
    let store = StateStore::new(db);
    let value = match (&args.scope_key, args.scope) {
        (Some(scope_key), _) => store.get_by_scope_key(scope_key, &args.key).await?,
        (None, Some(scope)) => {
            store
                .get(&args.identity.context()?, scope, &args.key)
                .await?
        }
        (None, None) => {
            return Err(CliError::Usage(
                "give --scope-key, or --scope with the identity (--runner ...)",
            ));
        }
    };
    match value {
        Some(v) => println!("{v}"),
        None => return Err(CliError::NoValue(args.key.clone())),
    }
    Ok(())
}

async fn purge<C: Db>(db: &C, args: &PurgeArgs) -> Result<(), CliError> {
    let report = service::admin::purge(db, &args.filter, args.yes).await?;
    let verb = if report.deleted {
        "deleting"
    } else {
        "would delete"
    };
    println!("{verb} {} row(s):", report.total);
    for g in &report.groups {
        println!("  {}\t{}\t{}", g.runner_id, g.scope, g.rows);
    }
    if report.deleted {
        println!("deleted {} row(s)", report.total);
    } else {
        println!("dry run: nothing deleted; rerun with --yes to delete");
    }
    Ok(())
}
