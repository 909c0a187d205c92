//! The state store: set, get, delete, list and snapshot of one runner's
//! state, the same on SQLite, PostgreSQL and MySQL (SPEC section 5).
//!
//! Every input is checked before any SQL runs, so a refusal never leaves a
//! half-written row. Key columns compare by code point on every backend (the
//! migration gives them exact collations), so keys that differ only in case,
//! trailing spaces or normalisation stay distinct, and prefixes are matched
//! as a code-point range, never as a `LIKE` pattern.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::OnceLock;

use chrono::{NaiveDateTime, SubsecRound, Utc};
use entity::agent_runner_state::{self, ActiveModel, COLUMN, Column, Entity};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, RuntimeErr, Statement,
};
use serde_json::Value;

use crate::error::{Result, StateError};
use crate::identity::{IdentityColumns, Scope};
use crate::inline_sqlite::InlineSqlite;
use crate::policy::StatePolicy;
use crate::server_connections::ServerConnections;
use crate::value::{self, ValueError};

/// Largest serialised value, in bytes of UTF-8.
pub const MAX_VALUE_BYTES: usize = 262_144;

/// Most keys one `list` returns.
pub const MAX_LIST_LIMIT: u64 = 100;

/// The public key runners use for the conversation id they see.
pub const CONVERSATION_ID_KEY: &str = "conversation_id";

/// Where that key is stored.
pub const EXTERNAL_CONVERSATION_ID_KEY: &str = "external.conversation_id";

/// How often a write is retried after a deadlock, a lock timeout or a
/// Galera certification conflict.
const MAX_RETRIES: u32 = crate::retry::MAX_RETRIES;

/// The identity of one event for one runner: the row's context columns and
/// the key of every scope that has its identity, computed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateContext {
    columns: IdentityColumns,
    keys: BTreeMap<Scope, String>,
}

impl StateContext {
    /// The context for these identity columns.
    pub fn new(columns: IdentityColumns) -> Self {
        let keys = columns.scope_keys();
        Self { columns, keys }
    }

    /// The identity columns.
    pub fn columns(&self) -> &IdentityColumns {
        &self.columns
    }

    /// The key of `scope`, when the event has its identity.
    pub fn scope_key(&self, scope: Scope) -> Option<&str> {
        self.keys.get(&scope).map(String::as_str)
    }

    fn require_key(&self, scope: Scope) -> Result<&str> {
        self.scope_key(scope)
            .ok_or(StateError::MissingIdentity(scope))
    }
}

/// One page of keys from [`StateStore::list`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyPage {
    /// Keys in code point order.
    pub keys: Vec<String>,
    /// Whether more keys match past this page.
    pub has_more: bool,
}

/// A snapshot of state for an event: all four scopes, always present.
pub type StateSnapshot = BTreeMap<Scope, BTreeMap<String, Value>>;

/// The state store over any SeaORM connection: a pool, or the caller's
/// transaction (then nothing is retried: a deadlock on MySQL rolls the whole
/// transaction back, which only the caller can redo).
#[derive(Debug)]
pub struct StateStore<'c, C> {
    db: &'c C,
    retry: bool,
    pooled: bool,
    inline: Option<&'c InlineSqlite>,
    server: Option<&'c ServerConnections>,
}

// By hand: derived, they would ask `C` to be `Copy` too.
impl<C> Clone for StateStore<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for StateStore<'_, C> {}

impl<'c, C> StateStore<'c, C>
where
    C: ConnectionTrait + 'static,
{
    /// A store on `db`.
    pub fn new(db: &'c C) -> Self {
        let in_transaction = (db as &dyn std::any::Any).is::<DatabaseTransaction>();
        Self {
            db,
            retry: !in_transaction,
            pooled: false,
            inline: None,
            server: None,
        }
    }

    /// The same store with its statements run by SQLite in the calling
    /// thread ([`InlineSqlite`], on the same file as `db`), not on sqlx's
    /// worker threads. Only a store on a SQLite [`DatabaseConnection`](sea_orm::DatabaseConnection) (a
    /// pool) uses it: in the caller's transaction, statements go on the
    /// transaction's connection. `None` changes nothing.
    pub fn inline_sqlite(mut self, inline: Option<&'c InlineSqlite>) -> Self {
        let on_pool = (self.db as &dyn std::any::Any).is::<sea_orm::DatabaseConnection>()
            && self.db.get_database_backend() == DbBackend::Sqlite;
        self.inline = inline.filter(|_| on_pool);
        self
    }

    /// The same store with its statements on connections of its own to the
    /// server ([`ServerConnections`], to the same database as `db`), not on
    /// sqlx's pool. Only a store on a [`DatabaseConnection`](sea_orm::DatabaseConnection)
    /// (a pool) of the same backend, not behind a transaction pooler, uses
    /// them: in the caller's transaction, statements go on the transaction's
    /// connection. `None` changes nothing.
    pub fn server_connections(mut self, server: Option<&'c ServerConnections>) -> Self {
        let on_pool = (self.db as &dyn std::any::Any).is::<sea_orm::DatabaseConnection>();
        let backend = self.db.get_database_backend();
        self.server = server.filter(|s| on_pool && s.backend() == backend);
        self
    }

    /// The server connections to use: none behind a transaction pooler.
    fn server(&self) -> Option<&ServerConnections> {
        self.server.filter(|_| !self.pooled)
    }

    /// The same store for a connection through a transaction pooler
    /// ([`Pooler`](crate::connection::Pooler), from the URL's
    /// `pooler=transaction`): on a PostgreSQL pool, each statement goes by
    /// the simple query protocol, values inlined by SeaQuery's escaping, so
    /// no prepared statement is left on a server connection another client
    /// gets next. In the caller's transaction, statements run as usual; end
    /// it with [`end_pooled_transaction`](crate::connection::end_pooled_transaction).
    pub fn pooled(mut self, pooler: crate::connection::Pooler) -> Self {
        self.pooled = pooler == crate::connection::Pooler::Transaction;
        self
    }

    /// The sqlx pool to send simple-protocol statements to, when pooled.
    fn simple_protocol_pool(&self) -> Option<&sea_orm::sqlx::PgPool> {
        if !self.pooled {
            return None;
        }
        let conn = (self.db as &dyn std::any::Any).downcast_ref::<sea_orm::DatabaseConnection>()?;
        (conn.get_database_backend() == DbBackend::Postgres)
            .then(|| conn.get_postgres_connection_pool())
    }

    /// Runs a statement that returns no rows.
    async fn exec(&self, stmt: Statement) -> Result<u64, DbErr> {
        if let Some(inline) = self.inline {
            return inline.execute(stmt).await;
        }
        if let Some(server) = self.server() {
            return server.execute(stmt).await;
        }
        match self.simple_protocol_pool() {
            Some(pool) => sea_orm::sqlx::raw_sql(sea_orm::sqlx::AssertSqlSafe(stmt.to_string()))
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .map_err(|e| DbErr::Exec(RuntimeErr::SqlxError(e.into()))),
            None => Ok(self.db.execute_raw(stmt).await?.rows_affected()),
        }
    }

    /// Runs a query whose `columns` columns are all text (nullable): their
    /// cells, row after row (one vector for all, not one per row: a `list`
    /// has 101 rows).
    async fn query_texts(
        &self,
        stmt: Statement,
        columns: usize,
    ) -> Result<Vec<Option<String>>, DbErr> {
        if let Some(inline) = self.inline {
            return inline.query_texts(stmt, columns).await;
        }
        if let Some(server) = self.server() {
            return server.query_texts(stmt, columns).await;
        }
        match self.simple_protocol_pool() {
            Some(pool) => {
                use sea_orm::sqlx::Row;
                let rows = sea_orm::sqlx::raw_sql(sea_orm::sqlx::AssertSqlSafe(stmt.to_string()))
                    .fetch_all(pool)
                    .await
                    .map_err(|e| DbErr::Query(RuntimeErr::SqlxError(e.into())))?;
                rows.iter()
                    .flat_map(|row| (0..columns).map(move |i| row.try_get::<Option<String>, _>(i)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| DbErr::Query(RuntimeErr::SqlxError(e.into())))
            }
            None => self
                .db
                .query_all_raw(stmt)
                .await?
                .iter()
                .flat_map(|row| {
                    (0..columns).map(move |i| row.try_get_by_index::<Option<String>>(i))
                })
                .collect::<Result<Vec<_>, _>>(),
        }
    }

    /// Stores `value` under `key` in `scope`: one upsert statement. A first
    /// set records the context columns; later ones change only the value and
    /// `updated_at`.
    ///
    /// # Errors
    /// Missing identity for the scope, a text over its column's length or
    /// holding U+0000, a value over [`MAX_VALUE_BYTES`], or a database error.
    pub async fn set(
        &self,
        ctx: &StateContext,
        scope: Scope,
        key: &str,
        value: &Value,
    ) -> Result<()> {
        let scope_key = ctx.require_key(scope)?;
        let key = public_key(key);
        validate_key(key)?;
        validate_context(ctx.columns())?;
        let value_json = serialize_value(value)?;
        let stmt = upsert_statement(
            self.db.get_database_backend(),
            ctx.columns(),
            scope,
            scope_key,
            key,
            value_json,
            now(self.db.get_database_backend()),
        );
        self.retrying("set", Resend::Safe, || self.exec(stmt.clone()))
            .await?;
        Ok(())
    }

    /// The value stored under `key` in `scope`, if any.
    ///
    /// # Errors
    /// Missing identity, an invalid key, a stored value that is not JSON, or a
    /// database error.
    pub async fn get(&self, ctx: &StateContext, scope: Scope, key: &str) -> Result<Option<Value>> {
        let scope_key = ctx.require_key(scope)?;
        self.get_by_scope_key(scope_key, key).await
    }

    /// [`get`](Self::get) by a raw scope key: for operators, not runners.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_by_scope_key(&self, scope_key: &str, key: &str) -> Result<Option<Value>> {
        let key = public_key(key);
        validate_key(key)?;
        validate_text("scope_key", scope_key, max_chars(Column::ScopeKey))?;
        let stmt = get_statement(self.db.get_database_backend(), scope_key, key);
        let stored: Option<String> = self
            .retrying("get", Resend::Safe, || self.query_texts(stmt.clone(), 1))
            .await?
            .into_iter()
            .next()
            .flatten();
        match stored {
            None => Ok(None),
            Some(text) => {
                value::decode(&text)
                    .map(Some)
                    .map_err(|source| StateError::UnreadableValue {
                        scope_key: scope_key.to_owned(),
                        state_key: key.to_owned(),
                        source,
                    })
            }
        }
    }

    /// Removes `key` from `scope`; true if a row was removed.
    ///
    /// # Errors
    /// Missing identity, an invalid key, or a database error.
    pub async fn delete(&self, ctx: &StateContext, scope: Scope, key: &str) -> Result<bool> {
        let scope_key = ctx.require_key(scope)?;
        let key = public_key(key);
        validate_key(key)?;
        let stmt = self.db.get_database_backend().build(
            &Entity::delete_many()
                .filter(COLUMN.scope_key.eq(scope_key))
                .filter(COLUMN.state_key.eq(key))
                .into_query(),
        );
        let removed = self
            .retrying("delete", Resend::Never, || self.exec(stmt.clone()))
            .await?;
        Ok(removed > 0)
    }

    /// Keys of `scope` in code point order, optionally those starting with
    /// `prefix` (taken literally: `%`, `_` and `\` are plain characters).
    /// `limit` is capped at 100; missing, zero or negative means 100.
    ///
    /// # Errors
    /// Missing identity, an invalid prefix, or a database error.
    pub async fn list(
        &self,
        ctx: &StateContext,
        scope: Scope,
        prefix: Option<&str>,
        limit: Option<i64>,
    ) -> Result<KeyPage> {
        let scope_key = ctx.require_key(scope)?;
        let limit = match limit {
            Some(n) if n > 0 => (n as u64).min(MAX_LIST_LIMIT),
            _ => MAX_LIST_LIMIT,
        };
        let prefix = prefix.map(public_key).filter(|p| !p.is_empty());
        if let Some(prefix) = prefix {
            validate_key(prefix)?;
        }
        let stmt = list_statement(self.db.get_database_backend(), scope_key, prefix, limit + 1);
        let mut keys: Vec<String> = self
            .retrying("list", Resend::Safe, || self.query_texts(stmt.clone(), 1))
            .await?
            .into_iter()
            .flatten()
            .collect();
        let has_more = keys.len() as u64 > limit;
        keys.truncate(limit as usize);
        Ok(KeyPage { keys, has_more })
    }

    /// Every scope's keys and values for an event, in one query: all four
    /// scopes are present; one that is disabled, or whose identity is
    /// missing, is empty. Rows whose value is missing or not JSON are skipped
    /// with a warning. The conversation scope shows the event's conversation
    /// id as `external.conversation_id` when absent (not persisted).
    ///
    /// # Errors
    /// A database error.
    pub async fn snapshot(
        &self,
        ctx: &StateContext,
        policy: &StatePolicy,
    ) -> Result<StateSnapshot> {
        let mut snapshot: StateSnapshot =
            Scope::ALL.iter().map(|s| (*s, BTreeMap::new())).collect();
        let wanted: BTreeMap<&str, Scope> = Scope::ALL
            .into_iter()
            .filter(|s| policy.allows(*s))
            .filter_map(|s| Some((ctx.scope_key(s)?, s)))
            .collect();
        if wanted.is_empty() {
            return Ok(snapshot);
        }
        let stmt = snapshot_statement(self.db.get_database_backend(), wanted.keys().copied());
        let rows = self
            .retrying("snapshot", Resend::Safe, || {
                self.query_texts(stmt.clone(), 3)
            })
            .await?;
        let mut cells = rows.into_iter();
        let rows = std::iter::from_fn(|| {
            let scope_key = cells.next()?.unwrap_or_default();
            let state_key = cells.next().flatten().unwrap_or_default();
            let value_json = cells.next().flatten();
            Some((scope_key, state_key, value_json))
        });
        for (scope_key, state_key, value_json) in rows {
            let Some(scope) = wanted.get(scope_key.as_str()) else {
                continue;
            };
            let Some(text) = value_json else {
                tracing::warn!(%scope_key, %state_key, "state value is missing; skipped in snapshot");
                continue;
            };
            match value::decode(&text) {
                Ok(value) => {
                    snapshot.entry(*scope).or_default().insert(state_key, value);
                }
                // What LangBot's reader rejects too is skipped, as LangBot
                // skips it (SPEC section 5), with a warning naming the key.
                Err(e @ (ValueError::NotJson(_) | ValueError::TooDeep { .. })) => {
                    tracing::warn!(%scope_key, %state_key, error = %e, "state value is not readable JSON; skipped in snapshot");
                }
                // What LangBot reads but a JSON value cannot hold is an
                // error: leaving the key out would silently change the state.
                Err(source) => {
                    return Err(StateError::UnreadableValue {
                        scope_key,
                        state_key,
                        source,
                    });
                }
            }
        }
        if wanted.values().any(|s| *s == Scope::Conversation)
            && let Some(conversation_id) = ctx.columns().conversation_id.as_deref()
        {
            snapshot
                .entry(Scope::Conversation)
                .or_default()
                .entry(EXTERNAL_CONVERSATION_ID_KEY.to_owned())
                .or_insert_with(|| Value::String(conversation_id.to_owned()));
        }
        Ok(snapshot)
    }

    /// Applies a state update a runner returned with an event. Checks, in
    /// order: state enabled, scope valid, scope enabled, identity present,
    /// key and value valid; then sets.
    ///
    /// # Errors
    /// The first check that fails, or a database error.
    pub async fn apply_update(
        &self,
        ctx: &StateContext,
        policy: &StatePolicy,
        scope: &str,
        key: &str,
        value: &Value,
    ) -> Result<()> {
        if !policy.enable_state {
            return Err(StateError::StateDisabled);
        }
        let scope: Scope = scope.parse()?;
        if !policy.allows(scope) {
            return Err(StateError::ScopeNotEnabled(scope));
        }
        ctx.require_key(scope)?;
        self.set(ctx, scope, key, value).await
    }

    /// Runs `op`, unless inside the caller's transaction retrying, a few
    /// times each:
    /// * deadlocks and lock timeouts, after a pause (MariaDB reports them
    ///   under concurrent upserts of one key; Galera at commit);
    /// * when `resend` says the statement may be sent twice, a connection
    ///   that died under it (a server restart, a failover), at once: the
    ///   pool drops that connection and the next try gets another.
    async fn retrying<T, F, Fut>(&self, what: &str, resend: Resend, op: F) -> Result<T, DbErr>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        let (mut conflicts, mut lost) = (0, 0);
        loop {
            match op().await {
                Err(e)
                    if self.retry && conflicts < MAX_RETRIES && crate::retry::is_transient(&e) =>
                {
                    conflicts += 1;
                    tracing::warn!(attempt = conflicts, error = %e, "state {what} hit a lock conflict; retrying");
                    tokio::time::sleep(crate::retry::backoff(conflicts)).await;
                }
                Err(e)
                    if self.retry
                        && resend == Resend::Safe
                        && lost < MAX_LOST_CONNECTIONS
                        && crate::retry::is_connection_lost(&e) =>
                {
                    lost += 1;
                    tracing::warn!(attempt = lost, error = %e, "state {what}: the connection died; sending it again on another");
                }
                other => return other,
            }
        }
    }
}

/// Whether a statement may be sent again after its connection died without
/// saying whether it ran: reads and upserts give the same result twice; a
/// delete would report "nothing removed" the second time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    Safe,
    Never,
}

/// Dead connections a statement is resent past: more than a pool holds by
/// default (10), as after a restart every idle connection may be dead.
const MAX_LOST_CONNECTIONS: u32 = 16;

/// `conversation_id` is the public name of `external.conversation_id`.
fn public_key(key: &str) -> &str {
    if key == CONVERSATION_ID_KEY {
        EXTERNAL_CONVERSATION_ID_KEY
    } else {
        key
    }
}

/// A statement's SQL text on each backend, built by SeaQuery once: the text
/// depends only on the statement's shape, so later calls put their values
/// on it instead of building the query again. Building was a tenth of a
/// `get`'s client CPU under `perf` (SeaORM's `find()` starts from every
/// column). Debug builds, and so every test, still build each statement and
/// check that text and values agree with the cached ones (and the unit test
/// of every shape does in release builds too).
struct SqlText([OnceLock<String>; 3]);

impl SqlText {
    const fn new() -> Self {
        Self([OnceLock::new(), OnceLock::new(), OnceLock::new()])
    }

    /// The statement `build` makes from `values`, as `values` on the cached
    /// text.
    fn statement(
        &self,
        backend: DbBackend,
        values: Vec<sea_orm::Value>,
        build: impl Fn(&[sea_orm::Value]) -> Statement,
    ) -> Statement {
        let slot = &self.0[match backend {
            DbBackend::MySql => 0,
            DbBackend::Postgres => 1,
            _ => 2,
        }];
        let sql = slot.get_or_init(|| build(&values).sql);
        let stmt = Statement::from_sql_and_values(backend, sql.as_str(), values);
        #[cfg(any(debug_assertions, test))]
        {
            let values = stmt.values.as_ref().map_or(&[][..], |v| &v.0[..]);
            assert_eq!(
                stmt,
                build(values),
                "cached SQL text or values out of order"
            );
        }
        stmt
    }
}

/// The upsert [`StateStore::set`] runs: the whole row on insert; on
/// conflict with `(scope_key, state_key)`, only the value and `updated_at`.
/// Public so that the benchmark's raw-driver floor runs the very same SQL.
pub fn upsert_statement(
    backend: DbBackend,
    c: &IdentityColumns,
    scope: Scope,
    scope_key: &str,
    key: &str,
    value_json: String,
    now: NaiveDateTime,
) -> Statement {
    static TEXT: SqlText = SqlText::new();
    // In the order SeaORM's insert puts the columns (checked in debug
    // builds); the value at `VALUE_JSON`.
    const VALUE_JSON: usize = 5;
    let values: Vec<sea_orm::Value> = vec![
        c.runner_id.as_str().into(),
        c.binding_identity.as_str().into(),
        scope.as_str().into(),
        scope_key.into(),
        key.into(),
        value_json.into(),
        c.bot_id.clone().into(),
        c.workspace_id.clone().into(),
        c.conversation_id.clone().into(),
        c.thread_id.clone().into(),
        c.actor_type.clone().into(),
        c.actor_id.clone().into(),
        c.subject_type.clone().into(),
        c.subject_id.clone().into(),
        now.into(),
        now.into(),
    ];
    TEXT.statement(backend, values, |values| {
        // The value is the one large input: taken back from `values` when
        // the query is built, instead of copied for every call.
        let value_json = sea_orm::sea_query::ValueType::try_from(values[VALUE_JSON].clone())
            .expect("the value is text");
        let row = ActiveModel {
            id: NotSet,
            runner_id: Set(c.runner_id.clone()),
            binding_identity: Set(c.binding_identity.clone()),
            scope: Set(scope.as_str().to_owned()),
            scope_key: Set(scope_key.to_owned()),
            state_key: Set(key.to_owned()),
            value_json: Set(Some(value_json)),
            bot_id: Set(c.bot_id.clone()),
            workspace_id: Set(c.workspace_id.clone()),
            conversation_id: Set(c.conversation_id.clone()),
            thread_id: Set(c.thread_id.clone()),
            actor_type: Set(c.actor_type.clone()),
            actor_id: Set(c.actor_id.clone()),
            subject_type: Set(c.subject_type.clone()),
            subject_id: Set(c.subject_id.clone()),
            created_at: Set(now),
            updated_at: Set(now),
        };
        let upsert = OnConflict::columns([
            agent_runner_state::Column::ScopeKey,
            agent_runner_state::Column::StateKey,
        ])
        .update_columns([
            agent_runner_state::Column::ValueJson,
            agent_runner_state::Column::UpdatedAt,
        ])
        .to_owned();
        backend.build(&Entity::insert(row).on_conflict(upsert).into_query())
    })
}

/// The get by unique key: no `LIMIT` (`(scope_key, state_key)` is unique,
/// and SeaORM's `one()` binds its limit, which costs SQLite a fifth of a get).
pub fn get_statement(backend: DbBackend, scope_key: &str, key: &str) -> Statement {
    static TEXT: SqlText = SqlText::new();
    TEXT.statement(backend, vec![scope_key.into(), key.into()], |_| {
        backend.build(
            &Entity::find()
                .select_only()
                .column(agent_runner_state::Column::ValueJson)
                .filter(COLUMN.scope_key.eq(scope_key))
                .filter(COLUMN.state_key.eq(key))
                .into_query(),
        )
    })
}

/// Up to `limit` keys of a scope in code point order: every string starting
/// with `prefix` lies in `[prefix, successor)`, exact on every backend and a
/// range scan of the unique index.
pub fn list_statement(
    backend: DbBackend,
    scope_key: &str,
    prefix: Option<&str>,
    limit: u64,
) -> Statement {
    // One text per shape: no prefix, a prefix, a prefix and its successor.
    static TEXTS: [SqlText; 3] = [SqlText::new(), SqlText::new(), SqlText::new()];
    let end = prefix.and_then(prefix_successor);
    let mut values: Vec<sea_orm::Value> = vec![scope_key.into()];
    values.extend(prefix.map(Into::into));
    values.extend(end.clone().map(Into::into));
    values.push(limit.into());
    let shape = usize::from(prefix.is_some()) + usize::from(end.is_some());
    TEXTS[shape].statement(backend, values, |_| {
        let mut query = Entity::find()
            .select_only()
            .column(agent_runner_state::Column::StateKey)
            .filter(COLUMN.scope_key.eq(scope_key));
        if let Some(prefix) = prefix {
            query = query.filter(COLUMN.state_key.gte(prefix));
            if let Some(end) = &end {
                query = query.filter(COLUMN.state_key.lt(end.as_str()));
            }
        }
        backend.build(
            &query
                .order_by_asc(agent_runner_state::Column::StateKey)
                .limit(limit)
                .into_query(),
        )
    })
}

/// Every row of the given scope keys, in one query.
pub fn snapshot_statement<'a>(
    backend: DbBackend,
    scope_keys: impl IntoIterator<Item = &'a str>,
) -> Statement {
    // One text per number of scope keys; a snapshot asks for at most one
    // key per scope.
    static TEXTS: [SqlText; Scope::ALL.len()] = [const { SqlText::new() }; Scope::ALL.len()];
    let scope_keys: Vec<&str> = scope_keys.into_iter().collect();
    let build = || {
        backend.build(
            &Entity::find()
                .select_only()
                .columns([
                    agent_runner_state::Column::ScopeKey,
                    agent_runner_state::Column::StateKey,
                    agent_runner_state::Column::ValueJson,
                ])
                .filter(COLUMN.scope_key.is_in(scope_keys.iter().copied()))
                .into_query(),
        )
    };
    match scope_keys.len().checked_sub(1).and_then(|i| TEXTS.get(i)) {
        Some(text) => text.statement(
            backend,
            scope_keys.iter().map(|k| (*k).into()).collect(),
            |_| build(),
        ),
        None => build(),
    }
}

/// The length of a text column, in characters, as the entity declares it:
/// the one source of the column facts (the migration creates the same, and a
/// test compares the entity with each backend's catalog).
///
/// # Panics
/// For a column that is not a bounded string (a programming error).
pub fn max_chars(column: Column) -> usize {
    use sea_orm::sea_query::{ColumnType, StringLen};
    match column.def().get_column_type() {
        ColumnType::String(StringLen::N(n)) => *n as usize,
        other => panic!("{column:?} is not a bounded string column: {other:?}"),
    }
}

/// Timestamps as the columns keep them: naive UTC, to the microsecond (to
/// the second on MySQL's `DATETIME`, which would otherwise round up).
pub fn now(backend: DbBackend) -> NaiveDateTime {
    as_stored(backend, Utc::now().naive_utc())
}

/// `t` as the timestamp columns keep it on `backend`: to the microsecond,
/// to the second on MySQL's `DATETIME` (LangBot's DDL), which would
/// otherwise round up.
pub fn as_stored(backend: DbBackend, t: NaiveDateTime) -> NaiveDateTime {
    match backend {
        DbBackend::MySql => t.trunc_subsecs(0),
        _ => t.trunc_subsecs(6),
    }
}

pub(crate) fn validate_text(field: &'static str, text: &str, max: usize) -> Result<()> {
    if text.contains('\0') {
        return Err(StateError::NulCharacter { field });
    }
    let chars = text.chars().count();
    if chars > max {
        return Err(StateError::TooLong { field, chars, max });
    }
    Ok(())
}

fn validate_optional(field: &'static str, text: &Option<String>, max: usize) -> Result<()> {
    text.as_deref()
        .map_or(Ok(()), |t| validate_text(field, t, max))
}

fn validate_key(key: &str) -> Result<()> {
    validate_text("state_key", key, max_chars(Column::StateKey))
}

/// Every column a first set writes, against its length (SPEC section 3).
pub(crate) fn validate_context(c: &IdentityColumns) -> Result<()> {
    validate_text("runner_id", &c.runner_id, max_chars(Column::RunnerId))?;
    validate_text(
        "binding_identity",
        &c.binding_identity,
        max_chars(Column::BindingIdentity),
    )?;
    validate_optional("bot_id", &c.bot_id, max_chars(Column::BotId))?;
    validate_optional(
        "workspace_id",
        &c.workspace_id,
        max_chars(Column::WorkspaceId),
    )?;
    validate_optional(
        "conversation_id",
        &c.conversation_id,
        max_chars(Column::ConversationId),
    )?;
    validate_optional("thread_id", &c.thread_id, max_chars(Column::ThreadId))?;
    validate_optional("actor_type", &c.actor_type, max_chars(Column::ActorType))?;
    validate_optional("actor_id", &c.actor_id, max_chars(Column::ActorId))?;
    validate_optional(
        "subject_type",
        &c.subject_type,
        max_chars(Column::SubjectType),
    )?;
    validate_optional("subject_id", &c.subject_id, max_chars(Column::SubjectId))
}

fn serialize_value(value: &Value) -> Result<String> {
    let text = value::encode(value).map_err(StateError::InvalidValue)?;
    if text.len() > MAX_VALUE_BYTES {
        return Err(StateError::ValueTooLarge {
            size: text.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(text)
}

/// The least string greater than every string that starts with `prefix`,
/// in code point order: the last character raised by one (dropping
/// characters that are already U+10FFFF). `None`: no upper bound.
pub fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape on every backend, twice with other values: the second
    /// call puts its values on the text the first cached, and (in this
    /// debug build) `SqlText` checks it against SeaQuery's own build.
    #[test]
    fn cached_statements_are_the_ones_seaquery_builds() {
        let full = IdentityColumns::from_event(
            "plugin:langbot/local-agent/default",
            &crate::Binding {
                binding_id: Some("pipeline-1".into()),
                ..crate::Binding::default()
            },
            &crate::Event {
                bot_id: Some("bot-1".into()),
                conversation_id: Some("c-1".into()),
                actor: Some(crate::Actor {
                    actor_type: Some("user".into()),
                    actor_id: Some("u-1".into()),
                }),
                ..crate::Event::default()
            },
        );
        let bare = IdentityColumns::from_event(
            "plugin:langbot/local-agent/default",
            &crate::Binding::default(),
            &crate::Event::default(),
        );
        let t = NaiveDateTime::default();
        for backend in [DbBackend::MySql, DbBackend::Postgres, DbBackend::Sqlite] {
            for (c, key, json) in [(&full, "k", "1"), (&bare, "other", "[\"x\"]")] {
                let stmt = upsert_statement(backend, c, Scope::Actor, "sk", key, json.into(), t);
                assert!(stmt.values.unwrap().0.contains(&json.into()));
                get_statement(backend, "sk", key);
                for prefix in [None, Some(key), Some("\u{10FFFF}")] {
                    list_statement(backend, "sk", prefix, 101);
                }
                for n in 1..=Scope::ALL.len() + 1 {
                    let keys = Scope::ALL.iter().map(|s| s.as_str()).cycle().take(n);
                    snapshot_statement(backend, keys);
                }
            }
        }
    }

    #[test]
    fn successor_bounds_the_prefix_range() {
        assert_eq!(prefix_successor("ns1.").as_deref(), Some("ns1/"));
        assert_eq!(prefix_successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
    }

    #[test]
    fn value_size_limit_counts_utf8_bytes() {
        // A JSON string of n 'é' is 2n + 2 bytes.
        let fits = Value::String("é".repeat((MAX_VALUE_BYTES - 2) / 2));
        assert!(serialize_value(&fits).is_ok());
        let over = Value::String("é".repeat((MAX_VALUE_BYTES - 2) / 2 + 1));
        match serialize_value(&over) {
            Err(StateError::ValueTooLarge { size, limit }) => {
                assert_eq!((size, limit), (MAX_VALUE_BYTES + 2, MAX_VALUE_BYTES));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lengths_are_characters_and_nul_is_refused() {
        assert!(validate_key(&"é".repeat(255)).is_ok());
        assert!(matches!(
            validate_key(&"é".repeat(256)),
            Err(StateError::TooLong {
                field: "state_key",
                chars: 256,
                max: 255
            })
        ));
        assert!(matches!(
            validate_key("a\0b"),
            Err(StateError::NulCharacter { field: "state_key" })
        ));
    }
}
