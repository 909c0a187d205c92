//! The store's statements on a PostgreSQL or MariaDB/MySQL server, on
//! connections of the store's own instead of sqlx's pool.
//!
//! sqlx 0.9's pool pings every connection it takes back (`return_to_pool`;
//! no option turns that off): a round trip, and a task woken to send it,
//! after every statement. On one task the pool's spare connection hides the
//! wait but not the work; with every connection busy each call pays for it.
//! A plain sqlx connection is as fast as tokio-postgres on the store's SQL;
//! these are plain sqlx connections, kept and handed out here:
//!
//! * **no ping on the hot path**: a connection goes back to the set as soon
//!   as its statement's result is read, and out again as it is. It is pinged
//!   first only when it sat idle for [`PING_IF_IDLE_FOR`], as the pool's
//!   recommended settings do, or when it went idle before another of the
//!   set was found dead (a restart or failover ends them all): those are
//!   checked before use, not each found dead by a statement in turn;
//! * **a dead connection is dropped, never reused**: a statement whose
//!   connection died fails with the driver's I/O error (or the server's
//!   "terminating connection"), the connection is dropped, and the store
//!   sends a read or an upsert again on another
//!   ([`retry::is_connection_lost`](crate::retry::is_connection_lost));
//! * **a cancelled call leaves nothing half-read behind**: when the caller
//!   drops a call mid-statement, its connection may still owe the rest of
//!   a result, so it is dropped instead of going back;
//! * **bounded**: at most the `max` given to [`ServerConnections::open`]
//!   (a caller past that waits for one); connections idle for
//!   [`IDLE_TIMEOUT`] are closed;
//! * **a server that is restarting is waited for**, as the pool waits: a
//!   new connection refused (or PostgreSQL "starting up") is tried again,
//!   10 ms later and twice as long each time, for up to [`ACQUIRE_TIMEOUT`];
//!   a failure to connect is a `DbErr::Conn`, which the store does not
//!   resend;
//! * nothing else changes: the same URL (TLS settings included) and the
//!   driver's own connect options, statements prepared and cached per
//!   connection as on the pool, one autocommit statement per call, errors
//!   as the pool reports them (`sqlx::Error` inside a [`DbErr`], so
//!   `DbErr::sql_err()` works).
//!
//! Behind a transaction pooler these are not used: the store sends its
//! statements by the simple query protocol on the pool there. Everything
//! else (migrations, the caller's transactions, `state-admin`) stays on the
//! SeaORM connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, ConnectOptions, Connection, Row};
use sea_orm::{DbBackend, DbErr, RuntimeErr, Statement};
use sea_query_sqlx::SqlxValues;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::connection::{
    ACQUIRE_TIMEOUT, CONNECT_TIMEOUT, ConnectError, DbUrl, PING_IF_IDLE_FOR, Pooler,
};

/// Connections a [`StoreConnection`](crate::connection::StoreConnection)
/// keeps for the store at most: sqlx's default pool size.
pub const MAX_SERVER_CONNECTIONS: usize = 10;

/// A connection idle this long is closed rather than handed out (sqlx's
/// pool default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The store's own connections to one server. Cheap to clone: clones share
/// the connections.
#[derive(Clone)]
pub struct ServerConnections {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ServerConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnections")
            .field("backend", &self.inner.options.backend())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What the connections did so far (for tests and operators).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerConnectionsStats {
    /// Connections opened, the first included.
    pub connections_opened: u64,
    /// Connections pinged before use (idle long, or suspect after a loss).
    pub pinged: u64,
    /// Connections dropped: found dead, left mid-statement by a cancelled
    /// call, or idle past [`IDLE_TIMEOUT`].
    pub dropped: u64,
}

struct Inner {
    options: Options,
    state: Mutex<State>,
    permits: Arc<Semaphore>,
    opened: AtomicU64,
    pinged: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Idle connections, the most recently used last.
    idle: Vec<Idle>,
    /// When a connection of the set was last found dead.
    lost_at: Option<Instant>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

enum Options {
    Postgres(PgConnectOptions),
    MySql(MySqlConnectOptions),
}

impl Options {
    fn backend(&self) -> DbBackend {
        match self {
            Options::Postgres(_) => DbBackend::Postgres,
            Options::MySql(_) => DbBackend::MySql,
        }
    }

    async fn connect(&self) -> Result<Conn, sqlx::Error> {
        Ok(match self {
            Options::Postgres(o) => Conn::Postgres(o.connect().await?),
            Options::MySql(o) => Conn::MySql(o.connect().await?),
        })
    }

    /// Connects, waiting for a server that refuses connections for now
    /// (restarting, starting up) as sqlx's pool does: tried again with a
    /// doubling pause until [`ACQUIRE_TIMEOUT`], each try within
    /// [`CONNECT_TIMEOUT`].
    async fn connect_waiting(&self) -> Result<Conn, sqlx::Error> {
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let mut pause = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(left.min(CONNECT_TIMEOUT), self.connect()).await
            {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) if not_up_yet(&e) => e,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connecting to the server timed out",
                    )));
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(error);
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(ACQUIRE_TIMEOUT / 5);
        }
    }
}

/// Whether connecting failed because the server is not up (yet, or again):
/// refused, or cut off while it shuts down, or PostgreSQL still starting.
fn not_up_yet(e: &sqlx::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::UnexpectedEof
        ),
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

enum Conn {
    Postgres(PgConnection),
    MySql(MySqlConnection),
}

impl Conn {
    async fn ping(&mut self) -> Result<(), sqlx::Error> {
        match self {
            Conn::Postgres(c) => c.ping().await,
            Conn::MySql(c) => c.ping().await,
        }
    }

    async fn close(self) {
        let _ = match self {
            Conn::Postgres(c) => c.close().await,
            Conn::MySql(c) => c.close().await,
        };
    }
}

impl ServerConnections {
    /// Connections to the server `url` names, at most `max` (at least one),
    /// the first opened now so that a URL that cannot serve fails here.
    /// `None` for SQLite and behind a transaction pooler (where the store
    /// stays on the pool).
    ///
    /// # Errors
    /// A bad URL, or the first connection failing, as
    /// [`probe`](crate::connection::probe) names it.
    pub async fn open(url: &str, max: usize) -> Result<Option<Self>, ConnectError> {
        let url = DbUrl::parse(url)?;
        if url.pooler() == Pooler::Transaction {
            return Ok(None);
        }
        let options = match url.backend() {
            DbBackend::Postgres => Options::Postgres(
                url.as_str()
                    .parse::<PgConnectOptions>()
                    .map_err(ConnectError::Driver)?
                    .disable_statement_logging(),
            ),
            DbBackend::MySql => Options::MySql(
                url.as_str()
                    .parse::<MySqlConnectOptions>()
                    .map_err(ConnectError::Driver)?
                    .disable_statement_logging(),
            ),
            _ => return Ok(None),
        };
        let first = options
            .connect()
            .await
            .map_err(crate::connection::classify)?;
        Ok(Some(Self {
            inner: Arc::new(Inner {
                options,
                state: Mutex::new(State {
                    idle: vec![Idle {
                        conn: first,
                        since: Instant::now(),
                    }],
                    lost_at: None,
                }),
                permits: Arc::new(Semaphore::new(max.max(1))),
                opened: AtomicU64::new(1),
                pinged: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }))
    }

    /// The backend the connections are to.
    pub fn backend(&self) -> DbBackend {
        self.inner.options.backend()
    }

    /// What the connections did so far.
    pub fn stats(&self) -> ServerConnectionsStats {
        ServerConnectionsStats {
            connections_opened: self.inner.opened.load(Ordering::Relaxed),
            pinged: self.inner.pinged.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
        }
    }

    /// Closes the idle connections (those in use close when their call
    /// ends and the last clone is gone).
    pub async fn close(&self) {
        let idle = std::mem::take(&mut self.inner.lock().idle);
        for i in idle {
            i.conn.close().await;
        }
    }

    /// Runs a statement that returns no rows: the rows it affected.
    pub(crate) async fn execute(&self, stmt: Statement) -> Result<u64, DbErr> {
        let mut lease = self.take().await?;
        let values = SqlxValues(stmt.values.unwrap_or(sea_orm::Values(Vec::new())));
        let sql = sqlx::AssertSqlSafe(stmt.sql);
        let result = match lease.conn() {
            Conn::Postgres(c) => sqlx::query_with(sql, values)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Conn::MySql(c) => sqlx::query_with(sql, values)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        };
        lease.finish(result).map_err(exec_err)
    }

    /// Runs a query whose `columns` columns are all text (nullable): their
    /// cells, row after row.
    pub(crate) async fn query_texts(
        &self,
        stmt: Statement,
        columns: usize,
    ) -> Result<Vec<Option<String>>, DbErr> {
        fn cells<R: Row>(rows: &[R], columns: usize) -> Result<Vec<Option<String>>, sqlx::Error>
        where
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            let mut cells = Vec::with_capacity(rows.len() * columns);
            for row in rows {
                for i in 0..columns {
                    cells.push(row.try_get::<Option<String>, _>(i)?);
                }
            }
            Ok(cells)
        }
        let mut lease = self.take().await?;
        let values = SqlxValues(stmt.values.unwrap_or(sea_orm::Values(Vec::new())));
        let sql = sqlx::AssertSqlSafe(stmt.sql);
        let result = match lease.conn() {
            Conn::Postgres(c) => sqlx::query_with(sql, values)
                .fetch_all(c)
                .await
                .and_then(|rows| cells(&rows, columns)),
            Conn::MySql(c) => sqlx::query_with(sql, values)
                .fetch_all(c)
                .await
                .and_then(|rows| cells(&rows, columns)),
        };
        lease.finish(result).map_err(query_err)
    }

    /// A connection for one statement: the most recently used idle one
    /// (pinged first if suspect), else a new one.
    async fn take(&self) -> Result<Lease<'_>, DbErr> {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            let (idle, suspect) = {
                let mut state = self.inner.lock();
                let now = Instant::now();
                // The oldest first: close those idle too long.
                let stale = state
                    .idle
                    .iter()
                    .take_while(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
                    .count();
                let stale: Vec<Idle> = state.idle.drain(..stale).collect();
                if !stale.is_empty() {
                    self.inner
                        .dropped
                        .fetch_add(stale.len() as u64, Ordering::Relaxed);
                    tokio::spawn(async move {
                        for i in stale {
                            i.conn.close().await;
                        }
                    });
                }
                match state.idle.pop() {
                    Some(i) => {
                        let suspect = now.duration_since(i.since) >= PING_IF_IDLE_FOR
                            || state.lost_at.is_some_and(|lost| i.since <= lost);
                        (Some(i.conn), suspect)
                    }
                    None => (None, false),
                }
            };
            let conn = match idle {
                Some(mut conn) if suspect => {
                    self.inner.pinged.fetch_add(1, Ordering::Relaxed);
                    if conn.ping().await.is_err() {
                        self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    conn
                }
                Some(conn) => conn,
                None => {
                    let conn = self
                        .inner
                        .options
                        .connect_waiting()
                        .await
                        .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e.into())))?;
                    self.inner.opened.fetch_add(1, Ordering::Relaxed);
                    conn
                }
            };
            return Ok(Lease {
                set: &self.inner,
                conn: Some(conn),
                _permit: permit,
            });
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the list consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection out of the set for one statement. Dropped before
/// [`finish`](Self::finish) (the caller's future dropped mid-statement),
/// it drops the connection: its result may be half-read.
struct Lease<'a> {
    set: &'a Inner,
    conn: Option<Conn>,
    _permit: OwnedSemaphorePermit,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until it ends")
    }

    /// Gives the connection back unless `result` says it is lost.
    fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        let conn = self.conn.take().expect("finished once");
        match &result {
            Err(e) if is_lost(e) => {
                self.set.dropped.fetch_add(1, Ordering::Relaxed);
                self.set.lock().lost_at = Some(Instant::now());
            }
            _ => self.set.lock().idle.push(Idle {
                conn,
                since: Instant::now(),
            }),
        }
        result
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.set.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether the connection cannot be used after `e`: anything but the
/// server's answer to the statement (or a value that would not decode),
/// and the server's own "this session is ending".
fn is_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(_) => crate::retry::is_sqlx_connection_lost(e),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Decode(_) => false,
        _ => true,
    }
}

fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(e.into()))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e.into()))
}
