//! The store's statements on a SQLite file, run by SQLite on the calling
//! task's thread instead of sqlx's.
//!
//! sqlx runs every SQLite statement on a worker thread of the connection's
//! own and hands the rows back over a channel: two thread wake-ups per
//! statement, which cost more than the statement itself (a `get` by unique
//! key takes SQLite a few microseconds). Here the store's own statements
//! (upsert, get, list, snapshot, delete) go to a rusqlite connection on the
//! same file, in the calling thread, and never wait there:
//!
//! * **no lock waits on the async thread**: these connections have no busy
//!   timeout, so a statement that finds the database locked (another writer)
//!   fails at once with `SQLITE_BUSY` and nothing done; it then runs again on
//!   a blocking thread ([`tokio::task::spawn_blocking`]) with the usual
//!   [`SQLITE_BUSY_TIMEOUT`]. In WAL mode readers never wait for a writer;
//! * **no checkpoints on the async thread**: SQLite's automatic checkpoint
//!   (copying the write-ahead log into the database file, with an `fsync`)
//!   runs in whichever commit crosses 1,000 log pages. Here it is off, and a
//!   commit that crosses that mark starts the same checkpoint on a blocking
//!   thread after it;
//! * nothing else changes: the same file, WAL mode, `synchronous=NORMAL`,
//!   foreign keys on, the same SQL text and values (timestamps as the text
//!   sqlx writes), each statement its own transaction as on the pool.
//!
//! Everything else (migrations, the caller's transactions, `state-admin`)
//! stays on the SeaORM connection; a store in the caller's transaction does
//! not use this.

use std::cell::Cell;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::hooks::Wal;
use rusqlite::{ErrorCode, OpenFlags};
use sea_orm::sqlx::sqlite::SqliteConnectOptions;
use sea_orm::{DbBackend, DbErr, RuntimeErr, Statement};

use crate::connection::{ConnectError, DbUrl, SQLITE_BUSY_TIMEOUT};

/// Write-ahead log pages past which a commit starts a checkpoint: SQLite's
/// own default for its automatic one.
const CHECKPOINT_PAGES: i32 = 1000;

/// Idle connections kept; more are opened when more tasks run statements at
/// once, and closed when they come back to a full list.
const MAX_IDLE: usize = 8;

/// Statements each connection keeps prepared: the store has about ten
/// shapes.
const PREPARED_STATEMENTS: usize = 32;

/// Times a statement that ran into another connection's newer write
/// (`SQLITE_BUSY_SNAPSHOT`, which no busy timeout waits out) is run again.
const SNAPSHOT_RETRIES: u32 = 8;

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
    /// A checkpoint is running: commits past the mark meanwhile start none.
    checkpointing: AtomicBool,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    waited: AtomicU64,
    checkpoints: AtomicU64,
}

/// What an [`InlineSqlite`] has done so far, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InlineSqliteStats {
    /// Statements that found the database locked and ran again on a
    /// blocking thread, waiting for the lock.
    pub waited_for_lock: u64,
    /// Checkpoints run on a blocking thread and finished.
    pub checkpoints: u64,
}

/// Why a statement failed on an inline connection: SQLite's error, as
/// [`DbErr::Exec`] or [`DbErr::Query`] with its text and extended code
/// (rusqlite's error has no place in SeaORM's).
fn db_err(query: bool, e: &rusqlite::Error) -> DbErr {
    match e.sqlite_error() {
        Some(s) => failed(query, format!("SQLite error {}: {e}", s.extended_code)),
        None => failed(query, format!("SQLite: {e}")),
    }
}

fn failed(query: bool, text: String) -> DbErr {
    if query {
        DbErr::Query(RuntimeErr::Internal(text))
    } else {
        DbErr::Exec(RuntimeErr::Internal(text))
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

impl InlineSqlite {
    /// For the database `url` names, when it is a SQLite file; `None` for
    /// any other database, an in-memory one or a shared cache (whose
    /// connections lock tables against each other), and for `immutable` or
    /// another `vfs`: the store then stays on its SeaORM connection. Opens
    /// one connection now, so that a file that cannot be opened says so
    /// here. `mode=ro` opens read-only; the file is never created here
    /// (connect the pool first).
    ///
    /// # Errors
    /// A bad URL, or SQLite cannot open the file.
    pub fn open(url: &str) -> Result<Option<Self>, ConnectError> {
        let url = DbUrl::parse(url)?;
        if url.backend() != DbBackend::Sqlite || url.sqlite_shared_cache() {
            return Ok(None);
        }
        let query = url.as_str().split_once('?').map_or("", |(_, q)| q);
        let mut read_only = false;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match (&*key, &*value) {
                ("mode", "ro") => read_only = true,
                ("immutable" | "vfs", _) => return Ok(None),
                _ => {}
            }
        }
        let options = SqliteConnectOptions::from_str(url.as_str()).map_err(ConnectError::Driver)?;
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let inner = Inner {
            path: options.get_filename().to_owned(),
            flags,
            idle: Mutex::new(Vec::new()),
            checkpointing: AtomicBool::new(false),
            stats: Counters::default(),
        };
        let first = inner.connect().map_err(ConnectError::Sqlite)?;
        inner.put_back(first);
        Ok(Some(Self {
            inner: Arc::new(inner),
        }))
    }

    /// The file, as the URL named it.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.path
    }

    /// What these connections have done so far.
    pub fn stats(&self) -> InlineSqliteStats {
        InlineSqliteStats {
            waited_for_lock: self.inner.stats.waited.load(Ordering::Relaxed),
            checkpoints: self.inner.stats.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Runs a statement that returns no rows; the rows it changed.
    pub(crate) async fn execute(&self, stmt: &Statement) -> Result<u64, DbErr> {
        self.run(stmt, false, |conn, sql, params| {
            let changed = conn
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params))?;
            Ok(changed as u64)
        })
        .await
    }

    /// Runs a query whose first `columns` columns are text (or NULL).
    pub(crate) async fn query_texts(
        &self,
        stmt: &Statement,
        columns: usize,
    ) -> Result<Vec<Vec<Option<String>>>, DbErr> {
        self.run(stmt, true, move |conn, sql, params| {
            let mut prepared = conn.prepare_cached(sql)?;
            let mut rows = prepared.query(rusqlite::params_from_iter(params))?;
            let mut texts = Vec::new();
            while let Some(row) = rows.next()? {
                texts.push(
                    (0..columns)
                        .map(|i| row.get::<_, Option<String>>(i))
                        .collect::<rusqlite::Result<_>>()?,
                );
            }
            Ok(texts)
        })
        .await
    }

    /// Runs `op` on an idle connection in this thread; when the database
    /// is locked, again on a blocking thread that waits for the lock.
    async fn run<T, F>(&self, stmt: &Statement, query: bool, op: F) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: Fn(&rusqlite::Connection, &str, &[rusqlite::types::Value]) -> rusqlite::Result<T>
            + Send
            + 'static,
    {
        let params = params(stmt)
            .map_err(|e| failed(query, format!("the inline SQLite path cannot bind {e}")))?;
        let conn = self.inner.take().map_err(|e| db_err(query, &e))?;
        match attempt(&conn, &stmt.sql, &params, &op) {
            (Err(e), _) if is_busy(&e) => {
                self.inner.stats.waited.fetch_add(1, Ordering::Relaxed);
                let inner = self.inner.clone();
                let sql = stmt.sql.clone();
                tokio::task::spawn_blocking(move || {
                    let result = wait_and_run(&conn, &sql, &params, &op);
                    inner.finish(conn, WAL_PAGES.replace(0) >= CHECKPOINT_PAGES, false);
                    result
                })
                .await
                .map_err(|e| failed(query, format!("the SQLite thread failed: {e}")))?
                .map_err(|e| db_err(query, &e))
            }
            (result, pages) => {
                self.inner.finish(conn, pages >= CHECKPOINT_PAGES, true);
                result.map_err(|e| db_err(query, &e))
            }
        }
    }
}

/// One try of `op`, and the log pages its commit left (0 if none).
fn attempt<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[rusqlite::types::Value],
    op: &impl Fn(&rusqlite::Connection, &str, &[rusqlite::types::Value]) -> rusqlite::Result<T>,
) -> (rusqlite::Result<T>, i32) {
    WAL_PAGES.set(0);
    let result = op(conn, sql, params);
    (result, WAL_PAGES.replace(0))
}

/// `op` with the busy timeout on, on a blocking thread; again when it ran
/// into a newer snapshot, which the timeout does not wait out.
fn wait_and_run<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[rusqlite::types::Value],
    op: &impl Fn(&rusqlite::Connection, &str, &[rusqlite::types::Value]) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    let mut tries = 0;
    let result = loop {
        WAL_PAGES.set(0);
        match op(conn, sql, params) {
            Err(e) if is_busy(&e) && tries < SNAPSHOT_RETRIES => tries += 1,
            other => break other,
        }
    };
    conn.busy_timeout(Duration::ZERO)?;
    result
}

impl Inner {
    fn connect(&self) -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open_with_flags(&self.path, self.flags)?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // SQLite's automatic checkpoint is a WAL hook of its own, which
        // this one replaces: off, said out loud.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.wal_hook(Some(record_wal_pages));
        conn.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS);
        Ok(conn)
    }

    fn take(&self) -> rusqlite::Result<rusqlite::Connection> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn put_back(&self, conn: rusqlite::Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Returns `conn` to the idle list, after a checkpoint when its commit
    /// crossed the mark: on a blocking thread when called on an async one.
    fn finish(self: &Arc<Self>, conn: rusqlite::Connection, checkpoint: bool, on_async: bool) {
        if !checkpoint || self.checkpointing.swap(true, Ordering::AcqRel) {
            return self.put_back(conn);
        }
        let run = {
            let inner = self.clone();
            move || {
                // PASSIVE, as SQLite's automatic one: copies what no reader
                // still needs and waits for no one; a later commit past the
                // mark starts another for the rest.
                match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    Ok(()) => {
                        inner.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                    }
                    // Another connection (the pool's) is checkpointing.
                    Err(e) if is_busy(&e) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "SQLite checkpoint failed; a later commit tries again");
                    }
                }
                inner.checkpointing.store(false, Ordering::Release);
                inner.put_back(conn);
            }
        };
        if on_async {
            drop(tokio::task::spawn_blocking(run));
        } else {
            run();
        }
    }
}

/// The statement's values as SQLite gets them from sqlx: text, integers,
/// and timestamps as the text sqlx writes for a `NaiveDateTime`.
fn params(stmt: &Statement) -> Result<Vec<rusqlite::types::Value>, String> {
    use rusqlite::types::Value as V;
    use sea_orm::Value;
    let Some(values) = &stmt.values else {
        return Ok(Vec::new());
    };
    values
        .0
        .iter()
        .map(|v| {
            Ok(match v {
                Value::String(s) => s.clone().map_or(V::Null, V::Text),
                Value::ChronoDateTime(t) => {
                    t.map_or(V::Null, |t| V::Text(t.format("%F %T%.f").to_string()))
                }
                Value::BigUnsigned(n) => match n {
                    None => V::Null,
                    Some(n) => {
                        V::Integer(i64::try_from(*n).map_err(|_| format!("{n} (over i64)"))?)
                    }
                },
                Value::BigInt(n) => n.map_or(V::Null, V::Integer),
                other => return Err(format!("{other:?}")),
            })
        })
        .collect()
}
