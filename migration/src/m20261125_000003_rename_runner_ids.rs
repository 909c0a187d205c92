//! Renames the official runner ids to their marketplace ids (SPEC section
//! 7), in pipeline configs and in state rows, reversibly and safe to kill.
//!
//! * Pipeline configs go through [`crate::pipeline_rewrite`]: every old id in
//!   an object key or string value is replaced, originals kept for `down`.
//! * State rows whose `runner_id` or `binding_identity` holds an old id get
//!   the new ids and a scope key recomputed from their own columns. Each
//!   renamed row's former ids and key are logged in [`RENAME_LOG_TABLE`];
//!   when the new `(scope_key, state_key)` is already taken, the existing
//!   row wins and the renamed one moves, whole, to [`CONFLICTS_TABLE`]:
//!   nothing is lost. Rows are walked by id in batches, one transaction each.
//! * `down` is the inverse rename, applied exactly to the rows the rename
//!   touched: each logged row gets its former ids and key back, and every
//!   row moved aside by a conflict returns with its own id, so `up` then
//!   `down` leaves both tables as they were. Pipeline configs get their
//!   original text back, byte for byte.

use std::sync::LazyLock;
use std::time::Instant;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DbBackend, QueryResult, Statement, TransactionSession, TransactionTrait,
};
use serde_json::Value;
use service::IdentityColumns;
use service::rename::{Renames, rename_row};

use crate::catalog;
use crate::pipeline_rewrite::{self, Rewrite};
use crate::settings;

/// This workspace's table of original pipeline configs, for `down`.
pub const CONFIG_BACKUP_TABLE: &str = "legacy_pipelines_runner_rename_backup";

/// Former ids and key of every renamed state row, for `down`.
pub const RENAME_LOG_TABLE: &str = "agent_runner_state_rename_log";

/// State rows that lost to an existing row under their new key, kept whole.
pub const CONFLICTS_TABLE: &str = "agent_runner_state_rename_conflicts";

static RENAMES: LazyLock<Renames> = LazyLock::new(Renames::official);

fn rename_config(config: &mut Value) -> Result<bool, &'static str> {
    Ok(RENAMES.apply_json(config))
}

const RENAME_CONFIGS: Rewrite = Rewrite {
    label: "runner id rename in pipeline configs",
    backup_table: CONFIG_BACKUP_TABLE,
    transform: rename_config,
};

/// What one pass over the state rows did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenameSummary {
    /// State rows read.
    pub scanned: u64,
    /// Rows renamed in place.
    pub renamed: u64,
    /// Rows moved to the conflicts table (an existing row had their new key).
    pub conflicts: u64,
}

/// The state row columns this migration reads, in this order.
const ROW_COLUMNS: &str = "id, runner_id, binding_identity, scope, scope_key, state_key, bot_id, \
    workspace_id, conversation_id, thread_id, actor_type, actor_id, subject_type, subject_id";

/// The state rows this migration reads and writes, as SeaQuery builds them
/// for the connection's backend: every value a bound parameter, no SQL text
/// rewritten.
struct Sql {
    backend: DbBackend,
}

/// Every column of `agent_runner_state` (the conflicts table has the same).
const ALL_COLUMNS: &[&str] = &[
    "id",
    "runner_id",
    "binding_identity",
    "scope",
    "scope_key",
    "state_key",
    "value_json",
    "bot_id",
    "workspace_id",
    "conversation_id",
    "thread_id",
    "actor_type",
    "actor_id",
    "subject_type",
    "subject_id",
    "created_at",
    "updated_at",
];

fn col(name: &str) -> Alias {
    Alias::new(name)
}

fn state() -> Alias {
    Alias::new("agent_runner_state")
}

impl Sql {
    fn build<S: sea_orm_migration::sea_orm::StatementBuilder>(&self, stmt: &S) -> Statement {
        self.backend.build(stmt)
    }

    /// A batch of rows after `after`, locked for the batch's transaction
    /// (SQLite locks the whole database on write anyway).
    fn rows_after(&self, after: i64, batch_size: u64) -> Statement {
        let mut q = Query::select();
        q.columns(ROW_COLUMNS.split(", ").map(col))
            .from(state())
            .and_where(Expr::col(col("id")).gt(after))
            .order_by(col("id"), Order::Asc)
            .limit(batch_size);
        if self.backend != DbBackend::Sqlite {
            q.lock(LockType::Update);
        }
        self.build(&q)
    }

    fn id_by_key(&self, scope_key: &str, state_key: &str) -> Statement {
        self.build(
            Query::select()
                .column(col("id"))
                .from(state())
                .and_where(Expr::col(col("scope_key")).eq(scope_key))
                .and_where(Expr::col(col("state_key")).eq(state_key)),
        )
    }

    fn keep_aside(&self, id: i32) -> Statement {
        let all = || ALL_COLUMNS.iter().map(|c| col(c));
        self.build(
            Query::insert()
                .into_table(col(CONFLICTS_TABLE))
                .columns(all())
                .select_from(
                    Query::select()
                        .columns(all())
                        .from(state())
                        .and_where(Expr::col(col("id")).eq(id))
                        .to_owned(),
                )
                .expect("the same columns on both sides"),
        )
    }

    fn delete_row(&self, table: &str, id: i32) -> Statement {
        self.build(
            Query::delete()
                .from_table(col(table))
                .and_where(Expr::col(col("id")).eq(id)),
        )
    }

    fn logged(&self, id: i32) -> Statement {
        self.build(
            Query::select()
                .column(col("id"))
                .from(col(RENAME_LOG_TABLE))
                .and_where(Expr::col(col("id")).eq(id)),
        )
    }

    fn log(&self, id: i32, runner_id: &str, binding_identity: &str, scope_key: &str) -> Statement {
        self.build(
            Query::insert()
                .into_table(col(RENAME_LOG_TABLE))
                .columns(["id", "runner_id", "binding_identity", "scope_key"].map(col))
                .values_panic([
                    id.into(),
                    runner_id.into(),
                    binding_identity.into(),
                    scope_key.into(),
                ]),
        )
    }

    fn set_ids(
        &self,
        id: i32,
        runner_id: &str,
        binding_identity: &str,
        scope_key: &str,
    ) -> Statement {
        self.build(
            Query::update()
                .table(state())
                .values([
                    (col("runner_id"), runner_id.into()),
                    (col("binding_identity"), binding_identity.into()),
                    (col("scope_key"), scope_key.into()),
                ])
                .and_where(Expr::col(col("id")).eq(id)),
        )
    }

    fn log_page(&self, batch_size: u64) -> Statement {
        self.build(
            Query::select()
                .columns(["id", "runner_id", "binding_identity", "scope_key"].map(col))
                .from(col(RENAME_LOG_TABLE))
                .order_by(col("id"), Order::Asc)
                .limit(batch_size),
        )
    }
}

async fn create_tables<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    let log = Table::create()
        .table(Alias::new(RENAME_LOG_TABLE))
        .if_not_exists()
        .col(
            ColumnDef::new(Alias::new("id"))
                .integer()
                .not_null()
                .primary_key(),
        )
        .col(
            ColumnDef::new(Alias::new("runner_id"))
                .string_len(255)
                .not_null(),
        )
        .col(
            ColumnDef::new(Alias::new("binding_identity"))
                .string_len(255)
                .not_null(),
        )
        .col(
            ColumnDef::new(Alias::new("scope_key"))
                .string_len(512)
                .not_null(),
        )
        .to_owned();
    db.execute(&log).await?;
    if !catalog::table_exists(db, CONFLICTS_TABLE).await? {
        // The same columns as the state table, whatever their types there,
        // with a primary key on the row's own id (Galera replicates only
        // tables that have one).
        match db.get_database_backend() {
            DbBackend::MySql => {
                db.execute_unprepared(&format!(
                    "CREATE TABLE {CONFLICTS_TABLE} (PRIMARY KEY (id)) \
                     SELECT * FROM agent_runner_state WHERE 1 = 0"
                ))
                .await?;
            }
            DbBackend::Postgres => {
                db.execute_unprepared(&format!(
                    "CREATE TABLE {CONFLICTS_TABLE} AS SELECT * FROM agent_runner_state WHERE 1 = 0"
                ))
                .await?;
            }
            _ => {
                // SQLite cannot add a key later: declare the columns.
                let columns = db
                    .query_all_raw(Statement::from_string(
                        DbBackend::Sqlite,
                        "SELECT name, type FROM pragma_table_info('agent_runner_state') ORDER BY cid",
                    ))
                    .await?
                    .iter()
                    .map(|r| {
                        let name: String = r.try_get_by_index(0)?;
                        let ty: String = r.try_get_by_index(1)?;
                        Ok(if name == "id" {
                            "\"id\" INTEGER NOT NULL PRIMARY KEY".to_owned()
                        } else {
                            format!("\"{}\" {ty}", name.replace('"', "\"\""))
                        })
                    })
                    .collect::<Result<Vec<_>, DbErr>>()?;
                db.execute_unprepared(&format!(
                    "CREATE TABLE {CONFLICTS_TABLE} ({})",
                    columns.join(", ")
                ))
                .await?;
            }
        }
    }
    // Also for a table made by an earlier version of this migration, which
    // had no primary key.
    if db.get_database_backend() != DbBackend::Sqlite
        && !has_primary_key(db, CONFLICTS_TABLE).await?
    {
        db.execute_unprepared(&format!(
            "ALTER TABLE {CONFLICTS_TABLE} ADD PRIMARY KEY (id)"
        ))
        .await?;
    }
    Ok(())
}

/// Whether `table` has a primary key (PostgreSQL, MySQL).
async fn has_primary_key<C: ConnectionTrait>(db: &C, table: &str) -> Result<bool, DbErr> {
    let schema = match db.get_database_backend() {
        DbBackend::Postgres => "current_schema()",
        _ => "DATABASE()",
    };
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT COUNT(*) FROM information_schema.table_constraints WHERE table_schema = {schema} \
                 AND table_name = '{table}' AND constraint_type = 'PRIMARY KEY'"
            ),
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get_by_index::<i64>(0))
        .transpose()?
        .unwrap_or(0)
        > 0)
}

fn text(row: &QueryResult, i: usize) -> Result<Option<String>, DbErr> {
    row.try_get_by_index(i)
}

/// Renames every state row that holds an old id; see the module docs.
///
/// # Errors
/// A database error; the batches committed before it stay.
pub async fn rename_state_rows<C>(db: &C, batch_size: u64) -> Result<RenameSummary, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let mut summary = RenameSummary::default();
    if !catalog::table_exists(db, "agent_runner_state").await? {
        return Ok(summary);
    }
    create_tables(db).await?;
    let sql = Sql {
        backend: db.get_database_backend(),
    };
    let started = Instant::now();
    let mut after = 0i64;
    loop {
        // A batch that loses a conflict (a deadlock; on Galera, a
        // certification conflict with another node's write, reported at
        // commit) is rolled back whole: count it again from the start.
        let (next, counted) = service::retry::on_conflict("runner id rename: a batch", || {
            let mut counted = summary.clone();
            let sql = &sql;
            async move {
                let next = rename_batch(db, sql, after, batch_size, &mut counted).await?;
                Ok((next, counted))
            }
        })
        .await?;
        summary = counted;
        match next {
            Some(next) => after = next,
            None => break,
        }
    }
    tracing::info!(
        migration = "runner id rename",
        rows_done = summary.scanned,
        rows_renamed = summary.renamed,
        rows_conflicting = summary.conflicts,
        seconds = started.elapsed().as_secs_f64(),
        "runner id rename in state rows done in {:.1}s: {} scanned, {} renamed, {} kept aside after conflicts",
        started.elapsed().as_secs_f64(),
        summary.scanned,
        summary.renamed,
        summary.conflicts
    );
    Ok(summary)
}

/// Renames one batch of state rows after id `after` in one transaction;
/// the last id read, or `None` at the end of the table.
async fn rename_batch<C>(
    db: &C,
    sql: &Sql,
    after: i64,
    batch_size: u64,
    summary: &mut RenameSummary,
) -> Result<Option<i64>, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let txn = service::connection::begin_writing(db, None).await?;
    let rows = txn.query_all_raw(sql.rows_after(after, batch_size)).await?;
    let Some(last) = rows.last() else {
        txn.commit().await?;
        return Ok(None);
    };
    let next: i64 = last.try_get_by_index::<i32>(0)?.into();
    for row in &rows {
        summary.scanned += 1;
        let id: i32 = row.try_get_by_index(0)?;
        let identity = IdentityColumns {
            runner_id: row.try_get_by_index(1)?,
            binding_identity: row.try_get_by_index(2)?,
            bot_id: text(row, 6)?,
            workspace_id: text(row, 7)?,
            conversation_id: text(row, 8)?,
            thread_id: text(row, 9)?,
            actor_type: text(row, 10)?,
            actor_id: text(row, 11)?,
            subject_type: text(row, 12)?,
            subject_id: text(row, 13)?,
        };
        let scope: String = row.try_get_by_index(3)?;
        let scope_key: String = row.try_get_by_index(4)?;
        let state_key: String = row.try_get_by_index(5)?;
        let Some(new) = rename_row(&RENAMES, &scope, &scope_key, &identity) else {
            continue;
        };
        let taken = txn
            .query_one_raw(sql.id_by_key(&new.scope_key, &state_key))
            .await?
            .map(|r| r.try_get_by_index::<i32>(0))
            .transpose()?;
        if taken.is_some_and(|other| other != id) {
            // The existing row wins; this one is kept aside, whole.
            txn.execute_raw(sql.keep_aside(id)).await?;
            txn.execute_raw(sql.delete_row("agent_runner_state", id))
                .await?;
            summary.conflicts += 1;
            tracing::warn!(
                row = id,
                %state_key,
                "renamed state row meets an existing row under its new key: the existing row \
                 wins, this one is kept in {CONFLICTS_TABLE}"
            );
            continue;
        }
        let logged = txn.query_one_raw(sql.logged(id)).await?;
        if logged.is_none() {
            txn.execute_raw(sql.log(
                id,
                &identity.runner_id,
                &identity.binding_identity,
                &scope_key,
            ))
            .await?;
        }
        txn.execute_raw(sql.set_ids(id, &new.runner_id, &new.binding_identity, &new.scope_key))
            .await?;
        summary.renamed += 1;
    }
    crate::lock::fence(&txn).await?;
    txn.commit().await?;
    Ok(Some(next))
}

/// Undoes [`rename_state_rows`] exactly: logged rows get their former ids
/// and key back, rows kept aside return with their own id.
///
/// # Errors
/// A database error, or a row that cannot return because another row took
/// its key since the rename (then nothing of that batch changes).
pub async fn restore_state_rows<C>(db: &C, batch_size: u64) -> Result<(), DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let sql = Sql {
        backend: db.get_database_backend(),
    };
    if catalog::table_exists(db, RENAME_LOG_TABLE).await? {
        loop {
            let txn = service::connection::begin_writing(db, None).await?;
            let rows = txn.query_all_raw(sql.log_page(batch_size)).await?;
            if rows.is_empty() {
                txn.commit().await?;
                break;
            }
            for row in &rows {
                let id: i32 = row.try_get_by_index(0)?;
                let (runner_id, binding_identity, scope_key): (String, String, String) = (
                    row.try_get_by_index(1)?,
                    row.try_get_by_index(2)?,
                    row.try_get_by_index(3)?,
                );
                txn.execute_raw(sql.set_ids(id, &runner_id, &binding_identity, &scope_key))
                    .await?;
                txn.execute_raw(sql.delete_row(RENAME_LOG_TABLE, id))
                    .await?;
            }
            crate::lock::fence(&txn).await?;
            txn.commit().await?;
        }
        db.execute(&Table::drop().table(Alias::new(RENAME_LOG_TABLE)).to_owned())
            .await?;
    }
    if catalog::table_exists(db, CONFLICTS_TABLE).await? {
        let txn = service::connection::begin_writing(db, None).await?;
        txn.execute_unprepared(&format!(
            "INSERT INTO agent_runner_state SELECT * FROM {CONFLICTS_TABLE}"
        ))
        .await?;
        txn.execute_unprepared(&format!("DELETE FROM {CONFLICTS_TABLE}"))
            .await?;
        crate::lock::fence(&txn).await?;
        txn.commit().await?;
        db.execute(&Table::drop().table(Alias::new(CONFLICTS_TABLE)).to_owned())
            .await?;
    }
    Ok(())
}

/// The migration.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl crate::Plan for Migration {
    async fn plan(
        &self,
        _db: &sea_orm_migration::sea_orm::DatabaseExecutor<'_>,
    ) -> Result<Vec<String>, DbErr> {
        Ok(vec![format!(
            "-- data migration: rename official runner ids in {} and agent_runner_state (batches of {}), \
             keeping what it changes in {CONFIG_BACKUP_TABLE}, {RENAME_LOG_TABLE} and {CONFLICTS_TABLE}",
            crate::pipeline_rewrite::PIPELINES_TABLE,
            settings::batch_size(),
        )])
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        pipeline_rewrite::rewrite_all(
            db,
            &RENAME_CONFIGS,
            settings::batch_size(),
            pipeline_rewrite::Overlap::AUTO,
        )
        .await?;
        rename_state_rows(db, settings::batch_size()).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        restore_state_rows(db, settings::batch_size()).await?;
        pipeline_rewrite::restore_all(db, CONFIG_BACKUP_TABLE, settings::batch_size()).await?;
        Ok(())
    }

    /// Each batch commits on its own, so that a killed run keeps its work.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}
