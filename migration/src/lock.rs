//! One migrator at a time, across processes, replicas and cluster nodes.
//!
//! sea-orm-migration takes no lock: two replicas that start together both
//! see a migration pending, both run it, and the loser fails on the history
//! table with its body half-applied. Commands that change the schema hold
//! this lock for their whole run; a replica that waited then finds nothing
//! pending.
//!
//! * **Servers (PostgreSQL, MySQL/MariaDB, Galera, behind a transaction
//!   pooler or not): a lease row** in [`LOCK_TABLE`] (primary key `name`),
//!   taken, renewed and released by single statements, each its own short
//!   transaction, with times from the server's clock. Session locks
//!   (`pg_advisory_lock`, `GET_LOCK`) cannot serve: a transaction pooler runs
//!   each transaction on any server connection, so a session lock strands on
//!   a pooled backend, and on Galera `GET_LOCK` is local to one node. A row
//!   goes through the pooler like any write and through Galera's
//!   certification, so it holds cluster-wide.
//! * The holder renews its lease every third of it from a connection of its
//!   own; if a renewal finds the lease gone (expired and taken over), the
//!   holder stops its run with [`LockError::Lost`]. A holder killed with
//!   SIGKILL blocks the next deploy for at most one lease
//!   ([`DEFAULT_LEASE`]); the migrations are idempotent per step (catalog-
//!   driven DDL, per-batch data migrations), so a takeover resumes safely.
//! * **SQLite: an exclusive lock on a file beside the database**, released by
//!   the operating system when the holder dies.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sea_orm_migration::sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use service::connection::{DbUrl, Pooler};

/// The lease table: one row per lock name.
pub const LOCK_TABLE: &str = "agent_runner_state_migration_lock";

/// The row of the migration lock.
pub const LOCK_NAME: &str = "migrate";

/// How long a lease lasts unless renewed.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How often a waiting migrator tries again.
const POLL: Duration = Duration::from_millis(200);

/// Why the lock could not be had or kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another migrator held the lock for the whole wait.
    #[error(
        "another migration process ({holder}) still holds the migration lock after {waited}s; \
         raise --lock-timeout, or if that process is gone, see `migration lock status`"
    )]
    Timeout {
        /// Who holds it, as far as known.
        holder: String,
        /// Seconds waited.
        waited: u64,
    },
    /// This migrator's lease expired and another took it over: it stopped.
    #[error(
        "lost the migration lock: the lease expired before it could be renewed and another \
         migrator took it over; this run stopped (the next run resumes)"
    )]
    Lost,
    /// The SQLite lock file.
    #[error("cannot use the lock file {path}")]
    File {
        /// Its path.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `--force` is needed to clear a lease that has not expired.
    #[error(
        "the lease of {holder} has not expired (it ends in {remaining_ms} ms); it may still be \
         migrating. Stop it, or pass --force"
    )]
    Live {
        /// Who holds it.
        holder: String,
        /// Milliseconds to its end.
        remaining_ms: i64,
    },
    /// The URL could not be read or the lease connection opened.
    #[error(transparent)]
    Connect(#[from] service::connection::ConnectError),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// A held migration lock; release it with [`MigrationLock::release`].
#[derive(Debug)]
pub enum MigrationLock {
    /// The lock file, held open.
    File(File),
    /// A lease row, renewed in the background.
    Lease(Lease),
    /// Nothing to lock (an in-memory SQLite database).
    None,
}

/// A lease held by this process.
#[derive(Debug)]
pub struct Lease {
    db: DatabaseConnection,
    holder: String,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

/// The lock row as stored, for `migration lock status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRow {
    /// Who holds it: host, process id and a random part.
    pub holder: String,
    /// Milliseconds since it was taken (server clock).
    pub held_for_ms: i64,
    /// Milliseconds to its end; negative once expired.
    pub remaining_ms: i64,
    /// The holder's beacon (empty through a transaction pooler).
    pub session: String,
}

/// The file of a SQLite URL; `None` for other backends and in-memory ones.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    if DbUrl::parse(url).is_ok_and(|u| u.sqlite_in_memory()) {
        return None;
    }
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == "memory" {
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

/// The server's clock in milliseconds since the epoch, as SQL.
fn now_ms(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        _ => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
    }
}

/// An identity for this process: host, pid and a random part (a restarted
/// container may reuse a pid).
fn holder_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-._".contains(*c))
        .take(100)
        .collect();
    format!("{host}:{}:{nanos:08x}", std::process::id())
}

/// Whether `e` says the statement lost a race another writer won (a
/// duplicate key, a deadlock, a Galera certification conflict, a
/// serialization failure): the lock is held elsewhere, try again.
fn lost_race(e: &DbErr) -> bool {
    use sea_orm_migration::sea_orm::{RuntimeErr, SqlErr};
    if service::retry::is_transient(e)
        || matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
    {
        return true;
    }
    // A table made by a racing `CREATE TABLE IF NOT EXISTS`: PostgreSQL
    // says the table (42P07) or its row type (42710) already exists.
    let (DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err))) = e
    else {
        return false;
    };
    err.as_database_error().is_some_and(|db| {
        db.try_downcast_ref::<sea_orm_migration::sea_orm::sqlx::mysql::MySqlDatabaseError>()
            .map_or(
                matches!(db.code().as_deref(), Some("42P07" | "42710")),
                |my| my.number() == 1050,
            )
    })
}

/// Runs one statement of the lease protocol by the simple query protocol
/// (no prepared statement: safe through a transaction pooler), returning the
/// rows it changed.
async fn exec(db: &DatabaseConnection, sql: &str) -> Result<u64, DbErr> {
    Ok(db.execute_unprepared(sql).await?.rows_affected())
}

/// Creates the lease table if missing (statements by the simple protocol:
/// safe through a pooler). Several migrators may race to do
/// it; the losers find it made.
pub async fn ensure_table(db: &DatabaseConnection) -> Result<(), DbErr> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {LOCK_TABLE} (name VARCHAR(64) NOT NULL PRIMARY KEY, \
         holder VARCHAR(255) NOT NULL, session VARCHAR(255) NOT NULL DEFAULT '', \
         acquired_at_ms BIGINT NOT NULL, expires_at_ms BIGINT NOT NULL)"
    );
    match exec(db, &sql).await {
        Ok(_) => Ok(()),
        Err(e) if lost_race(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads the lock row. Through a transaction pooler the read runs in a
/// transaction that drops its prepared statement before it ends.
///
/// # Errors
/// A database error.
pub async fn read_lock(db: &DatabaseConnection, pooler: Pooler) -> Result<Option<LockRow>, DbErr> {
    if pooler == Pooler::Transaction {
        let session = service::connection::PooledSession::begin(db).await?;
        let row = read_lock_on(session.work()).await;
        match row {
            Ok(row) => {
                session.commit().await?;
                Ok(row)
            }
            Err(e) => {
                session.rollback().await.ok();
                Err(e)
            }
        }
    } else {
        read_lock_on(db).await
    }
}

async fn read_lock_on<C: ConnectionTrait>(db: &C) -> Result<Option<LockRow>, DbErr> {
    if !crate::catalog::table_exists(db, LOCK_TABLE).await? {
        return Ok(None);
    }
    let backend = db.get_database_backend();
    let now = now_ms(backend);
    let sql = format!(
        "SELECT holder, {now} - acquired_at_ms AS held, expires_at_ms - {now} AS remaining, \
         session FROM {LOCK_TABLE} WHERE name = '{LOCK_NAME}'"
    );
    let row = db
        .query_one_raw(Statement::from_string(backend, sql))
        .await?;
    row.map(|r| {
        Ok(LockRow {
            holder: r.try_get_by_index(0)?,
            held_for_ms: r.try_get_by_index(1)?,
            remaining_ms: r.try_get_by_index(2)?,
            session: r.try_get_by_index(3)?,
        })
    })
    .transpose()
}

impl MigrationLock {
    /// Takes the lock, waiting up to `timeout` for another migrator to
    /// finish. `lease` is how long a lease lasts unless renewed.
    ///
    /// # Errors
    /// The wait timed out, the lock file cannot be used, or the database
    /// failed.
    pub async fn acquire(url: &str, timeout: Duration, lease: Duration) -> Result<Self, LockError> {
        let parsed = DbUrl::parse(url)?;
        if parsed.backend() == DbBackend::Sqlite {
            return Self::acquire_file(url, timeout).await;
        }
        // A connection of its own, so that renewals do not wait behind the
        // migration's long statements.
        // Never recycled: on a direct connection it holds the beacon.
        let mut opts = service::connection::connect_options(url)?;
        opts.max_connections(1)
            .min_connections(1)
            .max_lifetime(None)
            .idle_timeout(None);
        let db = Database::connect(opts).await?;
        ensure_table(&db).await?;
        let backend = db.get_database_backend();
        let holder = holder_id();
        let now = now_ms(backend);
        let lease_ms = lease.as_millis() as i64;
        // On a direct connection the lease connection also holds a session
        // lock of its own as a beacon: a waiter that sees the beacon gone
        // knows the holder is dead and need not wait out its lease. Through
        // a transaction pooler there is no session to hold one.
        let session = match parsed.pooler() {
            Pooler::Transaction => String::new(),
            Pooler::None => beacon(&db, &holder).await?,
        };
        let take = format!(
            "INSERT INTO {LOCK_TABLE} (name, holder, session, acquired_at_ms, expires_at_ms) \
             VALUES ('{LOCK_NAME}', '{holder}', '{session}', {now}, {now} + {lease_ms})"
        );
        let take_over = format!(
            "UPDATE {LOCK_TABLE} SET holder = '{holder}', session = '{session}', acquired_at_ms = {now}, \
             expires_at_ms = {now} + {lease_ms} WHERE name = '{LOCK_NAME}' AND expires_at_ms < {now}"
        );
        let wsrep = galera_node(&db).await;
        tracing::info!(
            lock = "lease row",
            table = LOCK_TABLE,
            lease_s = lease.as_secs_f64(),
            galera = wsrep,
            "taking the migration lock"
        );
        let started = Instant::now();
        let mut announced = false;
        loop {
            let got = match exec(&db, &take).await {
                Ok(n) => n == 1,
                Err(e) if lost_race(&e) => match exec(&db, &take_over).await {
                    Ok(1) => {
                        tracing::warn!(
                            "the previous holder's lease had expired: taking over its migration"
                        );
                        true
                    }
                    Ok(_) => match read_lock(&db, parsed.pooler()).await? {
                        // The lease is live, but its holder's beacon is gone:
                        // the holder died. Take over from that very holder.
                        Some(row) if holder_is_dead(&db, &row.session).await => {
                            let from_dead = format!(
                                "UPDATE {LOCK_TABLE} SET holder = '{holder}', session = '{session}', \
                                 acquired_at_ms = {now}, expires_at_ms = {now} + {lease_ms} \
                                 WHERE name = '{LOCK_NAME}' AND holder = '{}' AND session = '{}'",
                                row.holder.replace('\'', "''"),
                                row.session.replace('\'', "''")
                            );
                            match exec(&db, &from_dead).await {
                                Ok(1) => {
                                    tracing::warn!(
                                        previous = %row.holder,
                                        "the previous holder's session is gone: taking over its migration"
                                    );
                                    true
                                }
                                Ok(_) => false,
                                Err(e) if lost_race(&e) => false,
                                Err(e) => return Err(e.into()),
                            }
                        }
                        _ => false,
                    },
                    Err(e) if lost_race(&e) => false,
                    Err(e) => return Err(e.into()),
                },
                Err(e) => return Err(e.into()),
            };
            if got {
                if announced {
                    tracing::info!(
                        "migration lock acquired after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                }
                let lost = Arc::new(AtomicBool::new(false));
                let renewer = tokio::spawn(renew(db.clone(), holder.clone(), lease, lost.clone()));
                return Ok(Self::Lease(Lease {
                    db,
                    holder,
                    lost,
                    renewer,
                }));
            }
            if started.elapsed() >= timeout {
                let holder = read_lock(&db, parsed.pooler())
                    .await
                    .ok()
                    .flatten()
                    .map_or_else(|| "unknown".to_owned(), |r| r.holder);
                db.close().await.ok();
                return Err(LockError::Timeout {
                    holder,
                    waited: timeout.as_secs(),
                });
            }
            if !announced {
                let row = read_lock(&db, parsed.pooler()).await.ok().flatten();
                match row {
                    Some(r) => tracing::info!(
                        holder = %r.holder,
                        lease_ends_in_ms = r.remaining_ms,
                        "another migration process holds the migration lock; waiting"
                    ),
                    None => tracing::info!(
                        "another migration process holds the migration lock; waiting"
                    ),
                }
                announced = true;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn acquire_file(url: &str, timeout: Duration) -> Result<Self, LockError> {
        let Some(path) = sqlite_lock_path(url) else {
            return Ok(Self::None);
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::File {
                path: path.clone(),
                source,
            })?;
        tracing::info!(lock = "lock file", path = %path.display(), "taking the migration lock");
        let started = Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    if announced {
                        tracing::info!(
                            "migration lock acquired after {:.1}s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(Self::File(file));
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(LockError::File { path, source });
                }
            }
            if started.elapsed() >= timeout {
                return Err(LockError::Timeout {
                    holder: format!("the process holding {}", path.display()),
                    waited: timeout.as_secs(),
                });
            }
            if !announced {
                tracing::info!("another migration process is running; waiting for its lock");
                announced = true;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the lease was lost: the run must stop.
    pub fn is_lost(&self) -> bool {
        matches!(self, Self::Lease(l) if l.lost.load(Ordering::SeqCst))
    }

    /// Resolves when the lease is lost (never for other locks).
    pub async fn lost(&self) {
        match self {
            Self::Lease(l) => {
                while !l.lost.load(Ordering::SeqCst) {
                    tokio::time::sleep(POLL).await;
                }
            }
            _ => std::future::pending().await,
        }
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// The lock file could not be unlocked, or the database failed to delete
    /// the lease row.
    pub async fn release(self) -> Result<(), LockError> {
        match self {
            Self::File(file) => file.unlock().map_err(|source| LockError::File {
                path: PathBuf::from("<lock file>"),
                source,
            }),
            Self::Lease(lease) => {
                lease.renewer.abort();
                let deleted = exec(
                    &lease.db,
                    &format!(
                        "DELETE FROM {LOCK_TABLE} WHERE name = '{LOCK_NAME}' AND holder = '{}'",
                        lease.holder
                    ),
                )
                .await;
                lease.db.close().await.ok();
                deleted?;
                Ok(())
            }
            Self::None => Ok(()),
        }
    }
}

/// Takes the beacon of `holder` on the lease connection and names it for
/// the row's `session`: `pg:<key>` (an advisory lock, seen by everyone in
/// `pg_locks`) or `my:<host>:<port>:<name>` (a `GET_LOCK`, seen by
/// `IS_USED_LOCK` on the same server only: Galera's are node-local).
async fn beacon(db: &DatabaseConnection, holder: &str) -> Result<String, DbErr> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    holder.hash(&mut h);
    let key = (h.finish() >> 1) as i64;
    match db.get_database_backend() {
        DbBackend::Postgres => {
            exec(db, &format!("SELECT pg_advisory_lock({key})")).await?;
            Ok(format!("pg:{key}"))
        }
        _ => {
            let name = format!("ars_lease_{key:x}");
            exec(db, &format!("SELECT GET_LOCK('{name}', 0)")).await?;
            let node = db
                .query_one_raw(Statement::from_string(
                    DbBackend::MySql,
                    "SELECT CONCAT(@@hostname, ':', @@port)",
                ))
                .await?
                .map(|r| r.try_get_by_index::<String>(0))
                .transpose()?
                .unwrap_or_default();
            Ok(format!("my:{node}:{name}"))
        }
    }
}

/// Whether the holder of a live lease is certainly dead: its beacon is gone.
/// Unknown (another Galera node, a pooled holder, any error) counts as alive.
async fn holder_is_dead(db: &DatabaseConnection, session: &str) -> bool {
    let sql = if let Some(key) = session.strip_prefix("pg:") {
        let Ok(key) = key.parse::<i64>() else {
            return false;
        };
        format!(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = {} AND objid = {} AND objsubid = 1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (key >> 32) as u32,
            key as u32
        )
    } else if let Some(rest) = session.strip_prefix("my:") {
        let Some((node, name)) = rest.rsplit_once(':') else {
            return false;
        };
        format!(
            "SELECT CASE WHEN CONCAT(@@hostname, ':', @@port) = '{}' AND IS_USED_LOCK('{}') IS NULL \
             THEN 0 ELSE 1 END",
            node.replace('\'', "''"),
            name.replace('\'', "''")
        )
    } else {
        return false;
    };
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await;
    matches!(row, Ok(Some(r)) if r.try_get_by_index::<i64>(0).ok() == Some(0))
}

/// Keeps the lease alive: every third of a lease, one UPDATE. A renewal
/// that finds the row no longer ours marks the lease lost; so does a lease
/// that runs out while renewals fail.
async fn renew(db: DatabaseConnection, holder: String, lease: Duration, lost: Arc<AtomicBool>) {
    let backend = db.get_database_backend();
    let now = now_ms(backend);
    let sql = format!(
        "UPDATE {LOCK_TABLE} SET expires_at_ms = {now} + {} WHERE name = '{LOCK_NAME}' AND holder = '{holder}'",
        lease.as_millis()
    );
    let mut renewed_at = Instant::now();
    loop {
        tokio::time::sleep(lease / 3).await;
        match exec(&db, &sql).await {
            Ok(1) => renewed_at = Instant::now(),
            Ok(_) => {
                tracing::error!("the migration lock's lease was taken over by another migrator");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the migration lock's lease; retrying");
                if renewed_at.elapsed() >= lease {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

/// Whether `db` is a Galera node with replication on (`wsrep_on`).
pub async fn galera_node(db: &DatabaseConnection) -> bool {
    if db.get_database_backend() != DbBackend::MySql {
        return false;
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::MySql,
            "SELECT @@GLOBAL.wsrep_on = 1",
        ))
        .await;
    matches!(row, Ok(Some(r)) if r.try_get_by_index::<i64>(0).ok() == Some(1) || r.try_get_by_index::<bool>(0).ok() == Some(true))
}

/// Clears the lease row by hand (`migration lock release`): only an expired
/// lease, unless `force`. Returns the row it cleared.
///
/// # Errors
/// [`LockError::Live`] for a live lease without `force`, or a database
/// error.
pub async fn clear(
    db: &DatabaseConnection,
    pooler: Pooler,
    force: bool,
) -> Result<Option<LockRow>, LockError> {
    let Some(row) = read_lock(db, pooler).await? else {
        return Ok(None);
    };
    if row.remaining_ms > 0 && !force {
        return Err(LockError::Live {
            holder: row.holder,
            remaining_ms: row.remaining_ms,
        });
    }
    exec(
        db,
        &format!(
            "DELETE FROM {LOCK_TABLE} WHERE name = '{LOCK_NAME}' AND holder = '{}'",
            row.holder.replace('\'', "''")
        ),
    )
    .await?;
    Ok(Some(row))
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

    #[test]
    fn holder_ids_are_plain_text() {
        let id = holder_id();
        assert!(id.len() < 255);
        assert!(!id.contains('\''), "{id}");
    }

    #[test]
    fn in_memory_databases_have_no_file() {
        for url in [
            "sqlite::memory:",
            "sqlite://?mode=memory",
            "sqlite:file:x?mode=memory&cache=shared",
        ] {
            assert_eq!(sqlite_file(url), None, "{url}");
        }
        assert_eq!(
            sqlite_file("sqlite://state.db?mode=rwc"),
            Some(PathBuf::from("state.db"))
        );
        assert_eq!(sqlite_file("postgres://db/app"), None);
    }
}
