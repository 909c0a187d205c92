//! `agent_runner_state`: host-owned state of LangBot's agent runners.
//!
//! Column for column the mirror of LangBot's SQLAlchemy model
//! `AgentRunnerState` (SPEC section 3). Timestamps are naive UTC, as LangBot
//! writes them.

use sea_orm::entity::prelude::*;

/// One stored state value: `(scope_key, state_key)` is unique.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "agent_runner_state")]
pub struct Model {
    /// Surrogate key; rows are addressed by `(scope_key, state_key)`.
    #[sea_orm(primary_key)]
    pub id: i32,
    /// `plugin:author/name/runner`.
    #[sea_orm(column_type = "String(StringLen::N(255))")]
    pub runner_id: String,
    /// The binding's id, or `scope_type:scope_id`, or `unknown_binding`.
    #[sea_orm(column_type = "String(StringLen::N(255))")]
    pub binding_identity: String,
    /// `conversation`, `actor`, `subject` or `runner`.
    #[sea_orm(column_type = "String(StringLen::N(50))")]
    pub scope: String,
    /// `{scope}:v2:{sha256}` of the scope's identity.
    #[sea_orm(
        column_type = "String(StringLen::N(512))",
        unique_key = "scope_key_state_key"
    )]
    pub scope_key: String,
    /// The key the runner chose.
    #[sea_orm(
        column_type = "String(StringLen::N(255))",
        unique_key = "scope_key_state_key"
    )]
    pub state_key: String,
    /// The value as JSON text.
    #[sea_orm(column_type = "Text", nullable)]
    pub value_json: Option<String>,
    /// Context of the first write.
    #[sea_orm(column_type = "String(StringLen::N(255))", nullable)]
    pub bot_id: Option<String>,
    #[allow(missing_docs)]
    #[sea_orm(column_type = "String(StringLen::N(255))", nullable)]
    pub workspace_id: Option<String>,
    #[allow(missing_docs)]
    #[sea_orm(column_type = "String(StringLen::N(255))", nullable)]
    pub conversation_id: Option<String>,
    #[allow(missing_docs)]
    #[sea_orm(column_type = "String(StringLen::N(255))", nullable)]
    pub thread_id: Option<String>,
    #[allow(missing_docs)]
    #[sea_orm(column_type = "String(StringLen::N(50))", nullable)]
    pub actor_type: Option<String>,
    #[allow(missing_docs)]
    #[sea_orm(column_type = "String(StringLen::N(255))", nullable)]
    pub actor_id: Option<String>,
    #[allow(missing_docs)]
    #[sea_orm(column_type = "String(StringLen::N(50))", nullable)]
    pub subject_type: Option<String>,
    #[allow(missing_docs)]
    #[sea_orm(column_type = "String(StringLen::N(255))", nullable)]
    pub subject_id: Option<String>,
    /// Set on insert (naive UTC).
    pub created_at: DateTime,
    /// Set on insert and on every update (naive UTC).
    pub updated_at: DateTime,
}

impl ActiveModelBehavior for ActiveModel {}
