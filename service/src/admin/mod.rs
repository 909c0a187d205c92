//! What operators run against `agent_runner_state` (the `state-admin`
//! binary is options and printing around these): stats, rows streamed in id
//! order, purge, and moving rows between databases ([`transfer`]).
//!
//! Everything is generic over SeaORM's `ConnectionTrait`, so it runs on a
//! pool or in a transaction. Behind a transaction pooler, run it in a
//! [`PooledSession`](crate::connection::PooledSession), as `state-admin`
//! does: these queries use the extended protocol. Rows
//! written by LangBot's Python code and by the store are treated alike.

mod filter;
pub mod transfer;

pub use filter::Filter;

use entity::agent_runner_state::{COLUMN, Column, Entity, Model};
use sea_orm::{
    Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionSession, TransactionTrait,
};
use serde_json::{Value, json};

/// Why an admin operation failed; nothing is half-written by any of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A purge without a filter that names whose rows go.
    #[error(
        "a purge must name whose rows go: an actor id, a conversation, a runner or a binding \
         (other filters only narrow it)"
    )]
    PurgeUnfiltered,
    /// Rows matching the filter changed between counting and deleting; the
    /// delete was rolled back.
    #[error(
        "rows changed while purging ({counted} counted, {matched} matched): nothing deleted; retry"
    )]
    PurgeRaced {
        /// Rows the dry count found.
        counted: u64,
        /// Rows the delete matched.
        matched: u64,
    },
    /// The database failed.
    #[error("database error")]
    Db(#[from] DbErr),
}

/// Rows fetched per round trip when streaming.
pub const PAGE: u64 = 500;

/// Keyset pages of the rows matching a condition, in id order: memory stays
/// flat however large the table, and rows inserted behind the cursor are
/// not read twice.
pub struct RowPages {
    condition: Condition,
    last_id: i32,
    size: u64,
}

impl RowPages {
    /// Pages of `size` rows matching `condition`.
    pub fn new(condition: Condition, size: u64) -> Self {
        Self {
            condition,
            last_id: 0,
            size,
        }
    }

    /// The next page, or `None` after the last row.
    pub async fn next<C: ConnectionTrait>(&mut self, db: &C) -> Result<Option<Vec<Model>>, DbErr> {
        let page = Entity::find()
            .filter(self.condition.clone())
            .filter(COLUMN.id.gt(self.last_id))
            .order_by_asc(Column::Id)
            .limit(self.size)
            .all(db)
            .await?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        self.last_id = last.id;
        Ok(Some(page))
    }
}

/// Calls `f` on every row matching `filter`, in id order, a page at a time;
/// returns how many it saw. `f`'s error stops the walk.
pub async fn for_each_row<C, F, E>(db: &C, filter: &Filter, mut f: F) -> Result<u64, E>
where
    C: ConnectionTrait,
    F: FnMut(&Model) -> Result<(), E>,
    E: From<DbErr>,
{
    let mut pages = RowPages::new(filter.condition(), PAGE);
    let mut seen = 0;
    while let Some(page) = pages.next(db).await? {
        for row in &page {
            f(row)?;
            seen += 1;
        }
    }
    Ok(seen)
}

/// Rows and value bytes of one runner or one scope.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupStats {
    /// The runner id or the scope.
    pub name: String,
    /// Rows in the group.
    pub rows: i64,
    /// Bytes of UTF-8 in their `value_json`.
    pub value_bytes: i64,
}

/// [`stats`]: per runner and per scope, each sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Per `runner_id`.
    pub by_runner_id: Vec<GroupStats>,
    /// Per `scope`.
    pub by_scope: Vec<GroupStats>,
}

impl Stats {
    /// As `state-admin stats --json` prints it: each entry keyed by its
    /// column name (`{"runner_id": ..., "rows": ..., "value_bytes": ...}`).
    pub fn to_json(&self) -> Value {
        let entries = |column: &str, groups: &[GroupStats]| -> Value {
            groups
                .iter()
                .map(|g| json!({column: g.name, "rows": g.rows, "value_bytes": g.value_bytes}))
                .collect()
        };
        json!({
            "by_runner_id": entries("runner_id", &self.by_runner_id),
            "by_scope": entries("scope", &self.by_scope),
        })
    }
}

/// Rows and value bytes per runner and per scope, counted by the server.
pub async fn stats<C: ConnectionTrait>(db: &C) -> Result<Stats, DbErr> {
    let backend = db.get_database_backend();
    // Bytes of UTF-8, as a 64-bit integer on every backend.
    let bytes = match backend {
        DbBackend::Postgres => "CAST(COALESCE(SUM(octet_length(value_json)), 0) AS BIGINT)",
        DbBackend::MySql => "CAST(COALESCE(SUM(LENGTH(value_json)), 0) AS SIGNED)",
        _ => "COALESCE(SUM(length(CAST(value_json AS BLOB))), 0)",
    };
    let mut groups = [Vec::new(), Vec::new()];
    for (column, out) in ["runner_id", "scope"].into_iter().zip(&mut groups) {
        let sql = format!(
            "SELECT {column}, COUNT(*), {bytes} FROM agent_runner_state \
             GROUP BY {column} ORDER BY {column}"
        );
        for r in db
            .query_all_raw(Statement::from_string(backend, sql))
            .await?
        {
            out.push(GroupStats {
                name: r.try_get_by_index(0)?,
                rows: r.try_get_by_index(1)?,
                value_bytes: r.try_get_by_index(2)?,
            });
        }
    }
    let [by_runner_id, by_scope] = groups;
    Ok(Stats {
        by_runner_id,
        by_scope,
    })
}

/// A row as one JSON object: the stored text unchanged in `value_json` (a
/// faithful backup), and beside it the decoded `value`, or `value_error` when
/// the text cannot be read as a JSON value (not JSON, `NaN`, an integer beyond
/// 64 bits). [`transfer::import`] reads it back.
pub fn export_line(row: &Model) -> Value {
    let (value, value_error) = match row.value_json.as_deref().map(crate::value::decode) {
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

/// Rows of one runner in one scope that a purge matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeGroup {
    /// The runner id.
    pub runner_id: String,
    /// The scope.
    pub scope: String,
    /// Matching rows.
    pub rows: u64,
}

/// What [`purge`] found and, unless a dry run, deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeReport {
    /// Matching rows per runner and scope.
    pub groups: Vec<PurgeGroup>,
    /// Their sum.
    pub total: u64,
    /// Whether they were deleted (false: a dry run).
    pub deleted: bool,
}

/// Counts the rows matching `filter` and, when `delete`, deletes them in
/// the same transaction. The filter must name whose rows go (an actor, a
/// conversation, a runner or a binding); if the delete matches another
/// number of rows than were counted, it is rolled back.
pub async fn purge<C>(db: &C, filter: &Filter, delete: bool) -> Result<PurgeReport, AdminError>
where
    C: ConnectionTrait + TransactionTrait,
{
    if !filter.names_whose_rows() {
        return Err(AdminError::PurgeUnfiltered);
    }
    // A dry run only reads: it must not take SQLite's write lock.
    let txn = if delete {
        crate::connection::begin_writing(db, None).await?
    } else {
        db.begin().await?
    };
    let groups: Vec<(String, String, i64)> = filter
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
        .await?;
    let groups: Vec<PurgeGroup> = groups
        .into_iter()
        .map(|(runner_id, scope, rows)| PurgeGroup {
            runner_id,
            scope,
            rows: rows.max(0) as u64,
        })
        .collect();
    let total = groups.iter().map(|g| g.rows).sum();
    if !delete {
        txn.rollback().await?;
        return Ok(PurgeReport {
            groups,
            total,
            deleted: false,
        });
    }
    let matched = Entity::delete_many()
        .filter(filter.condition())
        .exec(&txn)
        .await?
        .rows_affected;
    if matched != total {
        txn.rollback().await?;
        return Err(AdminError::PurgeRaced {
            counted: total,
            matched,
        });
    }
    txn.commit().await?;
    Ok(PurgeReport {
        groups,
        total,
        deleted: true,
    })
}
