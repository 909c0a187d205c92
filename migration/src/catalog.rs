//! Reads a table's live schema back from each backend's own catalog.
//!
//! The migration decides what to create by asking the catalog, never by
//! trusting `IF NOT EXISTS` (MySQL has none for indexes), and the schema
//! snapshots are taken from here so that they show what the server really
//! holds, not what our DDL strings meant to say.

use std::fmt;

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

/// One column as the catalog reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Declared type, normalised to lower case (`varchar(255)`, `mediumtext`).
    pub data_type: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Collation of a text column, where the backend records one per column
    /// (PostgreSQL, MySQL); `None` on SQLite and for non-text columns.
    pub collation: Option<String>,
    /// Default expression, if any.
    pub default: Option<String>,
    /// Other attributes the catalog reports (MySQL's `auto_increment`).
    pub extra: Option<String>,
}

/// Kind of an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IndexKind {
    /// The primary key.
    Primary,
    /// A unique constraint or unique index.
    Unique,
    /// A plain index.
    Index,
}

/// One index (or key constraint, which every backend backs by an index).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexInfo {
    /// Name as the catalog stores it. SQLite names the index behind an inline
    /// `UNIQUE` constraint `sqlite_autoindex_<table>_<n>`, whatever the
    /// constraint was called.
    pub name: String,
    /// Primary, unique or plain.
    pub kind: IndexKind,
    /// Indexed columns, in key order.
    pub columns: Vec<String>,
}

/// A table as the live catalog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    /// Table name.
    pub name: String,
    /// Columns in their ordinal order.
    pub columns: Vec<ColumnInfo>,
    /// Indexes sorted by name.
    pub indexes: Vec<IndexInfo>,
}

impl TableSchema {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Whether an index (or constraint) called `name` exists.
    pub fn has_index(&self, name: &str) -> bool {
        self.indexes.iter().any(|i| i.name == name)
    }

    /// Whether some unique key covers exactly `columns`, in that order.
    pub fn has_unique_on(&self, columns: &[&str]) -> bool {
        self.indexes
            .iter()
            .any(|i| i.kind != IndexKind::Index && i.columns == columns)
    }
}

impl fmt::Display for TableSchema {
    /// One line per column and per index, stable across runs: the form the
    /// schema snapshots and the drift check compare.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table {}", self.name)?;
        for c in &self.columns {
            writeln!(f, "  {}", c.describe())?;
        }
        for i in &self.indexes {
            writeln!(f, "  {}", i.describe())?;
        }
        Ok(())
    }
}

/// Whether a table called `table` exists in the connection's current
/// database (MySQL) or schema (PostgreSQL).
///
/// # Errors
/// Any database error from the catalog query.
pub async fn table_exists<C: ConnectionTrait>(db: &C, table: &str) -> Result<bool, DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = $1 AND n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        }
        DbBackend::MySql => {
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
        }
        _ => "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [table.into()]))
        .await?;
    Ok(row.is_some())
}

/// Every table of the current database or schema, sorted by name.
///
/// # Errors
/// Any database error from the catalog query.
pub async fn table_names<C: ConnectionTrait>(db: &C) -> Result<Vec<String>, DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') ORDER BY 1"
        }
        DbBackend::MySql => {
            "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1"
        }
        _ => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY 1"
        }
    };
    let rows = db
        .query_all_raw(Statement::from_string(backend, sql))
        .await?;
    rows.iter().map(|r| r.try_get_by_index(0)).collect()
}

/// Reads `table` from the live catalog; `None` when it does not exist.
///
/// # Errors
/// Any database error from the catalog queries.
pub async fn read_table<C: ConnectionTrait>(
    db: &C,
    table: &str,
) -> Result<Option<TableSchema>, DbErr> {
    if !table_exists(db, table).await? {
        return Ok(None);
    }
    let (columns, mut indexes) = match db.get_database_backend() {
        DbBackend::Postgres => (pg_columns(db, table).await?, pg_indexes(db, table).await?),
        DbBackend::MySql => (
            mysql_columns(db, table).await?,
            mysql_indexes(db, table).await?,
        ),
        _ => (
            sqlite_columns(db, table).await?,
            sqlite_indexes(db, table).await?,
        ),
    };
    indexes.sort();
    Ok(Some(TableSchema {
        name: table.to_owned(),
        columns,
        indexes,
    }))
}

async fn rows<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<Vec<sea_orm_migration::sea_orm::QueryResult>, DbErr> {
    db.query_all_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        values,
    ))
    .await
}

async fn pg_columns<C: ConnectionTrait>(db: &C, table: &str) -> Result<Vec<ColumnInfo>, DbErr> {
    let sql = "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, \
               CASE WHEN a.attcollation = 0 THEN NULL ELSE co.collname::text END, \
               pg_catalog.pg_get_expr(d.adbin, d.adrelid) \
               FROM pg_catalog.pg_attribute a \
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
               LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
               WHERE c.relname = $1 AND n.nspname = current_schema() AND a.attnum > 0 AND NOT a.attisdropped \
               ORDER BY a.attnum";
    rows(db, sql, [table.into()])
        .await?
        .iter()
        .map(|r| {
            Ok(ColumnInfo {
                name: r.try_get_by_index(0)?,
                data_type: r.try_get_by_index::<String>(1)?.to_lowercase(),
                nullable: r.try_get_by_index(2)?,
                collation: r.try_get_by_index(3)?,
                default: r.try_get_by_index(4)?,
                extra: None,
            })
        })
        .collect()
}

async fn pg_indexes<C: ConnectionTrait>(db: &C, table: &str) -> Result<Vec<IndexInfo>, DbErr> {
    let sql = "SELECT i.relname::text, ix.indisprimary, ix.indisunique, \
               (SELECT string_agg(a.attname::text, ',' ORDER BY k.ord) \
                  FROM unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord) \
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum) \
               FROM pg_catalog.pg_index ix \
               JOIN pg_catalog.pg_class i ON i.oid = ix.indexrelid \
               JOIN pg_catalog.pg_class t ON t.oid = ix.indrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace \
               WHERE t.relname = $1 AND n.nspname = current_schema()";
    rows(db, sql, [table.into()])
        .await?
        .iter()
        .map(|r| {
            let primary: bool = r.try_get_by_index(1)?;
            let unique: bool = r.try_get_by_index(2)?;
            let columns: Option<String> = r.try_get_by_index(3)?;
            Ok(IndexInfo {
                name: r.try_get_by_index(0)?,
                kind: kind_of(primary, unique),
                columns: split_columns(columns.as_deref().unwrap_or("")),
            })
        })
        .collect()
}

async fn mysql_columns<C: ConnectionTrait>(db: &C, table: &str) -> Result<Vec<ColumnInfo>, DbErr> {
    let sql = "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), CAST(IS_NULLABLE AS CHAR), \
               CAST(COLLATION_NAME AS CHAR), CAST(COLUMN_DEFAULT AS CHAR), CAST(EXTRA AS CHAR) \
               FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
               ORDER BY ORDINAL_POSITION";
    rows(db, sql, [table.into()])
        .await?
        .iter()
        .map(|r| {
            let nullable: String = r.try_get_by_index(2)?;
            let default: Option<String> = r.try_get_by_index(4)?;
            let extra: Option<String> = r.try_get_by_index(5)?;
            // MariaDB reports "no default" as the text NULL on nullable columns.
            let default = default.filter(|d| d != "NULL");
            let extra = extra
                .map(|e| e.trim().to_lowercase())
                .filter(|e| !e.is_empty());
            Ok(ColumnInfo {
                name: r.try_get_by_index(0)?,
                data_type: r.try_get_by_index::<String>(1)?.to_lowercase(),
                nullable: nullable == "YES",
                collation: r.try_get_by_index(3)?,
                default,
                extra,
            })
        })
        .collect()
}

async fn mysql_indexes<C: ConnectionTrait>(db: &C, table: &str) -> Result<Vec<IndexInfo>, DbErr> {
    let sql = "SELECT CAST(INDEX_NAME AS CHAR), MAX(NON_UNIQUE), \
               CAST(GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX SEPARATOR ',') AS CHAR) \
               FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? \
               GROUP BY INDEX_NAME";
    rows(db, sql, [table.into()])
        .await?
        .iter()
        .map(|r| {
            let name: String = r.try_get_by_index(0)?;
            let non_unique: i64 = r.try_get_by_index(1)?;
            let columns: String = r.try_get_by_index(2)?;
            Ok(IndexInfo {
                kind: kind_of(name == "PRIMARY", non_unique == 0),
                name,
                columns: split_columns(&columns),
            })
        })
        .collect()
}

async fn sqlite_columns<C: ConnectionTrait>(db: &C, table: &str) -> Result<Vec<ColumnInfo>, DbErr> {
    let sql =
        "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?) ORDER BY cid";
    rows(db, sql, [table.into()])
        .await?
        .iter()
        .map(|r| {
            let not_null: i32 = r.try_get_by_index(2)?;
            let pk: i32 = r.try_get_by_index(4)?;
            Ok(ColumnInfo {
                name: r.try_get_by_index(0)?,
                // SQLite keeps the declared type text as written; its type
                // affinity ignores case, so case is not a difference.
                data_type: r.try_get_by_index::<String>(1)?.to_lowercase(),
                nullable: not_null == 0 && pk == 0,
                collation: None,
                default: r.try_get_by_index(3)?,
                extra: None,
            })
        })
        .collect()
}

async fn sqlite_indexes<C: ConnectionTrait>(db: &C, table: &str) -> Result<Vec<IndexInfo>, DbErr> {
    let list = rows(
        db,
        "SELECT name, \"unique\", origin FROM pragma_index_list(?)",
        [table.into()],
    )
    .await?;
    let mut out = Vec::with_capacity(list.len() + 1);
    for r in &list {
        let name: String = r.try_get_by_index(0)?;
        let unique: i32 = r.try_get_by_index(1)?;
        let origin: String = r.try_get_by_index(2)?;
        let cols = rows(
            db,
            "SELECT name FROM pragma_index_info(?) ORDER BY seqno",
            [name.clone().into()],
        )
        .await?
        .iter()
        .map(|c| c.try_get_by_index::<String>(0))
        .collect::<Result<Vec<_>, _>>()?;
        out.push(IndexInfo {
            kind: kind_of(origin == "pk", unique != 0),
            name,
            columns: cols,
        });
    }
    // An INTEGER PRIMARY KEY is the rowid itself and has no index entry.
    if !out.iter().any(|i| i.kind == IndexKind::Primary) {
        let pk = rows(
            db,
            "SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk",
            [table.into()],
        )
        .await?
        .iter()
        .map(|c| c.try_get_by_index::<String>(0))
        .collect::<Result<Vec<_>, _>>()?;
        if !pk.is_empty() {
            out.push(IndexInfo {
                name: "(rowid)".to_owned(),
                kind: IndexKind::Primary,
                columns: pk,
            });
        }
    }
    Ok(out)
}

fn kind_of(primary: bool, unique: bool) -> IndexKind {
    match (primary, unique) {
        (true, _) => IndexKind::Primary,
        (false, true) => IndexKind::Unique,
        (false, false) => IndexKind::Index,
    }
}

fn split_columns(joined: &str) -> Vec<String> {
    joined
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ColumnInfo {
    fn describe(&self) -> String {
        let mut s = format!(
            "column {} {}{}",
            self.name,
            self.data_type,
            if self.nullable { " null" } else { " not null" }
        );
        if let Some(coll) = &self.collation {
            s.push_str(&format!(" collate {coll}"));
        }
        if let Some(default) = &self.default {
            s.push_str(&format!(" default {default}"));
        }
        if let Some(extra) = &self.extra {
            s.push_str(&format!(" {extra}"));
        }
        s
    }
}

impl IndexInfo {
    fn describe(&self) -> String {
        let kind = match self.kind {
            IndexKind::Primary => "primary key",
            IndexKind::Unique => "unique",
            IndexKind::Index => "index",
        };
        format!("{kind} {} ({})", self.name, self.columns.join(", "))
    }
}

/// What differs from `from` to `to`, one `- ` / `+ ` line per column or
/// index that was removed, added or changed; empty when they agree.
pub fn diff(from: &TableSchema, to: &TableSchema) -> Vec<String> {
    let mut out = Vec::new();
    for c in &from.columns {
        match to.column(&c.name) {
            Some(t) if t == c => {}
            Some(t) => {
                out.push(format!("- {}", c.describe()));
                out.push(format!("+ {}", t.describe()));
            }
            None => out.push(format!("- {}", c.describe())),
        }
    }
    for t in &to.columns {
        if from.column(&t.name).is_none() {
            out.push(format!("+ {}", t.describe()));
        }
    }
    let find = |s: &TableSchema, name: &str| s.indexes.iter().find(|i| i.name == name).cloned();
    for i in &from.indexes {
        match find(to, &i.name) {
            Some(t) if t == *i => {}
            Some(t) => {
                out.push(format!("- {}", i.describe()));
                out.push(format!("+ {}", t.describe()));
            }
            None => out.push(format!("- {}", i.describe())),
        }
    }
    for t in &to.indexes {
        if find(from, &t.name).is_none() {
            out.push(format!("+ {}", t.describe()));
        }
    }
    out
}
