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
//!   (`pg_advisory_lock`, `GET_LOCK`) cannot serve: a session ends whenever
//!   the server, a proxy or a pooler closes a connection, while its
//!   migrator lives on; a transaction pooler runs each transaction on any
//!   server connection; on Galera `GET_LOCK` is local to one node. A row
//!   goes through the pooler like any write and through Galera's
//!   certification, so it holds cluster-wide.
//! * **Only an expired lease is taken over.** No other sign of a holder's
//!   death is trusted: a connection that ends proves nothing about the
//!   process that held it. A holder killed with SIGKILL therefore blocks the
//!   next deploy for at most one lease ([`DEFAULT_LEASE`]).
//! * **The holder renews** every sixth of the lease from a pool of its own
//!   (a closed connection is replaced), each renewal with a deadline of a
//!   sixth of the lease. Two thirds of a lease after its last renewal began,
//!   it counts the lease as lost and stops its run ([`LockError::Lost`]),
//!   a third of a lease before anyone may take it over.
//! * **Fencing**: every commit of a step ([`fence`]) proves, in its own
//!   transaction, that the lease is still this holder's and unexpired, by
//!   an `UPDATE` of the lease row that also extends it. The row stays locked
//!   by that transaction until it commits, so a takeover waits for the
//!   commit or finds the lease extended; a holder that lost its lease fails
//!   the check and commits nothing more. On Galera, a takeover on another
//!   node and the commit conflict on the row, and certification lets one
//!   through. Limits: MySQL commits each DDL statement on its own, so there
//!   a schema step's DDL is covered by the stop at two thirds, not by the
//!   fence (the DDL is catalog-driven and idempotent, so whoever runs next
//!   completes it); behind a transaction pooler a whole run is one
//!   transaction, fenced once, at its commit.
//! * The migrator's server sessions end on the server's side when they stay
//!   idle inside a transaction longer than a lease (`idle_in_transaction_
//!   session_timeout` on PostgreSQL, `wait_timeout` on MySQL): a holder cut
//!   off mid-transaction (a black-holed network) releases its row locks to
//!   the next migrator instead of holding them until TCP gives up.
//! * **SQLite: an exclusive lock on a file beside the database**, released by
//!   the operating system when the holder dies.

use std::fs::File;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sea_orm_migration::sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
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

/// The text of the error a failed [`fence`] check returns: the commit it
/// guarded was rolled back.
pub(crate) const FENCE_FAILED: &str = "the migration lock's lease is no longer this migrator's";

/// Whether `e` is a failed [`fence`] check.
pub fn is_fence_failure(e: &DbErr) -> bool {
    matches!(e, DbErr::Custom(m) if m == FENCE_FAILED)
}

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
    /// This migrator could not renew its lease in time (or another took it
    /// over): it stopped, and committed nothing after that.
    #[error(
        "lost the migration lock: its lease could not be renewed in time, so this run stopped \
         before another migrator could take over; nothing was committed after that, and the \
         next `migration up` resumes"
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
    #[error("{}", crate::failure::describe(.0))]
    Db(#[source] DbErr),
}

impl From<DbErr> for LockError {
    fn from(e: DbErr) -> Self {
        if is_fence_failure(&e) {
            Self::Lost
        } else {
            Self::Db(e)
        }
    }
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
    fence: Fence,
    lost: tokio::sync::watch::Receiver<bool>,
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
}

/// What a step's commit checks: that the lease is still `holder`'s.
#[derive(Clone, Debug)]
pub(crate) struct Fence {
    holder: String,
    lease_ms: i64,
}

/// The fence of the lease this process holds, if any ([`MigrationLock`]
/// installs it while held): migrations take no arguments. One per process:
/// a process holds at most one migration lock at a time.
static FENCE: RwLock<Option<Fence>> = RwLock::new(None);

/// Whether [`fence`] may lock the lease row (`true`), or only read it: a
/// run behind a transaction pooler is one transaction, which would hold
/// the row against the renewals until it ends; it is fenced once, at its
/// commit, by [`Fence::check`].
static FENCE_LOCKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Proves, in the transaction `txn` is about to commit, that this
/// process's lease is still its own and unexpired, and extends it; without
/// a lease (SQLite's lock file, a library caller) there is nothing to
/// prove. Called before every commit of a step: each data-migration batch
/// and each history row.
///
/// # Errors
/// [`FENCE_FAILED`] when the lease is gone or expired (the caller rolls
/// back), or a database error.
pub(crate) async fn fence<C: ConnectionTrait>(txn: &C) -> Result<(), DbErr> {
    let fence = FENCE.read().unwrap_or_else(|p| p.into_inner()).clone();
    match fence {
        None => Ok(()),
        Some(f) if FENCE_LOCKS.load(std::sync::atomic::Ordering::Relaxed) => f.check(txn).await,
        Some(f) => f.peek(txn).await,
    }
}

/// The locking [`Fence::check`] of this process's lease, whatever the
/// connection: the one check of a run behind a transaction pooler, at its
/// commit.
///
/// # Errors
/// As [`fence`].
pub(crate) async fn fence_at_commit<C: ConnectionTrait>(txn: &C) -> Result<(), DbErr> {
    let fence = FENCE.read().unwrap_or_else(|p| p.into_inner()).clone();
    match fence {
        None => Ok(()),
        Some(f) => f.check(txn).await,
    }
}

impl Fence {
    /// The locking check: an `UPDATE` of the lease row that extends it and
    /// must find it this holder's and unexpired. The row stays locked until
    /// `txn` ends.
    ///
    /// # Errors
    /// As [`fence`].
    pub(crate) async fn check<C: ConnectionTrait>(&self, txn: &C) -> Result<(), DbErr> {
        let backend = txn.get_database_backend();
        let now = now_ms(backend);
        let sql = format!(
            "UPDATE {LOCK_TABLE} SET expires_at_ms = {now} + {} WHERE name = '{LOCK_NAME}' \
             AND holder = '{}' AND expires_at_ms > {now}",
            self.lease_ms, self.holder
        );
        match txn.execute_unprepared(&sql).await?.rows_affected() {
            1 => Ok(()),
            _ => Err(DbErr::Custom(FENCE_FAILED.to_owned())),
        }
    }

    /// The renewer's statement: extends the lease while it is this
    /// holder's.
    fn renewal_sql(&self, backend: DbBackend) -> String {
        let now = now_ms(backend);
        format!(
            "UPDATE {LOCK_TABLE} SET expires_at_ms = {now} + {} WHERE name = '{LOCK_NAME}' \
             AND holder = '{}'",
            self.lease_ms, self.holder
        )
    }

    /// A read of the same condition, without locking.
    async fn peek<C: ConnectionTrait>(&self, txn: &C) -> Result<(), DbErr> {
        let backend = txn.get_database_backend();
        let now = now_ms(backend);
        let sql = format!(
            "SELECT COUNT(*) FROM {LOCK_TABLE} WHERE name = '{LOCK_NAME}' AND holder = '{}' \
             AND expires_at_ms > {now}",
            self.holder
        );
        let row = txn
            .query_one_raw(Statement::from_string(backend, sql))
            .await?;
        match row.map(|r| r.try_get_by_index::<i64>(0)).transpose()? {
            Some(1) => Ok(()),
            _ => Err(DbErr::Custom(FENCE_FAILED.to_owned())),
        }
    }
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
        "SELECT holder, {now} - acquired_at_ms AS held, expires_at_ms - {now} AS remaining \
         FROM {LOCK_TABLE} WHERE name = '{LOCK_NAME}'"
    );
    let row = db
        .query_one_raw(Statement::from_string(backend, sql))
        .await?;
    row.map(|r| {
        Ok(LockRow {
            holder: r.try_get_by_index(0)?,
            held_for_ms: r.try_get_by_index(1)?,
            remaining_ms: r.try_get_by_index(2)?,
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
        // A pool of its own, so that renewals do not wait behind the
        // migration's long statements; every connection is pinged before
        // use, so one the server closed is replaced, not failed on.
        let mut opts = service::connection::connect_options(url)?;
        opts.max_connections(1).min_connections(1);
        session_limits(&mut opts, &parsed, lease);
        let db = Database::connect(opts).await?;
        ensure_table(&db).await?;
        let backend = db.get_database_backend();
        let holder = holder_id();
        let now = now_ms(backend);
        let lease_ms = lease.as_millis() as i64;
        // `session` is kept empty: older releases wrote a session-lock
        // beacon there, and read an empty one as "holder alive".
        let take = format!(
            "INSERT INTO {LOCK_TABLE} (name, holder, session, acquired_at_ms, expires_at_ms) \
             VALUES ('{LOCK_NAME}', '{holder}', '', {now}, {now} + {lease_ms})"
        );
        let take_over = format!(
            "UPDATE {LOCK_TABLE} SET holder = '{holder}', session = '', acquired_at_ms = {now}, \
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
            // The lease counts from before the statement that takes it.
            let sent = Instant::now();
            let got = match exec(&db, &take).await {
                Ok(n) => n == 1,
                Err(e) if lost_race(&e) => match exec(&db, &take_over).await {
                    Ok(1) => {
                        tracing::warn!(
                            "the previous holder's lease had expired: taking over its migration"
                        );
                        true
                    }
                    Ok(_) => false,
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
                let fence = Fence { holder, lease_ms };
                // The statement that took the lease may have waited behind a
                // row lock (a cut-off holder's open transaction) for most of
                // a lease, so `sent` says little about when its lease began:
                // one renewal now, and the lease counts from it.
                let renewal_sent = Instant::now();
                let taken = match exec(&db, &fence.renewal_sql(backend)).await {
                    Ok(1) => renewal_sent,
                    Ok(_) => sent,
                    Err(e) => return Err(e.into()),
                };
                let (tx, lost) = tokio::sync::watch::channel(false);
                let renewer = tokio::spawn(renew(db.clone(), fence.clone(), lease, taken, tx));
                *FENCE.write().unwrap_or_else(|p| p.into_inner()) = Some(fence.clone());
                FENCE_LOCKS.store(
                    parsed.pooler() != Pooler::Transaction,
                    std::sync::atomic::Ordering::Relaxed,
                );
                return Ok(Self::Lease(Lease {
                    db,
                    fence,
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
        matches!(self, Self::Lease(l) if *l.lost.borrow())
    }

    /// Resolves when the lease is lost (never for other locks).
    pub async fn lost(&self) {
        match self {
            Self::Lease(l) => {
                // The renewer only ends after saying so (or at release).
                let _ = l.lost.clone().wait_for(|lost| *lost).await;
            }
            _ => std::future::pending().await,
        }
    }

    /// Releases the lock. A lease is deleted with a deadline of a few
    /// seconds: a server that does not answer lets it expire instead.
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
                *FENCE.write().unwrap_or_else(|p| p.into_inner()) = None;
                let delete = format!(
                    "DELETE FROM {LOCK_TABLE} WHERE name = '{LOCK_NAME}' AND holder = '{}'",
                    lease.fence.holder
                );
                let deleted =
                    tokio::time::timeout(RELEASE_DEADLINE, exec(&lease.db, &delete)).await;
                tokio::time::timeout(RELEASE_DEADLINE, lease.db.close())
                    .await
                    .ok();
                match deleted {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => {
                        tracing::warn!(
                            "the migration lock could not be released in time; its lease \
                             expires by itself"
                        );
                        Ok(())
                    }
                }
            }
            Self::None => Ok(()),
        }
    }
}

/// How long releasing a lease may take before it is left to expire.
const RELEASE_DEADLINE: Duration = Duration::from_secs(5);

/// Pings every connection before use (the server or a proxy may have
/// closed it while idle), and has the server end a session left idle
/// inside a transaction for longer than a lease (its holder is cut off,
/// and its row locks would block the next migrator); MySQL sessions in
/// UTC. Not behind a transaction pooler, whose server sessions are shared.
pub(crate) fn session_limits(opts: &mut ConnectOptions, url: &DbUrl, lease: Duration) {
    // Idle for zero or more: every time (sea-orm turns the plain
    // `test_before_acquire` off once an idle threshold is set).
    opts.test_before_acquire_if_idle_for(Duration::ZERO);
    if url.pooler() == Pooler::Transaction {
        return;
    }
    let limit = lease.max(MIN_IDLE_IN_TRANSACTION);
    let pg = format!(
        "SET idle_in_transaction_session_timeout = {}",
        limit.as_millis()
    );
    // UTC: the lease's times come from `UNIX_TIMESTAMP(NOW(3))`, which
    // reads NOW in the session's zone (an hour jumps at a DST change).
    let my = format!(
        "SET SESSION wait_timeout = {}, time_zone = '+00:00'",
        limit.as_secs().max(1)
    );
    opts.map_sqlx_postgres_pool_opts(move |o| {
        let pg = pg.clone();
        o.after_connect(move |conn, _| {
            let pg = pg.clone();
            Box::pin(async move {
                use sea_orm_migration::sea_orm::sqlx::Executor;
                conn.execute(sea_orm_migration::sea_orm::sqlx::AssertSqlSafe(pg))
                    .await
                    .map(|_| ())
            })
        })
    });
    opts.map_sqlx_mysql_pool_opts(move |o| {
        let my = my.clone();
        o.after_connect(move |conn, _| {
            let my = my.clone();
            Box::pin(async move {
                use sea_orm_migration::sea_orm::sqlx::Executor;
                conn.execute(sea_orm_migration::sea_orm::sqlx::AssertSqlSafe(my))
                    .await
                    .map(|_| ())
            })
        })
    });
}

/// The shortest idle time inside a transaction after which the server ends
/// a migrator's session: long enough for a batch to wait on the one before.
const MIN_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);

/// Keeps the lease alive: every sixth of a lease, one `UPDATE` with a
/// deadline of a sixth of a lease, from the lease's own pool. A renewal
/// that finds the row no longer ours, or no renewal that succeeded within
/// two thirds of a lease, marks the lease lost.
async fn renew(
    db: DatabaseConnection,
    fence: Fence,
    lease: Duration,
    taken: Instant,
    lost: tokio::sync::watch::Sender<bool>,
) {
    let sql = fence.renewal_sql(db.get_database_backend());
    let every = lease / 6;
    let lost_after = lease * 2 / 3;
    // When the last renewal that succeeded was sent: the lease runs from
    // then at the latest.
    let mut renewed = taken;
    let mut next = taken + every;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let sent = Instant::now();
        // No attempt runs past the moment the lease counts as lost.
        let deadline = every.min((renewed + lost_after).saturating_duration_since(sent));
        let outcome = tokio::time::timeout(deadline, exec(&db, &sql)).await;
        match outcome {
            Ok(Ok(1)) => {
                renewed = sent;
                next = sent + every;
                continue;
            }
            Ok(Ok(_)) => {
                tracing::error!("the migration lock's lease was taken over by another migrator");
                lost.send_replace(true);
                return;
            }
            Ok(Err(e)) => tracing::warn!(
                "could not renew the migration lock's lease ({}); retrying",
                crate::failure::describe(&e)
            ),
            Err(_) => tracing::warn!(
                "the server did not answer a renewal of the migration lock's lease within {:.1}s; \
                 retrying",
                deadline.as_secs_f64()
            ),
        }
        if renewed.elapsed() >= lost_after {
            tracing::error!(
                "the migration lock's lease was not renewed for {:.1}s: stopping this run",
                renewed.elapsed().as_secs_f64()
            );
            lost.send_replace(true);
            return;
        }
        next = Instant::now() + (every / 4).max(Duration::from_millis(50));
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
