#![doc = include_str!("../README.md")]

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseExecutor;

pub mod catalog;
pub mod cli;
pub mod drift;
pub mod failure;
pub mod history;
pub mod lock;
mod m20261125_000001_create_agent_runner_state;
mod m20261125_000002_port_legacy_runner_blocks;
mod m20261125_000003_rename_runner_ids;

/// The create-or-adopt migration's record of how the table came to be.
pub mod origin {
    pub use crate::m20261125_000001_create_agent_runner_state::{
        ORIGIN_TABLE, Origin, recorded_origin,
    };
}

/// The legacy runner port (SPEC section 6): its backup table and the pass
/// itself.
pub mod port {
    pub use crate::m20261125_000002_port_legacy_runner_blocks::{BACKUP_TABLE, port_all};
    pub use crate::pipeline_rewrite::{PIPELINES_TABLE, RewriteSummary};
}

/// The runner id rename (SPEC section 7): the tables it keeps and the pass
/// over state rows.
pub mod rename {
    pub use crate::m20261125_000003_rename_runner_ids::{
        CONFIG_BACKUP_TABLE, CONFLICTS_TABLE, RENAME_LOG_TABLE, RenameSummary, rename_state_rows,
    };
}
pub mod pipeline_rewrite;
pub mod schema;
pub mod settings;

/// Every migration of this workspace, in the order they apply.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_agent_runner_state::Migration),
            Box::new(m20261125_000002_port_legacy_runner_blocks::Migration),
            Box::new(m20261125_000003_rename_runner_ids::Migration),
        ]
    }
}

/// What a migration would do, for `migration plan`: each migration answers
/// for itself.
#[async_trait::async_trait]
pub(crate) trait Plan: MigrationName + Sync {
    /// The statements (schema migrations) or a sentence (data migrations)
    /// it would run on `db`. Reads only.
    async fn plan(&self, db: &DatabaseExecutor<'_>) -> Result<Vec<String>, DbErr>;
}

/// Every migration's plan, in [`Migrator::migrations`]' order.
fn plans() -> Vec<Box<dyn Plan>> {
    vec![
        Box::new(m20261125_000001_create_agent_runner_state::Migration),
        Box::new(m20261125_000002_port_legacy_runner_blocks::Migration),
        Box::new(m20261125_000003_rename_runner_ids::Migration),
    ]
}

/// What the pending migration `name` would do on `db`, as SQL statements
/// (schema migrations) or a sentence (data migrations). Reads only.
///
/// # Errors
/// Any database error while reading the catalog.
pub async fn plan(db: &DatabaseExecutor<'_>, name: &str) -> Result<Vec<String>, DbErr> {
    match plans().into_iter().find(|p| p.name() == name) {
        Some(p) => p.plan(db).await,
        None => Ok(vec![format!("-- {name}: no plan")]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_has_a_plan_in_the_same_order() {
        let migrations: Vec<String> = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_owned())
            .collect();
        let plans: Vec<String> = plans().iter().map(|p| p.name().to_owned()).collect();
        assert_eq!(migrations, plans);
    }
}
