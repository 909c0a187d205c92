//! The store's statements on a SQLite file, run by SQLite on the calling
//! task's thread instead of sqlx's.
//!
//! sqlx runs every SQLite statement on a worker thread of the connection's
//! own and hands the rows back over a channel: two thread wake-ups per
//! statement, which cost more than the statement itself (a `get` by unique
//! key takes SQLite a few microseconds). Here the store's own statements
//! (upsert, get, list, snapshot, delete) go to a rusqlite connection on the
//! same file, in the calling thread, and never wait there for anything but
//! SQLite's own work:
//!
//! * **no lock waits**: these connections have no busy timeout, so a
//!   statement that finds the database locked (another writer) fails at once
//!   with `SQLITE_BUSY`, having done nothing; it then runs again on a
//!   blocking thread ([`tokio::task::spawn_blocking`]) with the pool's
//!   [`SQLITE_BUSY_TIMEOUT`]. In WAL mode readers do not wait for a writer
//!   (SQLite itself may pause a reader for microseconds while another
//!   connection restarts the log, which no busy timeout governs);
//! * **no `fsync` of its own making**: with `synchronous=NORMAL` a WAL-mode
//!   commit does not sync; SQLite syncs in a checkpoint (copying the log
//!   into the database file), which its automatic checkpoint runs in
//!   whichever commit crosses 1,000 log pages, and in the first commit
//!   after a complete checkpoint (it restarts the log, and syncs its
//!   header). Here the automatic checkpoint is off: a commit past the mark
//!   starts the same checkpoint on a blocking thread; past four times the
//!   mark its caller waits for one to finish, as SQLite's writer waits for
//!   its own (writers that always went on would keep every checkpoint from
//!   copying the whole log, and the log from ever starting over: it grew to
//!   1 GB over 20,000 sets before this bound). The write after a complete
//!   checkpoint goes to a blocking thread too. (After a checkpoint that
//!   another connection ran, the pool's or LangBot's, the write that
//!   restarts the log may still be one of these, in the calling thread);
//! * **no opening or closing**: connections are opened on a blocking thread,
//!   at most [`MAX_CONNECTIONS`] (a caller past that waits for one without
//!   holding a thread: while that many writers wait for SQLite's write
//!   lock, reads wait for a connection too, as they would on the pool's
//!   two), and closed there;
//! * nothing else changes: only a file in WAL mode is served, with
//!   `synchronous=NORMAL` and foreign keys on; the same SQL text and values
//!   (timestamps as the text sqlx writes); each statement its own
//!   transaction, as on the pool; SQLite's errors as sqlx reports them: a
//!   [`DbErr`] holding an `sqlx::Error::Database` with SQLite's extended
//!   code, kind and message (the same text), so [`crate::retry`] and code
//!   reading `as_database_error()` see the same. The error inside is this
//!   module's [`SqliteError`], not sqlx's (whose constructor is private), so
//!   `DbErr::sql_err()`, which downcasts to sqlx's, returns `None` for it.
//!
//! Everything else (migrations, the caller's transactions, `state-admin`)
//! stays on the SeaORM connection; a store in the caller's transaction does
//! not use this.

use std::borrow::Cow;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::hooks::Wal;
use rusqlite::{ErrorCode, OpenFlags};
use sea_orm::sqlx::error::{DatabaseError, ErrorKind};
use sea_orm::sqlx::sqlite::SqliteConnectOptions;
use sea_orm::{DbBackend, DbErr, RuntimeErr, Statement};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::connection::{ConnectError, DbUrl, SQLITE_BUSY_TIMEOUT};

/// Write-ahead log pages past which a commit starts a checkpoint: SQLite's
/// own default for its automatic one.
const CHECKPOINT_PAGES: i32 = 1000;

/// Log pages past which a commit's caller waits for the checkpoint, as
/// SQLite's writer waits for its automatic one: below, the checkpoint runs
/// beside the writers; past it, they let one finish, so that the log can
/// start over (it does only after a checkpoint that copied all of it, which
/// writers going on meanwhile prevent).
const WAIT_PAGES: i32 = 4 * CHECKPOINT_PAGES;

/// Connections open at most, beside the pool's: statements in the calling
/// thread need one each for the moment they run, writers waiting for
/// SQLite's one write lock one each while they wait; more callers wait for
/// a connection (without a thread).
pub const MAX_CONNECTIONS: usize = 8;

/// Statements each connection keeps prepared: the store has about ten
/// shapes.
const PREPARED_STATEMENTS: usize = 32;

thread_local! {
    /// Log pages after the last commit on this thread, from the WAL hook:
    /// SQLite calls it in the committing thread, inside the statement.
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

fn record_wal_pages(_: &Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// The store's way to a SQLite file beside its SeaORM pool (see the module
/// documentation). Cheap to clone; connections open as needed.
#[derive(Clone)]
pub struct InlineSqlite {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InlineSqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineSqlite")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    path: PathBuf,
    flags: OpenFlags,
    idle: Mutex<Vec<rusqlite::Connection>>,
    /// One per connection that may be open.
    permits: Arc<Semaphore>,
    /// Held while a checkpoint runs: a commit past the mark meanwhile starts
    /// none, and its caller waits for this one to end, so that writers
    /// cannot keep every checkpoint from finishing (the log would grow
    /// without end: it starts over only after a checkpoint that copied all
    /// of it).
    checkpoint_running: Arc<tokio::sync::Mutex<()>>,
    /// A checkpoint copied the whole log: the next write restarts it, and
    /// syncs its header, so it goes to a blocking thread.
    log_restart: AtomicBool,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    waited: AtomicU64,
    checkpoints: AtomicU64,
}

/// What an [`InlineSqlite`] has done so far, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InlineSqliteStats {
    /// Connections opened, the first by [`InlineSqlite::open`]; idle ones
    /// are kept, so this stays at most [`MAX_CONNECTIONS`] (unless opening
    /// one failed: failures are not counted).
    pub connections_opened: u64,
    /// Statements that found the database locked and ran again on a
    /// blocking thread, waiting for the lock.
    pub waited_for_lock: u64,
    /// Checkpoints run on a blocking thread and finished.
    pub checkpoints: u64,
}

impl InlineSqlite {
    /// For the database `url` names, when it is a SQLite file in WAL mode
    /// (as [`connect`](crate::connection::connect) leaves it); `None`, and
    /// the store stays on its SeaORM connection without a word, for any
    /// other database, an in-memory or temporary one, a shared cache (whose
    /// connections lock tables against each other), a file in another
    /// journal mode, and a URL with an `immutable` or `vfs` parameter (of
    /// any value). Opens one connection now, on a blocking thread, so that a
    /// file that cannot be opened says so here; never creates the file:
    /// connect the pool first ([`StoreConnection::open`](crate::connection::StoreConnection::open)
    /// does both). `mode=ro` opens read-only.
    ///
    /// # Errors
    /// [`ConnectError::BadUrl`] or [`ConnectError::UnsupportedScheme`];
    /// [`ConnectError::Driver`] for a SQLite URL sqlx refuses;
    /// [`ConnectError::Sqlite`] when SQLite cannot open the file (missing,
    /// not a database, no permission).
    pub async fn open(url: &str) -> Result<Option<Self>, ConnectError> {
        let url = DbUrl::parse(url)?;
        if url.backend() != DbBackend::Sqlite || url.sqlite_shared_cache() {
            return Ok(None);
        }
        if url.sqlite_param_is("immutable", None) || url.sqlite_param_is("vfs", None) {
            return Ok(None);
        }
        let read_only = url.sqlite_param_is("mode", Some("ro"));
        let options = SqliteConnectOptions::from_str(url.as_str()).map_err(ConnectError::Driver)?;
        let path = options.get_filename().to_owned();
        if path.as_os_str().is_empty() {
            // SQLite gives each connection a temporary database of its own.
            return Ok(None);
        }
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        tokio::task::spawn_blocking(move || {
            let first = connect(&path, flags)?;
            let mode: String = first.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Ok(None);
            }
            // Later connections open this very file, whatever the working
            // folder is then.
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            Ok(Some(Self {
                inner: Arc::new(Inner {
                    path,
                    flags,
                    idle: Mutex::new(vec![first]),
                    permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
                    checkpoint_running: Arc::new(tokio::sync::Mutex::new(())),
                    log_restart: AtomicBool::new(false),
                    stats: Counters {
                        opened: AtomicU64::new(1),
                        ..Counters::default()
                    },
                }),
            }))
        })
        .await
        .map_err(|e| ConnectError::Pool(DbErr::Custom(joined(e))))?
        .map_err(ConnectError::Sqlite)
    }

    /// The file, as an absolute path (resolved once, by [`open`](Self::open)).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What these connections have done so far.
    pub fn stats(&self) -> InlineSqliteStats {
        InlineSqliteStats {
            connections_opened: self.inner.stats.opened.load(Ordering::Relaxed),
            waited_for_lock: self.inner.stats.waited.load(Ordering::Relaxed),
            checkpoints: self.inner.stats.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Runs a statement that returns no rows; the rows it changed.
    pub(crate) async fn execute(&self, stmt: Statement) -> Result<u64, DbErr> {
        self.run(stmt, false, |conn, sql, params| {
            let changed = conn
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?;
            Ok(changed as u64)
        })
        .await
    }

    /// Runs a query whose first `columns` columns are text (or NULL): their
    /// cells, row after row.
    pub(crate) async fn query_texts(
        &self,
        stmt: Statement,
        columns: usize,
    ) -> Result<Vec<Option<String>>, DbErr> {
        self.run(stmt, true, move |conn, sql, params| {
            let mut prepared = conn.prepare_cached(sql)?;
            let mut rows = prepared.query(rusqlite::params_from_iter(params))?;
            let mut cells = Vec::new();
            while let Some(row) = rows.next()? {
                for i in 0..columns {
                    cells.push(row.get::<_, Option<String>>(i)?);
                }
            }
            Ok(cells)
        })
        .await
    }

    /// Runs `work` on an idle connection in this thread; on a blocking
    /// thread when the database is locked, when a connection must be
    /// opened, or when the write would restart the log.
    async fn run<T, W>(&self, stmt: Statement, query: bool, work: W) -> Result<T, DbErr>
    where
        T: Send + 'static,
        W: Fn(&rusqlite::Connection, &str, &[rusqlite::types::Value]) -> rusqlite::Result<T>
            + Send
            + 'static,
    {
        let to_db_err = |e| {
            if query {
                DbErr::Query(e)
            } else {
                DbErr::Exec(e)
            }
        };
        let Statement { sql, values, .. } = stmt;
        let params = params(values).map_err(|e| {
            to_db_err(RuntimeErr::Internal(format!(
                "the inline SQLite connections cannot bind {e}"
            )))
        })?;
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let restart = !query && self.inner.log_restart.swap(false, Ordering::AcqRel);
        // Locked: the statement found the write lock taken and waits for it.
        let (conn, locked) = match idle {
            Some(conn) if !restart => match try_once(&conn, &sql, &params, &work) {
                Some((result, pages)) => {
                    self.inner.settle(conn, pages, permit, false).wait().await;
                    return result.map_err(|e| to_db_err(runtime_err(e)));
                }
                None => {
                    self.inner.stats.waited.fetch_add(1, Ordering::Relaxed);
                    (Some(conn), true)
                }
            },
            other => (other, false),
        };
        let inner = self.inner.clone();
        let (result, settled) = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(conn) => conn,
                None => match connect(&inner.path, inner.flags) {
                    Ok(conn) => {
                        inner.stats.opened.fetch_add(1, Ordering::Relaxed);
                        conn
                    }
                    Err(e) => return (Err(e), Settled::Done),
                },
            };
            if !locked {
                match try_once(&conn, &sql, &params, &work) {
                    Some((result, pages)) => {
                        inner.restart_still_due(restart, pages);
                        return (result, inner.settle(conn, pages, permit, true));
                    }
                    None => {
                        inner.stats.waited.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Err(e) = conn.busy_timeout(SQLITE_BUSY_TIMEOUT) {
                return (Err(e), Settled::Done);
            }
            WAL_PAGES.set(0);
            let result = work(&conn, &sql, &params);
            let pages = WAL_PAGES.replace(0);
            if conn.busy_timeout(Duration::ZERO).is_err() {
                // Not back to the idle list: it would wait in the calling
                // thread. Closed here; the work's result stands.
                return (result, Settled::Done);
            }
            inner.restart_still_due(restart, pages);
            (result, inner.settle(conn, pages, permit, true))
        })
        .await
        .map_err(|e| to_db_err(RuntimeErr::Internal(joined(e))))?;
        settled.wait().await;
        result.map_err(|e| to_db_err(runtime_err(e)))
    }
}

/// One try of `work` that does not wait for a lock: its result and the log
/// pages its commit left, or `None` when the database was locked (nothing
/// done).
fn try_once<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[rusqlite::types::Value],
    work: &impl Fn(&rusqlite::Connection, &str, &[rusqlite::types::Value]) -> rusqlite::Result<T>,
) -> Option<(rusqlite::Result<T>, i32)> {
    WAL_PAGES.set(0);
    match work(conn, sql, params) {
        Err(e) if is_busy(&e) => None,
        result => Some((result, WAL_PAGES.replace(0))),
    }
}

/// What a commit leaves its caller to wait for ([`Inner::settle`]).
enum Settled {
    Done,
    /// The checkpoint it started.
    Checkpoint(tokio::task::JoinHandle<()>),
    /// The checkpoint another commit started.
    Running(Arc<Inner>),
}

impl Settled {
    async fn wait(self) {
        match self {
            Settled::Done => {}
            Settled::Checkpoint(checkpoint) => {
                if let Err(e) = checkpoint.await {
                    // The commit stands; a later one checkpoints again.
                    tracing::warn!(error = %e, "SQLite checkpoint did not finish");
                }
            }
            Settled::Running(inner) => drop(inner.checkpoint_running.lock().await),
        }
    }
}

/// Why a blocking thread's work did not come back: its panic goes on in
/// the caller; a task the runtime cancelled as it shut down is an error.
fn joined(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(e) => format!("the SQLite work on a blocking thread did not finish: {e}"),
    }
}

/// Opens a connection as the store uses it (on a blocking thread: opening
/// reads the schema, and may wait for a lock while it does).
fn connect(path: &Path, flags: OpenFlags) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // SQLite's automatic checkpoint is a WAL hook of its own, which this
    // one replaces: off, said out loud.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.wal_hook(Some(record_wal_pages));
    conn.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS);
    conn.busy_timeout(Duration::ZERO)?;
    Ok(conn)
}

impl Inner {
    /// Runs a checkpoint on a blocking thread with `running` held, then
    /// returns `conn` to the idle list.
    fn spawn_checkpoint(
        self: &Arc<Self>,
        conn: rusqlite::Connection,
        running: tokio::sync::OwnedMutexGuard<()>,
        permit: OwnedSemaphorePermit,
    ) -> tokio::task::JoinHandle<()> {
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            inner.checkpoint(&conn);
            drop(running);
            inner.put_back(conn, permit);
        })
    }

    /// A checkpoint, on a blocking thread, with `checkpoint_running` held.
    /// PASSIVE, as SQLite's automatic one: copies what no reader still
    /// needs and waits for no one; a later commit past the mark starts
    /// another for the rest.
    fn checkpoint(&self, conn: &rusqlite::Connection) {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        }) {
            // Busy (not 0): another connection (the pool's, LangBot's) was
            // checkpointing; nothing done.
            Ok((0, log, copied)) => {
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                if log == copied {
                    self.log_restart.store(true, Ordering::Release);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "SQLite checkpoint failed; a later commit tries again");
            }
        }
    }

    /// A write sent here to restart the log that wrote nothing (a delete
    /// that matched no row, a failure) leaves the restart to the next.
    fn restart_still_due(&self, restart: bool, pages: i32) {
        if restart && pages == 0 {
            self.log_restart.store(true, Ordering::Release);
        }
    }

    /// After a commit that left `pages` in the log: returns `conn` to the
    /// idle list, past the mark after starting a checkpoint (unless one
    /// runs). Past [`WAIT_PAGES`] the caller must wait for a checkpoint to
    /// end, as SQLite's writer waits for its own: on a blocking thread
    /// (`blocking`) this runs it there; what is left to wait for, the
    /// caller awaits with [`Settled::wait`] (a blocking thread parked on a
    /// checkpoint could be the one that checkpoint needs).
    fn settle(
        self: &Arc<Self>,
        conn: rusqlite::Connection,
        pages: i32,
        permit: OwnedSemaphorePermit,
        blocking: bool,
    ) -> Settled {
        if pages < CHECKPOINT_PAGES {
            self.put_back(conn, permit);
            return Settled::Done;
        }
        let wait = pages >= WAIT_PAGES;
        match self.checkpoint_running.clone().try_lock_owned() {
            Ok(running) if wait && blocking => {
                self.checkpoint(&conn);
                drop(running);
                self.put_back(conn, permit);
                Settled::Done
            }
            Ok(running) => {
                let checkpoint = self.spawn_checkpoint(conn, running, permit);
                if wait {
                    Settled::Checkpoint(checkpoint)
                } else {
                    Settled::Done
                }
            }
            Err(_) => {
                self.put_back(conn, permit);
                if wait {
                    Settled::Running(self.clone())
                } else {
                    Settled::Done
                }
            }
        }
    }

    fn put_back(&self, conn: rusqlite::Connection, permit: OwnedSemaphorePermit) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        drop(permit);
    }
}

impl Drop for Inner {
    /// Closes the connections on a blocking thread: the last connection to
    /// a file checkpoints the whole log as it closes.
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|e| e.into_inner()));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn_blocking(move || drop(idle)));
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// rusqlite's error as sqlx reports the same: SQLite's own as
/// `sqlx::Error::Database` (extended code, message), a cell that is not
/// text as `ColumnDecode`.
fn runtime_err(e: rusqlite::Error) -> RuntimeErr {
    let sqlx = match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            sea_orm::sqlx::Error::Database(Box::new(SqliteError {
                code: code.extended_code,
                message: message.unwrap_or_else(|| code.to_string()),
            }))
        }
        rusqlite::Error::InvalidColumnType(index, ..)
        | rusqlite::Error::FromSqlConversionFailure(index, ..)
        | rusqlite::Error::Utf8Error(index, _) => sea_orm::sqlx::Error::ColumnDecode {
            index: format!("{index:?}"),
            source: Box::new(e),
        },
        other => return RuntimeErr::Internal(format!("SQLite: {other}")),
    };
    RuntimeErr::SqlxError(Arc::new(sqlx))
}

/// SQLite's error from an inline connection, as sqlx's own SQLite error
/// shows it: `(code: N) message`, `code()` the extended result code,
/// `kind()` the constraint it broke. Reach it through
/// `DbErr::…(RuntimeErr::SqlxError(e))` and `e.as_database_error()`
/// (`DbErr::sql_err()` knows only sqlx's own type).
#[derive(Debug)]
pub struct SqliteError {
    code: i32,
    message: String,
}

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for SqliteError {}

impl DatabaseError for SqliteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// The statement's values as SQLite gets them from sqlx: text, integers,
/// and timestamps as the text sqlx writes for a `NaiveDateTime`. Taken,
/// not copied: a value may be 256 KiB of text.
fn params(values: Option<sea_orm::Values>) -> Result<Vec<rusqlite::types::Value>, String> {
    use rusqlite::types::Value as V;
    use sea_orm::Value;
    values
        .map(|v| v.0)
        .unwrap_or_default()
        .into_iter()
        .map(|v| {
            Ok(match v {
                Value::String(s) => s.map_or(V::Null, V::Text),
                Value::ChronoDateTime(t) => {
                    t.map_or(V::Null, |t| V::Text(t.format("%F %T%.f").to_string()))
                }
                Value::BigUnsigned(n) => match n {
                    None => V::Null,
                    Some(n) => V::Integer(i64::try_from(n).map_err(|_| format!("{n} (over i64)"))?),
                },
                Value::BigInt(n) => n.map_or(V::Null, V::Integer),
                other => return Err(format!("{other:?}")),
            })
        })
        .collect()
}
