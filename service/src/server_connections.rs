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
//!   connection died fails with the driver's I/O error, or the server's
//!   error that ends the session (PostgreSQL's `FATAL`, such as
//!   `idle_session_timeout`; MariaDB's "killed", "shutdown"); the connection
//!   is dropped, and the store sends a read or an upsert again on another
//!   ([`retry::is_connection_lost`](crate::retry::is_connection_lost));
//! * **a cancelled call leaves nothing half-read behind, and still counts**:
//!   when the caller drops a call mid-statement, its server session may go
//!   on (waiting for a lock, say) and its connection owes the rest of the
//!   answer. A task of its own then keeps the connection, and its place in
//!   the bound, and pings it, which reads that answer to its end; the
//!   connection goes back if that succeeds within [`ACQUIRE_TIMEOUT`], and
//!   is dropped otherwise;
//! * **bounded**: at most the `max` given to [`ServerConnections::open`]
//!   (a caller past that waits for one, up to [`ACQUIRE_TIMEOUT`] in all,
//!   then fails with `DbErr::ConnectionAcquire`); connections idle for
//!   [`IDLE_TIMEOUT`], or open for [`MAX_LIFETIME`], are closed, as the
//!   pool closes them;
//! * **a hung connection is given up on**: a ping that does not answer
//!   within [`CONNECT_TIMEOUT`] (a flow a load balancer or firewall dropped
//!   without a word) counts as a dead connection;
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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, ConnectOptions, Connection, Row};
use sea_orm::{ConnAcquireErr, DbBackend, DbErr, RuntimeErr, Statement};
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

/// A connection open this long is closed when it comes back (sqlx's pool
/// default): a server's per-session state (its plans, a failover that left
/// a session on a read-only node, a load balancer's choice of node) does
/// not last forever.
pub const MAX_LIFETIME: Duration = Duration::from_secs(1800);

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
    /// Connections dropped or closed: found dead, left by a cancelled call
    /// whose answer did not come, idle past [`IDLE_TIMEOUT`], open past
    /// [`MAX_LIFETIME`], or back after [`ServerConnections::close`].
    pub dropped: u64,
    /// Calls that found every connection in use and waited for one.
    pub waited_for_connection: u64,
    /// Connections a cancelled call left that were read to the end of
    /// their answer and kept.
    pub recovered: u64,
}

struct Inner {
    options: Options,
    state: Mutex<State>,
    permits: Arc<Semaphore>,
    closed: AtomicBool,
    opened: AtomicU64,
    pinged: AtomicU64,
    dropped: AtomicU64,
    waited: AtomicU64,
    recovered: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Idle connections, the most recently used last.
    idle: Vec<Idle>,
    /// When a connection of the set was last found dead.
    lost_at: Option<Instant>,
}

/// A connection and when it was opened.
struct Conn {
    kind: ConnKind,
    opened_at: Instant,
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
        let kind = match self {
            Options::Postgres(o) => ConnKind::Postgres(o.connect().await?),
            Options::MySql(o) => ConnKind::MySql(o.connect().await?),
        };
        Ok(Conn {
            kind,
            opened_at: Instant::now(),
        })
    }

    /// Connects, waiting for a server that refuses connections for now
    /// (restarting, starting up) as sqlx's pool does: tried again with a
    /// doubling pause until `deadline`, each try within
    /// [`CONNECT_TIMEOUT`]. `None` when the deadline passed first.
    async fn connect_waiting(&self, deadline: Instant) -> Option<Result<Conn, sqlx::Error>> {
        let mut pause = Duration::from_millis(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(left.min(CONNECT_TIMEOUT), self.connect()).await
            {
                Ok(Ok(conn)) => return Some(Ok(conn)),
                Ok(Err(e)) if not_up_yet(&e) => e,
                Ok(Err(e)) => return Some(Err(e)),
                Err(_) if left <= CONNECT_TIMEOUT => return None,
                Err(_) => sqlx::Error::Io(std::io::ErrorKind::TimedOut.into()),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(Err(error));
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
                | ErrorKind::TimedOut
        ),
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

enum ConnKind {
    Postgres(PgConnection),
    MySql(MySqlConnection),
}

impl Conn {
    /// A round trip, which first reads whatever answer the connection still
    /// owes (a statement whose caller went away).
    async fn ping(&mut self) -> Result<(), sqlx::Error> {
        match &mut self.kind {
            ConnKind::Postgres(c) => c.ping().await,
            ConnKind::MySql(c) => c.ping().await,
        }
    }

    /// [`ping`](Self::ping) within `limit`: whether the connection
    /// answered.
    async fn answers(&mut self, limit: Duration) -> bool {
        matches!(tokio::time::timeout(limit, self.ping()).await, Ok(Ok(())))
    }

    async fn close(self) {
        let _ = match self.kind {
            ConnKind::Postgres(c) => c.close().await,
            ConnKind::MySql(c) => c.close().await,
        };
    }

    fn too_old(&self, now: Instant) -> bool {
        now.duration_since(self.opened_at) >= MAX_LIFETIME
    }
}

/// What to do with an idle connection before handing it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Idle past [`IDLE_TIMEOUT`] or open past [`MAX_LIFETIME`].
    Close,
    /// Idle past [`PING_IF_IDLE_FOR`], or idle since before another
    /// connection of the set was found dead (at `lost_at`).
    Ping,
    /// Hand it out as it is.
    Use,
}

fn verdict(
    now: Instant,
    idle_since: Instant,
    opened_at: Instant,
    lost_at: Option<Instant>,
) -> Verdict {
    let idle = now.duration_since(idle_since);
    if idle >= IDLE_TIMEOUT || now.duration_since(opened_at) >= MAX_LIFETIME {
        Verdict::Close
    } else if idle >= PING_IF_IDLE_FOR || lost_at.is_some_and(|lost| idle_since <= lost) {
        Verdict::Ping
    } else {
        Verdict::Use
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
                closed: AtomicBool::new(false),
                opened: AtomicU64::new(1),
                pinged: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                waited: AtomicU64::new(0),
                recovered: AtomicU64::new(0),
            }),
        }))
    }

    /// The backend the connections are to.
    pub fn backend(&self) -> DbBackend {
        self.inner.options.backend()
    }

    /// What the connections did so far.
    pub fn stats(&self) -> ServerConnectionsStats {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        ServerConnectionsStats {
            connections_opened: load(&self.inner.opened),
            pinged: load(&self.inner.pinged),
            dropped: load(&self.inner.dropped),
            waited_for_connection: load(&self.inner.waited),
            recovered: load(&self.inner.recovered),
        }
    }

    /// Closes the set, for every clone: the idle connections now, those in
    /// use when their call ends. Calls from now on fail with
    /// `DbErr::ConnectionAcquire(ConnectionClosed)`, as on a closed pool.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let idle = std::mem::take(&mut self.inner.lock().idle);
        for i in idle {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            i.conn.close().await;
        }
    }

    /// Runs a statement that returns no rows: the rows it affected.
    pub(crate) async fn execute(&self, stmt: Statement) -> Result<u64, DbErr> {
        let mut lease = self.take().await?;
        let (sql, values) = sql_and_values(stmt);
        let result = match lease.conn() {
            ConnKind::Postgres(c) => sqlx::query_with(sql, values)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            ConnKind::MySql(c) => sqlx::query_with(sql, values)
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
        let (sql, values) = sql_and_values(stmt);
        let result = match lease.conn() {
            ConnKind::Postgres(c) => sqlx::query_with(sql, values)
                .fetch_all(c)
                .await
                .and_then(|rows| cells(&rows, columns)),
            ConnKind::MySql(c) => sqlx::query_with(sql, values)
                .fetch_all(c)
                .await
                .and_then(|rows| cells(&rows, columns)),
        };
        lease.finish(result).map_err(query_err)
    }

    /// A connection for one statement, within [`ACQUIRE_TIMEOUT`]: the most
    /// recently used idle one (pinged first if suspect), else a new one.
    async fn take(&self) -> Result<Lease, DbErr> {
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let timed_out = || DbErr::ConnectionAcquire(ConnAcquireErr::Timeout);
        let closed = || DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed);
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        let permits = self.inner.permits.clone();
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.inner.waited.fetch_add(1, Ordering::Relaxed);
                tokio::time::timeout_at(deadline.into(), permits.acquire_owned())
                    .await
                    .map_err(|_| timed_out())?
                    .expect("the semaphore is never closed")
            }
        };
        loop {
            if self.inner.closed.load(Ordering::SeqCst) {
                return Err(closed());
            }
            let conn = match self.inner.pop_idle() {
                Some((mut conn, true)) => {
                    self.inner.pinged.fetch_add(1, Ordering::Relaxed);
                    if !conn.answers(CONNECT_TIMEOUT).await {
                        self.inner.lost();
                        continue;
                    }
                    conn
                }
                Some((conn, false)) => conn,
                None => match self.inner.options.connect_waiting(deadline).await {
                    Some(Ok(conn)) => {
                        self.inner.opened.fetch_add(1, Ordering::Relaxed);
                        conn
                    }
                    Some(Err(e)) => return Err(DbErr::Conn(RuntimeErr::SqlxError(e.into()))),
                    None => return Err(timed_out()),
                },
            };
            return Ok(Lease {
                set: self.inner.clone(),
                conn: Some(conn),
                permit: Some(permit),
            });
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves the list consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection, and whether to ping it
    /// first; closes on the way those idle past [`IDLE_TIMEOUT`] (they lead
    /// the list) and any it would hand out that [`verdict`] closes.
    fn pop_idle(&self) -> Option<(Conn, bool)> {
        let now = Instant::now();
        let mut stale = Vec::new();
        let mut state = self.lock();
        let idle_long = state
            .idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= IDLE_TIMEOUT)
            .count();
        stale.extend(state.idle.drain(..idle_long).map(|i| i.conn));
        let lost_at = state.lost_at;
        let popped = loop {
            match state.idle.pop() {
                Some(i) => match verdict(now, i.since, i.conn.opened_at, lost_at) {
                    Verdict::Close => stale.push(i.conn),
                    Verdict::Ping => break Some((i.conn, true)),
                    Verdict::Use => break Some((i.conn, false)),
                },
                None => break None,
            }
        };
        drop(state);
        self.close_in_background(stale);
        popped
    }

    /// Takes a connection back: idle again, or closed when the set is
    /// closed or the connection too old.
    fn give_back(&self, conn: Conn) {
        let now = Instant::now();
        if self.closed.load(Ordering::SeqCst) || conn.too_old(now) {
            self.close_in_background(vec![conn]);
        } else {
            self.lock().idle.push(Idle { conn, since: now });
        }
    }

    /// A connection of the set was found dead (and dropped): those idle
    /// since before now are pinged before their next use.
    fn lost(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.lock().lost_at = Some(Instant::now());
    }

    fn close_in_background(&self, conns: Vec<Conn>) {
        if conns.is_empty() {
            return;
        }
        self.dropped
            .fetch_add(conns.len() as u64, Ordering::Relaxed);
        tokio::spawn(async move {
            for conn in conns {
                conn.close().await;
            }
        });
    }
}

/// One connection out of the set for one statement, with its place in the
/// bound. Dropped before [`finish`](Self::finish) (the caller's future
/// dropped mid-statement), it hands both to a task that reads the answer
/// the connection still owes, then gives the connection back.
struct Lease {
    set: Arc<Inner>,
    conn: Option<Conn>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Lease {
    fn conn(&mut self) -> &mut ConnKind {
        &mut self
            .conn
            .as_mut()
            .expect("a lease holds its connection until it ends")
            .kind
    }

    /// Gives the connection back unless `result` says it is lost.
    fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        let conn = self.conn.take().expect("finished once");
        match &result {
            Err(e) if is_lost(e) => self.set.lost(),
            _ => self.set.give_back(conn),
        }
        result
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let (set, permit) = (self.set.clone(), self.permit.take());
        let recover = async move {
            // The session may still be running the statement (a lock
            // wait): it keeps its place in the bound until it answers.
            let _permit = permit;
            if conn.answers(ACQUIRE_TIMEOUT).await {
                set.recovered.fetch_add(1, Ordering::Relaxed);
                set.give_back(conn);
            } else {
                set.dropped.fetch_add(1, Ordering::Relaxed);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(recover)),
            // No runtime to read the answer on: the connection goes.
            Err(_) => {
                self.set.dropped.fetch_add(1, Ordering::Relaxed);
            }
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

/// A statement as sqlx takes it: the SQL text, and the values bound as
/// SeaORM binds them on its pool.
fn sql_and_values(stmt: Statement) -> (sqlx::AssertSqlSafe<String>, SqlxValues) {
    let values = stmt.values.unwrap_or(sea_orm::Values(Vec::new()));
    (sqlx::AssertSqlSafe(stmt.sql), SqlxValues(values))
}

fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(e.into()))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_are_used_pinged_or_closed() {
        let now = Instant::now() + MAX_LIFETIME + IDLE_TIMEOUT;
        let ago = |d: Duration| now - d;
        let secs = Duration::from_secs;
        let fresh = ago(secs(60));
        // Used a moment ago, opened a minute ago, no loss: as it is.
        assert_eq!(verdict(now, ago(secs(1)), fresh, None), Verdict::Use);
        // Idle past the ping threshold: pinged.
        assert_eq!(
            verdict(now, ago(PING_IF_IDLE_FOR), fresh, None),
            Verdict::Ping
        );
        // Idle since before another was found dead: pinged; went idle
        // after that loss: as it is.
        let lost = ago(secs(2));
        assert_eq!(verdict(now, ago(secs(3)), fresh, Some(lost)), Verdict::Ping);
        assert_eq!(verdict(now, ago(secs(1)), fresh, Some(lost)), Verdict::Use);
        // Idle too long, or open too long: closed.
        assert_eq!(verdict(now, ago(IDLE_TIMEOUT), fresh, None), Verdict::Close);
        assert_eq!(
            verdict(now, ago(secs(1)), ago(MAX_LIFETIME), None),
            Verdict::Close
        );
    }
}
