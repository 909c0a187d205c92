//! The schema the migrations produce today: the target `check` compares the
//! live table with, and what `plan` and the create-or-adopt migration build.
//!
//! A migration that changes the schema (a future `m..._000004`) edits this
//! file; `m20261125_000001` must then keep creating what it created, so
//! freeze the definitions it uses into it first (SeaORM's convention: a
//! migration owns the model it was written against).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

/// The table this migration creates or adopts.
pub const TABLE: &str = "agent_runner_state";

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
pub(crate) enum AgentRunnerState {
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

/// What a column holds, independent of backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Id,
    Varchar(u32),
    Value,
    Timestamp,
}

/// The table, column for column: LangBot's model (SPEC section 3).
pub(crate) const COLUMNS: &[(AgentRunnerState, Kind, bool)] = {
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

    pub(crate) fn quote(self, ident: &str) -> String {
        match self {
            Self::MariaDb | Self::MySql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    /// Our column type: LangBot's, plus the deliberate differences.
    pub(crate) fn column_type(self, kind: Kind) -> String {
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
    pub(crate) fn langbot_column_type(self, kind: Kind) -> String {
        match (self, kind) {
            (Self::Postgres, Kind::Varchar(n)) => format!("varchar({n}) COLLATE \"default\""),
            (Self::MariaDb | Self::MySql, Kind::Varchar(n)) => format!("varchar({n})"),
            (Self::MariaDb | Self::MySql, Kind::Value) => "text".into(),
            _ => self.column_type(kind),
        }
    }

    pub(crate) fn mysql_charset(self) -> String {
        format!(
            "CHARACTER SET utf8mb4 COLLATE {}",
            self.exact_collation().unwrap_or("utf8mb4_bin")
        )
    }
}

/// Column types as each catalog spells them (see [`catalog`]).
pub(crate) fn expected_types(dialect: Dialect, kind: Kind) -> Vec<String> {
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
