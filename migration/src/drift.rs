//! Schema drift: how the live `agent_runner_state` differs from
//! [`crate::schema`], for `migration check` (text and JSON).

use sea_orm_migration::prelude::*;

use crate::catalog::TableSchema;
use crate::schema::{
    COLUMNS, Dialect, INDEXES, Kind, LEGACY_SCOPE_KEY_INDEX, TABLE, UNIQUE_KEY, expected_types,
};

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
