//! Rewriting every `legacy_pipelines.config` in batches, reversibly and
//! safe to kill: the machinery the data migrations on pipeline configs share
//! (the legacy runner port, the runner id rename), each with its own
//! transform and its own backup table.
//!
//! * Rows are walked in primary-key order, a batch at a time (each past the
//!   last `uuid` of the one before), so memory stays flat whatever the row
//!   count. On a server's pool, two batches run at once ([`Overlap`]).
//! * Each batch is one transaction: its rows are locked, transformed, written
//!   back (only those that change), and their original config text is kept
//!   in the backup table, all committed together, after the migration
//!   lock's fence ([`crate::lock`]) proved the lease still this run's. A run killed at any point
//!   leaves whole batches; the rerun transforms what is left (transformed
//!   rows no longer change) and ends where an uninterrupted run would.
//! * Configs that are not JSON, or that the transform refuses, stay byte for
//!   byte as they are and are reported by pipeline uuid.
//! * Restoring writes every kept original back, byte for byte, then drops
//!   the backup table.
//!
//! It reads and writes `legacy_pipelines` through its own statements on just
//! `uuid` and `config` (a frozen view, not a live entity), and writes
//! `config` in the type the column has (`json`/`jsonb` on PostgreSQL,
//! JSON/LONGTEXT on MySQL, text on SQLite).

use std::time::{Duration, Instant};

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseExecutor, DatabaseTransaction, DbBackend,
    IsolationLevel, Statement, TransactionSession, TransactionTrait,
};
use serde_json::Value;

use crate::catalog;

/// LangBot's pipelines table.
pub const PIPELINES_TABLE: &str = "legacy_pipelines";

/// One rewrite of every pipeline config.
pub struct Rewrite {
    /// What it is called in progress lines.
    pub label: &'static str,
    /// This workspace's table of original configs, for restoring.
    pub backup_table: &'static str,
    /// Changes a config in place: `Ok(true)` if it changed; `Err(reason)`
    /// leaves it as it is and reports it.
    pub transform: fn(&mut Value) -> Result<bool, &'static str>,
}

/// Most bytes of config text sent in one statement.
const MAX_STATEMENT_BYTES: usize = 4 << 20;

/// How often progress is logged on large tables.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Config text of one batch above which the next batch waits for it to
/// finish instead of opening beside it: two batches in flight hold two
/// batches of configs (and their parsed forms), which for ordinary configs
/// (~1.5 KB, 1.5 MB a batch) costs nothing, but for very large ones would
/// double the port's memory.
const OVERLAP_MAX_BATCH_BYTES: usize = 16 << 20;

/// How many batches may be in flight once a batch of `config_bytes` is.
fn in_flight_beside(config_bytes: usize, in_flight: usize) -> usize {
    if config_bytes > OVERLAP_MAX_BATCH_BYTES {
        1
    } else {
        in_flight
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewriteSummary {
    /// Rows read.
    pub scanned: u64,
    /// Rows transformed and written back.
    pub changed: u64,
    /// Rows the transform left as they were.
    pub unchanged: u64,
    /// Rows left as they are because the transform cannot apply (reported).
    pub reported: u64,
}

impl std::ops::AddAssign for RewriteSummary {
    fn add_assign(&mut self, batch: Self) {
        self.scanned += batch.scanned;
        self.changed += batch.changed;
        self.unchanged += batch.unchanged;
        self.reported += batch.reported;
    }
}

fn backup(table: &str) -> Alias {
    Alias::new(table)
}

fn uuid_col() -> Alias {
    Alias::new("uuid")
}

fn original_col() -> Alias {
    Alias::new("original_config")
}

/// How `config` is written back on this database.
struct Target {
    backend: DbBackend,
    /// `CAST(? AS ...)` for PostgreSQL's json/jsonb; none elsewhere.
    cast: Option<String>,
}

impl Target {
    async fn detect<C: ConnectionTrait>(db: &C) -> Result<Self, DbErr> {
        let backend = db.get_database_backend();
        let cast = match backend {
            DbBackend::Postgres => {
                let table = catalog::read_table(db, PIPELINES_TABLE).await?;
                let ty = table
                    .as_ref()
                    .and_then(|t| t.column("config"))
                    .map(|c| c.data_type.clone())
                    .unwrap_or_else(|| "json".into());
                Some(ty)
            }
            _ => None,
        };
        Ok(Self { backend, cast })
    }

    /// `config` as text, whatever its type.
    fn read_config(&self) -> &'static str {
        match self.backend {
            DbBackend::Postgres => "CAST(config AS text)",
            DbBackend::MySql => "CAST(config AS CHAR)",
            _ => "config",
        }
    }

    fn placeholder(&self, n: usize) -> String {
        match self.backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }

    /// One statement setting `config` of each `(uuid, text)` pair: a join
    /// with a VALUES list on PostgreSQL and SQLite (one index lookup per row),
    /// a CASE on MySQL (whose VALUES lists differ between MariaDB and MySQL 8).
    fn update(&self, rows: &[(String, String)]) -> Statement {
        let mut values: Vec<sea_orm_migration::sea_orm::Value> = Vec::with_capacity(rows.len() * 3);
        let mut list = String::with_capacity(rows.len() * 16);
        for (i, (uuid, text)) in rows.iter().enumerate() {
            if i > 0 {
                list.push_str(", ");
            }
            match self.backend {
                DbBackend::MySql => list.push_str(" WHEN ? THEN ?"),
                _ => list.push_str(&format!(
                    "({}, {})",
                    self.placeholder(values.len() + 1),
                    self.placeholder(values.len() + 2)
                )),
            }
            values.push(uuid.clone().into());
            values.push(text.clone().into());
        }
        let sql = match self.backend {
            DbBackend::Postgres => format!(
                "UPDATE legacy_pipelines AS p SET config = CAST(v.config AS {}) \
                 FROM (VALUES {list}) AS v(uuid, config) WHERE p.uuid = v.uuid",
                self.cast.as_deref().unwrap_or("json")
            ),
            DbBackend::MySql => {
                let list = list.replace(", ", "");
                let keys = vec!["?"; rows.len()].join(", ");
                for (uuid, _) in rows {
                    values.push(uuid.clone().into());
                }
                format!(
                    "UPDATE legacy_pipelines SET config = CASE uuid{list} END WHERE uuid IN ({keys})"
                )
            }
            _ => format!(
                "UPDATE legacy_pipelines SET config = v.column2 \
                 FROM (VALUES {list}) AS v WHERE legacy_pipelines.uuid = v.column1"
            ),
        };
        Statement::from_sql_and_values(self.backend, sql, values)
    }
}

/// Splits rows into statements of bounded size.
fn chunks(rows: &[(String, String)]) -> Vec<&[(String, String)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (uuid, text)) in rows.iter().enumerate() {
        let size = uuid.len() * 2 + text.len();
        if i > start && (bytes + size > MAX_STATEMENT_BYTES || i - start >= 500) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

async fn create_backup_table<C: ConnectionTrait>(db: &C, table: &str) -> Result<(), DbErr> {
    let text_type = match db.get_database_backend() {
        DbBackend::MySql => "longtext",
        _ => "text",
    };
    let create = Table::create()
        .table(backup(table))
        .if_not_exists()
        .col(
            ColumnDef::new(uuid_col())
                .string_len(255)
                .not_null()
                .primary_key(),
        )
        .col(
            ColumnDef::new(original_col())
                .custom(Alias::new(text_type))
                .not_null(),
        )
        .to_owned();
    db.execute(&create).await.map(|_| ())
}

/// How many batches of a rewrite may run at once. [`Overlap::SERIAL`]: one.
/// [`Overlap::AUTO`]: two where the connection allows, each in its own
/// transaction on its own connection, so that one batch's rows are read and
/// locked while the one before it is written and the server works on both
/// while the client transforms. The connection allows it on PostgreSQL and
/// MySQL, given a pool that may open two connections (as
/// `batch_connect_options` makes); never inside a transaction, whose nested
/// transactions would share one connection, and never on SQLite, one writer
/// at a time. [`rewrite_all`] decides from the connection it is given, so a
/// caller cannot ask two of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    allowed: bool,
}

impl Overlap {
    /// One batch at a time.
    pub const SERIAL: Self = Self { allowed: false };

    /// Two batches at once where the connection allows, else one.
    pub const AUTO: Self = Self { allowed: true };

    /// How many batches [`rewrite_all`] keeps in flight on `db`.
    pub fn batches_in_flight(self, db: &DatabaseExecutor<'_>) -> usize {
        let DatabaseExecutor::Connection(pool) = db else {
            return 1;
        };
        let connections = match pool.get_database_backend() {
            DbBackend::Postgres => pool
                .get_postgres_connection_pool()
                .options()
                .get_max_connections(),
            DbBackend::MySql => pool
                .get_mysql_connection_pool()
                .options()
                .get_max_connections(),
            _ => 1,
        };
        if self.allowed && connections >= 2 {
            2
        } else {
            1
        }
    }
}

/// What [`rewrite_all`] runs on: a pool, a caller's transaction, or a
/// migration's `manager.get_connection()`, always borrowed. (SeaORM's
/// `IntoDatabaseExecutor` also takes an owned transaction, which the
/// rewrite would drop, rolled back, after reporting its rows changed.)
pub trait Borrowed<'c> {
    /// The executor, borrowing the caller's.
    fn executor(self) -> DatabaseExecutor<'c>;
}

impl<'c> Borrowed<'c> for &'c DatabaseConnection {
    fn executor(self) -> DatabaseExecutor<'c> {
        DatabaseExecutor::Connection(self)
    }
}

impl<'c> Borrowed<'c> for &'c DatabaseTransaction {
    fn executor(self) -> DatabaseExecutor<'c> {
        DatabaseExecutor::Transaction(self)
    }
}

impl<'c> Borrowed<'c> for &'c DatabaseExecutor<'_> {
    fn executor(self) -> DatabaseExecutor<'c> {
        match self {
            DatabaseExecutor::Connection(c) => DatabaseExecutor::Connection(c),
            DatabaseExecutor::Transaction(t) => DatabaseExecutor::Transaction(t),
            DatabaseExecutor::OwnedTransaction(t) => DatabaseExecutor::Transaction(t),
        }
    }
}

/// The rows of one batch: `after < uuid <= until` (unbounded where `None`).
#[derive(Clone, Debug)]
struct Range {
    after: Option<String>,
    until: Option<String>,
}

/// `(uuid, config text)` rows of a batch.
type Configs = Vec<(String, Option<String>)>;

/// A batch whose rows are read and locked in its transaction.
struct Opened {
    txn: DatabaseTransaction,
    /// Its rows' range, to read them again if the batch must be redone.
    range: Range,
    configs: Configs,
}

/// Rewrites every row; see the module docs.
///
/// # Errors
/// A database error; the batches committed before it stay (with two at
/// once, the one after it may have committed too).
pub async fn rewrite_all<'c>(
    db: impl Borrowed<'c>,
    rewrite: &Rewrite,
    batch_size: u64,
    overlap: Overlap,
) -> Result<RewriteSummary, DbErr> {
    use futures_util::StreamExt;
    let db = &db.executor();
    let label = rewrite.label;
    let mut summary = RewriteSummary::default();
    if !catalog::table_exists(db, PIPELINES_TABLE).await? {
        tracing::info!("{PIPELINES_TABLE} does not exist: nothing to do for the {label}");
        return Ok(summary);
    }
    create_backup_table(db, rewrite.backup_table).await?;
    let target = Target::detect(db).await?;
    let total = count(db, PIPELINES_TABLE).await?;
    let mut in_flight = overlap.batches_in_flight(db);
    if in_flight > 1 && target.backend == DbBackend::MySql && statement_binlog(db).await? {
        // Such a server refuses writes at read committed (error 1665).
        in_flight = 1;
    }
    // Batches at once on MySQL read committed: its repeatable read would
    // also lock the gaps around each batch's rows, so that they would wait
    // on each other; the rows themselves are locked either way. (Inside a
    // caller's transaction the level cannot change.)
    let isolation = (in_flight > 1 && target.backend == DbBackend::MySql)
        .then_some(IsolationLevel::ReadCommitted);
    let target = &target;
    // Batches are opened one after the other, each past the last row of the
    // one before, while up to `in_flight` opened ones are transformed and
    // written; they finish in order. On an error the others are dropped,
    // their transactions rolled back.
    let mut progress = Progress {
        label,
        total,
        started: Instant::now(),
        logged: Instant::now(),
    };
    // Where the next batch starts (`None`: no rows are left).
    let mut next: Option<Option<String>> = Some(None);
    let mut finishing = futures_util::stream::FuturesOrdered::new();
    // Batches allowed in flight beside the last one opened.
    let mut allowed = in_flight;
    loop {
        let Some(after) = next.take_if(|_| finishing.len() < allowed) else {
            match finishing.next().await {
                Some(done) => progress.add(&mut summary, done?),
                None => break,
            }
            continue;
        };
        // The batches in flight go on while the next one opens.
        let mut open = std::pin::pin!(open_next(db, rewrite, target, after, batch_size, isolation));
        let opened = loop {
            tokio::select! {
                opened = &mut open => break opened?,
                Some(done) = finishing.next(), if !finishing.is_empty() => {
                    progress.add(&mut summary, done?);
                }
            }
        };
        if let Some(batch) = opened {
            next = Some(batch.range.until.clone());
            let config_bytes = batch
                .configs
                .iter()
                .map(|(_, config)| config.as_ref().map_or(0, String::len))
                .sum();
            allowed = in_flight_beside(config_bytes, in_flight);
            finishing.push_back(rewrite_opened(db, rewrite, target, batch, isolation));
        }
    }
    let started = progress.started;
    tracing::info!(
        migration = label,
        rows_done = summary.scanned,
        rows_total = total,
        rows_changed = summary.changed,
        seconds = started.elapsed().as_secs_f64(),
        "{label} done in {:.1}s: {} scanned, {} changed, {} unchanged, {} reported",
        started.elapsed().as_secs_f64(),
        summary.scanned,
        summary.changed,
        summary.unchanged,
        summary.reported
    );
    Ok(summary)
}

/// The batch of up to `batch_size` rows past `after`, opened; `None` when
/// no rows are left. Opening it again after a transient error (a lock wait
/// timeout behind LangBot's edit of a pipeline, SQLite busy) is safe:
/// nothing is written yet.
async fn open_next(
    db: &DatabaseExecutor<'_>,
    rewrite: &Rewrite,
    target: &Target,
    after: Option<String>,
    batch_size: u64,
    isolation: Option<IsolationLevel>,
) -> Result<Option<Opened>, DbErr> {
    let what = format!("{}: reading a batch", rewrite.label);
    let batch = service::retry::on_conflict(&what, || {
        let range = Range {
            after: after.clone(),
            until: None,
        };
        open_batch(db, target, range, Some(batch_size), isolation)
    })
    .await?;
    if batch.configs.is_empty() {
        batch.txn.commit().await?;
        return Ok(None);
    }
    Ok(Some(batch))
}

/// Whether a MySQL server writes its binary log by statement, which it
/// refuses to do for transactions at read committed.
async fn statement_binlog<C: ConnectionTrait>(db: &C) -> Result<bool, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::MySql,
            "SELECT CAST(@@log_bin = 1 AND @@binlog_format = 'STATEMENT' AS SIGNED)",
        ))
        .await?;
    Ok(row.map_or(Ok(0), |r| r.try_get_by_index::<i64>(0))? == 1)
}

/// Progress lines of a long rewrite, every [`PROGRESS_EVERY`].
struct Progress {
    label: &'static str,
    total: u64,
    started: Instant,
    logged: Instant,
}

impl Progress {
    /// Counts a finished batch into `summary`, and says how far it is.
    fn add(&mut self, summary: &mut RewriteSummary, batch: RewriteSummary) {
        *summary += batch;
        if self.logged.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.logged = Instant::now();
        let (label, total) = (self.label, self.total);
        let rate = summary.scanned as f64 / self.started.elapsed().as_secs_f64();
        tracing::info!(
            migration = label,
            rows_done = summary.scanned,
            rows_total = total,
            rows_per_s = rate.round(),
            rows_changed = summary.changed,
            "{label}: {}/{total} rows ({rate:.0} rows/s), {} changed",
            summary.scanned,
            summary.changed
        );
    }
}

/// Begins a batch's transaction and reads its rows, locked: those of
/// `range`, at most `limit`.
async fn open_batch(
    db: &DatabaseExecutor<'_>,
    target: &Target,
    range: Range,
    limit: Option<u64>,
    isolation: Option<IsolationLevel>,
) -> Result<Opened, DbErr> {
    let txn = service::connection::begin_writing(db, isolation).await?;
    let mut sql = format!(
        "SELECT uuid, {} FROM legacy_pipelines WHERE 1 = 1",
        target.read_config()
    );
    let mut values = Vec::new();
    if let Some(after) = &range.after {
        values.push(after.clone().into());
        sql.push_str(&format!(" AND uuid > {}", target.placeholder(values.len())));
    }
    if let Some(until) = &range.until {
        values.push(until.clone().into());
        sql.push_str(&format!(
            " AND uuid <= {}",
            target.placeholder(values.len())
        ));
    }
    sql.push_str(" ORDER BY uuid");
    if let Some(limit) = limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    if target.backend != DbBackend::Sqlite {
        // Hold the rows until commit: LangBot may be editing pipelines.
        sql.push_str(" FOR UPDATE");
    }
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(target.backend, sql, values))
        .await?;
    let mut configs: Configs = Vec::with_capacity(rows.len());
    for row in &rows {
        configs.push((row.try_get_by_index(0)?, row.try_get_by_index(1)?));
    }
    let range = Range {
        until: configs.last().map(|(uuid, _)| uuid.clone()),
        ..range
    };
    Ok(Opened {
        txn,
        range,
        configs,
    })
}

/// Finishes an opened batch; if it loses a conflict (a deadlock; on Galera,
/// a certification conflict with a write on another node, reported at
/// commit), the whole batch was rolled back: its range is read again and
/// redone.
async fn rewrite_opened(
    db: &DatabaseExecutor<'_>,
    rewrite: &Rewrite,
    target: &Target,
    batch: Opened,
    isolation: Option<IsolationLevel>,
) -> Result<RewriteSummary, DbErr> {
    let range = batch.range.clone();
    let mut opened = Some(batch);
    let what = format!("{}: a batch", rewrite.label);
    service::retry::on_conflict(&what, || {
        let first = opened.take();
        let range = range.clone();
        async move {
            let batch = match first {
                Some(batch) => batch,
                None => open_batch(db, target, range, None, isolation).await?,
            };
            finish_batch(rewrite, target, batch).await
        }
    })
    .await
}

/// Transforms an opened batch's rows, writes them and commits.
async fn finish_batch(
    rewrite: &Rewrite,
    target: &Target,
    batch: Opened,
) -> Result<RewriteSummary, DbErr> {
    let Opened {
        txn, mut configs, ..
    } = batch;
    // The JSON work of one slice runs on a blocking thread while the
    // writes of the slice before it go to the server: the client's CPU and
    // the server's time overlap instead of adding up.
    let transform = rewrite.transform;
    let mut slices = Vec::new();
    while configs.len() > TRANSFORM_SLICE {
        let rest = configs.split_off(TRANSFORM_SLICE);
        slices.push(std::mem::replace(&mut configs, rest));
    }
    slices.push(configs);
    let mut slices = slices.into_iter();
    let spawn =
        |slice: Configs| tokio::task::spawn_blocking(move || transform_slice(transform, slice));
    let mut summary = RewriteSummary::default();
    let mut pending = slices.next().map(spawn);
    while let Some(handle) = pending.take() {
        let done = handle
            .await
            .map_err(|e| DbErr::Custom(format!("transforming configs: {e}")))??;
        pending = slices.next().map(spawn);
        summary += done.summary;
        write_slice(&txn, rewrite, target, &done.changed).await?;
    }
    crate::lock::fence(&txn).await?;
    txn.commit().await?;
    Ok(summary)
}

/// Rows whose JSON work runs as one piece on a blocking thread.
const TRANSFORM_SLICE: usize = 250;

/// What [`transform_slice`] made of its rows.
struct Transformed {
    summary: RewriteSummary,
    /// `(uuid, new config text)` of the rows that changed.
    changed: Vec<(String, String)>,
}

/// Parses, transforms and serialises `(uuid, config text)` rows; reports
/// (and leaves alone) those that are not JSON or that the transform refuses.
fn transform_slice(
    transform: fn(&mut Value) -> Result<bool, &'static str>,
    rows: Vec<(String, Option<String>)>,
) -> Result<Transformed, DbErr> {
    let mut out = Transformed {
        summary: RewriteSummary::default(),
        changed: Vec::new(),
    };
    for (uuid, text) in rows {
        out.summary.scanned += 1;
        let Some(text) = text else {
            out.summary.unchanged += 1;
            continue;
        };
        let ported = serde_json::from_str::<Value>(&text)
            .map_err(|_| "config is not valid JSON")
            .and_then(|mut config| Ok((transform(&mut config)?, config)));
        match ported {
            Ok((false, _)) => out.summary.unchanged += 1,
            Err(reason) => {
                out.summary.reported += 1;
                tracing::warn!(pipeline = %uuid, "pipeline config left unchanged: {reason}");
            }
            Ok((true, config)) => {
                out.summary.changed += 1;
                let text_out = serde_json::to_string(&config)
                    .map_err(|e| DbErr::Custom(format!("serialise pipeline {uuid}: {e}")))?;
                out.changed.push((uuid, text_out));
            }
        }
    }
    Ok(out)
}

/// Keeps the originals of `changed` in the backup table and writes their
/// new configs, in the batch's transaction.
async fn write_slice<C: ConnectionTrait>(
    txn: &C,
    rewrite: &Rewrite,
    target: &Target,
    changed: &[(String, String)],
) -> Result<(), DbErr> {
    if changed.is_empty() {
        return Ok(());
    }
    // The originals go to the backup table server-side, copied from the
    // rows this transaction holds: their text never travels back.
    let select = Query::select()
        .column(uuid_col())
        .expr(Expr::cust(target.read_config()))
        .from(Alias::new(PIPELINES_TABLE))
        .and_where(Expr::col(uuid_col()).is_in(changed.iter().map(|(uuid, _)| uuid.clone())))
        .to_owned();
    let insert = Query::insert()
        .into_table(backup(rewrite.backup_table))
        .columns([uuid_col(), original_col()])
        .select_from(select)
        .map_err(|e| DbErr::Custom(format!("backup insert: {e}")))?
        // A kept original is the oldest one: never overwrite it. (An update
        // of the key to itself, as sea-query's DO NOTHING is not valid
        // MySQL.)
        .on_conflict(
            OnConflict::column(uuid_col())
                .update_column(uuid_col())
                .to_owned(),
        )
        .to_owned();
    txn.execute(&insert).await?;
    for chunk in chunks(changed) {
        txn.execute_raw(target.update(chunk)).await?;
    }
    Ok(())
}

/// Writes every original kept in `backup_table` back and drops the table.
///
/// # Errors
/// A database error; the batches restored before it stay restored.
pub async fn restore_all<C>(db: &C, backup_table: &str, batch_size: u64) -> Result<u64, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    if !catalog::table_exists(db, backup_table).await? {
        return Ok(0);
    }
    let target = Target::detect(db).await?;
    let mut restored = 0;
    loop {
        let n = service::retry::on_conflict("restoring configs: a batch", || {
            restore_batch(db, &target, backup_table, batch_size)
        })
        .await?;
        if n == 0 {
            break;
        }
        restored += n;
    }
    db.execute(&Table::drop().table(backup(backup_table)).to_owned())
        .await?;
    tracing::info!("{restored} pipeline configs restored from {backup_table}");
    Ok(restored)
}

/// Restores one batch of kept originals in one transaction and forgets
/// them; how many (0 when none are left).
async fn restore_batch<C>(
    db: &C,
    target: &Target,
    backup_table: &str,
    batch_size: u64,
) -> Result<u64, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let txn = service::connection::begin_writing(db, None).await?;
    let select = Query::select()
        .columns([uuid_col(), original_col()])
        .from(backup(backup_table))
        .order_by(uuid_col(), Order::Asc)
        .limit(batch_size)
        .to_owned();
    let rows = txn.query_all(&select).await?;
    if rows.is_empty() {
        txn.commit().await?;
        return Ok(0);
    }
    let originals = rows
        .iter()
        .map(|r| Ok((r.try_get_by_index(0)?, r.try_get_by_index(1)?)))
        .collect::<Result<Vec<(String, String)>, DbErr>>()?;
    if catalog::table_exists(&txn, PIPELINES_TABLE).await? {
        for chunk in chunks(&originals) {
            txn.execute_raw(target.update(chunk)).await?;
        }
    }
    let delete = Query::delete()
        .from_table(backup(backup_table))
        .and_where(Expr::col(uuid_col()).is_in(originals.iter().map(|(uuid, _)| uuid.clone())))
        .to_owned();
    txn.execute(&delete).await?;
    crate::lock::fence(&txn).await?;
    txn.commit().await?;
    Ok(originals.len() as u64)
}

pub(crate) async fn count<C: ConnectionTrait>(db: &C, table: &str) -> Result<u64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) FROM {table}"),
        ))
        .await?;
    Ok(row.map_or(Ok(0), |r| r.try_get_by_index::<i64>(0))? as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_batch_runs_alone() {
        assert_eq!(in_flight_beside(1_500_000, 2), 2);
        assert_eq!(in_flight_beside(OVERLAP_MAX_BATCH_BYTES, 2), 2);
        assert_eq!(in_flight_beside(OVERLAP_MAX_BATCH_BYTES + 1, 2), 1);
        assert_eq!(in_flight_beside(0, 1), 1);
    }
}
