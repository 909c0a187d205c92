//! One migrator at a time, across processes and replicas.
//!
//! sea-orm-migration takes no lock: two replicas that start together both
//! see a migration pending, both run it, and the loser fails on the history
//! table with its body half-applied. Commands that change the schema hold
//! this lock for their whole run; a replica that waited then finds nothing
//! pending.
//!
//! * PostgreSQL: a session advisory lock (scoped to the database).
//! * MySQL/MariaDB: `GET_LOCK` on a name derived from the database name
//!   (those locks are server-wide).
//! * SQLite: an exclusive lock on a file beside the database.
//!
//! The server locks belong to a session, so the connection must be a pool of
//! one: the caller connects with `max_connections(1)`.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// PostgreSQL advisory lock key: "ARSMIGR1" as an integer.
pub const PG_LOCK_KEY: i64 = 0x4152_534D_4947_5231;

/// How often a waiting migrator tries again.
const POLL: Duration = Duration::from_millis(200);

/// A held migration lock; release it with [`MigrationLock::release`] (it is
/// also released when the process or its connection ends).
#[derive(Debug)]
pub enum MigrationLock {
    /// The lock file, held open.
    File(File),
    /// A server-side lock on the connection's session.
    Server,
    /// Nothing to lock (an in-memory SQLite database).
    None,
}

/// The file of a SQLite URL; `None` for other backends and in-memory ones.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || path == "memory" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Where SQLite's lock file goes: beside the database file.
fn sqlite_lock_path(url: &str) -> Option<PathBuf> {
    let mut path = sqlite_file(url)?.into_os_string();
    path.push(".migration-lock");
    Some(PathBuf::from(path))
}

impl MigrationLock {
    /// Takes the lock, waiting up to `timeout` for another migrator to finish.
    ///
    /// # Errors
    /// The wait timed out, the lock file cannot be opened, or the database
    /// failed.
    pub async fn acquire<C: ConnectionTrait>(
        db: &C,
        url: &str,
        timeout: Duration,
    ) -> Result<Self, DbErr> {
        let started = Instant::now();
        let mut announced = false;
        let file = match db.get_database_backend() {
            DbBackend::Sqlite => match sqlite_lock_path(url) {
                Some(path) => Some(
                    File::options()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .map_err(|e| {
                            DbErr::Custom(format!("cannot open lock file {}: {e}", path.display()))
                        })?,
                ),
                None => return Ok(Self::None),
            },
            _ => None,
        };
        loop {
            let got = match &file {
                Some(f) => match f.try_lock() {
                    Ok(()) => true,
                    Err(std::fs::TryLockError::WouldBlock) => false,
                    Err(std::fs::TryLockError::Error(e)) => {
                        return Err(DbErr::Custom(format!("cannot lock the lock file: {e}")));
                    }
                },
                None => try_server_lock(db).await?,
            };
            if got {
                if announced {
                    tracing::info!(
                        "migration lock acquired after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(file.map_or(Self::Server, Self::File));
            }
            if started.elapsed() >= timeout {
                return Err(DbErr::Custom(format!(
                    "another migration process still holds the migration lock after {}s; \
                     raise --lock-timeout or check for a stuck deploy",
                    timeout.as_secs()
                )));
            }
            if !announced {
                tracing::info!("another migration process is running; waiting for its lock");
                announced = true;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// The database failed to release a server lock.
    pub async fn release<C: ConnectionTrait>(self, db: &C) -> Result<(), DbErr> {
        match self {
            Self::File(file) => file
                .unlock()
                .map_err(|e| DbErr::Custom(format!("cannot unlock the lock file: {e}"))),
            Self::Server => {
                let sql = match db.get_database_backend() {
                    DbBackend::Postgres => format!("SELECT pg_advisory_unlock({PG_LOCK_KEY})"),
                    _ => format!("SELECT RELEASE_LOCK({MYSQL_LOCK_NAME})"),
                };
                db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
                    .await
                    .map(|_| ())
            }
            Self::None => Ok(()),
        }
    }
}

/// MySQL lock names are server-wide and at most 64 characters: one per
/// database, by the hash of its name.
pub const MYSQL_LOCK_NAME: &str = "CONCAT('ars_migrate_', MD5(DATABASE()))";

async fn try_server_lock<C: ConnectionTrait>(db: &C) -> Result<bool, DbErr> {
    let backend = db.get_database_backend();
    if backend == DbBackend::MySql {
        // GET_LOCK(NULL) answers NULL, which would read as "held elsewhere".
        let row = db
            .query_one_raw(Statement::from_string(backend, "SELECT DATABASE() IS NULL"))
            .await?;
        if row.map(|r| r.try_get_by_index::<bool>(0)).transpose()? == Some(true) {
            return Err(DbErr::Custom(
                "the database URL names no database (mysql://user@host/DATABASE)".into(),
            ));
        }
    }
    let sql = match backend {
        DbBackend::Postgres => format!("SELECT pg_try_advisory_lock({PG_LOCK_KEY})"),
        _ => format!("SELECT GET_LOCK({MYSQL_LOCK_NAME}, 0) = 1"),
    };
    let row = db
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| DbErr::Custom("lock query returned no row".into()))?;
    match backend {
        DbBackend::Postgres => row.try_get_by_index::<bool>(0),
        _ => Ok(row.try_get_by_index::<Option<i64>>(0)? == Some(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_sits_beside_the_database() {
        assert_eq!(
            sqlite_lock_path("sqlite://agent_runner_state.db?mode=rwc"),
            Some(PathBuf::from("agent_runner_state.db.migration-lock"))
        );
        assert_eq!(
            sqlite_lock_path("sqlite:///tmp/x.db"),
            Some(PathBuf::from("/tmp/x.db.migration-lock"))
        );
        assert_eq!(sqlite_lock_path("sqlite::memory:"), None);
    }
}
