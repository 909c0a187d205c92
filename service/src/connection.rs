//! Connecting with the settings this workspace relies on: one place that
//! reads database URLs, for the deploy binary, `state-admin`, the bench and
//! services.
//!
//! * **TLS** (rustls, no OpenSSL): PostgreSQL `sslmode` (`disable`, `prefer`,
//!   `require`, `verify-ca`, `verify-full`) with `sslrootcert`, `sslcert`,
//!   `sslkey`; MySQL/MariaDB `ssl-mode` (`DISABLED` ... `VERIFY_IDENTITY`)
//!   with `ssl-ca`, `ssl-cert`, `ssl-key`. These are the drivers' own URL
//!   parameters.
//! * **Transaction poolers** (PgBouncer `pool_mode = transaction`): the URL
//!   parameter `pooler=transaction` (this workspace's, removed before the
//!   driver sees the URL). A transaction pooler hands each transaction to
//!   any server connection, so no server-side prepared statement may outlive
//!   its transaction, and no session state (locks, settings) survives one:
//!   see [`Pooler`].

use std::time::Duration;

use sea_orm::sqlx;

use crate::inline_sqlite::InlineSqlite;
use crate::server_connections::{MAX_SERVER_CONNECTIONS, ServerConnections};
use crate::store::StateStore;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    IsolationLevel, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

/// The embedded default database: this file in the working directory.
pub const DEFAULT_SQLITE_FILE: &str = "agent_runner_state.db";

/// The embedded default as a URL, created if missing.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://agent_runner_state.db?mode=rwc";

/// The embedded default as a URL that never creates the file (for tools
/// that only inspect).
pub const DEFAULT_SQLITE_URL_EXISTING: &str = "sqlite://agent_runner_state.db?mode=rw";

/// The URL both binaries use: `-u`/`DATABASE_URL` unless blank, else `None`
/// (the caller then says it uses the embedded default).
pub fn given_url(given: Option<String>) -> Option<String> {
    given.filter(|u| !u.trim().is_empty())
}

/// How long a SQLite writer waits for another before `SQLITE_BUSY`.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows a SQLite connection's worker thread sends ahead of the task reading
/// them. sqlx's default of 50 makes the worker stop and wait for the reader
/// halfway through a `list` page (101 rows); with room for a whole page, or
/// a data migration's batch, it hands the rows over in one go. The store
/// collects every row anyway, so this adds no memory it would not use.
pub const SQLITE_ROW_BUFFER: usize = 1024;

/// The settings every read-write SQLite connection gets. (SeaORM keeps one
/// SQLite option mapper per `ConnectOptions`: a later mapper replaces an
/// earlier one, so derived options start from this.)
fn sqlite_defaults(o: SqliteConnectOptions) -> SqliteConnectOptions {
    o.journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true)
        .row_buffer_size(SQLITE_ROW_BUFFER)
}

/// The URL parameter that says a transaction pooler sits in front.
pub const POOLER_PARAM: &str = "pooler";

/// What sits between this process and the database server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pooler {
    /// A direct connection, or a session pooler: sessions are ours.
    #[default]
    None,
    /// A transaction pooler (PgBouncer `pool_mode = transaction`): each
    /// transaction may run on another server connection. The store then
    /// sends its statements with the simple query protocol (no prepared
    /// statements), and multi-statement work runs in one transaction that
    /// drops its prepared statements before it ends
    /// ([`end_pooled_transaction`]).
    Transaction,
}

/// Why a URL cannot be used or a server cannot be reached: one line each,
/// with the driver's error kept as the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Not a URL at all.
    #[error("the database URL is not a URL: {0}")]
    BadUrl(#[source] url::ParseError),
    /// A scheme this workspace does not speak.
    #[error("unsupported URL scheme {0:?}: use postgres://, mysql:// or sqlite://")]
    UnsupportedScheme(String),
    /// `pooler=` with a value other than `transaction`, or on a backend
    /// without transaction poolers.
    #[error("unsupported {POOLER_PARAM}={0:?}: only pooler=transaction, on postgres:// URLs")]
    BadPooler(String),
    /// The server refuses connections without TLS.
    #[error(
        "the server requires TLS: add sslmode=verify-full&sslrootcert=<ca.crt> (PostgreSQL) or \
         ssl-mode=VERIFY_IDENTITY&ssl-ca=<ca.crt> (MySQL/MariaDB) to the URL ({0})"
    )]
    TlsRequired(#[source] sqlx::Error),
    /// The TLS handshake failed: most often the server's certificate does
    /// not verify against the CA given, or not for this host name.
    #[error(
        "TLS failed: the server's certificate did not verify (check sslrootcert/ssl-ca and that \
         the host name matches the certificate), or a client certificate is missing or wrong: {0}"
    )]
    Tls(#[source] sqlx::Error),
    /// Anything else the driver says (refused, bad password, unknown
    /// database...), in words of our own.
    #[error("{}", driver_line(.0))]
    Driver(#[source] sqlx::Error),
    /// SQLite could not open the file for the store's inline connections
    /// ([`InlineSqlite`]).
    #[error("SQLite could not open the database file: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// The pool could not open (the server answered the probe), or the
    /// blocking thread that opens inline SQLite connections did not run.
    #[error("the connection pool could not open")]
    Pool(#[source] DbErr),
}

/// What a driver error at connect time means, without the driver's
/// wrapping (`error communicating with database:`, `error returned from
/// database:`): the server's message and code, or the socket's error.
pub fn driver_line(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("the server could not be reached: {io}"),
        sqlx::Error::Database(db) => {
            let code = db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .map_or_else(
                    || format!("SQLSTATE {}", db.code().unwrap_or_default()),
                    |my| format!("MySQL error {}", my.number()),
                );
            format!("the server refused: {} ({code})", db.message())
        }
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".to_owned(),
        other => other.to_string(),
    }
}

/// A database URL, read once: the backend, the pooler, and the URL the
/// driver gets (without this workspace's own parameters).
#[derive(Clone, Debug)]
pub struct DbUrl {
    driver_url: String,
    backend: DbBackend,
    pooler: Pooler,
}

impl DbUrl {
    /// Reads `text`.
    ///
    /// # Errors
    /// Not a URL, an unsupported scheme, or a bad `pooler` parameter.
    pub fn parse(text: &str) -> Result<Self, ConnectError> {
        let scheme = text.split(':').next().unwrap_or_default();
        let backend = match scheme {
            "postgres" | "postgresql" => DbBackend::Postgres,
            "mysql" | "mariadb" => DbBackend::MySql,
            "sqlite" => DbBackend::Sqlite,
            _ if !text.contains(':') => {
                return Err(ConnectError::BadUrl(
                    url::ParseError::RelativeUrlWithoutBase,
                ));
            }
            other => return Err(ConnectError::UnsupportedScheme(other.to_owned())),
        };
        if backend == DbBackend::Sqlite {
            // SQLite URLs name files (`sqlite::memory:`, relative paths)
            // that are not URLs in the WHATWG sense: the driver reads them.
            return Ok(Self {
                driver_url: text.to_owned(),
                backend,
                pooler: Pooler::None,
            });
        }
        let mut url = url::Url::parse(text).map_err(ConnectError::BadUrl)?;
        let mut pooler = Pooler::None;
        let mut kept = Vec::new();
        for (key, value) in url.query_pairs() {
            if key == POOLER_PARAM {
                pooler = match (value.as_ref(), backend) {
                    ("transaction", DbBackend::Postgres) => Pooler::Transaction,
                    ("none" | "", _) => Pooler::None,
                    _ => return Err(ConnectError::BadPooler(value.into_owned())),
                };
            } else {
                kept.push((key.into_owned(), value.into_owned()));
            }
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        Ok(Self {
            driver_url: url.into(),
            backend,
            pooler,
        })
    }

    /// The URL the driver gets.
    pub fn as_str(&self) -> &str {
        &self.driver_url
    }

    /// The backend it names.
    pub fn backend(&self) -> DbBackend {
        self.backend
    }

    /// The pooler in front, as the URL says.
    pub fn pooler(&self) -> Pooler {
        self.pooler
    }

    /// Whether it names an in-memory SQLite database (`sqlite::memory:`,
    /// `mode=memory`), which lives only as long as its connections.
    pub fn sqlite_in_memory(&self) -> bool {
        self.backend == DbBackend::Sqlite
            && (self.sqlite_path().ends_with(":memory:")
                || self.sqlite_param_is("mode", Some("memory")))
    }

    /// Whether its SQLite connections share one cache (in memory, or
    /// `cache=shared`): they then lock tables against each other, and no
    /// busy timeout waits for those locks.
    pub fn sqlite_shared_cache(&self) -> bool {
        self.sqlite_in_memory()
            || (self.backend == DbBackend::Sqlite && self.sqlite_param_is("cache", Some("shared")))
    }

    fn sqlite_path(&self) -> &str {
        self.driver_url.split('?').next().unwrap_or_default()
    }

    /// Whether the SQLite URL has parameter `key` set to `value` (any value
    /// when `None`).
    pub(crate) fn sqlite_param_is(&self, key: &str, value: Option<&str>) -> bool {
        let query = self.driver_url.split_once('?').map_or("", |(_, q)| q);
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == key && value.is_none_or(|value| v == value))
    }

    /// The URL without its password, for messages.
    pub fn redacted(&self) -> String {
        redact(&self.driver_url)
    }
}

/// `url` without its password, for messages (unchanged when it has none or
/// is not a URL).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.into()
        }
        _ => url.to_owned(),
    }
}

/// How long one attempt to open a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a call waits for a connection: for a busy pool, or for a
/// server that refuses connections while it restarts.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// A pooled connection idle this long is pinged before it is handed out;
/// one in use more recently goes out as it is (see [`connect_options`]).
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(30);

/// Connections a pool keeps open even when idle: one spare beside the one
/// in use, so that a task never waits for the pool's check of a connection
/// just returned. On a SQLite file this is the whole pool (see
/// [`connect_options`]).
pub const MIN_CONNECTIONS: u32 = 2;

/// Connect options for `url`, the settings this workspace recommends to
/// services that embed the store:
///
/// * no ping on every acquire (sqlx's default, a round trip per statement):
///   only a connection idle for [`PING_IF_IDLE_FOR`] is pinged. A hot
///   connection that died anyway (a server restart) fails its statement,
///   the pool drops it, and the store sends a read or an upsert again on
///   another ([`retry::is_connection_lost`](crate::retry::is_connection_lost));
/// * [`MIN_CONNECTIONS`] kept open; on a SQLite file, that many and no
///   more: reads go on at once (WAL) and SQLite takes one writer at a time
///   anyway. A transaction of the caller's that reads and then writes
///   should begin with [`begin_writing`], or its first write can fail
///   (`SQLITE_BUSY_SNAPSHOT`) when the other connection wrote meanwhile;
///   an in-memory database, or a shared cache, keeps SeaORM's one
///   connection (its connections would lock tables against each other,
///   and no busy timeout waits for those locks);
/// * SQLite files in WAL mode with a busy timeout (several processes share
///   them); no per-statement logging;
/// * behind a transaction pooler, no statement cache (a cached statement
///   would name a prepared statement that lives on another server
///   connection).
///
/// # Errors
/// As [`DbUrl::parse`].
pub fn connect_options(url: &str) -> Result<ConnectOptions, ConnectError> {
    let url = DbUrl::parse(url)?;
    let mut opts = ConnectOptions::new(url.as_str().to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(CONNECT_TIMEOUT)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR)
        .map_sqlx_sqlite_opts(sqlite_defaults);
    match url.backend() {
        DbBackend::Sqlite if url.sqlite_shared_cache() => {}
        DbBackend::Sqlite => {
            opts.max_connections(MIN_CONNECTIONS)
                .min_connections(MIN_CONNECTIONS);
        }
        _ => {
            opts.min_connections(MIN_CONNECTIONS);
        }
    }
    if url.pooler() == Pooler::Transaction {
        opts.map_sqlx_postgres_opts(|o| o.statement_cache_capacity(0));
    }
    Ok(opts)
}

/// Connections a batch job's pool opens on a server: one per batch a data
/// migration keeps in flight (`migration::pipeline_rewrite::Overlap`).
pub const BATCH_CONNECTIONS: u32 = 2;

/// Options for a batch job (the migration binary): as [`connect_options`],
/// with a pool of [`BATCH_CONNECTIONS`] on a server and of one on SQLite (one
/// writer), there with a 16 MiB page cache and in-memory temporary
/// journals, which halve the time of a large data migration.
///
/// # Errors
/// As [`DbUrl::parse`].
pub fn batch_connect_options(url: &str) -> Result<ConnectOptions, ConnectError> {
    let mut opts = connect_options(url)?;
    let connections = match DbUrl::parse(url)?.backend() {
        DbBackend::Sqlite => 1,
        _ => BATCH_CONNECTIONS,
    };
    opts.max_connections(connections)
        .min_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .map_sqlx_sqlite_opts(|o: SqliteConnectOptions| {
            sqlite_defaults(o)
                .pragma("cache_size", "-16384")
                .pragma("temp_store", "MEMORY")
        });
    Ok(opts)
}

/// Options for commands that only read (the migration binary's `status`,
/// `plan`, `check`): one connection, and SQLite opened read-only without
/// touching its journal mode, so that asking never changes the file.
///
/// # Errors
/// As [`DbUrl::parse`].
pub fn read_only_connect_options(url: &str) -> Result<ConnectOptions, ConnectError> {
    let mut opts = connect_options(url)?;
    opts.max_connections(1)
        .min_connections(1)
        .map_sqlx_sqlite_opts(|o: SqliteConnectOptions| {
            o.read_only(true).busy_timeout(SQLITE_BUSY_TIMEOUT)
        });
    Ok(opts)
}

/// Connects to `url` with [`connect_options`].
///
/// # Errors
/// The URL is malformed, the server is unreachable, or authentication fails.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let opts = connect_options(url).map_err(|e| DbErr::Custom(e.to_string()))?;
    Database::connect(opts).await
}

/// What a service that embeds the store keeps: the pool from [`connect`],
/// and what its URL says the store needs on it: the [`Pooler`] in front;
/// on a SQLite file in WAL mode the [`InlineSqlite`] connections that run
/// the store's statements in the calling thread; on a server (not behind a
/// transaction pooler) the store's own [`ServerConnections`], up to
/// [`MAX_SERVER_CONNECTIONS`] beside the pool's (see the top-level README's
/// "Connection settings"). Cheap to clone: clones share the pool and the
/// store's connections.
#[derive(Clone, Debug)]
pub struct StoreConnection {
    db: DatabaseConnection,
    pooler: Pooler,
    inline: Option<InlineSqlite>,
    server: Option<ServerConnections>,
}

impl StoreConnection {
    /// Connects the pool to `url` with [`connect_options`] (creating a
    /// SQLite file when the URL says `mode=rwc`), then opens the store's own
    /// connections where they serve ([`InlineSqlite::open`],
    /// [`ServerConnections::open`]).
    ///
    /// # Errors
    /// A bad URL; a server that cannot be reached, with why, as [`probe`]
    /// says it (TLS required or failed, refused, bad credentials); a pool
    /// that cannot open; or a SQLite file that cannot be opened.
    pub async fn open(url: &str) -> Result<Self, ConnectError> {
        let pooler = DbUrl::parse(url)?.pooler();
        let db = match Database::connect(connect_options(url)?).await {
            Ok(db) => db,
            Err(e) => {
                // The pool only says it failed; one plain connection says why.
                probe(url).await?;
                return Err(ConnectError::Pool(e));
            }
        };
        // After the pool, which creates the file when the URL says so.
        let inline = InlineSqlite::open(url).await?;
        let server = ServerConnections::open(url, MAX_SERVER_CONNECTIONS).await?;
        Ok(Self {
            db,
            pooler,
            inline,
            server,
        })
    }

    /// The state store on the pool, set up for this connection. In a
    /// transaction of your own, use `StateStore::new(&txn)` (on SQLite begun
    /// with [`begin_writing`]; behind a transaction pooler, with
    /// `.pooled(self.pooler())` and ended by [`end_pooled_transaction`]).
    pub fn store(&self) -> StateStore<'_, DatabaseConnection> {
        StateStore::new(&self.db)
            .pooled(self.pooler)
            .inline_sqlite(self.inline.as_ref())
            .server_connections(self.server.as_ref())
    }

    /// The pool: for migrations (`Migrator::up(conn.db(), None)`), your
    /// own transactions, `service::admin`.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The pooler the URL names.
    pub fn pooler(&self) -> Pooler {
        self.pooler
    }

    /// The inline SQLite connections: `None` off SQLite, and on SQLite
    /// where they do not serve (in memory, a shared cache, a file not in
    /// WAL mode; see [`InlineSqlite::open`]): the store then runs on the
    /// pool.
    pub fn inline_sqlite(&self) -> Option<&InlineSqlite> {
        self.inline.as_ref()
    }

    /// The store's own server connections: `None` on SQLite and behind a
    /// transaction pooler (the store then runs on the pool).
    pub fn server_connections(&self) -> Option<&ServerConnections> {
        self.server.as_ref()
    }

    /// Closes the pool and the store's server connections, for every
    /// clone (calls on them then fail, as on a closed pool). The inline
    /// connections close, on a blocking thread, when the last clone goes;
    /// until then a clone's store still runs its statements on them.
    ///
    /// # Errors
    /// As [`DatabaseConnection::close`].
    pub async fn close(self) -> Result<(), DbErr> {
        if let Some(server) = &self.server {
            server.close().await;
        }
        self.db.close().await
    }
}

/// Begins a transaction that writes. On SQLite, `BEGIN IMMEDIATE`: it
/// takes the write lock at once (waiting up to the busy timeout while
/// another connection or process writes), so that a transaction that reads
/// before it writes cannot fail at its first write because another
/// connection wrote in between (`SQLITE_BUSY_SNAPSHOT`, which no busy
/// timeout waits for). Elsewhere a plain `BEGIN`, at `isolation` if given.
/// Inside a transaction, a savepoint as usual.
///
/// # Errors
/// As [`TransactionTrait::begin`].
pub async fn begin_writing<C>(
    db: &C,
    isolation: Option<IsolationLevel>,
) -> Result<C::Transaction, DbErr>
where
    C: ConnectionTrait + TransactionTrait,
{
    let sqlite = db.get_database_backend() == DbBackend::Sqlite;
    db.begin_with_options(TransactionOptions {
        isolation_level: isolation,
        access_mode: None,
        sqlite_transaction_mode: sqlite.then_some(SqliteTransactionMode::Immediate),
    })
    .await
}

/// Opens and closes one plain connection to `url`, to learn why a server
/// cannot be reached: a pool only reports that it timed out.
///
/// # Errors
/// A [`ConnectError`] that names the cause and keeps the driver's error.
pub async fn probe(url: &str) -> Result<(), ConnectError> {
    use sea_orm::sqlx::{
        Connection, SqliteConnection, mysql::MySqlConnection, postgres::PgConnection,
    };
    let url = DbUrl::parse(url)?;
    let result = match url.backend() {
        DbBackend::Postgres => match PgConnection::connect(url.as_str()).await {
            Ok(c) => c.close().await,
            Err(e) => Err(e),
        },
        DbBackend::MySql => match MySqlConnection::connect(url.as_str()).await {
            Ok(c) => c.close().await,
            // MariaDB answers a plain connection under
            // require_secure_transport with "access denied", like a bad
            // password: ask again over TLS to tell the two apart.
            Err(e) if is_access_denied(&e) && tls_disabled(&url) => {
                let with_tls = url
                    .as_str()
                    .replace("ssl-mode=DISABLED", "ssl-mode=REQUIRED");
                match MySqlConnection::connect(&with_tls).await {
                    Ok(c) => {
                        c.close().await.ok();
                        return Err(ConnectError::TlsRequired(e));
                    }
                    Err(_) => Err(e),
                }
            }
            Err(e) => Err(e),
        },
        _ => match url.as_str().parse::<SqliteConnectOptions>() {
            Ok(o) => match SqliteConnection::connect_with(&o).await {
                Ok(c) => c.close().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
    };
    result.map_err(classify)
}

fn is_access_denied(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|m| m.number() == 1045)
}

fn tls_disabled(url: &DbUrl) -> bool {
    url.as_str().contains("ssl-mode=DISABLED")
}

/// Names what a connection error means for the user.
pub fn classify(e: sqlx::Error) -> ConnectError {
    match &e {
        sqlx::Error::Tls(_) => ConnectError::Tls(e),
        sqlx::Error::Database(db) => {
            let message = db.message();
            // PostgreSQL: `hostnossl ... reject` says "no encryption";
            // MySQL/MariaDB: `require_secure_transport`.
            if message.contains("no encryption") || message.contains("insecure transport") {
                ConnectError::TlsRequired(e)
            } else {
                ConnectError::Driver(e)
            }
        }
        // The server closed the connection during a TLS handshake that a
        // client certificate check refused.
        sqlx::Error::Io(io) if io.to_string().contains("certificate") => ConnectError::Tls(e),
        _ => ConnectError::Driver(e),
    }
}

/// Ends a transaction that ran through a transaction pooler: drops every
/// prepared statement it made (the driver names them, and the next client on
/// this server connection would collide with them), then commits.
///
/// # Errors
/// A database error; the transaction is then rolled back.
pub async fn end_pooled_transaction(txn: sea_orm::DatabaseTransaction) -> Result<(), DbErr> {
    use sea_orm::ConnectionTrait;
    txn.execute_unprepared("DEALLOCATE ALL").await?;
    txn.commit().await
}

/// One unit of work through a transaction pooler: a transaction whose work
/// runs in a savepoint, so that whether the work succeeds or fails the
/// transaction can still drop the prepared statements the driver made (they
/// outlive a rollback, and an aborted transaction runs nothing) before it
/// ends. The one place the binaries and the bench do this.
pub struct PooledSession {
    outer: sea_orm::DatabaseTransaction,
    work: sea_orm::DatabaseTransaction,
}

impl PooledSession {
    /// Begins the transaction and the savepoint the work runs in.
    ///
    /// # Errors
    /// A database error.
    pub async fn begin(db: &DatabaseConnection) -> Result<Self, DbErr> {
        use sea_orm::TransactionTrait;
        let outer = db.begin().await?;
        let work = outer.begin().await?;
        Ok(Self { outer, work })
    }

    /// Where the work runs.
    pub fn work(&self) -> &sea_orm::DatabaseTransaction {
        &self.work
    }

    /// Keeps the work, drops the prepared statements, commits.
    ///
    /// # Errors
    /// A database error.
    pub async fn commit(self) -> Result<(), DbErr> {
        self.work.commit().await?;
        end_pooled_transaction(self.outer).await
    }

    /// Undoes the work, drops the prepared statements, rolls back.
    ///
    /// # Errors
    /// A database error.
    pub async fn rollback(self) -> Result<(), DbErr> {
        use sea_orm::ConnectionTrait;
        self.work.rollback().await?;
        let dropped = self.outer.execute_unprepared("DEALLOCATE ALL").await;
        self.outer.rollback().await?;
        dropped.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_once() {
        let u = DbUrl::parse("postgres://u:secret@db:6432/app?pooler=transaction&sslmode=require")
            .unwrap();
        assert_eq!(u.pooler(), Pooler::Transaction);
        assert_eq!(
            u.as_str(),
            "postgres://u:secret@db:6432/app?sslmode=require"
        );
        assert_eq!(u.redacted(), "postgres://u:***@db:6432/app?sslmode=require");
        let u = DbUrl::parse("postgres://db/app?pooler=transaction").unwrap();
        assert_eq!(u.as_str(), "postgres://db/app");
        assert!(matches!(
            DbUrl::parse("mysql://db/app?pooler=transaction"),
            Err(ConnectError::BadPooler(_))
        ));
        assert!(matches!(
            DbUrl::parse("postgres://db/app?pooler=session"),
            Err(ConnectError::BadPooler(_))
        ));
        assert!(matches!(
            DbUrl::parse("oracle://db"),
            Err(ConnectError::UnsupportedScheme(s)) if s == "oracle"
        ));
        assert!(matches!(
            DbUrl::parse("not a url"),
            Err(ConnectError::BadUrl(_))
        ));
        let u = DbUrl::parse("sqlite://agent_runner_state.db?mode=rwc").unwrap();
        assert_eq!(u.as_str(), "sqlite://agent_runner_state.db?mode=rwc");
        assert_eq!(redact("mysql://root@db/x"), "mysql://root@db/x");
    }

    #[test]
    fn pool_sizes_follow_the_database() {
        let pool = |url: &str| {
            let o = connect_options(url).unwrap();
            (o.get_min_connections(), o.get_max_connections())
        };
        // A SQLite file: a spare connection, and no more.
        assert_eq!(pool("sqlite://state.db?mode=rwc"), (Some(2), Some(2)));
        assert_eq!(pool("sqlite:memory.db"), (Some(2), Some(2)));
        // In memory: SeaORM's one connection.
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
            "sqlite:file:x?mode=memory&cache=shared",
        ] {
            assert!(DbUrl::parse(url).unwrap().sqlite_in_memory(), "{url}");
            assert_eq!(pool(url), (None, None), "{url}");
        }
        // A file with a shared cache: one too.
        let shared = "sqlite://state.db?mode=rwc&cache=shared";
        assert!(!DbUrl::parse(shared).unwrap().sqlite_in_memory());
        assert_eq!(pool(shared), (None, None));
        // Servers: a spare, up to sqlx's default.
        assert_eq!(pool("postgres://db/app"), (Some(2), None));
        assert!(
            !DbUrl::parse("postgres://db/app?mode=memory")
                .unwrap()
                .sqlite_in_memory()
        );
    }
}
