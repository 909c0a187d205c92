#![doc = include_str!("../README.md")]

pub use sea_orm_migration::prelude::*;

pub mod catalog;
pub mod cli;
pub mod lock;
pub mod m20261125_000001_create_agent_runner_state;
pub mod m20261125_000002_port_legacy_runner_blocks;
pub mod m20261125_000003_rename_runner_ids;
pub mod pipeline_rewrite;
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

/// What the pending migration `name` would do on `db`, as SQL statements
/// (schema migrations) or a sentence (data migrations). Reads only.
///
/// # Errors
/// Any database error while reading the catalog.
pub async fn plan<C: sea_orm_migration::sea_orm::ConnectionTrait>(
    db: &C,
    name: &str,
) -> Result<Vec<String>, DbErr> {
    use m20261125_000001_create_agent_runner_state as create;
    if name == create::Migration.name() {
        let dialect = create::Dialect::detect(db).await?;
        let live = catalog::read_table(db, create::TABLE).await?;
        let mut lines = vec![format!(
            "-- {} agent_runner_state; recorded in {}",
            if live.is_some() { "adopt" } else { "create" },
            create::ORIGIN_TABLE
        )];
        lines.extend(
            create::plan_up(dialect, live.as_ref())
                .into_iter()
                .map(|sql| format!("{sql};")),
        );
        return Ok(lines);
    }
    use m20261125_000002_port_legacy_runner_blocks as port;
    if name == port::Migration.name() {
        return Ok(vec![format!(
            "-- data migration: port legacy runner blocks in {} (batches of {}), keeping originals in {}",
            port::PIPELINES_TABLE,
            settings::batch_size(),
            port::BACKUP_TABLE
        )]);
    }
    use m20261125_000003_rename_runner_ids as rename;
    if name == rename::Migration.name() {
        return Ok(vec![format!(
            "-- data migration: rename official runner ids in {} and agent_runner_state (batches of {}), \
             keeping what it changes in {}, {} and {}",
            port::PIPELINES_TABLE,
            settings::batch_size(),
            rename::CONFIG_BACKUP_TABLE,
            rename::RENAME_LOG_TABLE,
            rename::CONFLICTS_TABLE
        )]);
    }
    Ok(vec![format!("-- {name}: no schema statements")])
}
