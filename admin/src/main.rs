//! `state-admin`: what operators of a LangBot install need without writing
//! SQL against production: what a runner stores, one user's data, one
//! conversation's memory, and deleting them.
//!
//! Rows written by LangBot's Python code and by the Rust service are treated
//! alike. Same URL rules as the migration binary: `-u`, else `DATABASE_URL`,
//! else the embedded SQLite file `./agent_runner_state.db` (which must exist:
//! inspecting never creates a database).

mod filter;
mod transfer;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use entity::agent_runner_state::{COLUMN, Column, Entity, Model};
use filter::Filter;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionSession, TransactionTrait,
};
use serde_json::{Value, json};
use service::connection::{DbUrl, PooledSession, Pooler};
use service::{Actor, Binding, Event, IdentityColumns, Scope, StateContext, StateStore, Subject};

/// What the commands run on: the pool, or (behind a transaction pooler) one
/// transaction.
trait Db: ConnectionTrait + TransactionTrait + 'static {}
impl<T: ConnectionTrait + TransactionTrait + 'static> Db for T {}

/// Rows fetched per round trip when streaming.
const PAGE: u64 = 500;

#[derive(Parser)]
#[command(
    name = "state-admin",
    version,
    about = "Inspect, export and purge LangBot's agent runner state",
    after_help = "Without DATABASE_URL or -u, uses the SQLite file ./agent_runner_state.db.\n\
                  Exit codes: 0 success; 1 error; 2 usage error."
)]
struct Cli {
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

#[derive(Subcommand)]
enum Command {
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

#[derive(Args)]
struct IdentityArgs {
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
    fn context(&self) -> Result<StateContext, String> {
        let runner = self.runner.as_deref().ok_or("--runner is required")?;
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

#[derive(Args)]
struct GetArgs {
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

#[derive(Args)]
struct PurgeArgs {
    #[command(flatten)]
    filter: Filter,
    /// Delete for real, in one transaction (default: a dry run).
    #[arg(long)]
    yes: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    service::logging::init(format, "warn");
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            match format {
                service::logging::LogFormat::Text => eprintln!("error: {message}"),
                service::logging::LogFormat::Json => {
                    tracing::error!(error = %message, "the command failed");
                }
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Command::ScopeKey(identity) = &cli.command {
        return print_scope_keys(identity);
    }
    if let Command::Copy {
        from,
        to,
        overwrite,
    } = &cli.command
    {
        return copy(from, to, *overwrite).await;
    }
    let url = match cli.database_url.filter(|u| !u.trim().is_empty()) {
        Some(url) => url,
        None => {
            if !std::path::Path::new("agent_runner_state.db").exists() {
                return Err(
                    "no DATABASE_URL or -u given, and no ./agent_runner_state.db here".into(),
                );
            }
            "sqlite://agent_runner_state.db?mode=rw".to_owned()
        }
    };
    let (db, pooler) = open(&url).await?;
    let result = if pooler == Pooler::Transaction {
        // Through a transaction pooler, the whole command is one transaction
        // that drops its prepared statements before it ends; the work runs in
        // a savepoint, so that a failure can still drop them.
        let session = PooledSession::begin(&db).await.map_err(db_err)?;
        match execute(session.work(), cli.command).await {
            Ok(()) => session.commit().await.map_err(db_err),
            Err(e) => {
                session.rollback().await.ok();
                Err(e)
            }
        }
    } else {
        execute(&db, cli.command).await
    };
    db.close().await.ok();
    result
}

async fn execute<C: Db>(db: &C, command: Command) -> Result<(), String> {
    match command {
        Command::Stats { json } => stats(db, json).await,
        Command::List(filter) => list(db, &filter, false).await,
        Command::Export(filter) => list(db, &filter, true).await,
        Command::Get(args) => get(db, &args).await,
        Command::Purge(args) => purge(db, &args).await,
        Command::Import { overwrite } => {
            let summary = transfer::import(db, std::io::stdin().lock(), overwrite)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", json!(summary));
            Ok(())
        }
        Command::ScopeKey(_) | Command::Copy { .. } => Ok(()),
    }
}

/// Checks `url`, asks the server why it cannot be reached (a pool only says
/// it timed out), and connects: every command's way in.
async fn open(url: &str) -> Result<(DatabaseConnection, Pooler), String> {
    let fail = |cause: String| {
        format!(
            "cannot connect to {}: {cause}",
            service::connection::redact(url)
        )
    };
    let pooler = DbUrl::parse(url).map_err(|e| fail(e.to_string()))?.pooler();
    service::connection::probe(url)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let db = service::connection::connect(url)
        .await
        .map_err(|e| fail(db_err(e)))?;
    Ok((db, pooler))
}

/// `state-admin copy`: both ends reached as any command reaches its one.
async fn copy(from: &str, to: &str, overwrite: bool) -> Result<(), String> {
    let direct = |url: &str| match DbUrl::parse(url) {
        Ok(u) if u.pooler() == Pooler::Transaction => Err(format!(
            "copy needs a direct URL, not one through a transaction pooler: {}",
            u.redacted()
        )),
        _ => Ok(()),
    };
    direct(from)?;
    direct(to)?;
    let (source, target) = (open(from).await?.0, open(to).await?.0);
    let result = transfer::copy(&source, &target, overwrite).await;
    source.close().await.ok();
    target.close().await.ok();
    let summary = result.map_err(|e| e.to_string())?;
    println!("{}", json!(summary));
    Ok(())
}

fn db_err(e: DbErr) -> String {
    e.to_string().replace('\n', " ")
}

fn print_scope_keys(identity: &IdentityArgs) -> Result<(), String> {
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

async fn stats<C: Db>(db: &C, as_json: bool) -> Result<(), String> {
    // Bytes of UTF-8, as a 64-bit integer on every backend.
    let bytes = match db.get_database_backend() {
        DbBackend::Postgres => "CAST(COALESCE(SUM(octet_length(value_json)), 0) AS BIGINT)",
        DbBackend::MySql => "CAST(COALESCE(SUM(LENGTH(value_json)), 0) AS SIGNED)",
        _ => "COALESCE(SUM(length(CAST(value_json AS BLOB))), 0)",
    };
    let mut report = serde_json::Map::new();
    for group in ["runner_id", "scope"] {
        let sql = format!(
            "SELECT {group}, COUNT(*), {bytes} FROM agent_runner_state \
             GROUP BY {group} ORDER BY {group}"
        );
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .map_err(db_err)?;
        let mut entries = Vec::new();
        for r in rows {
            let name: String = r.try_get_by_index(0).map_err(db_err)?;
            let count: i64 = r.try_get_by_index(1).map_err(db_err)?;
            let total: i64 = r.try_get_by_index(2).map_err(db_err)?;
            entries.push(json!({group: name, "rows": count, "value_bytes": total}));
        }
        report.insert(format!("by_{group}"), Value::Array(entries));
    }
    if as_json {
        println!("{}", Value::Object(report));
        return Ok(());
    }
    for (section, entries) in &report {
        println!("{section}:");
        for e in entries.as_array().into_iter().flatten() {
            let name = e
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)
                .unwrap_or("");
            println!(
                "  {name:<60} {:>10} rows {:>14} bytes",
                e["rows"], e["value_bytes"]
            );
        }
    }
    Ok(())
}

/// Streams the matching rows in id order, a page at a time.
async fn for_each_row<C: Db, F>(db: &C, filter: &Filter, mut f: F) -> Result<u64, String>
where
    F: FnMut(&Model) -> Result<(), String>,
{
    let mut last_id = 0;
    let mut seen = 0;
    loop {
        let page = filter
            .select()
            .filter(COLUMN.id.gt(last_id))
            .order_by_asc(Column::Id)
            .limit(PAGE)
            .all(db)
            .await
            .map_err(db_err)?;
        let Some(last) = page.last() else {
            return Ok(seen);
        };
        last_id = last.id;
        for row in &page {
            f(row)?;
            seen += 1;
        }
    }
}

fn write_line(out: &mut impl Write, line: &str) -> Result<(), String> {
    writeln!(out, "{line}").map_err(|e| format!("write: {e}"))
}

async fn list<C: Db>(db: &C, filter: &Filter, export: bool) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if !export {
        write_line(
            &mut out,
            "id\trunner_id\tbinding_identity\tscope\tstate_key\tvalue_bytes\tupdated_at",
        )?;
    }
    for_each_row(db, filter, |row| {
        let line = if export {
            export_line(row).to_string()
        } else {
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                row.id,
                row.runner_id,
                row.binding_identity,
                row.scope,
                row.state_key,
                row.value_json.as_ref().map_or(0, String::len),
                row.updated_at
            )
        };
        write_line(&mut out, &line)
    })
    .await?;
    out.flush().map_err(|e| format!("write: {e}"))
}

/// A row as one JSON object: the stored text unchanged in `value_json` (a
/// faithful backup), and beside it the decoded `value`, or `value_error` when
/// the text cannot be read as a JSON value (not JSON, `NaN`, an integer beyond
/// 64 bits).
fn export_line(row: &Model) -> Value {
    let (value, value_error) = match row.value_json.as_deref().map(service::value::decode) {
        None => (Value::Null, None),
        Some(Ok(v)) => (v, None),
        Some(Err(e)) => (Value::Null, Some(e.to_string())),
    };
    let mut line = json!({
        "id": row.id,
        "runner_id": row.runner_id,
        "binding_identity": row.binding_identity,
        "scope": row.scope,
        "scope_key": row.scope_key,
        "state_key": row.state_key,
        "value_json": row.value_json,
        "value": value,
        "bot_id": row.bot_id,
        "workspace_id": row.workspace_id,
        "conversation_id": row.conversation_id,
        "thread_id": row.thread_id,
        "actor_type": row.actor_type,
        "actor_id": row.actor_id,
        "subject_type": row.subject_type,
        "subject_id": row.subject_id,
        "created_at": row.created_at.to_string(),
        "updated_at": row.updated_at.to_string(),
    });
    if let Some(error) = value_error {
        line["value_error"] = json!(error);
    }
    line
}

async fn get<C: Db>(db: &C, args: &GetArgs) -> Result<(), String> {
    let store = StateStore::new(db);
    let value = match (&args.scope_key, args.scope) {
        (Some(scope_key), _) => store.get_by_scope_key(scope_key, &args.key).await,
        (None, Some(scope)) => store.get(&args.identity.context()?, scope, &args.key).await,
        (None, None) => {
            return Err("give --scope-key, or --scope with the identity (--runner ...)".into());
        }
    }
    .map_err(|e| e.to_string())?;
    match value {
        Some(v) => println!("{v}"),
        None => return Err(format!("no value for key {:?}", args.key)),
    }
    Ok(())
}

async fn purge<C: Db>(db: &C, args: &PurgeArgs) -> Result<(), String> {
    let f = &args.filter;
    if f.actor_id.is_none() && f.conversation.is_none() && f.runner.is_none() && f.binding.is_none()
    {
        return Err(
            "purge needs --actor-id, --conversation, --runner or --binding (other filters narrow it)"
                .into(),
        );
    }
    let txn = db.begin().await.map_err(db_err)?;
    let counts: Vec<(String, String, i64)> = f
        .select()
        .select_only()
        .column(Column::RunnerId)
        .column(Column::Scope)
        .column_as(COLUMN.id.count(), "rows")
        .group_by(Column::RunnerId)
        .group_by(Column::Scope)
        .order_by_asc(Column::RunnerId)
        .order_by_asc(Column::Scope)
        .into_tuple()
        .all(&txn)
        .await
        .map_err(db_err)?;
    let total: i64 = counts.iter().map(|(_, _, n)| n).sum();
    let verb = if args.yes { "deleting" } else { "would delete" };
    println!("{verb} {total} row(s):");
    for (runner, scope, n) in &counts {
        println!("  {runner}\t{scope}\t{n}");
    }
    if !args.yes {
        txn.rollback().await.map_err(db_err)?;
        println!("dry run: nothing deleted; rerun with --yes to delete");
        return Ok(());
    }
    let deleted = Entity::delete_many()
        .filter(f.condition())
        .exec(&txn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if deleted != total as u64 {
        txn.rollback().await.map_err(db_err)?;
        return Err(format!(
            "rows changed while purging ({total} counted, {deleted} matched): nothing deleted; retry"
        ));
    }
    txn.commit().await.map_err(db_err)?;
    println!("deleted {deleted} row(s)");
    Ok(())
}
