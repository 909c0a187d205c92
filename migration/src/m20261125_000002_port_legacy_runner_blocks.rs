//! Ports legacy runner blocks in `legacy_pipelines.config` to plugin runner
//! ids (SPEC section 6), in batches, reversibly, and safe to kill.
//!
//! * Rows are walked in primary-key order, a batch at a time (keyset
//!   pagination), so memory stays flat whatever the row count.
//! * Each batch is one transaction: its rows are locked, ported, written back
//!   (only those that change), and their original config text is kept in
//!   [`BACKUP_TABLE`], all committed together. A run killed at any point
//!   leaves whole batches; the rerun ports what is left (ported rows no
//!   longer change) and ends where an uninterrupted run would.
//! * Configs that are not JSON, or whose `ai`, `ai.runner` or
//!   `ai.runner_config` is not an object, stay byte for byte as they are and
//!   are reported by pipeline uuid.
//! * `down` writes every kept original back, byte for byte, then drops the
//!   backup table.
//!
//! It reads and writes `legacy_pipelines` through its own statements on just
//! `uuid` and `config` (a frozen view, not a live entity), and writes `config` in
//! the type the column has (`json`/`jsonb` on PostgreSQL, JSON/LONGTEXT on
//! MySQL, text on SQLite).

use std::time::{Duration, Instant};

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DbBackend, Statement, TransactionSession, TransactionTrait,
};
use serde_json::Value;
use service::legacy::port_in_place;

use crate::catalog;
use crate::settings;

/// LangBot's pipelines table.
pub const PIPELINES_TABLE: &str = "legacy_pipelines";

/// This workspace's table of original configs, for `down`.
pub const BACKUP_TABLE: &str = "legacy_pipelines_runner_port_backup";

/// Most bytes of config text sent in one statement.
const MAX_STATEMENT_BYTES: usize = 4 << 20;

/// How often progress is logged on large tables.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(DeriveIden)]
enum LegacyPipelinesRunnerPortBackup {
    Table,
    Uuid,
    OriginalConfig,
}

/// What one `up` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSummary {
    /// Rows read.
    pub scanned: u64,
    /// Rows ported and written back.
    pub changed: u64,
    /// Rows already in the current shape (or without `ai`).
    pub unchanged: u64,
    /// Rows left as they are because the rules cannot apply (reported).
    pub reported: u64,
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

async fn create_backup_table<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    let text_type = match db.get_database_backend() {
        DbBackend::MySql => "longtext",
        _ => "text",
    };
    let create = Table::create()
        .table(LegacyPipelinesRunnerPortBackup::Table)
        .if_not_exists()
        .col(
            ColumnDef::new(LegacyPipelinesRunnerPortBackup::Uuid)
                .string_len(255)
                .not_null()
                .primary_key(),
        )
        .col(
            ColumnDef::new(LegacyPipelinesRunnerPortBackup::OriginalConfig)
                .custom(Alias::new(text_type))
                .not_null(),
        )
        .to_owned();
    db.execute(&create).await.map(|_| ())
}

/// Ports every row; see the module docs.
///
/// # Errors
/// A database error; the batches committed before it stay.
pub async fn port_all<C>(db: &C, batch_size: u64) -> Result<PortSummary, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let mut summary = PortSummary::default();
    if !catalog::table_exists(db, PIPELINES_TABLE).await? {
        tracing::info!("{PIPELINES_TABLE} does not exist: no legacy runner blocks to port");
        return Ok(summary);
    }
    create_backup_table(db).await?;
    let target = Target::detect(db).await?;
    let total = count(db, PIPELINES_TABLE).await?;
    let started = Instant::now();
    let mut last_progress = started;
    let mut after: Option<String> = None;
    loop {
        let batch = port_batch(db, &target, after.as_deref(), batch_size, &mut summary).await?;
        let Some(last) = batch else { break };
        after = Some(last);
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let rate = summary.scanned as f64 / started.elapsed().as_secs_f64();
            tracing::info!(
                "legacy runner port: {}/{total} rows ({rate:.0} rows/s), {} changed",
                summary.scanned,
                summary.changed
            );
        }
    }
    tracing::info!(
        "legacy runner port done in {:.1}s: {} scanned, {} changed, {} unchanged, {} reported",
        started.elapsed().as_secs_f64(),
        summary.scanned,
        summary.changed,
        summary.unchanged,
        summary.reported
    );
    Ok(summary)
}

/// Ports one batch in one transaction; the last uuid read, or `None` at the
/// end of the table.
async fn port_batch<C>(
    db: &C,
    target: &Target,
    after: Option<&str>,
    batch_size: u64,
    summary: &mut PortSummary,
) -> Result<Option<String>, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let txn = db.begin().await?;
    let mut sql = format!(
        "SELECT uuid, {} FROM legacy_pipelines",
        target.read_config()
    );
    let mut values = Vec::new();
    if let Some(after) = after {
        sql.push_str(&format!(" WHERE uuid > {}", target.placeholder(1)));
        values.push(after.into());
    }
    sql.push_str(&format!(" ORDER BY uuid LIMIT {batch_size}"));
    if target.backend != DbBackend::Sqlite {
        // Hold the rows until commit: LangBot may be editing pipelines.
        sql.push_str(" FOR UPDATE");
    }
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(target.backend, sql, values))
        .await?;
    let Some(last) = rows.last() else {
        txn.commit().await?;
        return Ok(None);
    };
    let last: String = last.try_get_by_index(0)?;
    let mut changed: Vec<(String, String)> = Vec::new();
    let mut originals: Vec<(String, String)> = Vec::new();
    for row in &rows {
        let uuid: String = row.try_get_by_index(0)?;
        let text: Option<String> = row.try_get_by_index(1)?;
        summary.scanned += 1;
        let Some(text) = text else {
            summary.unchanged += 1;
            continue;
        };
        let ported = serde_json::from_str::<Value>(&text)
            .map_err(|_| "config is not valid JSON")
            .and_then(|mut config| Ok((port_in_place(&mut config)?, config)));
        match ported {
            Ok((false, _)) => summary.unchanged += 1,
            Err(reason) => {
                summary.reported += 1;
                tracing::warn!(pipeline = %uuid, "pipeline config left unchanged: {reason}");
            }
            Ok((true, config)) => {
                summary.changed += 1;
                let text_out = serde_json::to_string(&config)
                    .map_err(|e| DbErr::Custom(format!("serialise pipeline {uuid}: {e}")))?;
                changed.push((uuid.clone(), text_out));
                originals.push((uuid, text));
            }
        }
    }
    for chunk in chunks(&originals) {
        let mut insert = Query::insert();
        insert
            .into_table(LegacyPipelinesRunnerPortBackup::Table)
            .columns([
                LegacyPipelinesRunnerPortBackup::Uuid,
                LegacyPipelinesRunnerPortBackup::OriginalConfig,
            ])
            // A kept original is the oldest one: never overwrite it. (An
            // update of the key to itself, as sea-query's DO NOTHING is not
            // valid MySQL.)
            .on_conflict(
                OnConflict::column(LegacyPipelinesRunnerPortBackup::Uuid)
                    .update_column(LegacyPipelinesRunnerPortBackup::Uuid)
                    .to_owned(),
            );
        for (uuid, text) in chunk {
            insert.values_panic([uuid.clone().into(), text.clone().into()]);
        }
        txn.execute(&insert).await?;
    }
    for chunk in chunks(&changed) {
        txn.execute_raw(target.update(chunk)).await?;
    }
    txn.commit().await?;
    Ok(Some(last))
}

/// Writes every kept original back and drops the backup table.
///
/// # Errors
/// A database error; the batches restored before it stay restored.
pub async fn restore_all<C>(db: &C, batch_size: u64) -> Result<u64, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    if !catalog::table_exists(db, BACKUP_TABLE).await? {
        return Ok(0);
    }
    let target = Target::detect(db).await?;
    let mut restored = 0;
    loop {
        let txn = db.begin().await?;
        let select = Query::select()
            .columns([
                LegacyPipelinesRunnerPortBackup::Uuid,
                LegacyPipelinesRunnerPortBackup::OriginalConfig,
            ])
            .from(LegacyPipelinesRunnerPortBackup::Table)
            .order_by(LegacyPipelinesRunnerPortBackup::Uuid, Order::Asc)
            .limit(batch_size)
            .to_owned();
        let rows = txn.query_all(&select).await?;
        if rows.is_empty() {
            txn.commit().await?;
            break;
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
            .from_table(LegacyPipelinesRunnerPortBackup::Table)
            .and_where(
                Expr::col(LegacyPipelinesRunnerPortBackup::Uuid)
                    .is_in(originals.iter().map(|(uuid, _)| uuid.clone())),
            )
            .to_owned();
        txn.execute(&delete).await?;
        txn.commit().await?;
        restored += originals.len() as u64;
    }
    db.execute(
        &Table::drop()
            .table(LegacyPipelinesRunnerPortBackup::Table)
            .to_owned(),
    )
    .await?;
    tracing::info!("legacy runner port undone: {restored} configs restored");
    Ok(restored)
}

async fn count<C: ConnectionTrait>(db: &C, table: &str) -> Result<u64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) FROM {table}"),
        ))
        .await?;
    Ok(row.map_or(Ok(0), |r| r.try_get_by_index::<i64>(0))? as u64)
}

/// The migration.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        port_all(manager.get_connection(), settings::batch_size())
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        restore_all(manager.get_connection(), settings::batch_size())
            .await
            .map(|_| ())
    }

    /// Each batch commits on its own, so that a killed run keeps its work.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}
