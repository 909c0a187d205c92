//! Applying and rolling back migrations, as sea-orm-migration's
//! `Migrator::up` and `down` do (same history table, same rows), with two
//! things they cannot do:
//!
//! * **Fenced history rows**: each migration's history row is written in a
//!   transaction that first proves the migration lock's lease still this
//!   run's ([`crate::lock::fence`]); on PostgreSQL, where DDL is
//!   transactional, that is the transaction of the migration itself.
//! * **A database a newer release migrated** (a rollback of the binary):
//!   history rows this binary has no migration for are "ahead", not an
//!   error. `up` and `status` go on beside them; `down` refuses to roll
//!   anything back under them.

use sea_orm_migration::sea_orm::{
    ActiveValue, ConnectionTrait, DatabaseExecutor, DbBackend, EntityTrait, Statement,
    TransactionTrait,
};
use sea_orm_migration::{DbErr, MigrationTrait, MigratorTrait, SchemaManager, seaql_migrations};

use crate::{Migrator, catalog};

/// The history table of sea-orm-migration.
pub const HISTORY_TABLE: &str = "seaql_migrations";

/// Where the database stands against this binary's migrations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// This binary's migrations that are applied, in order.
    pub applied: Vec<String>,
    /// This binary's migrations that are not, in order.
    pub pending: Vec<String>,
    /// Applied migrations this binary does not have: a newer release's.
    pub ahead: Vec<String>,
}

impl History {
    /// Reads the history table; a missing one is an empty history (asking
    /// creates nothing).
    ///
    /// # Errors
    /// A database error.
    pub async fn read<C: ConnectionTrait>(db: &C) -> Result<Self, DbErr> {
        let recorded: Vec<String> = if catalog::table_exists(db, HISTORY_TABLE).await? {
            let sql = format!("SELECT version FROM {HISTORY_TABLE} ORDER BY version");
            db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
                .await?
                .iter()
                .map(|r| r.try_get_by_index::<String>(0))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let known = names();
        let (applied, pending) = known.iter().cloned().partition(|n| recorded.contains(n));
        let ahead = recorded
            .into_iter()
            .filter(|n| !known.contains(n))
            .collect();
        Ok(Self {
            applied,
            pending,
            ahead,
        })
    }
}

/// This binary's migrations' names, in order.
pub fn names() -> Vec<String> {
    Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}

/// Why a migration could not be applied or rolled back because of history
/// this binary does not know.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AheadError {
    /// `down` under migrations a newer release applied.
    #[error(
        "refusing to roll back: a newer release applied migrations this binary does not have \
         ({ahead}); roll those back first with the newer release's `migration down --to <its \
         first migration>`, then rerun this"
    )]
    RollBackUnderNewer {
        /// Their names.
        ahead: String,
    },
    /// `up` would apply an older migration after a newer release's.
    #[error(
        "refusing to apply {pending}: the database has migrations of a newer release ({ahead}) \
         but not these older ones; run the newer release's `migration up`"
    )]
    PendingUnderNewer {
        /// This binary's pending migrations.
        pending: String,
        /// The newer release's.
        ahead: String,
    },
    /// The database failed.
    #[error("{}", crate::failure::describe(.0))]
    Db(#[from] DbErr),
}

/// Applies at most `steps` pending migrations (all with `None`), each with
/// its fenced history row. Beside migrations of a newer release, applies
/// nothing and warns; with this binary's own still pending there, refuses.
///
/// # Errors
/// [`AheadError::PendingUnderNewer`], or a database error (a failed fence
/// among them); what was committed before it stays.
pub async fn up(db: &DatabaseExecutor<'_>, steps: Option<u32>) -> Result<(), AheadError> {
    let history = History::read(db).await?;
    if !history.ahead.is_empty() {
        if !history.pending.is_empty() {
            return Err(AheadError::PendingUnderNewer {
                pending: history.pending.join(", "),
                ahead: history.ahead.join(", "),
            });
        }
        tracing::warn!(
            ahead = ?history.ahead,
            "the database has migrations of a newer release that this binary does not know ({}); \
             nothing to apply, they are left as they are",
            history.ahead.join(", ")
        );
        return Ok(());
    }
    Migrator::install(db).await?;
    let backend = db.get_database_backend();
    let mut left = steps;
    if history.pending.is_empty() {
        tracing::info!("no pending migrations");
    }
    for migration in Migrator::migrations() {
        if !history.pending.iter().any(|n| n == migration.name()) {
            continue;
        }
        match left.as_mut() {
            Some(0) => break,
            Some(n) => *n -= 1,
            None => {}
        }
        tracing::info!("applying migration '{}'", migration.name());
        if in_transaction(migration.as_ref(), backend) {
            let txn = db.begin().await?;
            migration.up(&SchemaManager::new(&txn)).await?;
            record(&txn, migration.name()).await?;
            txn.commit().await?;
        } else {
            migration.up(&SchemaManager::new(reborrow(db))).await?;
            // On Galera the commit may lose a certification conflict (the
            // renewer's write to the lease row from another node): redo it.
            service::retry::on_conflict("recording a migration", || async {
                let txn = db.begin().await?;
                record(&txn, migration.name()).await?;
                txn.commit().await
            })
            .await?;
        }
        tracing::info!("migration '{}' has been applied", migration.name());
    }
    Ok(())
}

/// Rolls back the last `steps` applied migrations, each with its history
/// row deleted in a fenced transaction. Refuses under migrations of a newer
/// release.
///
/// # Errors
/// [`AheadError::RollBackUnderNewer`], or a database error.
pub async fn down(db: &DatabaseExecutor<'_>, steps: u32) -> Result<(), AheadError> {
    let history = History::read(db).await?;
    refuse_under_newer(&history)?;
    let backend = db.get_database_backend();
    let mut left = steps;
    for migration in Migrator::migrations().into_iter().rev() {
        if left == 0 {
            break;
        }
        if !history.applied.iter().any(|n| n == migration.name()) {
            continue;
        }
        left -= 1;
        tracing::info!("rolling back migration '{}'", migration.name());
        if in_transaction(migration.as_ref(), backend) {
            let txn = db.begin().await?;
            migration.down(&SchemaManager::new(&txn)).await?;
            forget(&txn, migration.name()).await?;
            txn.commit().await?;
        } else {
            migration.down(&SchemaManager::new(reborrow(db))).await?;
            service::retry::on_conflict("forgetting a migration", || async {
                let txn = db.begin().await?;
                forget(&txn, migration.name()).await?;
                txn.commit().await
            })
            .await?;
        }
        tracing::info!("migration '{}' has been rolled back", migration.name());
    }
    Ok(())
}

/// [`AheadError::RollBackUnderNewer`] when `history` has migrations of a
/// newer release: nothing may be rolled back under them.
///
/// # Errors
/// As said.
pub fn refuse_under_newer(history: &History) -> Result<(), AheadError> {
    if history.ahead.is_empty() {
        Ok(())
    } else {
        Err(AheadError::RollBackUnderNewer {
            ahead: history.ahead.join(", "),
        })
    }
}

/// Whether a migration runs in one transaction with its history row:
/// as sea-orm-migration decides (its own say, else PostgreSQL only).
fn in_transaction(migration: &dyn MigrationTrait, backend: DbBackend) -> bool {
    migration
        .use_transaction()
        .unwrap_or(backend == DbBackend::Postgres)
}

/// A second handle on the same connection or transaction.
pub(crate) fn reborrow<'a>(db: &'a DatabaseExecutor<'_>) -> DatabaseExecutor<'a> {
    match db {
        DatabaseExecutor::Connection(c) => DatabaseExecutor::Connection(c),
        DatabaseExecutor::Transaction(t) => DatabaseExecutor::Transaction(t),
        DatabaseExecutor::OwnedTransaction(t) => DatabaseExecutor::Transaction(t),
    }
}

/// Writes the history row of `name`, after the fence, in `txn`.
async fn record<C: ConnectionTrait>(txn: &C, name: &str) -> Result<(), DbErr> {
    crate::lock::fence(txn).await?;
    let applied_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    seaql_migrations::Entity::insert(seaql_migrations::ActiveModel {
        version: ActiveValue::Set(name.to_owned()),
        applied_at: ActiveValue::Set(applied_at),
    })
    .exec(txn)
    .await?;
    Ok(())
}

/// Deletes the history row of `name`, after the fence, in `txn`.
async fn forget<C: ConnectionTrait>(txn: &C, name: &str) -> Result<(), DbErr> {
    crate::lock::fence(txn).await?;
    seaql_migrations::Entity::delete_by_id(name.to_owned())
        .exec(txn)
        .await?;
    Ok(())
}
