#![doc = include_str!("../README.md")]

pub use sea_orm_migration::prelude::*;

pub mod catalog;
pub mod m20261125_000001_create_agent_runner_state;

/// Every migration of this workspace, in the order they apply.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(
            m20261125_000001_create_agent_runner_state::Migration,
        )]
    }
}
