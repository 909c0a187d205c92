//! Creates `agent_runner_state`, or adopts the one LangBot's Alembic made.
//!
//! Every object is checked by name in the live catalog and only what is
//! missing is created, so the migration runs the same on an empty database,
//! on one LangBot already migrated, and on a rerun after being killed halfway.
//! Rows are never dropped or rewritten; only column collations (and MySQL's
//! `value_json` type) are changed, as SPEC section 3 requires.
//!
//! Whether the table was created here or adopted is recorded in
//! [`ORIGIN_TABLE`] *before* the table is touched, so that `down` knows
//! whether it may drop the table or must hand it back to LangBot as it was.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::catalog::{self, TableSchema};

/// The table this migration creates or adopts.
pub const TABLE: &str = "agent_runner_state";

/// This workspace's record of how it came to own each table.
pub const ORIGIN_TABLE: &str = "agent_runner_state_origin";

/// The unique key LangBot's model declares.
pub const UNIQUE_KEY: (&str, &[&str]) = (
    "uq_agent_runner_state_scope_key_state_key",
    &["scope_key", "state_key"],
);

/// The indexes LangBot's Alembic revision creates, by their exact names.
pub const INDEXES: &[(&str, &[&str])] = &[
    ("ix_agent_runner_state_actor_id", &["actor_id"]),
    (
        "ix_agent_runner_state_binding_identity",
        &["binding_identity"],
    ),
    ("ix_agent_runner_state_bot_id", &["bot_id"]),
    (
        "ix_agent_runner_state_conversation_id",
        &["conversation_id"],
    ),
    (
        "ix_agent_runner_state_runner_binding",
        &["runner_id", "binding_identity"],
    ),
    ("ix_agent_runner_state_runner_id", &["runner_id"]),
    ("ix_agent_runner_state_scope", &["scope"]),
    ("ix_agent_runner_state_scope_key_lookup", &["scope_key"]),
];

/// The name LangBot releases before 2094993af gave the `scope_key` index. It
/// is left in place on adoption; the drift check reports it as redundant.
pub const LEGACY_SCOPE_KEY_INDEX: &str = "ix_agent_runner_state_scope_key";

#[derive(DeriveIden, Clone, Copy)]
enum AgentRunnerState {
    Table,
    Id,
    RunnerId,
    BindingIdentity,
    Scope,
    ScopeKey,
    StateKey,
    ValueJson,
    BotId,
    WorkspaceId,
    ConversationId,
    ThreadId,
    ActorType,
    ActorId,
    SubjectType,
    SubjectId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AgentRunnerStateOrigin {
    Table,
    TableName,
    Origin,
}

/// What a column holds, independent of backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Id,
    Varchar(u32),
    Value,
    Timestamp,
}

/// The table, column for column: LangBot's model (SPEC section 3).
const COLUMNS: &[(AgentRunnerState, Kind, bool)] = {
    use AgentRunnerState::*;
    use Kind::{Timestamp, Value, Varchar};
    &[
        (AgentRunnerState::Id, Kind::Id, false),
        (RunnerId, Varchar(255), false),
        (BindingIdentity, Varchar(255), false),
        (Scope, Varchar(50), false),
        (ScopeKey, Varchar(512), false),
        (StateKey, Varchar(255), false),
        (ValueJson, Value, true),
        (BotId, Varchar(255), true),
        (WorkspaceId, Varchar(255), true),
        (ConversationId, Varchar(255), true),
        (ThreadId, Varchar(255), true),
        (ActorType, Varchar(50), true),
        (ActorId, Varchar(255), true),
        (SubjectType, Varchar(50), true),
        (SubjectId, Varchar(255), true),
        (CreatedAt, Timestamp, false),
        (UpdatedAt, Timestamp, false),
    ]
};

/// The server flavour, which decides the exact collation's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: its default BINARY collation is already exact.
    Sqlite,
    /// PostgreSQL: `COLLATE "C"`.
    Postgres,
    /// MariaDB: `utf8mb4_nopad_bin` (`utf8mb4_bin` pads, so `a` = `a `).
    MariaDb,
    /// MySQL 8: `utf8mb4_0900_bin` (NO PAD).
    MySql,
}

impl Dialect {
    /// Asks the server which flavour it is.
    ///
    /// # Errors
    /// Any database error from `SELECT VERSION()`.
    pub async fn detect<C: ConnectionTrait>(db: &C) -> Result<Self, DbErr> {
        Ok(match db.get_database_backend() {
            DbBackend::Postgres => Self::Postgres,
            DbBackend::MySql => {
                let row = db
                    .query_one_raw(Statement::from_string(
                        DbBackend::MySql,
                        "SELECT CAST(VERSION() AS CHAR)",
                    ))
                    .await?
                    .ok_or_else(|| DbErr::Custom("SELECT VERSION() returned no row".into()))?;
                let version: String = row.try_get_by_index(0)?;
                if version.to_ascii_lowercase().contains("mariadb") {
                    Self::MariaDb
                } else {
                    Self::MySql
                }
            }
            _ => Self::Sqlite,
        })
    }

    /// The collation under which text compares by code point, with trailing
    /// spaces significant; `None` where the default already does (SQLite).
    pub fn exact_collation(self) -> Option<&'static str> {
        match self {
            Self::Sqlite => None,
            Self::Postgres => Some("C"),
            Self::MariaDb => Some("utf8mb4_nopad_bin"),
            Self::MySql => Some("utf8mb4_0900_bin"),
        }
    }

    fn quote(self, ident: &str) -> String {
        match self {
            Self::MariaDb | Self::MySql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    /// Our column type: LangBot's, plus the deliberate differences.
    fn column_type(self, kind: Kind) -> String {
        match (self, kind) {
            (Self::Sqlite, Kind::Id) => "INTEGER".into(),
            (Self::Sqlite, Kind::Varchar(n)) => format!("VARCHAR({n})"),
            (Self::Sqlite, Kind::Value) => "TEXT".into(),
            (Self::Sqlite, Kind::Timestamp) => "DATETIME".into(),
            (Self::Postgres, Kind::Id) => "serial".into(),
            (Self::Postgres, Kind::Varchar(n)) => format!("varchar({n}) COLLATE \"C\""),
            (Self::Postgres, Kind::Value) => "text".into(),
            (Self::Postgres, Kind::Timestamp) => "timestamp without time zone".into(),
            (Self::MariaDb | Self::MySql, Kind::Id) => "int".into(),
            (Self::MariaDb | Self::MySql, Kind::Varchar(n)) => {
                format!("varchar({n}) {}", self.mysql_charset())
            }
            (Self::MariaDb | Self::MySql, Kind::Value) => {
                format!("mediumtext {}", self.mysql_charset())
            }
            (Self::MariaDb | Self::MySql, Kind::Timestamp) => "datetime".into(),
        }
    }

    /// LangBot's own column type, which `down` restores on an adopted table.
    fn langbot_column_type(self, kind: Kind) -> String {
        match (self, kind) {
            (Self::Postgres, Kind::Varchar(n)) => format!("varchar({n}) COLLATE \"default\""),
            (Self::MariaDb | Self::MySql, Kind::Varchar(n)) => format!("varchar({n})"),
            (Self::MariaDb | Self::MySql, Kind::Value) => "text".into(),
            _ => self.column_type(kind),
        }
    }

    fn mysql_charset(self) -> String {
        format!(
            "CHARACTER SET utf8mb4 COLLATE {}",
            self.exact_collation().unwrap_or("utf8mb4_bin")
        )
    }
}

/// How this workspace came to own `agent_runner_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The migration created the table: `down` drops it.
    Created,
    /// LangBot created it: `down` restores LangBot's columns and keeps it.
    Adopted,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Adopted => "adopted",
        }
    }
}

/// Reads the recorded origin of `agent_runner_state`, if any.
///
/// # Errors
/// Any database error.
pub async fn recorded_origin<C: ConnectionTrait>(db: &C) -> Result<Option<Origin>, DbErr> {
    if !catalog::table_exists(db, ORIGIN_TABLE).await? {
        return Ok(None);
    }
    let query = Query::select()
        .column(AgentRunnerStateOrigin::Origin)
        .from(AgentRunnerStateOrigin::Table)
        .and_where(Expr::col(AgentRunnerStateOrigin::TableName).eq(TABLE))
        .to_owned();
    let Some(row) = db.query_one(&query).await? else {
        return Ok(None);
    };
    match row.try_get_by_index::<String>(0)?.as_str() {
        "created" => Ok(Some(Origin::Created)),
        "adopted" => Ok(Some(Origin::Adopted)),
        other => Err(DbErr::Migration(format!(
            "{ORIGIN_TABLE} holds an unknown origin {other:?} for {TABLE}"
        ))),
    }
}

/// The statements that bring the live table (`None`: absent) to our schema.
/// Pure: the migration runs them, and a plan can print them.
pub fn plan_up(dialect: Dialect, live: Option<&TableSchema>) -> Vec<String> {
    let mut out = Vec::new();
    let Some(live) = live else {
        out.push(create_table(dialect));
        out.extend(
            INDEXES
                .iter()
                .map(|(name, cols)| create_index(dialect, name, cols, false)),
        );
        return out;
    };
    if let Some(alter) = adopt_columns(dialect, live) {
        out.push(alter);
    }
    let (uq_name, uq_cols) = UNIQUE_KEY;
    if !live.has_index(uq_name) && !live.has_unique_on(uq_cols) {
        out.push(match dialect {
            // SQLite cannot add a table constraint; a unique index is its equal.
            Dialect::Sqlite => create_index(dialect, uq_name, uq_cols, true),
            _ => format!(
                "ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})",
                dialect.quote(TABLE),
                dialect.quote(uq_name),
                quote_list(dialect, uq_cols)
            ),
        });
    }
    for (name, cols) in INDEXES {
        if !live.has_index(name) {
            out.push(create_index(dialect, name, cols, false));
        }
    }
    out
}

fn create_table(dialect: Dialect) -> String {
    let mut table = Table::create();
    table.table(AgentRunnerState::Table);
    for &(iden, kind, nullable) in COLUMNS {
        let mut col = ColumnDef::new(iden);
        col.custom(dialect.column_type(kind));
        if nullable {
            col.null();
        } else {
            col.not_null();
        }
        if kind == Kind::Id {
            col.primary_key();
            if matches!(dialect, Dialect::MariaDb | Dialect::MySql) {
                col.auto_increment();
            }
        }
        table.col(col);
    }
    let (uq_name, uq_cols) = UNIQUE_KEY;
    let mut unique = Index::create();
    unique.name(uq_name).unique();
    for col in uq_cols {
        unique.col(Alias::new(*col));
    }
    table.index(&mut unique);
    if matches!(dialect, Dialect::MariaDb | Dialect::MySql) {
        table.engine("InnoDB").character_set("utf8mb4");
    }
    build(dialect, &table)
}

fn create_index(dialect: Dialect, name: &str, cols: &[&str], unique: bool) -> String {
    let mut index = Index::create();
    index.name(name).table(AgentRunnerState::Table);
    if unique {
        index.unique();
    }
    for col in cols {
        index.col(Alias::new(*col));
    }
    build(dialect, &index)
}

fn build<S: SchemaStatementBuilder>(dialect: Dialect, stmt: &S) -> String {
    match dialect {
        Dialect::Sqlite => stmt.to_string(SqliteQueryBuilder),
        Dialect::Postgres => stmt.to_string(PostgresQueryBuilder),
        Dialect::MariaDb | Dialect::MySql => stmt.to_string(MysqlQueryBuilder),
    }
}

fn quote_list(dialect: Dialect, cols: &[&str]) -> String {
    cols.iter()
        .map(|c| dialect.quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `ALTER TABLE` that gives an adopted table's columns our collation (and
/// MySQL's `value_json` room for 256 KiB); `None` when nothing differs.
fn adopt_columns(dialect: Dialect, live: &TableSchema) -> Option<String> {
    let exact = dialect.exact_collation()?;
    let mut changes = Vec::new();
    for &(iden, kind, nullable) in COLUMNS {
        let name = iden.to_string();
        let Some(col) = live.column(&name) else {
            continue;
        };
        let wrong_collation = col.collation.as_deref() != Some(exact);
        let needs_change = match (dialect, kind) {
            (_, Kind::Varchar(_)) => wrong_collation,
            (Dialect::MariaDb | Dialect::MySql, Kind::Value) => {
                wrong_collation || !matches!(col.data_type.as_str(), "mediumtext" | "longtext")
            }
            _ => false,
        };
        if !needs_change {
            continue;
        }
        let mut ty = dialect.column_type(kind);
        if kind == Kind::Value && col.data_type == "longtext" {
            // Never narrow a column someone widened.
            ty = format!("longtext {}", dialect.mysql_charset());
        }
        changes.push(alter_column(dialect, &name, &ty, nullable));
    }
    (!changes.is_empty()).then(|| {
        format!(
            "ALTER TABLE {} {}",
            dialect.quote(TABLE),
            changes.join(", ")
        )
    })
}

fn alter_column(dialect: Dialect, name: &str, ty: &str, nullable: bool) -> String {
    match dialect {
        Dialect::Postgres => format!("ALTER COLUMN {} TYPE {ty}", dialect.quote(name)),
        _ => format!(
            "MODIFY {} {ty} {}",
            dialect.quote(name),
            if nullable { "NULL" } else { "NOT NULL" }
        ),
    }
}

/// The statements that hand an adopted table back with LangBot's column
/// definitions; the table, its indexes and its rows stay.
pub fn plan_restore_langbot_columns(dialect: Dialect, live: &TableSchema) -> Option<String> {
    let exact = dialect.exact_collation()?;
    let mut changes = Vec::new();
    for &(iden, kind, nullable) in COLUMNS {
        let name = iden.to_string();
        let Some(col) = live.column(&name) else {
            continue;
        };
        let ours = col.collation.as_deref() == Some(exact);
        let restore = match (dialect, kind) {
            (_, Kind::Varchar(_)) => ours,
            (Dialect::MariaDb | Dialect::MySql, Kind::Value) => col.data_type == "mediumtext",
            _ => false,
        };
        if restore {
            changes.push(alter_column(
                dialect,
                &name,
                &dialect.langbot_column_type(kind),
                nullable,
            ));
        }
    }
    (!changes.is_empty()).then(|| {
        format!(
            "ALTER TABLE {} {}",
            dialect.quote(TABLE),
            changes.join(", ")
        )
    })
}

async fn exec<C: ConnectionTrait>(db: &C, sql: &str) -> Result<(), DbErr> {
    tracing::info!(target: "migration", "{sql}");
    db.execute_unprepared(sql).await.map(|_| ())
}

/// Creates (if missing) the origin table and records `origin` unless a
/// record exists, returning the recorded one. Runs before the table is
/// touched, so a rerun after a crash still knows who created it.
async fn record_origin<C: ConnectionTrait>(db: &C, origin: Origin) -> Result<Origin, DbErr> {
    let create = Table::create()
        .table(AgentRunnerStateOrigin::Table)
        .if_not_exists()
        .col(
            ColumnDef::new(AgentRunnerStateOrigin::TableName)
                .string_len(64)
                .not_null()
                .primary_key(),
        )
        .col(
            ColumnDef::new(AgentRunnerStateOrigin::Origin)
                .string_len(16)
                .not_null(),
        )
        .to_owned();
    db.execute(&create).await?;
    if let Some(existing) = recorded_origin(db).await? {
        return Ok(existing);
    }
    let insert = Query::insert()
        .into_table(AgentRunnerStateOrigin::Table)
        .columns([
            AgentRunnerStateOrigin::TableName,
            AgentRunnerStateOrigin::Origin,
        ])
        .values_panic([TABLE.into(), origin.as_str().into()])
        .to_owned();
    db.execute(&insert).await?;
    Ok(origin)
}

async fn forget_origin<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    if !catalog::table_exists(db, ORIGIN_TABLE).await? {
        return Ok(());
    }
    let delete = Query::delete()
        .from_table(AgentRunnerStateOrigin::Table)
        .and_where(Expr::col(AgentRunnerStateOrigin::TableName).eq(TABLE))
        .to_owned();
    db.execute(&delete).await?;
    let left = db
        .query_one(
            &Query::select()
                .expr(Expr::cust("1"))
                .from(AgentRunnerStateOrigin::Table)
                .to_owned(),
        )
        .await?;
    if left.is_none() {
        db.execute(
            &Table::drop()
                .table(AgentRunnerStateOrigin::Table)
                .to_owned(),
        )
        .await?;
    }
    Ok(())
}

/// The migration.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let dialect = Dialect::detect(db).await?;
        let live = catalog::read_table(db, TABLE).await?;
        let found = if live.is_some() {
            Origin::Adopted
        } else {
            Origin::Created
        };
        let origin = record_origin(db, found).await?;
        match (&live, origin) {
            (Some(_), Origin::Adopted) => {
                tracing::info!(target: "migration", "adopting existing {TABLE}")
            }
            (Some(_), Origin::Created) => {
                tracing::info!(target: "migration", "finishing {TABLE} created by an interrupted run")
            }
            (None, _) => tracing::info!(target: "migration", "creating {TABLE}"),
        }
        for sql in plan_up(dialect, live.as_ref()) {
            exec(db, &sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let dialect = Dialect::detect(db).await?;
        match recorded_origin(db).await? {
            Some(Origin::Adopted) => {
                if let Some(live) = catalog::read_table(db, TABLE).await? {
                    guard_value_size_for_text(db, dialect).await?;
                    if let Some(sql) = plan_restore_langbot_columns(dialect, &live) {
                        exec(db, &sql).await?;
                    }
                }
                tracing::info!(target: "migration", "{TABLE} was adopted: kept, with LangBot's column definitions");
            }
            Some(Origin::Created) | None => {
                if catalog::table_exists(db, TABLE).await? {
                    db.execute(&Table::drop().table(AgentRunnerState::Table).to_owned())
                        .await?;
                }
            }
        }
        forget_origin(db).await
    }
}

/// MySQL's `TEXT` holds 65,535 bytes: handing the table back with it would
/// truncate or fail on larger values, so `down` refuses before touching it.
async fn guard_value_size_for_text<C: ConnectionTrait>(
    db: &C,
    dialect: Dialect,
) -> Result<(), DbErr> {
    if !matches!(dialect, Dialect::MariaDb | Dialect::MySql) {
        return Ok(());
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::MySql,
            "SELECT COUNT(*) FROM agent_runner_state WHERE LENGTH(value_json) > 65535",
        ))
        .await?;
    let too_big: i64 = row.map_or(Ok(0), |r| r.try_get_by_index(0))?;
    if too_big > 0 {
        return Err(DbErr::Migration(format!(
            "cannot restore LangBot's TEXT value_json: {too_big} row(s) hold values over 65,535 bytes; \
             shorten or remove them first"
        )));
    }
    Ok(())
}

/// What the drift check found: `problems` make it fail, `notes` do not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Differences from the schema the migrations produce.
    pub problems: Vec<DriftItem>,
    /// Harmless extras: LangBot's older `scope_key` index, other indexes.
    pub notes: Vec<String>,
}

/// One difference between the live table and the migrated schema, for
/// people (`Display`) and pipelines (`check --format json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DriftItem {
    /// What differs: `missing_table`, `missing_column`, `column_type`,
    /// `column_nullability`, `column_collation`, `missing_unique_key`,
    /// `missing_index`, `index_columns`.
    pub kind: &'static str,
    /// The table, column, constraint or index.
    pub object: String,
    /// What the migrations produce.
    pub expected: Option<String>,
    /// What the database has (`None`: nothing).
    pub actual: Option<String>,
    /// The sentence `check` prints.
    pub message: String,
}

impl std::fmt::Display for DriftItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn item(
    kind: &'static str,
    object: &str,
    expected: Option<String>,
    actual: Option<String>,
    message: String,
) -> DriftItem {
    DriftItem {
        kind,
        object: object.to_owned(),
        expected,
        actual,
        message,
    }
}

/// Compares the live table with the schema this migration produces on
/// `dialect`: each column's type, nullability and collation, the unique key
/// and each named index.
pub fn drift(dialect: Dialect, live: Option<&TableSchema>) -> Drift {
    let mut out = Drift::default();
    let Some(live) = live else {
        out.problems.push(item(
            "missing_table",
            TABLE,
            Some("present".into()),
            None,
            format!("table {TABLE} is missing"),
        ));
        return out;
    };
    for &(iden, kind, nullable) in COLUMNS {
        let name = iden.to_string();
        let Some(col) = live.column(&name) else {
            out.problems.push(item(
                "missing_column",
                &name,
                Some("present".into()),
                None,
                format!("column {name} is missing"),
            ));
            continue;
        };
        let types = expected_types(dialect, kind);
        if !types.contains(&col.data_type) {
            out.problems.push(item(
                "column_type",
                &name,
                Some(types.join(" or ")),
                Some(col.data_type.clone()),
                format!(
                    "column {name}: type {}, expected {}",
                    col.data_type,
                    types.join(" or ")
                ),
            ));
        }
        if col.nullable != nullable {
            let word = |n: bool| if n { "nullable" } else { "not null" };
            out.problems.push(item(
                "column_nullability",
                &name,
                Some(word(nullable).into()),
                Some(word(col.nullable).into()),
                format!(
                    "column {name}: {}, expected {}",
                    word(col.nullable),
                    word(nullable)
                ),
            ));
        }
        let checks_collation = matches!(kind, Kind::Varchar(_))
            || (kind == Kind::Value && matches!(dialect, Dialect::MariaDb | Dialect::MySql));
        if let Some(exact) = dialect.exact_collation().filter(|_| checks_collation)
            && col.collation.as_deref() != Some(exact)
        {
            out.problems.push(item(
                "column_collation",
                &name,
                Some(exact.to_owned()),
                col.collation.clone(),
                format!(
                    "column {name}: collation {}, expected {exact}",
                    col.collation.as_deref().unwrap_or("(none)")
                ),
            ));
        }
    }
    for col in &live.columns {
        if !COLUMNS
            .iter()
            .any(|(iden, _, _)| iden.to_string() == col.name)
        {
            out.notes.push(format!("extra column {}", col.name));
        }
    }
    let (uq_name, uq_cols) = UNIQUE_KEY;
    if !live.has_index(uq_name) && !live.has_unique_on(uq_cols) {
        out.problems.push(item(
            "missing_unique_key",
            uq_name,
            Some(uq_cols.join(", ")),
            None,
            format!(
                "unique constraint {uq_name} ({}) is missing",
                uq_cols.join(", ")
            ),
        ));
    }
    for (name, cols) in INDEXES {
        match live.indexes.iter().find(|i| i.name == *name) {
            None => out.problems.push(item(
                "missing_index",
                name,
                Some(cols.join(", ")),
                None,
                format!("index {name} ({}) is missing", cols.join(", ")),
            )),
            Some(i) if i.columns != *cols => out.problems.push(item(
                "index_columns",
                name,
                Some(cols.join(", ")),
                Some(i.columns.join(", ")),
                format!(
                    "index {name}: columns ({}), expected ({})",
                    i.columns.join(", "),
                    cols.join(", ")
                ),
            )),
            Some(_) => {}
        }
    }
    for index in &live.indexes {
        let known = index.kind != crate::catalog::IndexKind::Index
            || INDEXES.iter().any(|(name, _)| *name == index.name);
        if index.name == LEGACY_SCOPE_KEY_INDEX {
            out.notes.push(format!(
                "redundant index {LEGACY_SCOPE_KEY_INDEX} (scope_key): LangBot's older name for \
                 ix_agent_runner_state_scope_key_lookup; safe to drop"
            ));
        } else if !known {
            out.notes.push(format!(
                "extra index {} ({})",
                index.name,
                index.columns.join(", ")
            ));
        }
    }
    out
}

/// Column types as each catalog spells them (see [`catalog`]).
fn expected_types(dialect: Dialect, kind: Kind) -> Vec<String> {
    match (dialect, kind) {
        (Dialect::Sqlite | Dialect::Postgres, Kind::Id) => vec!["integer".into()],
        (Dialect::Sqlite, Kind::Varchar(n)) => vec![format!("varchar({n})")],
        (Dialect::Postgres, Kind::Varchar(n)) => vec![format!("character varying({n})")],
        (Dialect::MariaDb | Dialect::MySql, Kind::Varchar(n)) => vec![format!("varchar({n})")],
        (Dialect::Sqlite | Dialect::Postgres, Kind::Value) => vec!["text".into()],
        (Dialect::MariaDb | Dialect::MySql, Kind::Value) => {
            vec!["mediumtext".into(), "longtext".into()]
        }
        (Dialect::Sqlite | Dialect::MariaDb | Dialect::MySql, Kind::Timestamp) => {
            vec!["datetime".into()]
        }
        (Dialect::Postgres, Kind::Timestamp) => vec!["timestamp without time zone".into()],
        (Dialect::MariaDb | Dialect::MySql, Kind::Id) => vec!["int(11)".into(), "int".into()],
    }
}
