#![doc = include_str!("../README.md")]

mod proxy;
pub use proxy::FaultProxy;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// A backend the tests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A temporary SQLite file.
    Sqlite,
    /// PostgreSQL, from `TEST_POSTGRES_URL`.
    Postgres,
    /// MariaDB or MySQL, from `TEST_MYSQL_URL`.
    MySql,
}

impl Backend {
    /// Name used in snapshots and file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::MySql => "mysql",
        }
    }

    /// The backend named `sqlite`, `postgres` or `mysql`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Sqlite, Self::Postgres, Self::MySql]
            .into_iter()
            .find(|b| b.name() == name)
    }

    fn env_var(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => "TEST_POSTGRES_URL",
            Self::MySql => "TEST_MYSQL_URL",
        }
    }

    /// Whether `TEST_BACKENDS` selects this backend (all by default).
    fn selected(self) -> bool {
        let Ok(list) = std::env::var("TEST_BACKENDS") else {
            return true;
        };
        let on = list.split(',').any(|b| b.trim() == self.name());
        if !on && is_ci() {
            panic!(
                "CI=true but TEST_BACKENDS={list:?} leaves out {}",
                self.name()
            );
        }
        on
    }
}

/// How a test reaches its server: directly, over TLS only, or through a
/// transaction pooler. Scenarios written once run on each
/// ([`on_every_topology!`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// A plain connection (SQLite: its file).
    Direct,
    /// A TLS-only server, reached with full verification
    /// (`TEST_POSTGRES_TLS_URL`, `TEST_MYSQL_TLS_URL`).
    Tls,
    /// PgBouncer in transaction mode in front of the test PostgreSQL
    /// (`TEST_PGBOUNCER_URL`, with `pooler=transaction`).
    Pooler,
    /// A 3-node MariaDB Galera cluster (`TEST_GALERA_URLS`, one URL per
    /// node): the code under test uses node 1; [`TestDb::node_urls`] names
    /// every node.
    Galera,
    /// The store on its own connections, as
    /// [`StoreConnection`](service::connection::StoreConnection) sets it up
    /// for services ([`TestDb::store`]): on SQLite
    /// [`InlineSqlite`](service::inline_sqlite::InlineSqlite), on a plain
    /// server [`ServerConnections`](service::server_connections::ServerConnections).
    /// (On [`Tls`](Self::Tls) and [`Galera`](Self::Galera) the store runs on
    /// server connections of its own too; on [`Direct`](Self::Direct) and
    /// [`Pooler`](Self::Pooler), on the pool.)
    Own,
}

impl Topology {
    /// The variable that holds the base URL of `backend` on this topology.
    fn env_var(self, backend: Backend) -> &'static str {
        match (self, backend) {
            (Self::Tls, Backend::Postgres) => "TEST_POSTGRES_TLS_URL",
            (Self::Tls, Backend::MySql) => "TEST_MYSQL_TLS_URL",
            (Self::Pooler, Backend::Postgres) => "TEST_PGBOUNCER_URL",
            (Self::Galera, Backend::MySql) => "TEST_GALERA_URLS",
            _ => backend.env_var(),
        }
    }
}

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A database that exists for one test and is dropped when this is.
pub struct TestDb {
    /// The backend.
    pub backend: Backend,
    /// How the code under test reaches it.
    pub topology: Topology,
    /// URL of the test's own database, as the code under test gets it
    /// (through TLS or the pooler on those topologies).
    pub url: String,
    /// URL of the same database without the pooler in between: for setting
    /// up and inspecting.
    pub direct_url: String,
    /// A connection pool on [`direct_url`](Self::direct_url), for setting up
    /// and inspecting (and for code under test on the direct topologies).
    pub db: DatabaseConnection,
    /// A connection pool on [`url`](Self::url): what the code under test
    /// uses ([`store`](Self::store)); the same pool as `db` unless a pooler
    /// sits in between.
    pub app_db: DatabaseConnection,
    /// On [`Topology::Own`] on SQLite, the store's inline connections to the
    /// file.
    pub inline: Option<service::inline_sqlite::InlineSqlite>,
    /// On [`Topology::Own`], [`Topology::Tls`] and [`Topology::Galera`] on a
    /// server, the store's own connections to it (at most
    /// [`MAX_SERVER_CONNECTIONS`](service::server_connections::MAX_SERVER_CONNECTIONS)).
    pub server: Option<service::server_connections::ServerConnections>,
    cleanup: Cleanup,
}

enum Cleanup {
    File(PathBuf),
    Database { admin_url: String, name: String },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name(hint: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let hint: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    format!(
        "t_{hint}_{}_{}_{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `base` (a server URL, perhaps with a database and parameters) naming
/// database `name` instead, its parameters kept.
fn with_database(base: &str, name: &str) -> String {
    let mut url = url::Url::parse(base).unwrap_or_else(|e| panic!("bad test URL {base}: {e}"));
    url.set_path(&format!("/{name}"));
    url.into()
}

impl TestDb {
    /// A new, empty database on `backend`, or `None` when `TEST_BACKENDS`
    /// leaves the backend out (the caller prints that it did not run).
    ///
    /// # Panics
    /// When the backend's URL is missing or the server does not answer.
    pub async fn new(backend: Backend, hint: &str) -> Option<Self> {
        Self::on(backend, Topology::Direct, hint).await
    }

    /// As [`new`](Self::new), on `topology`.
    ///
    /// # Panics
    /// When the topology's URL is missing or the server does not answer.
    pub async fn on(backend: Backend, topology: Topology, hint: &str) -> Option<Self> {
        if !backend.selected() {
            return None;
        }
        Some(Self::create_on(backend, topology, hint, None).await)
    }

    /// A new, empty database on `backend`: a temp file for SQLite, else a
    /// database created on the server at `base_url` (default: from
    /// `TEST_POSTGRES_URL` / `TEST_MYSQL_URL`). The benchmarks use it too.
    ///
    /// # Panics
    /// When the backend's URL is missing or the server does not answer.
    pub async fn create(backend: Backend, hint: &str, base_url: Option<&str>) -> Self {
        Self::create_on(backend, Topology::Direct, hint, base_url).await
    }

    async fn create_on(
        backend: Backend,
        topology: Topology,
        hint: &str,
        base_url: Option<&str>,
    ) -> Self {
        let name = unique_name(hint);
        let base_of = |var: &str| {
            base_url
                .map(str::to_owned)
                .or_else(|| std::env::var(var).ok())
                .unwrap_or_else(|| {
                    panic!(
                        "{var} is not set: start the test databases with scripts/test-dbs.sh \
                         (or use scripts/test.sh), or narrow TEST_BACKENDS"
                    )
                })
        };
        let (url, direct_url, cleanup) = match backend {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                let url = format!("sqlite://{}?mode=rwc", path.display());
                (url.clone(), url, Cleanup::File(path))
            }
            Backend::Postgres | Backend::MySql => {
                // TEST_GALERA_URLS names every node: node 1 first.
                let base = base_of(topology.env_var(backend))
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                // Databases are made and dropped without the pooler between.
                let server = match topology {
                    Topology::Pooler => base_of(backend.env_var()),
                    _ => base.clone(),
                };
                let admin_url = with_database(
                    &server,
                    if backend == Backend::Postgres {
                        "postgres"
                    } else {
                        "mysql"
                    },
                );
                let admin = service::connection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{} at {admin_url} is unreachable: {e}", backend.name())
                    });
                // The server defaults decide the database's collation: the
                // tests must see the production-like ones.
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
                admin.close().await.ok();
                (
                    with_database(&base, &name),
                    with_database(&server, &name),
                    Cleanup::Database { admin_url, name },
                )
            }
        };
        let app_db = service::connection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let db = if direct_url == url {
            app_db.clone()
        } else {
            service::connection::connect(&direct_url)
                .await
                .unwrap_or_else(|e| panic!("connect {direct_url}: {e}"))
        };
        let inline = match topology {
            Topology::Own if backend == Backend::Sqlite => Some(
                service::inline_sqlite::InlineSqlite::open(&url)
                    .await
                    .unwrap_or_else(|e| panic!("inline SQLite on {url}: {e}"))
                    .expect("a SQLite file in WAL mode has inline connections"),
            ),
            _ => None,
        };
        let server = match topology {
            Topology::Own | Topology::Tls | Topology::Galera if backend != Backend::Sqlite => Some(
                service::server_connections::ServerConnections::open(
                    &url,
                    service::server_connections::MAX_SERVER_CONNECTIONS,
                )
                .await
                .unwrap_or_else(|e| panic!("server connections to {url}: {e}"))
                .expect("a server without a pooler has server connections"),
            ),
            _ => None,
        };
        Self {
            backend,
            topology,
            url,
            direct_url,
            db,
            app_db,
            inline,
            server,
            cleanup,
        }
    }

    /// Opens [`db`](Self::db) and [`app_db`](Self::app_db) again: after
    /// the server crashed under them.
    ///
    /// # Panics
    /// When the server does not answer.
    pub async fn reconnect(&mut self) {
        self.app_db = service::connection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.url));
        self.db = if self.direct_url == self.url {
            self.app_db.clone()
        } else {
            service::connection::connect(&self.direct_url)
                .await
                .unwrap_or_else(|e| panic!("connect {}: {e}", self.direct_url))
        };
    }

    /// The URL of this test's database on every node of its cluster (one
    /// URL off a cluster).
    pub fn node_urls(&self) -> Vec<String> {
        match self.topology {
            Topology::Galera => {
                let name = url::Url::parse(&self.url).unwrap().path().to_owned();
                std::env::var("TEST_GALERA_URLS")
                    .unwrap_or_default()
                    .split(',')
                    .map(|base| with_database(base, name.trim_start_matches('/')))
                    .collect()
            }
            _ => vec![self.url.clone()],
        }
    }

    /// The pooler the code under test goes through.
    pub fn pooler(&self) -> service::connection::Pooler {
        match self.topology {
            Topology::Pooler => service::connection::Pooler::Transaction,
            _ => service::connection::Pooler::None,
        }
    }

    /// The state store on [`app_db`](Self::app_db), set for the topology.
    pub fn store(&self) -> service::StateStore<'_, DatabaseConnection> {
        service::StateStore::new(&self.app_db)
            .pooled(self.pooler())
            .inline_sqlite(self.inline.as_ref())
            .server_connections(self.server.as_ref())
    }

    /// A connection without the pooler in between, for setting up (running
    /// migrations in-process) and inspecting. Close it when done.
    pub async fn direct(&self) -> DatabaseConnection {
        service::connection::connect(&self.direct_url)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.direct_url))
    }

    /// Runs `sql` (no parameters), panicking with the statement on error.
    pub async fn exec(&self, sql: &str) {
        self.db
            .execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every row of `sql` as text cells (NULL as `None`), for comparing whole
    /// tables before and after. Uses a connection of its own: a pooled one may
    /// hold a cached plan from before a column's type changed (PostgreSQL).
    pub async fn rows_as_text(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let db = self.direct().await;
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        db.close().await.ok();
        rows.iter()
            .map(|r| {
                r.column_names()
                    .iter()
                    .map(|c| cell_as_text(r, c))
                    .collect()
            })
            .collect()
    }

    /// Inserts pipelines into LangBot's `legacy_pipelines`, each config text
    /// exactly as given (cast to `json` on PostgreSQL).
    pub async fn insert_pipelines(&self, rows: &[(String, String)]) {
        for chunk in rows.chunks(200) {
            let values: Vec<String> = chunk
                .iter()
                .map(|(uuid, config)| {
                    let config = config.replace('\'', "''");
                    let config = match self.backend {
                        Backend::Postgres => format!("'{config}'::json"),
                        _ => format!("'{config}'"),
                    };
                    format!("('{uuid}', 'n', 'd', 'v4', false, '[]', {config}, '{{}}')")
                })
                .collect();
            self.exec(&format!(
                "INSERT INTO legacy_pipelines (uuid, name, description, for_version, is_default, \
                 stages, config, extensions_preferences) VALUES {}",
                values.join(", ")
            ))
            .await;
        }
    }

    /// Every pipeline's uuid and config text, by uuid.
    pub async fn pipeline_configs(&self) -> Vec<(String, String)> {
        let cast = match self.backend {
            Backend::Postgres => "CAST(config AS text)",
            Backend::MySql => "CAST(config AS CHAR)",
            Backend::Sqlite => "config",
        };
        self.rows_as_text(&format!(
            "SELECT uuid, {cast} FROM legacy_pipelines ORDER BY uuid"
        ))
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect()
    }

    /// Starts the `migration` binary on this database, quiet, with
    /// `--batch-size`, a lease of 5 s (a SIGKILLed run's lease blocks the
    /// rerun until it expires) and then `args` (the kill-and-rerun tests).
    pub fn spawn_migration(&self, batch_size: u64, args: &[&str]) -> std::process::Child {
        std::process::Command::new(migration_bin())
            .args([
                "-u",
                self.url.as_str(),
                "--batch-size",
                &batch_size.to_string(),
                "--lock-lease",
                "5",
            ])
            .args(args)
            .current_dir(std::env::temp_dir())
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the migration binary")
    }

    /// The applied migrations, in the order they were defined (their names
    /// sort that way).
    pub async fn migration_status(&self) -> Vec<String> {
        self.rows_as_text("SELECT version FROM seaql_migrations ORDER BY version")
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect()
    }

    /// Builds the database a running LangBot has: its own DDL for this
    /// backend, `agent_runner_state` and `legacy_pipelines`.
    pub async fn create_langbot_schema(&self) {
        for stmt in langbot_ddl(self.backend) {
            self.exec(&stmt).await;
        }
    }
}

fn cell_as_text(row: &sea_orm::QueryResult, col: &str) -> Option<String> {
    if let Ok(v) = row.try_get::<Option<String>>("", col) {
        return v;
    }
    if let Ok(v) = row.try_get::<Option<i64>>("", col) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<Option<i32>>("", col) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<Option<bool>>("", col) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<Option<chrono::NaiveDateTime>>("", col) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<Option<serde_json::Value>>("", col) {
        return v.map(|v| v.to_string());
    }
    panic!("column {col}: no text form for its type")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm", "-journal", ".migration-lock"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
            Cleanup::Database { admin_url, name } => {
                let (admin_url, name, backend) = (admin_url.clone(), name.clone(), self.backend);
                // Drop runs inside the test's runtime: use a thread of our own.
                let dropped = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(async {
                        let admin = service::connection::connect(&admin_url).await?;
                        let sql = match backend {
                            Backend::Postgres => {
                                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                            }
                            _ => format!("DROP DATABASE IF EXISTS {name}"),
                        };
                        admin.execute_unprepared(&sql).await?;
                        admin.close().await
                    })
                })
                .join();
                if !matches!(dropped, Ok(Ok(()))) {
                    eprintln!("warning: could not drop test database {}", self.url);
                }
            }
        }
    }
}

/// Runs `scenario` on a fresh database of `backend`; the database is dropped
/// afterwards, whether the scenario passed or panicked.
pub async fn run_on<F, Fut>(backend: Backend, hint: &str, scenario: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    run_on_topology(backend, Topology::Direct, hint, scenario).await;
}

/// As [`run_on`], on `topology`.
pub async fn run_on_topology<F, Fut>(backend: Backend, topology: Topology, hint: &str, scenario: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    match TestDb::on(backend, topology, hint).await {
        Some(db) => scenario(db).await,
        // Never a pass for a test that did not run: scripts/test.sh turns
        // TEST_BACKENDS into a nextest filter, so left-out backends show as
        // skipped; a run that reaches this point did not filter them.
        None => panic!(
            "{hint}::{}: left out by TEST_BACKENDS but not filtered out; run \
             scripts/test.sh, which skips it, or filter with `-E 'not test(/::{}$/)'`",
            backend.name(),
            backend.name()
        ),
    }
}

/// A user's state context as most scenarios need one: bot `bot-1`,
/// binding `pipeline-1`, the actor a `user`.
pub fn user_context(runner: &str, conversation: &str, actor: &str) -> service::StateContext {
    let event = service::Event {
        bot_id: Some("bot-1".into()),
        conversation_id: Some(conversation.into()),
        actor: Some(service::Actor {
            actor_type: Some("user".into()),
            actor_id: Some(actor.into()),
        }),
        ..service::Event::default()
    };
    let binding = service::Binding {
        binding_id: Some("pipeline-1".into()),
        ..service::Binding::default()
    };
    service::StateContext::new(service::IdentityColumns::from_event(
        runner, &binding, &event,
    ))
}

/// Expands each `async fn name(db: TestDb)` into a module `name` with one
/// test per backend: `name::sqlite`, `name::postgres`, `name::mysql`.
#[macro_export]
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            $crate::__backend_tests!($scenario);
        }
    )*};
}

/// The three direct-backend tests of a scenario (shared by the macros).
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_tests {
    ($scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn sqlite() {
            $crate::run_on(
                $crate::Backend::Sqlite,
                stringify!($scenario),
                super::$scenario,
            )
            .await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn postgres() {
            $crate::run_on(
                $crate::Backend::Postgres,
                stringify!($scenario),
                super::$scenario,
            )
            .await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn mysql() {
            $crate::run_on(
                $crate::Backend::MySql,
                stringify!($scenario),
                super::$scenario,
            )
            .await
        }
    };
}

/// As [`on_every_backend!`], and also on the production topologies: a
/// TLS-only PostgreSQL and MariaDB (`name::postgres_tls`, `name::mysql_tls`),
/// PostgreSQL behind PgBouncer in transaction mode
/// (`name::postgres_pgbouncer`) and node 1 of a MariaDB Galera cluster
/// (`name::mysql_galera`).
#[macro_export]
macro_rules! on_every_topology {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            $crate::__backend_tests!($scenario);
            $crate::__topology_tests!($scenario);
        }
    )*};
}

/// As [`on_every_topology!`] without SQLite, and with the store on its own
/// server connections (`name::postgres_own`, `name::mysql_own`,
/// [`Topology::Own`]): for scenarios about servers (connections a server
/// ends, sessions) that have no SQLite meaning.
#[macro_export]
macro_rules! on_every_server_topology {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::run_on($crate::Backend::Postgres, stringify!($scenario), super::$scenario).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                $crate::run_on($crate::Backend::MySql, stringify!($scenario), super::$scenario).await
            }
            $crate::__own_server_tests!($scenario);
            $crate::__topology_tests!($scenario);
        }
    )*};
}

/// One test, `$name`, of `$scenario` on `$backend` reached through
/// `$topology` (shared by the macros).
#[doc(hidden)]
#[macro_export]
macro_rules! __test_on {
    ($name:ident, $backend:ident, $topology:ident, $scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::run_on_topology(
                $crate::Backend::$backend,
                $crate::Topology::$topology,
                stringify!($scenario),
                super::$scenario,
            )
            .await
        }
    };
}

/// The tests of a scenario with the store on its own server connections
/// (shared by the macros).
#[doc(hidden)]
#[macro_export]
macro_rules! __own_server_tests {
    ($scenario:ident) => {
        $crate::__test_on!(postgres_own, Postgres, Own, $scenario);
        $crate::__test_on!(mysql_own, MySql, Own, $scenario);
    };
}

/// The four production-topology tests of a scenario (shared by the macros).
#[doc(hidden)]
#[macro_export]
macro_rules! __topology_tests {
    ($scenario:ident) => {
        $crate::__test_on!(postgres_tls, Postgres, Tls, $scenario);
        $crate::__test_on!(mysql_tls, MySql, Tls, $scenario);
        $crate::__test_on!(postgres_pgbouncer, Postgres, Pooler, $scenario);
        $crate::__test_on!(mysql_galera, MySql, Galera, $scenario);
    };
}

/// As [`on_every_topology!`], and also with the store on its own
/// connections ([`Topology::Own`]): SQLite's inline ones
/// (`name::sqlite_own`) and a plain server's (`name::postgres_own`,
/// `name::mysql_own`): for scenarios about the store, which
/// [`TestDb::store`] sets up for each.
#[macro_export]
macro_rules! on_every_store_topology {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            $crate::__backend_tests!($scenario);
            $crate::__topology_tests!($scenario);
            $crate::__test_on!(sqlite_own, Sqlite, Own, $scenario);
            $crate::__own_server_tests!($scenario);
        }
    )*};
}

/// Expands each `async fn name(db: TestDb)` into one test on the 3-node
/// Galera cluster: `name::mysql_galera`.
#[macro_export]
macro_rules! on_galera {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql_galera() {
                $crate::run_on_topology($crate::Backend::MySql, $crate::Topology::Galera, stringify!($scenario), super::$scenario).await
            }
        }
    )*};
}

/// The TLS-only test PostgreSQL's `postgres` database reached without TLS
/// (`sslmode=disable`): a URL the server refuses.
///
/// # Panics
/// When `TEST_POSTGRES_TLS_URL` is not set.
pub fn tls_only_postgres_in_plain_text() -> String {
    let base = std::env::var("TEST_POSTGRES_TLS_URL")
        .expect("TEST_POSTGRES_TLS_URL is not set: run scripts/test-dbs.sh");
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path("/postgres");
    url.set_query(Some("sslmode=disable"));
    url.into()
}

/// The workspace's top folder (this crate sits in `testkit/`): where
/// `snapshots/`, `tests/data/` and `../shared` are found from.
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The folder of reference vectors: `LANGBOT_VECTORS_DIR` when set, else
/// `../shared/vectors` beside the project, else the copy in `tests/data/vectors`.
pub fn vectors_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LANGBOT_VECTORS_DIR") {
        return PathBuf::from(dir);
    }
    let root = workspace_root();
    let shared = root.join("../shared/vectors");
    if shared.is_dir() {
        shared
    } else {
        root.join("tests/data/vectors")
    }
}

/// Reads a vector file as JSON.
///
/// # Panics
/// When it is missing or not JSON.
pub fn read_vectors(file: &str) -> serde_json::Value {
    let path = vectors_dir().join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// LangBot's DDL for `backend`, one statement per item.
pub fn langbot_ddl(backend: Backend) -> Vec<String> {
    let file = match backend {
        Backend::Sqlite => "sqlite.sql",
        Backend::Postgres => "postgres.sql",
        Backend::MySql => "mysql.sql",
    };
    let path = vectors_dir().join("langbot_schema").join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim() == ";" {
            if !current.trim().is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.clear();
        } else if !line.trim_start().starts_with("--") {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Path of the `migration` binary (see [`workspace_bin`]).
pub fn migration_bin() -> PathBuf {
    workspace_bin("migration")
}

/// Path of the `state-admin` binary (see [`workspace_bin`]).
pub fn admin_bin() -> PathBuf {
    workspace_bin("state-admin")
}

/// Path of binary `bin`, next to the test executable. The binaries are
/// built before any test runs, by nextest's setup script
/// (`scripts/build-test-binaries.sh`, which sets `TEST_BINARIES_BUILT`):
/// a test never runs cargo.
pub fn workspace_bin(bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<bin>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let path = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        std::env::var_os("TEST_BINARIES_BUILT").is_some(),
        "{bin}: run the tests with `cargo nextest run` (its setup script builds the binaries \
         first) or scripts/test.sh"
    );
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// Installs insta settings that keep every snapshot in the top-level
/// `snapshots/` folder, and runs `f` under them.
pub fn with_snapshots<R>(f: impl FnOnce() -> R) -> R {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(workspace_root().join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(f)
}

/// The backend of a connection, as the tests name it.
pub fn backend_of(db: &DatabaseConnection) -> Backend {
    match db.get_database_backend() {
        DbBackend::Postgres => Backend::Postgres,
        DbBackend::MySql => Backend::MySql,
        _ => Backend::Sqlite,
    }
}

/// Client sessions on `db`'s database other than the asking one, by id
/// (PostgreSQL backend pid, MariaDB connection id): what a test ends to
/// play a server that closes connections.
///
/// # Panics
/// When the server does not answer.
pub async fn other_sessions(db: &DatabaseConnection) -> Vec<i64> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => {
            "SELECT CAST(pid AS BIGINT) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        }
        _ => {
            "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
        }
    };
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("list the sessions: {e}"))
        .iter()
        .map(|r| r.try_get_by_index::<i64>(0).expect("a session id"))
        .collect()
}

/// Rows in `table`, or 0 while it does not exist yet: the progress a data
/// migration has committed, for the kill-and-rerun tests.
pub async fn committed_rows(db: &DatabaseConnection, table: &str) -> u64 {
    let exists = migration::catalog::table_exists(db, table)
        .await
        .unwrap_or_else(|e| panic!("look up {table}: {e}"));
    if !exists {
        return 0;
    }
    let sql = format!("SELECT COUNT(*) AS n FROM {table}");
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
        .expect("COUNT(*) returns a row");
    row.try_get::<i64>("", "n").expect("a count") as u64
}

/// Where a kill-and-rerun test kills: `n` progress thresholds, one in each of
/// `n` equal bands between 5 % and 85 % of `total`, drawn from `seed`. The
/// bands keep the points spread over the run; the draw moves them every run.
/// The last band ends well before the end, so a kill taken at its point
/// still finds work left.
pub fn kill_points(seed: u64, n: u64, total: u64) -> Vec<u64> {
    let (low, high) = (total * 5 / 100, total * 85 / 100);
    let band = (high - low) / n;
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|i| (low + i * band + 1 + rng.next_u64() % band.max(1)).max(1))
        .collect()
}

/// Kills a run four times at progress drawn from a fresh, printed seed
/// ([`kill_points`] over `total` rows): each time `spawn` starts the run and
/// [`kill_when`] kills it once `progress` reaches the point (or just past the
/// rows the previous kill left, when that overshoot passed the point).
/// Asserts every kill landed mid-run (some rows done, not all) and past the
/// one before.
///
/// # Panics
/// When a kill did not land mid-run.
pub async fn kill_four_times<S, F, Fut>(total: u64, spawn: S, progress: F) -> Vec<Kill>
where
    S: Fn() -> std::process::Child,
    F: Fn() -> Fut + Copy,
    Fut: std::future::Future<Output = u64>,
{
    let seed = kill_seed();
    eprintln!("kill seed {seed} (KILL_SEED={seed} replays it)");
    let mut kills: Vec<Kill> = Vec::new();
    for at in kill_points(seed, 4, total) {
        // A kill lands a batch or so past its threshold; when that passed
        // the next threshold too, the next kill waits for new progress
        // instead of firing before the rerun commits anything.
        let at = kills.last().map_or(at, |k| at.max(k.done + 1));
        kills.push(kill_when(spawn(), at, progress).await);
    }
    eprintln!("kills of {total} rows (threshold, committed at death): {kills:?}");
    let mut last = 0;
    for kill in &kills {
        assert!(
            kill.done >= kill.at && kill.done > last && kill.done < total,
            "a kill did not land mid-run, past the one before: {kills:?}"
        );
        last = kill.done;
    }
    kills
}

/// SplitMix64: a small seedable generator with a good spread from any seed,
/// for the tests' drawn kill points and generated values.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The seed of this run's kill points: `KILL_SEED` when set (to replay a
/// run), else fresh from the clock. The caller prints it.
pub fn kill_seed() -> u64 {
    if let Some(seed) = std::env::var("KILL_SEED").ok().and_then(|s| s.parse().ok()) {
        return seed;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ (u64::from(std::process::id()) << 32)
}

/// One SIGKILL of a kill-and-rerun test: the threshold it waited for and the
/// progress committed when the process died.
#[derive(Clone, Copy, Debug)]
pub struct Kill {
    /// Committed rows the test waited to see before killing.
    pub at: u64,
    /// Committed rows once the process was dead.
    pub done: u64,
}

/// Waits until `progress` reports at least `threshold` committed rows, then
/// SIGKILLs `child`. It watches the database, not the clock: however fast or
/// slow the machine, the kill lands after that much work and before the end.
///
/// # Panics
/// When the process exits before the threshold is seen: the point was not
/// reached mid-run, and the test would prove less than it claims.
pub async fn kill_when<F, Fut>(mut child: std::process::Child, threshold: u64, progress: F) -> Kill
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            panic!(
                "the migration exited ({status}) before {threshold} rows were committed \
                 (saw {}): the kill would not land mid-run",
                progress().await
            );
        }
        if progress().await >= threshold {
            break;
        }
        // A poll interval, not a stand-in for progress: the loop ends on
        // what the database shows.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    child.kill().expect("SIGKILL the migration");
    let status = child.wait().expect("reap the migration");
    assert!(
        !status.success(),
        "the migration finished before the kill landed ({status})"
    );
    Kill {
        at: threshold,
        done: progress().await,
    }
}
