//! Connecting with the settings this workspace relies on.

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// The embedded default: `agent_runner_state.db` in the working directory,
/// created if missing.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://agent_runner_state.db?mode=rwc";

/// How long a SQLite writer waits for another before `SQLITE_BUSY`.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connect options for `url`: SQLite files in WAL mode with a busy timeout
/// (several processes share them), no per-statement logging.
pub fn connect_options(url: &str) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .map_sqlx_sqlite_opts(|o: SqliteConnectOptions| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
        });
    opts
}

/// Options for a one-connection batch job (the migration binary): as
/// [`connect_options`], with a pool of one (session locks need it) and, on
/// SQLite, a 16 MiB page cache, in-memory temporary journals and rarer WAL
/// checkpoints, which halve the time of a large data migration.
pub fn batch_connect_options(url: &str) -> ConnectOptions {
    let mut opts = connect_options(url);
    // Never recycle the one connection: the migration lock lives in it.
    opts.max_connections(1)
        .min_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .map_sqlx_sqlite_opts(|o: SqliteConnectOptions| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
                .pragma("cache_size", "-16384")
                .pragma("temp_store", "MEMORY")
        });
    opts
}

/// Options for commands that only read (the migration binary's `status`,
/// `plan`, `check`): one connection, and SQLite opened read-only without
/// touching its journal mode, so that asking never changes the file.
pub fn read_only_connect_options(url: &str) -> ConnectOptions {
    let mut opts = connect_options(url);
    opts.max_connections(1)
        .map_sqlx_sqlite_opts(|o: SqliteConnectOptions| {
            o.read_only(true).busy_timeout(SQLITE_BUSY_TIMEOUT)
        });
    opts
}

/// Connects to `url` with [`connect_options`].
///
/// # Errors
/// The URL is malformed, the server is unreachable, or authentication fails.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    Database::connect(connect_options(url)).await
}

/// Opens and closes one plain connection to `url`, to learn why a server
/// cannot be reached: a pool only reports that it timed out.
///
/// # Errors
/// The driver's own error (malformed URL, refused connection, bad password,
/// unknown database), as text.
pub async fn probe(url: &str) -> Result<(), String> {
    use sea_orm::sqlx::{
        Connection, SqliteConnection, mysql::MySqlConnection, postgres::PgConnection,
    };
    let scheme = url.split(':').next().unwrap_or_default();
    let result = match scheme {
        "postgres" | "postgresql" => match PgConnection::connect(url).await {
            Ok(c) => c.close().await,
            Err(e) => Err(e),
        },
        "mysql" | "mariadb" => match MySqlConnection::connect(url).await {
            Ok(c) => c.close().await,
            Err(e) => Err(e),
        },
        "sqlite" => match url.parse::<SqliteConnectOptions>() {
            Ok(o) => match SqliteConnection::connect_with(&o).await {
                Ok(c) => c.close().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        _ => {
            return Err(format!(
                "unsupported URL scheme {scheme:?}: use postgres://, mysql:// or sqlite://"
            ));
        }
    };
    result.map_err(|e| e.to_string())
}
