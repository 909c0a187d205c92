//! Ports legacy runner blocks in `legacy_pipelines.config` to plugin runner
//! ids (SPEC section 6), with [`crate::pipeline_rewrite`]: in batches, only
//! changed rows written, originals kept for `down`, safe to kill. Configs
//! whose `ai`, `ai.runner` or `ai.runner_config` is not an object (or that
//! are not JSON) stay as they are and are reported by pipeline uuid.

use sea_orm_migration::prelude::*;
use service::legacy::port_in_place;

pub use crate::pipeline_rewrite::PIPELINES_TABLE;
use crate::pipeline_rewrite::{self, Borrowed, Overlap, Rewrite, RewriteSummary};
use crate::settings;

/// This workspace's table of original configs, for `down`.
pub const BACKUP_TABLE: &str = "legacy_pipelines_runner_port_backup";

const PORT: Rewrite = Rewrite {
    label: "legacy runner port",
    backup_table: BACKUP_TABLE,
    transform: port_in_place,
};

/// Ports every pipeline config, up to `overlap` batches at once.
///
/// # Errors
/// A database error; the batches committed before it stay.
pub async fn port_all<'c>(
    db: impl Borrowed<'c>,
    batch_size: u64,
    overlap: Overlap,
) -> Result<RewriteSummary, DbErr> {
    pipeline_rewrite::rewrite_all(db, &PORT, batch_size, overlap).await
}

/// The migration.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl crate::Plan for Migration {
    async fn plan(
        &self,
        _db: &sea_orm_migration::sea_orm::DatabaseExecutor<'_>,
    ) -> Result<Vec<String>, DbErr> {
        Ok(vec![format!(
            "-- data migration: port legacy runner blocks in {PIPELINES_TABLE} (batches of {}), keeping originals in {BACKUP_TABLE}",
            settings::batch_size(),
        )])
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        port_all(
            manager.get_connection(),
            settings::batch_size(),
            Overlap::AUTO,
        )
        .await
        .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        pipeline_rewrite::restore_all(
            manager.get_connection(),
            BACKUP_TABLE,
            settings::batch_size(),
        )
        .await
        .map(|_| ())
    }

    /// Each batch commits on its own, so that a killed run keeps its work.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}
