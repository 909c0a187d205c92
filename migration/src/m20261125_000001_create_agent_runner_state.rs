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
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseExecutor, DbBackend, Statement};

use crate::catalog::{self, TableSchema};
use crate::schema::{AgentRunnerState, COLUMNS, Dialect, INDEXES, Kind, TABLE, UNIQUE_KEY};

/// This workspace's record of how it came to own each table.
pub const ORIGIN_TABLE: &str = "agent_runner_state_origin";

#[derive(DeriveIden)]
enum AgentRunnerStateOrigin {
    Table,
    TableName,
    Origin,
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
impl crate::Plan for Migration {
    async fn plan(&self, db: &DatabaseExecutor<'_>) -> Result<Vec<String>, DbErr> {
        let dialect = Dialect::detect(db).await?;
        let live = catalog::read_table(db, TABLE).await?;
        let mut lines = vec![format!(
            "-- {} agent_runner_state; recorded in {ORIGIN_TABLE}",
            if live.is_some() { "adopt" } else { "create" },
        )];
        lines.extend(
            plan_up(dialect, live.as_ref())
                .into_iter()
                .map(|sql| format!("{sql};")),
        );
        Ok(lines)
    }
}

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
