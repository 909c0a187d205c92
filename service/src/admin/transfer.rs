//! `import` and `copy`: rows in, exactly as `export` wrote them.
//!
//! An import is **one transaction**: a malformed line, an over-long text or a
//! conflict anywhere leaves the target as it was, and the input (stdin) need
//! not be read twice to promise that. Memory stays flat: lines are read and
//! written a batch at a time inside that transaction. Rows are matched by
//! `(scope_key, state_key)`; `id` is the target's own. A row that is already
//! there with the same columns is skipped (importing twice changes nothing);
//! one that differs is a conflict, refused unless `--overwrite`.
//!
//! `copy` is export | import between two databases. Its source can be read
//! twice, so it can check for conflicts first (read-only) and then write in
//! batches that each commit: a killed copy resumes where it stopped. It ends
//! with a verification: the row count and an order-independent digest of
//! every row's columns (all but `id`) on both sides.

use std::collections::HashMap;
use std::io::BufRead;

use chrono::NaiveDateTime;
use entity::agent_runner_state::{ActiveModel, COLUMN, Column, Entity, Model};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, TransactionSession,
    TransactionTrait,
};
use serde::Deserialize;
use sha2::Digest;

use crate::IdentityColumns;

use super::RowPages;

/// Lines written per round of lookups and inserts.
const BATCH: usize = 500;

/// One line of `export`, as `import` reads it. `value` and `value_error` are
/// the export's reading aid; `value_json` is what is stored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[allow(dead_code)]
    id: Option<i64>,
    runner_id: String,
    binding_identity: String,
    scope: String,
    scope_key: String,
    state_key: String,
    value_json: Option<String>,
    #[allow(dead_code)]
    value: Option<serde_json::Value>,
    #[allow(dead_code)]
    value_error: Option<String>,
    bot_id: Option<String>,
    workspace_id: Option<String>,
    conversation_id: Option<String>,
    thread_id: Option<String>,
    actor_type: Option<String>,
    actor_id: Option<String>,
    subject_type: Option<String>,
    subject_id: Option<String>,
    created_at: String,
    updated_at: String,
}

/// Why a line cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Not a JSON object of export's fields (unknown or missing field,
    /// wrong type).
    #[error("not an export line: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A text longer than its column, or holding U+0000 (which PostgreSQL
    /// cannot store): the store's own checks.
    #[error(transparent)]
    Column(#[from] crate::StateError),
    /// A timestamp that is not `YYYY-MM-DD HH:MM:SS[.ffffff]`.
    #[error("{field} is not a timestamp: {text:?}")]
    Timestamp {
        /// The field.
        field: &'static str,
        /// What it held.
        text: String,
    },
}

/// Why an import or copy wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A line could not be read.
    #[error("line {line}: {source}")]
    Line {
        /// 1-based.
        line: usize,
        /// Why.
        #[source]
        source: LineError,
    },
    /// A source row of a copy that the store would refuse (see `import`'s
    /// checks); found before anything is written.
    #[error("source row id {id} ({scope_key} / {state_key}): {source}")]
    SourceRow {
        /// Its `id` in the source.
        id: i32,
        /// Its scope key.
        scope_key: String,
        /// Its state key.
        state_key: String,
        /// Why.
        #[source]
        source: crate::StateError,
    },
    /// The input could not be read.
    #[error("reading the input: {0}")]
    Io(#[from] std::io::Error),
    /// Rows that exist with other columns, without `--overwrite`.
    #[error(
        "{count} row(s) exist in the target with other columns, e.g. {first}; nothing was \
         written (use --overwrite to replace them)"
    )]
    Conflicts {
        /// How many (in the batch that found them).
        count: usize,
        /// The first few, as `line N: scope_key / state_key`.
        first: String,
    },
    /// The target has no `agent_runner_state` table from `migration up`.
    #[error("the target database is not migrated: run `migration up` against it first")]
    NotMigrated,
    /// After a copy, the two sides differ.
    #[error(
        "verification failed: source {source_rows} rows {source_digest}, target {target_rows} rows {target_digest}"
    )]
    Mismatch {
        /// Rows in the source.
        source_rows: u64,
        /// Its digest.
        source_digest: String,
        /// Rows in the target.
        target_rows: u64,
        /// Its digest.
        target_digest: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    /// Lines read.
    pub lines: u64,
    /// Rows inserted.
    pub inserted: u64,
    /// Rows already there, identical: skipped.
    pub unchanged: u64,
    /// Rows replaced (`--overwrite`).
    pub replaced: u64,
}

fn timestamp(field: &'static str, value: &str) -> Result<NaiveDateTime, LineError> {
    NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f").map_err(|_| LineError::Timestamp {
        field,
        text: value.to_owned(),
    })
}

/// A line as a row, checked by [`check_row`] (before its timestamps).
fn to_model(line: Line) -> Result<Model, LineError> {
    let created_at = timestamp("created_at", &line.created_at);
    let updated_at = timestamp("updated_at", &line.updated_at);
    let mut model = Model {
        id: 0,
        created_at: NaiveDateTime::default(),
        updated_at: NaiveDateTime::default(),
        runner_id: line.runner_id,
        binding_identity: line.binding_identity,
        scope: line.scope,
        scope_key: line.scope_key,
        state_key: line.state_key,
        value_json: line.value_json,
        bot_id: line.bot_id,
        workspace_id: line.workspace_id,
        conversation_id: line.conversation_id,
        thread_id: line.thread_id,
        actor_type: line.actor_type,
        actor_id: line.actor_id,
        subject_type: line.subject_type,
        subject_id: line.subject_id,
    };
    check_row(&model)?;
    model.created_at = created_at?;
    model.updated_at = updated_at?;
    Ok(model)
}

/// What the store would refuse to write: the context columns as it checks
/// them before a set, then the key columns and the value (U+0000, which
/// PostgreSQL cannot store, and the size limit in bytes of UTF-8). `import`
/// checks every line so, and `copy` every source row.
fn check_row(m: &Model) -> Result<(), crate::StateError> {
    use crate::store::{MAX_VALUE_BYTES, max_chars, validate_context, validate_text};
    validate_context(&IdentityColumns {
        runner_id: m.runner_id.clone(),
        binding_identity: m.binding_identity.clone(),
        bot_id: m.bot_id.clone(),
        workspace_id: m.workspace_id.clone(),
        conversation_id: m.conversation_id.clone(),
        thread_id: m.thread_id.clone(),
        actor_type: m.actor_type.clone(),
        actor_id: m.actor_id.clone(),
        subject_type: m.subject_type.clone(),
        subject_id: m.subject_id.clone(),
    })?;
    validate_text("scope", &m.scope, max_chars(Column::Scope))?;
    validate_text("scope_key", &m.scope_key, max_chars(Column::ScopeKey))?;
    validate_text("state_key", &m.state_key, max_chars(Column::StateKey))?;
    if let Some(value_json) = &m.value_json {
        if value_json.contains('\0') {
            return Err(crate::StateError::NulCharacter {
                field: "value_json",
            });
        }
        if value_json.len() > MAX_VALUE_BYTES {
            return Err(crate::StateError::ValueTooLarge {
                size: value_json.len(),
                limit: MAX_VALUE_BYTES,
            });
        }
    }
    Ok(())
}

/// Whether two rows hold the same columns (all but `id`).
fn same(a: &Model, b: &Model) -> bool {
    Model { id: 0, ..a.clone() } == Model { id: 0, ..b.clone() }
}

fn active(m: &Model) -> ActiveModel {
    ActiveModel {
        id: NotSet,
        runner_id: Set(m.runner_id.clone()),
        binding_identity: Set(m.binding_identity.clone()),
        scope: Set(m.scope.clone()),
        scope_key: Set(m.scope_key.clone()),
        state_key: Set(m.state_key.clone()),
        value_json: Set(m.value_json.clone()),
        bot_id: Set(m.bot_id.clone()),
        workspace_id: Set(m.workspace_id.clone()),
        conversation_id: Set(m.conversation_id.clone()),
        thread_id: Set(m.thread_id.clone()),
        actor_type: Set(m.actor_type.clone()),
        actor_id: Set(m.actor_id.clone()),
        subject_type: Set(m.subject_type.clone()),
        subject_id: Set(m.subject_id.clone()),
        created_at: Set(m.created_at),
        updated_at: Set(m.updated_at),
    }
}

/// Fails with [`TransferError::NotMigrated`] unless `migration up` made the
/// table on `db`.
pub async fn require_migrated<C: ConnectionTrait>(db: &C) -> Result<(), TransferError> {
    let migrated = migration_applied(db).await.unwrap_or(false);
    if migrated {
        Ok(())
    } else {
        Err(TransferError::NotMigrated)
    }
}

async fn migration_applied<C: ConnectionTrait>(db: &C) -> Result<bool, DbErr> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) FROM seaql_migrations WHERE version = 'm20261125_000001_create_agent_runner_state'",
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get_by_index::<i64>(0))
        .transpose()?
        .unwrap_or(0)
        == 1)
}

/// Writes one batch of (line number, row) into `txn`.
async fn write_batch<C: ConnectionTrait>(
    txn: &C,
    batch: &mut Vec<(usize, Model)>,
    overwrite: bool,
    summary: &mut ImportSummary,
) -> Result<(), TransferError> {
    apply_batch(txn, batch, overwrite, summary, false).await
}

/// Compares one batch with the target and, unless `dry`, writes it.
async fn apply_batch<C: ConnectionTrait>(
    txn: &C,
    batch: &mut Vec<(usize, Model)>,
    overwrite: bool,
    summary: &mut ImportSummary,
    dry: bool,
) -> Result<(), TransferError> {
    if batch.is_empty() {
        return Ok(());
    }
    let backend = txn.get_database_backend();
    for (_, m) in batch.iter_mut() {
        m.created_at = crate::store::as_stored(backend, m.created_at);
        m.updated_at = crate::store::as_stored(backend, m.updated_at);
    }
    // Both columns narrow the lookup: a scope may hold many keys, and a key
    // name recur in many scopes.
    let scope_keys: std::collections::BTreeSet<String> =
        batch.iter().map(|(_, m)| m.scope_key.clone()).collect();
    let state_keys: std::collections::BTreeSet<String> =
        batch.iter().map(|(_, m)| m.state_key.clone()).collect();
    let existing: HashMap<(String, String), Model> = Entity::find()
        .filter(COLUMN.scope_key.is_in(scope_keys))
        .filter(COLUMN.state_key.is_in(state_keys))
        .all(txn)
        .await?
        .into_iter()
        .map(|m| ((m.scope_key.clone(), m.state_key.clone()), m))
        .collect();
    let mut conflicts = Vec::new();
    let mut seen: HashMap<(String, String), Model> = HashMap::new();
    let mut inserts = Vec::new();
    let mut replaces = Vec::new();
    for (line, m) in batch.drain(..) {
        let key = (m.scope_key.clone(), m.state_key.clone());
        let before = seen.get(&key).or_else(|| existing.get(&key));
        match before {
            Some(b) if same(b, &m) => summary.unchanged += 1,
            Some(_) if !overwrite => conflicts.push(format!("line {line}: {} / {}", key.0, key.1)),
            Some(_) => {
                replaces.push(m.clone());
                summary.replaced += 1;
            }
            None => {
                inserts.push(m.clone());
                summary.inserted += 1;
            }
        }
        seen.insert(key, m);
    }
    if !conflicts.is_empty() {
        return Err(TransferError::Conflicts {
            count: conflicts.len(),
            first: conflicts
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if dry {
        return Ok(());
    }
    // A key replaced twice in one batch: the last line wins.
    let mut last: HashMap<(String, String), Model> = HashMap::new();
    for m in replaces {
        last.insert((m.scope_key.clone(), m.state_key.clone()), m);
    }
    for m in last.into_values() {
        if existing.contains_key(&(m.scope_key.clone(), m.state_key.clone())) {
            Entity::delete_many()
                .filter(COLUMN.scope_key.eq(m.scope_key.as_str()))
                .filter(COLUMN.state_key.eq(m.state_key.as_str()))
                .exec(txn)
                .await?;
            inserts.push(m);
        } else if let Some(i) = inserts
            .iter_mut()
            .find(|i| i.scope_key == m.scope_key && i.state_key == m.state_key)
        {
            *i = m;
        }
    }
    if !inserts.is_empty() {
        Entity::insert_many(inserts.iter().map(active))
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// Imports `export` lines from `input` into `db`, all or nothing.
///
/// # Errors
/// A [`TransferError`]; the target is then unchanged.
pub async fn import<C>(
    db: &C,
    input: impl BufRead,
    overwrite: bool,
) -> Result<ImportSummary, TransferError>
where
    C: ConnectionTrait + TransactionTrait,
{
    require_migrated(db).await?;
    // Begun at the first write, not before the input is read: on SQLite it
    // holds the write lock from then on.
    let mut txn = None;
    let mut summary = ImportSummary::default();
    let mut batch = Vec::with_capacity(BATCH);
    for (i, line) in input.lines().enumerate() {
        let line_no = i + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let parsed: Line = serde_json::from_str(&line).map_err(|e| TransferError::Line {
            line: line_no,
            source: LineError::Malformed(e),
        })?;
        let model = to_model(parsed).map_err(|source| TransferError::Line {
            line: line_no,
            source,
        })?;
        batch.push((line_no, model));
        if batch.len() == BATCH {
            if txn.is_none() {
                txn = Some(crate::connection::begin_writing(db, None).await?);
            }
            let txn = txn.as_ref().expect("begun above");
            write_batch(txn, &mut batch, overwrite, &mut summary).await?;
        }
    }
    let txn = match txn {
        Some(txn) => txn,
        None => crate::connection::begin_writing(db, None).await?,
    };
    write_batch(&txn, &mut batch, overwrite, &mut summary).await?;
    txn.commit().await?;
    Ok(summary)
}

/// Row count and digest of a table: the wrapping sum of each row's SHA-256
/// (all columns but `id`; timestamps to the second when `seconds`), so the
/// order rows come in does not matter.
pub async fn digest<C: ConnectionTrait>(db: &C, seconds: bool) -> Result<(u64, String), DbErr> {
    use chrono::SubsecRound;
    let (mut rows, mut sum) = (0u64, [0u128; 2]);
    let mut pages = RowPages::new(Condition::all(), super::PAGE);
    while let Some(page) = pages.next(db).await? {
        for m in &page {
            let t = |t: NaiveDateTime| if seconds { t.trunc_subsecs(0) } else { t };
            let canonical = serde_json::json!([
                m.runner_id,
                m.binding_identity,
                m.scope,
                m.scope_key,
                m.state_key,
                m.value_json,
                m.bot_id,
                m.workspace_id,
                m.conversation_id,
                m.thread_id,
                m.actor_type,
                m.actor_id,
                m.subject_type,
                m.subject_id,
                t(m.created_at).to_string(),
                t(m.updated_at).to_string(),
            ]);
            let h = sha2::Sha256::digest(canonical.to_string().as_bytes());
            let hi = u128::from_be_bytes(h[..16].try_into().expect("16 bytes"));
            let lo = u128::from_be_bytes(h[16..].try_into().expect("16 bytes"));
            sum[0] = sum[0].wrapping_add(hi);
            sum[1] = sum[1].wrapping_add(lo);
            rows += 1;
        }
    }
    Ok((rows, format!("{:032x}{:032x}", sum[0], sum[1])))
}

/// [`check_row`] on each row of a page of a copy's source.
fn check_page(page: &[Model]) -> Result<(), TransferError> {
    for m in page {
        check_row(m).map_err(|source| TransferError::SourceRow {
            id: m.id,
            scope_key: m.scope_key.clone(),
            state_key: m.state_key.clone(),
            source,
        })?;
    }
    Ok(())
}

/// A page of source rows as (row id, row), as a batch is numbered.
fn numbered(page: Vec<Model>) -> Vec<(usize, Model)> {
    page.into_iter().map(|m| (m.id as usize, m)).collect()
}

/// What a copy did and found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopySummary {
    /// The import into the target.
    pub import: ImportSummary,
    /// Rows on each side after the copy.
    pub rows: u64,
    /// Their digest (equal on both sides).
    pub digest: String,
}

/// Copies every row of `from` into `to`, then verifies both sides hold the
/// same rows. A first read-only pass checks every source row as `import`
/// checks a line and, without `overwrite`, finds conflicts, so a refused
/// copy writes nothing. The rows then go in batches, each its
/// own transaction: a copy killed midway keeps what it committed, and the
/// next run resumes (rows already there unchanged are skipped).
///
/// # Errors
/// A [`TransferError`]; a failed verification is [`TransferError::Mismatch`].
pub async fn copy<A, B>(from: &A, to: &B, overwrite: bool) -> Result<CopySummary, TransferError>
where
    A: ConnectionTrait,
    B: ConnectionTrait + TransactionTrait,
{
    require_migrated(to).await?;
    // A first pass that writes nothing: every source row checked as import
    // checks a line and, without `overwrite`, compared with the target (the
    // same comparison as the writes, rolled back).
    let mut pages = RowPages::new(Condition::all(), BATCH as u64);
    while let Some(page) = pages.next(from).await? {
        check_page(&page)?;
        if !overwrite {
            let mut batch = numbered(page);
            let mut ignored = ImportSummary::default();
            apply_batch(to, &mut batch, false, &mut ignored, true).await?;
        }
    }
    let mut summary = ImportSummary::default();
    let mut pages = RowPages::new(Condition::all(), BATCH as u64);
    while let Some(page) = pages.next(from).await? {
        // Again: a row may have changed since the first pass.
        check_page(&page)?;
        let mut batch = numbered(page);
        summary.lines += batch.len() as u64;
        let txn = crate::connection::begin_writing(to, None).await?;
        write_batch(&txn, &mut batch, overwrite, &mut summary).await?;
        txn.commit().await?;
    }
    let seconds = from.get_database_backend() == DbBackend::MySql
        || to.get_database_backend() == DbBackend::MySql;
    let (source_rows, source_digest) = digest(from, seconds).await?;
    let (target_rows, target_digest) = digest(to, seconds).await?;
    if (source_rows, &source_digest) != (target_rows, &target_digest) {
        return Err(TransferError::Mismatch {
            source_rows,
            source_digest,
            target_rows,
            target_digest,
        });
    }
    Ok(CopySummary {
        import: summary,
        rows: target_rows,
        digest: target_digest,
    })
}
