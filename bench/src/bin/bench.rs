//! Benchmark of the state store on one backend, beside the same SQL through
//! the fastest Rust driver for that backend, all in the same run on the same
//! database:
//!
//! * `store`: `StateStore` as the recommended settings set it up
//!   (`service::connection::StoreConnection`: on a server the store's own
//!   connections, `service::server_connections`, up to 34 for
//!   e_concurrent's 32 tasks; on SQLite the inline connections,
//!   `service::inline_sqlite`);
//! * `fastest`: the store's own SQL text and values with no ORM and no
//!   checks, through tokio-postgres (prepared statements), a plain sqlx
//!   `MySqlConnection`, or rusqlite (prepared, cached; each task a blocking
//!   thread): one connection per task;
//! * `sqlx_pool`: the same SQL through the sqlx pool under SeaORM, so that
//!   the pool's own cost shows apart from the ORM's;
//! * `store_on_sqlx`: the store without its own connections, every
//!   statement on the sqlx pool of `connect` (for e_concurrent's 32 tasks on
//!   a server one of 34 connections);
//! * with `--langbot <git dir>`: LangBot's own store
//!   (`bench/langbot/langbot_store.py`), one task, in every run.
//!
//! Workloads (LangBot's store was measured on the same ones): a_insert,
//! a_overwrite, b_get, c_list, d_snapshot, each on one task and on 8 tasks
//! at once (`<name>_8_tasks`), and e_concurrent (32 tasks on 50 shared
//! keys). Every workload runs on spawned tasks. Each runs once as a warm-up
//! at a tenth of its size, then `--runs` times, the drivers interleaved and
//! their order rotated; the median ops/s is reported. Figures go to stdout as
//! one JSON object; progress to stderr.
//!
//! ```sh
//! cargo run --release -p bench --bin bench -- --backend sqlite
//! cargo run --release -p bench --bin bench -- --backend postgres --url "$TEST_POSTGRES_URL"
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use migration::{Migrator, MigratorTrait};
use sea_orm::{DatabaseConnection, DbBackend};
use serde_json::{Value, json};
use service::inline_sqlite::InlineSqlite;
use service::server_connections::ServerConnections;
use service::{
    Actor, Binding, Event, IdentityColumns, Scope, StateContext, StatePolicy, StateStore,
};
use testkit::TestDb;

#[derive(Parser)]
struct Args {
    /// sqlite, postgres or mysql.
    #[arg(long)]
    backend: String,
    /// Server URL for postgres/mysql (a database is created on it and
    /// dropped); defaults to TEST_POSTGRES_URL / TEST_MYSQL_URL. SQLite uses
    /// a temporary file in WAL mode. Give it several times for the nodes of
    /// one cluster (Galera): the database is made through the first, and the
    /// tasks are spread round-robin over all of them.
    #[arg(long)]
    url: Vec<String>,
    /// Timed runs per workload.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// LangBot's git directory: runs LangBot's own store
    /// (`bench/langbot/langbot_store.py`) in every run too, on the same
    /// database, one task per workload as it serves them.
    #[arg(long)]
    langbot: Option<std::path::PathBuf>,
    /// The LangBot ref whose store runs.
    #[arg(long, default_value = "dev/4.11.x")]
    langbot_ref: String,
    /// The Python that runs it (with bench/langbot/requirements.txt).
    #[arg(long, default_value = "python3")]
    python: String,
}

/// LangBot's store, run by `bench/langbot/langbot_store.py` on the bench's
/// database: its ops/s per workload, e_errors and e_final_rows.
fn langbot_run(
    args: &Args,
    git: &std::path::Path,
    url: &str,
    scale: usize,
    run: usize,
) -> BTreeMap<String, f64> {
    bench::run_langbot(
        &args.python,
        "langbot_store.py",
        git,
        &args.langbot_ref,
        url,
        &["--scale", &scale.to_string(), "--tag", &run.to_string()],
    )
}

const RUNNER: &str = "plugin:langbot/local-agent/default";

/// Tasks of the concurrent variant of workloads a–d.
const TASKS: usize = 8;

/// Tasks of e_concurrent, on 50 shared keys.
const E_TASKS: usize = 32;

fn value(i: usize, generation: usize) -> Value {
    json!({
        "i": i,
        "gen": generation,
        "note": "conversation memo ".repeat(4),
        "tags": ["a", "b", "c"],
    })
}

fn context(conversation: &str, actor: &str) -> StateContext {
    let binding = Binding {
        binding_id: Some("pipeline-bench".into()),
        ..Binding::default()
    };
    let event = Event {
        bot_id: Some("bot-1".into()),
        workspace_id: Some("ws-1".into()),
        conversation_id: Some(conversation.into()),
        thread_id: None,
        actor: Some(Actor {
            actor_type: Some("user".into()),
            actor_id: Some(actor.into()),
        }),
        subject: Some(service::Subject {
            subject_type: Some("doc".into()),
            subject_id: Some("d-1".into()),
        }),
    };
    StateContext::new(IdentityColumns::from_event(RUNNER, &binding, &event))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let m = xs[xs.len() / 2];
    (m * 10.0).round() / 10.0
}

/// Who runs the statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Driver {
    Store,
    Fastest,
    SqlxPool,
    /// The store without its own connections (inline on SQLite, its own
    /// on a server), to weigh them in the same run.
    StoreOnSqlx,
}

impl Driver {
    fn all() -> Vec<Self> {
        vec![
            Self::Store,
            Self::Fastest,
            Self::SqlxPool,
            Self::StoreOnSqlx,
        ]
    }

    fn name(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Fastest => "fastest",
            Self::SqlxPool => "sqlx_pool",
            Self::StoreOnSqlx => "store_on_sqlx",
        }
    }
}

/// One call, as every driver makes it.
enum Op {
    Set {
        scope: Scope,
        key: String,
        value: Value,
    },
    Get {
        key: String,
    },
    List {
        prefix: String,
    },
    Snapshot,
}

impl Op {
    /// Rows the call must see: a get finds its key, a list its 100 keys,
    /// a snapshot the 40 seeded values.
    fn expected(&self) -> Option<usize> {
        match self {
            Op::Set { .. } => None,
            Op::Get { .. } => Some(1),
            Op::List { .. } => Some(100),
            Op::Snapshot => Some(40),
        }
    }
}

/// What one task does: its calls, all in one context.
struct Job {
    ctx: Arc<StateContext>,
    ops: Vec<Op>,
}

/// The store's statements as text, and the values the raw drivers bind:
/// both from the store's own statement builders, so all drivers write the
/// same rows and read the same way.
mod sql {
    use sea_orm::{DbBackend, Value};
    use service::store::{get_statement, list_statement, snapshot_statement, upsert_statement};
    use service::{Scope, StateContext};

    /// The store's statements on one backend.
    pub struct Sql {
        pub backend: DbBackend,
    }

    /// How a statement's result is counted.
    #[derive(Clone, Copy)]
    pub enum Shape {
        Exec,
        Rows,
    }

    impl Sql {
        /// The statement, its values and its shape for `op`: the values of
        /// the store's own statement for it.
        pub fn of(&self, ctx: &StateContext, op: &super::Op) -> (String, Vec<Value>, Shape) {
            use super::Op;
            let (stmt, shape) = match op {
                Op::Set { scope, key, value } => (
                    upsert_statement(
                        self.backend,
                        ctx.columns(),
                        *scope,
                        ctx.scope_key(*scope).unwrap(),
                        key,
                        serde_json::to_string(value).unwrap(),
                        service::store::now(self.backend),
                    ),
                    Shape::Exec,
                ),
                Op::Get { key } => (
                    get_statement(
                        self.backend,
                        ctx.scope_key(Scope::Conversation).unwrap(),
                        key,
                    ),
                    Shape::Rows,
                ),
                Op::List { prefix } => (
                    list_statement(
                        self.backend,
                        ctx.scope_key(Scope::Actor).unwrap(),
                        Some(prefix),
                        101,
                    ),
                    Shape::Rows,
                ),
                Op::Snapshot => {
                    // In the store's order: its IN list follows the keys' sort order.
                    let mut keys: Vec<&str> = Scope::ALL
                        .iter()
                        .map(|s| ctx.scope_key(*s).unwrap())
                        .collect();
                    keys.sort_unstable();
                    (snapshot_statement(self.backend, keys), Shape::Rows)
                }
            };
            let values = stmt.values.map(|v| v.0).unwrap_or_default();
            (stmt.sql, values, shape)
        }
    }

    /// Through a transaction pooler: the statement with its values inlined
    /// by SeaQuery's escaping, for the simple query protocol (as the store
    /// sends it there).
    pub fn inlined(sql: &str, values: Vec<Value>) -> String {
        sea_orm::Statement::from_sql_and_values(DbBackend::Postgres, sql, values).to_string()
    }
}

/// Runs a statement through sqlx on any executor: the pool under SeaORM, or
/// one plain connection (MySQL's fastest driver).
macro_rules! sqlx_backend {
    ($name:ident, $db:ty) => {
        mod $name {
            use super::sql::Shape;
            use sea_orm::{Value, sqlx};

            type Query<'q> = sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>;

            fn bind(q: Query<'_>, v: Value) -> Query<'_> {
                match v {
                    Value::String(s) => q.bind(s),
                    Value::ChronoDateTime(t) => q.bind(t),
                    Value::BigUnsigned(n) => q.bind(n.map(|n| n as i64)),
                    other => panic!("the bench binds no {other:?}"),
                }
            }

            pub async fn run<'e, E>(
                on: E,
                sql: &str,
                values: Vec<Value>,
                shape: Shape,
                pooled: bool,
            ) -> Result<usize, sqlx::Error>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                if pooled {
                    let text = super::sql::inlined(sql, values);
                    let q = sqlx::raw_sql(sqlx::AssertSqlSafe(text));
                    return match shape {
                        Shape::Exec => q.execute(on).await.map(|_| 0),
                        Shape::Rows => q.fetch_all(on).await.map(|r| r.len()),
                    };
                }
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
                for v in values {
                    q = bind(q, v);
                }
                match shape {
                    Shape::Exec => q.execute(on).await.map(|_| 0),
                    Shape::Rows => q.fetch_all(on).await.map(|r| r.len()),
                }
            }
        }
    };
}

sqlx_backend!(sqlx_sqlite, sea_orm::sqlx::Sqlite);
sqlx_backend!(sqlx_postgres, sea_orm::sqlx::Postgres);
sqlx_backend!(sqlx_mysql, sea_orm::sqlx::MySql);

/// tokio-postgres: each statement prepared once per connection; through a
/// transaction pooler, the simple query protocol with values inlined.
struct PgWorker {
    client: tokio_postgres::Client,
    prepared: BTreeMap<String, tokio_postgres::Statement>,
    pooled: bool,
}

impl PgWorker {
    async fn connect(url: &str, pooled: bool) -> Self {
        let url = service::connection::DbUrl::parse(url).unwrap();
        let config: tokio_postgres::Config = url.as_str().parse().expect("a PostgreSQL URL");
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("tokio-postgres connects (the bench needs a URL without TLS)");
        tokio::spawn(connection);
        Self {
            client,
            prepared: BTreeMap::new(),
            pooled,
        }
    }

    async fn run(
        &mut self,
        sql: &str,
        values: Vec<sea_orm::Value>,
        shape: sql::Shape,
    ) -> Result<usize, tokio_postgres::Error> {
        use tokio_postgres::types::ToSql;
        if self.pooled {
            let messages = self.client.simple_query(&sql::inlined(sql, values)).await?;
            return Ok(messages
                .iter()
                .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                .count());
        }
        if !self.prepared.contains_key(sql) {
            let stmt = self.client.prepare(sql).await?;
            self.prepared.insert(sql.to_owned(), stmt);
        }
        let stmt = &self.prepared[sql];
        let params: Vec<Box<dyn ToSql + Sync + Send>> = values
            .into_iter()
            .map(|v| -> Box<dyn ToSql + Sync + Send> {
                match v {
                    sea_orm::Value::String(s) => Box::new(s),
                    sea_orm::Value::ChronoDateTime(t) => Box::new(t),
                    sea_orm::Value::BigUnsigned(n) => Box::new(n.map(|n| n as i64)),
                    other => panic!("the bench binds no {other:?}"),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        match shape {
            sql::Shape::Exec => self.client.execute(stmt, &refs).await.map(|_| 0),
            sql::Shape::Rows => self.client.query(stmt, &refs).await.map(|r| r.len()),
        }
    }
}

/// rusqlite: prepared statements cached per connection, in WAL mode with the
/// store's busy timeout, driven from a blocking thread.
struct SqliteWorker(rusqlite::Connection);

impl SqliteWorker {
    fn open(url: &str) -> Self {
        use std::str::FromStr;
        let options = sea_orm::sqlx::sqlite::SqliteConnectOptions::from_str(url).unwrap();
        let conn = rusqlite::Connection::open(options.get_filename()).unwrap();
        conn.busy_timeout(service::connection::SQLITE_BUSY_TIMEOUT)
            .unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.set_prepared_statement_cache_capacity(16);
        Self(conn)
    }

    fn run(
        &mut self,
        sql: &str,
        values: Vec<sea_orm::Value>,
        shape: sql::Shape,
    ) -> rusqlite::Result<usize> {
        use rusqlite::types::Value as V;
        let params = values.into_iter().map(|v| match v {
            sea_orm::Value::String(s) => s.map_or(V::Null, V::Text),
            // As sqlx stores a NaiveDateTime in SQLite.
            sea_orm::Value::ChronoDateTime(t) => {
                t.map_or(V::Null, |t| V::Text(t.format("%F %T%.f").to_string()))
            }
            sea_orm::Value::BigUnsigned(n) => n.map_or(V::Null, |n| V::Integer(n as i64)),
            other => panic!("the bench binds no {other:?}"),
        });
        let mut stmt = self.0.prepare_cached(sql)?;
        match shape {
            sql::Shape::Exec => stmt.execute(rusqlite::params_from_iter(params)).map(|_| 0),
            sql::Shape::Rows => {
                let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
                let mut n = 0;
                while rows.next()?.is_some() {
                    n += 1;
                }
                Ok(n)
            }
        }
    }
}

/// One task's way to the database.
enum Worker {
    Store(
        Arc<DatabaseConnection>,
        bool,
        Option<InlineSqlite>,
        Option<ServerConnections>,
    ),
    SqlxPool(Arc<DatabaseConnection>, bool),
    Postgres(PgWorker),
    MySql(sea_orm::sqlx::MySqlConnection),
    Sqlite(SqliteWorker),
}

impl Worker {
    /// Rows the call saw (0 for writes), or its error as text.
    async fn call(&mut self, sql: &sql::Sql, ctx: &StateContext, op: &Op) -> Result<usize, String> {
        match self {
            Worker::Store(db, pooled, inline, server) => {
                store_call(db, *pooled, inline.as_ref(), server.as_ref(), ctx, op).await
            }
            Worker::SqlxPool(db, pooled) => {
                let (text, values, shape) = sql.of(ctx, op);
                let result = match db.get_database_backend() {
                    DbBackend::Postgres => {
                        sqlx_postgres::run(
                            db.get_postgres_connection_pool(),
                            &text,
                            values,
                            shape,
                            *pooled,
                        )
                        .await
                    }
                    DbBackend::MySql => {
                        sqlx_mysql::run(
                            db.get_mysql_connection_pool(),
                            &text,
                            values,
                            shape,
                            *pooled,
                        )
                        .await
                    }
                    _ => {
                        sqlx_sqlite::run(
                            db.get_sqlite_connection_pool(),
                            &text,
                            values,
                            shape,
                            *pooled,
                        )
                        .await
                    }
                };
                result.map_err(|e| e.to_string())
            }
            Worker::Postgres(w) => {
                let (text, values, shape) = sql.of(ctx, op);
                w.run(&text, values, shape).await.map_err(|e| e.to_string())
            }
            Worker::MySql(conn) => {
                let (text, values, shape) = sql.of(ctx, op);
                sqlx_mysql::run(&mut *conn, &text, values, shape, false)
                    .await
                    .map_err(|e| e.to_string())
            }
            Worker::Sqlite(_) => unreachable!("SQLite's fastest driver runs on a blocking thread"),
        }
    }
}

async fn store_call(
    db: &DatabaseConnection,
    pooled: bool,
    inline: Option<&InlineSqlite>,
    server: Option<&ServerConnections>,
    ctx: &StateContext,
    op: &Op,
) -> Result<usize, String> {
    let pooler = if pooled {
        service::connection::Pooler::Transaction
    } else {
        service::connection::Pooler::None
    };
    let store = StateStore::new(db)
        .pooled(pooler)
        .inline_sqlite(inline)
        .server_connections(server);
    let result = match op {
        Op::Set { scope, key, value } => store.set(ctx, *scope, key, value).await.map(|()| 0),
        Op::Get { key } => store
            .get(ctx, Scope::Conversation, key)
            .await
            .map(|v| usize::from(v.is_some())),
        Op::List { prefix } => store
            .list(ctx, Scope::Actor, Some(prefix), None)
            .await
            .map(|page| page.keys.len()),
        Op::Snapshot => store
            .snapshot(ctx, &StatePolicy::all_scopes())
            .await
            // Less the conversation id's alias, which is not a row.
            .map(|s| s.values().map(BTreeMap::len).sum::<usize>() - 1),
    };
    result.map_err(|e| service::error_line(&e))
}

/// The database and what every worker needs to reach it.
struct Bench {
    backend: DbBackend,
    /// A pool per node (one unless a cluster was given).
    pools: Vec<Arc<DatabaseConnection>>,
    /// A pool per node for e_concurrent's tasks.
    wide_pools: Vec<Arc<DatabaseConnection>>,
    /// SQLite: the store's inline connections to the file.
    inline: Option<InlineSqlite>,
    /// Servers: the store's own connections per node, up to 8 (the
    /// workloads' tasks), and for e_concurrent up to its tasks and two.
    server: Vec<Option<ServerConnections>>,
    wide_server: Vec<Option<ServerConnections>>,
    /// The test database's URL on each node.
    urls: Vec<String>,
    pooled: bool,
    sql: Arc<sql::Sql>,
}

/// What a timed workload gave.
struct Outcome {
    ops_per_s: f64,
    errors: usize,
}

impl Bench {
    /// Opens task `task`'s worker of `tasks` (before the clock starts).
    async fn worker(&self, driver: Driver, task: usize, tasks: usize) -> Worker {
        let node = task % self.urls.len();
        let pools = if tasks > TASKS {
            &self.wide_pools
        } else {
            &self.pools
        };
        match (driver, self.backend) {
            (Driver::Store, _) => {
                let server = if tasks > TASKS {
                    &self.wide_server
                } else {
                    &self.server
                };
                Worker::Store(
                    pools[node].clone(),
                    self.pooled,
                    self.inline.clone(),
                    server[node].clone(),
                )
            }
            (Driver::StoreOnSqlx, _) => Worker::Store(pools[node].clone(), self.pooled, None, None),
            (Driver::SqlxPool, _) => Worker::SqlxPool(pools[node].clone(), self.pooled),
            (Driver::Fastest, DbBackend::Postgres) => {
                Worker::Postgres(PgWorker::connect(&self.urls[node], self.pooled).await)
            }
            (Driver::Fastest, DbBackend::MySql) => {
                use sea_orm::sqlx::Connection;
                let url = service::connection::DbUrl::parse(&self.urls[node]).unwrap();
                Worker::MySql(
                    sea_orm::sqlx::MySqlConnection::connect(url.as_str())
                        .await
                        .expect("a plain MySQL connection"),
                )
            }
            (Driver::Fastest, _) => Worker::Sqlite(SqliteWorker::open(&self.urls[node])),
        }
    }

    /// Runs each job on a task of its own (a blocking thread for rusqlite),
    /// every worker connected before the clock starts. Counts failed calls;
    /// a call that succeeds but sees other rows than it must is a panic.
    async fn measure(&self, driver: Driver, jobs: Vec<Job>) -> Outcome {
        let ops: usize = jobs.iter().map(|j| j.ops.len()).sum();
        let mut workers = Vec::with_capacity(jobs.len());
        for task in 0..jobs.len() {
            workers.push(self.worker(driver, task, jobs.len()).await);
        }
        let started = Instant::now();
        let handles: Vec<tokio::task::JoinHandle<usize>> = jobs
            .into_iter()
            .zip(workers)
            .map(|(job, worker)| {
                let sql = self.sql.clone();
                match worker {
                    Worker::Sqlite(mut w) => tokio::task::spawn_blocking(move || {
                        let mut errors = 0;
                        for op in &job.ops {
                            let (text, values, shape) = sql.of(&job.ctx, op);
                            match w.run(&text, values, shape) {
                                Ok(n) => check(op, n),
                                Err(_) => errors += 1,
                            }
                        }
                        errors
                    }),
                    mut worker => tokio::spawn(async move {
                        let mut errors = 0;
                        for op in &job.ops {
                            match worker.call(&sql, &job.ctx, op).await {
                                Ok(n) => check(op, n),
                                Err(_) => errors += 1,
                            }
                        }
                        errors
                    }),
                }
            })
            .collect();
        let mut errors = 0;
        for h in handles {
            errors += h.await.unwrap();
        }
        Outcome {
            ops_per_s: ops as f64 / started.elapsed().as_secs_f64(),
            errors,
        }
    }
}

fn check(op: &Op, seen: usize) {
    if let Some(expected) = op.expected() {
        assert_eq!(seen, expected, "a call saw other rows than it must");
    }
}

/// `n` calls split over `tasks` jobs in one context, `make(task, i)` each.
fn split(
    ctx: &Arc<StateContext>,
    n: usize,
    tasks: usize,
    make: impl Fn(usize, usize) -> Op,
) -> Vec<Job> {
    (0..tasks)
        .map(|task| Job {
            ctx: ctx.clone(),
            ops: (0..n / tasks).map(|i| make(task, i)).collect(),
        })
        .collect()
}

/// Seeds `ctx` with the store: 1,000 actor keys in ten prefixes of 100 (for
/// c_list) and ten keys in each scope (for d_snapshot).
async fn seed(db: &DatabaseConnection, pooled: bool, ctx: &StateContext) {
    for k in 0..1000 {
        let op = Op::Set {
            scope: Scope::Actor,
            key: format!("ns{}.{:03}", k % 10, k / 10),
            value: value(k, 0),
        };
        store_call(db, pooled, None, None, ctx, &op).await.unwrap();
    }
}

/// Ten keys in each scope of a context of its own, for d_snapshot.
async fn seed_snapshot(db: &DatabaseConnection, pooled: bool, ctx: &StateContext) {
    for scope in Scope::ALL {
        for k in 0..10 {
            let op = Op::Set {
                scope,
                key: format!("k{k}"),
                value: value(k, 0),
            };
            store_call(db, pooled, None, None, ctx, &op).await.unwrap();
        }
    }
}

/// The store's own connections to each node, at most `max` each.
async fn server_connections(urls: &[String], max: usize) -> Vec<Option<ServerConnections>> {
    let mut all = Vec::new();
    for url in urls {
        all.push(ServerConnections::open(url, max).await.unwrap());
    }
    all
}

type Figures = BTreeMap<String, Vec<f64>>;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backend = bench::backend_arg(&args.backend);
    let pooled = args.url.first().is_some_and(|url| {
        service::connection::DbUrl::parse(url)
            .expect("a database URL")
            .pooler()
            == service::connection::Pooler::Transaction
    });
    // A database of its own, dropped at the end (the test harness's).
    let t = TestDb::create(backend, "bench_store", args.url.first().map(String::as_str)).await;
    let mut urls = vec![t.url.clone()];
    for url in args.url.iter().skip(1) {
        let mut node = url::Url::parse(url).expect("a node URL");
        node.set_path(url::Url::parse(&t.url).expect("the test URL").path());
        urls.push(node.into());
    }
    let mut pools = Vec::new();
    let mut wide_pools = Vec::new();
    for url in &urls {
        let pool = service::connection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        pools.push(Arc::new(pool));
        // e_concurrent's own, sized to its tasks with two spare, as the
        // README recommends: on `connect`'s 10 its tasks would queue for
        // connections while the fastest driver has one each. (Not for the
        // other workloads: sqlx hands idle connections out in turn, so a
        // pool wider than its tasks spreads them over cold connections.)
        let mut options = service::connection::connect_options(url).unwrap();
        if backend != testkit::Backend::Sqlite {
            options.max_connections(E_TASKS as u32 + 2);
        }
        let pool = sea_orm::Database::connect(options)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        wide_pools.push(Arc::new(pool));
    }
    let db = pools[0].clone();
    if pooled {
        // Through the pooler: one transaction that drops its statements.
        let session = service::connection::PooledSession::begin(&db)
            .await
            .unwrap();
        Migrator::up(session.work(), None).await.unwrap();
        session.commit().await.unwrap();
    } else {
        Migrator::up(&*db, None).await.unwrap();
    }
    let db_backend = db.get_database_backend();
    let bench = Bench {
        backend: db_backend,
        pools,
        wide_pools,
        inline: InlineSqlite::open(&urls[0]).await.unwrap(),
        server: server_connections(&urls, TASKS).await,
        wide_server: server_connections(&urls, E_TASKS + 2).await,
        urls,
        pooled,
        sql: Arc::new(sql::Sql {
            backend: db_backend,
        }),
    };
    let list_ctx = Arc::new(context("c", "c-actor"));
    seed(&db, pooled, &list_ctx).await;
    let snapshot_ctx = Arc::new(context("d", "d-actor"));
    seed_snapshot(&db, pooled, &snapshot_ctx).await;
    // Statistics, as a table in service has them: a server plans a prepared
    // statement once per connection, and on a table it has never analyzed
    // (rows estimated by the page count) a get by (scope_key, state_key)
    // planned then can keep the index on scope_key alone, and scan every key
    // of a conversation, until autovacuum analyzes the table (about a minute
    // here, the length of the whole bench).
    let analyze = match db_backend {
        DbBackend::Postgres => Some("ANALYZE agent_runner_state"),
        DbBackend::MySql => Some("ANALYZE TABLE agent_runner_state"),
        _ => None,
    };
    if let Some(sql) = analyze {
        use sea_orm::ConnectionTrait;
        db.execute_unprepared(sql).await.unwrap();
    }

    let mut figures: BTreeMap<Driver, Figures> = BTreeMap::new();
    let mut e_errors: BTreeMap<&str, usize> = BTreeMap::new();
    let mut e_rows: BTreeMap<&str, usize> = BTreeMap::new();
    let mut langbot = Figures::new();
    for run in 0..=args.runs {
        let warm_up = run == 0;
        let scale = if warm_up { 10 } else { 1 };
        // Rotate which driver goes first, so that none always runs warmer;
        // LangBot's store goes first or last in turn.
        let mut order = Driver::all();
        let drivers = order.len();
        order.rotate_left(run % drivers);
        let langbot_figures = |langbot: &mut Figures| {
            if let Some(git) = &args.langbot {
                let figures = langbot_run(&args, git, &t.url, scale, run);
                eprintln!(
                    "langbot run {run}{}: {figures:?}",
                    if warm_up { " (warm-up)" } else { "" }
                );
                if !warm_up {
                    for (k, v) in figures {
                        langbot.entry(k).or_default().push(v);
                    }
                }
            }
        };
        if run % 2 == 0 {
            langbot_figures(&mut langbot);
        }
        for driver in order {
            let mut line = Vec::new();
            let mut record = |name: String, outcome: &Outcome, line: &mut Vec<String>| {
                line.push(format!("{name} {:.0}", outcome.ops_per_s));
                if !warm_up {
                    figures
                        .entry(driver)
                        .or_default()
                        .entry(name)
                        .or_default()
                        .push(outcome.ops_per_s);
                }
            };
            for tasks in [1, TASKS] {
                let suffix = if tasks == 1 {
                    String::new()
                } else {
                    format!("_{tasks}_tasks")
                };
                let ctx = Arc::new(context(
                    &format!("a-{}-{tasks}-{run}", driver.name()),
                    "u-1",
                ));
                for (name, generation) in [("a_insert", 0), ("a_overwrite", 1)] {
                    let jobs = split(&ctx, 5000 / scale, tasks, |task, i| Op::Set {
                        scope: Scope::Conversation,
                        key: format!("key-{task}-{i}"),
                        value: value(i, generation),
                    });
                    let outcome = bench.measure(driver, jobs).await;
                    assert_eq!(outcome.errors, 0, "{name}");
                    record(format!("{name}{suffix}"), &outcome, &mut line);
                }
                let jobs = split(&ctx, 5000 / scale, tasks, |task, i| Op::Get {
                    key: format!("key-{task}-{i}"),
                });
                let outcome = bench.measure(driver, jobs).await;
                assert_eq!(outcome.errors, 0, "b_get");
                record(format!("b_get{suffix}"), &outcome, &mut line);
                let jobs = split(&list_ctx, 500 / scale, tasks, |_, i| Op::List {
                    prefix: format!("ns{}.", i % 10),
                });
                let outcome = bench.measure(driver, jobs).await;
                assert_eq!(outcome.errors, 0, "c_list");
                record(format!("c_list{suffix}"), &outcome, &mut line);
                let jobs = split(&snapshot_ctx, 1000 / scale, tasks, |_, _| Op::Snapshot);
                let outcome = bench.measure(driver, jobs).await;
                assert_eq!(outcome.errors, 0, "d_snapshot");
                record(format!("d_snapshot{suffix}"), &outcome, &mut line);
            }
            // 32 tasks × 200 sets on 50 shared keys, in a scope of its own.
            let ctx = Arc::new(context("e", &format!("e-{}-{run}", driver.name())));
            let jobs = split(&ctx, E_TASKS * 200 / scale, E_TASKS, |task, i| Op::Set {
                scope: Scope::Actor,
                key: format!("shared-{}", (task * 7 + i) % 50),
                value: value(i, task),
            });
            let outcome = bench.measure(driver, jobs).await;
            let rows = store_call(
                &db,
                pooled,
                None,
                None,
                &ctx,
                &Op::List {
                    prefix: "shared-".into(),
                },
            )
            .await
            .unwrap_or_default();
            record("e_concurrent".into(), &outcome, &mut line);
            line.push(format!("({} errors, {rows} rows)", outcome.errors));
            if !warm_up {
                *e_errors.entry(driver.name()).or_default() += outcome.errors;
                e_rows.insert(driver.name(), rows);
            }
            eprintln!(
                "{} run {run}{}: {} ops/s",
                driver.name(),
                if warm_up { " (warm-up)" } else { "" },
                line.join(", ")
            );
        }
        if run % 2 == 1 {
            langbot_figures(&mut langbot);
        }
    }
    let medians = |d: Driver| -> BTreeMap<String, f64> {
        figures[&d]
            .iter()
            .map(|(k, v)| (k.clone(), median(v.clone())))
            .collect()
    };
    let (store, fastest, pool) = (
        medians(Driver::Store),
        medians(Driver::Fastest),
        medians(Driver::SqlxPool),
    );
    let store_on_sqlx = figures
        .contains_key(&Driver::StoreOnSqlx)
        .then(|| medians(Driver::StoreOnSqlx));
    let ratio = |to: &BTreeMap<String, f64>| -> BTreeMap<String, f64> {
        store
            .iter()
            .map(|(k, v)| (k.clone(), (v / to[k] * 100.0).round() / 100.0))
            .collect()
    };
    let langbot: BTreeMap<String, f64> = langbot.into_iter().map(|(k, v)| (k, median(v))).collect();
    let ratio_to_langbot: BTreeMap<&String, f64> = langbot
        .iter()
        .filter(|(k, _)| !k.starts_with("e_") || *k == "e_concurrent")
        .map(|(k, v)| (k, (store[k] / v * 10.0).round() / 10.0))
        .collect();
    let fastest_driver = match db_backend {
        DbBackend::Postgres => "tokio-postgres",
        DbBackend::MySql => "sqlx MySqlConnection",
        _ => "rusqlite",
    };
    println!(
        "{}",
        json!({
            "backend": backend.name(),
            "runs": args.runs,
            "fastest_driver": fastest_driver,
            "median_ops_per_s": store,
            "fastest_ops_per_s": fastest,
            "ratio_to_fastest": ratio(&fastest),
            "sqlx_pool_ops_per_s": pool,
            "ratio_to_sqlx_pool": ratio(&pool),
            "store_on_sqlx_ops_per_s": store_on_sqlx,
            "e_errors": e_errors,
            "e_final_rows": e_rows,
            "langbot_ref": args.langbot.as_ref().map(|_| &args.langbot_ref),
            "langbot_ops_per_s": langbot,
            "ratio_to_langbot": ratio_to_langbot,
        })
    );
    // Each e_concurrent writes the same 50 keys: anything else is a bug.
    assert!(
        e_rows.values().all(|r| *r == 50),
        "e_concurrent rows: {e_rows:?}"
    );
}
