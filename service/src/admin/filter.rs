//! Which rows `list`, `export` and `purge` touch.

use crate::Scope;
use entity::agent_runner_state::{COLUMN, Column, Entity};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, Select};

/// Which rows: every given filter must match, exactly (the key columns
/// compare by code point, so `Bob` never matches `bob` or `Bob `). Values
/// are bound as parameters, never spliced into SQL.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Filter {
    /// Runner id (`plugin:author/name/runner`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub runner: Option<String>,
    /// Binding identity.
    #[cfg_attr(feature = "cli", arg(long))]
    pub binding: Option<String>,
    /// Bot id.
    #[cfg_attr(feature = "cli", arg(long))]
    pub bot: Option<String>,
    /// Actor type (with --actor-id).
    #[cfg_attr(feature = "cli", arg(long))]
    pub actor_type: Option<String>,
    /// Actor id.
    #[cfg_attr(feature = "cli", arg(long))]
    pub actor_id: Option<String>,
    /// Conversation id.
    #[cfg_attr(feature = "cli", arg(long))]
    pub conversation: Option<String>,
    /// Thread id (with --conversation).
    #[cfg_attr(feature = "cli", arg(long))]
    pub thread: Option<String>,
    /// Scope: conversation, actor, subject or runner.
    #[cfg_attr(feature = "cli", arg(long))]
    pub scope: Option<Scope>,
    /// Literal prefix of the state key.
    #[cfg_attr(feature = "cli", arg(long))]
    pub key_prefix: Option<String>,
}

impl Filter {
    /// The filters as a condition on `agent_runner_state`.
    pub fn condition(&self) -> Condition {
        let mut c = Condition::all();
        let exact = [
            (Column::RunnerId, &self.runner),
            (Column::BindingIdentity, &self.binding),
            (Column::BotId, &self.bot),
            (Column::ActorType, &self.actor_type),
            (Column::ActorId, &self.actor_id),
            (Column::ConversationId, &self.conversation),
            (Column::ThreadId, &self.thread),
        ];
        for (column, value) in exact {
            if let Some(v) = value {
                c = c.add(column.eq(v.as_str()));
            }
        }
        if let Some(scope) = self.scope {
            c = c.add(COLUMN.scope.eq(scope.as_str()));
        }
        if let Some(prefix) = self.key_prefix.as_deref().filter(|p| !p.is_empty()) {
            // A code-point range, as the state store lists: never a pattern.
            c = c.add(COLUMN.state_key.gte(prefix));
            if let Some(end) = crate::store::prefix_successor(prefix) {
                c = c.add(COLUMN.state_key.lt(end));
            }
        }
        c
    }

    /// Whether the filter names whose rows these are (an actor, a
    /// conversation, a runner or a binding), as a purge requires.
    pub fn names_whose_rows(&self) -> bool {
        self.actor_id.is_some()
            || self.conversation.is_some()
            || self.runner.is_some()
            || self.binding.is_some()
    }

    /// `SELECT ... WHERE <filters>`.
    pub fn select(&self) -> Select<Entity> {
        Entity::find().filter(self.condition())
    }
}
