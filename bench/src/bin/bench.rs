//! Benchmark of the state store on one backend, beside a floor: the same SQL
//! through raw sqlx prepared statements, with no ORM and no validation,
//! measured in the same run on the same database.
//!
//! Workloads (LangBot's store was measured on the same ones):
//! a_insert, a_overwrite, b_get, c_list, d_snapshot, e_concurrent. Each runs
//! once as a warm-up at a tenth of its size, then `--runs` times; the median
//! ops/s is reported. Figures go to stdout as one JSON object; progress to
//! stderr.
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
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use service::{
    Actor, Binding, Event, IdentityColumns, Scope, StateContext, StatePolicy, StateStore,
};
use testkit::{Backend, TestDb};

#[derive(Parser)]
struct Args {
    /// sqlite, postgres or mysql.
    #[arg(long)]
    backend: String,
    /// Server URL for postgres/mysql (a database is created on it and
    /// dropped); defaults to TEST_POSTGRES_URL / TEST_MYSQL_URL. SQLite uses
    /// a temporary file in WAL mode. Give it several times for the nodes of
    /// one cluster (Galera): the database is made through the first, and the
    /// concurrent workload's tasks are spread round-robin over all of them.
    #[arg(long)]
    url: Vec<String>,
    /// Timed runs per workload.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

const RUNNER: &str = "plugin:langbot/local-agent/default";

/// Whether `--url` goes through a transaction pooler (`pooler=transaction`):
/// then the store sends simple-protocol statements, and so does the floor.
static POOLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn pooled() -> bool {
    POOLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The store on `db`, set for the pooler when there is one.
fn store_on(db: &DatabaseConnection) -> StateStore<'_, DatabaseConnection> {
    let pooler = if pooled() {
        service::connection::Pooler::Transaction
    } else {
        service::connection::Pooler::None
    };
    StateStore::new(db).pooled(pooler)
}

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

/// The floor: the store's own SQL text, through raw sqlx, with values the
/// floor binds itself (no ORM, no validation). [`floor::Sql::new`] takes the
/// text from the store's statement builders and checks, for a sample of each
/// operation, that the floor binds exactly the values the store binds: the
/// two write the same rows and read the same way.
mod floor {
    use std::sync::Arc;

    use sea_orm::{DbBackend, Value};
    use service::store::{get_statement, list_statement, snapshot_statement, upsert_statement};
    use service::{IdentityColumns, Scope};

    /// The store's statements, as text.
    pub struct Sql {
        pub upsert: Arc<str>,
        pub get: Arc<str>,
        pub list: Arc<str>,
        pub snapshot: Arc<str>,
    }

    impl Sql {
        /// The store's SQL on `backend`, after checking the floor's values
        /// against the store's for one sample of each operation.
        pub fn new(backend: DbBackend, sample: &IdentityColumns) -> Self {
            let now = service::store::now(backend);
            let keys = ["a", "b", "c", "d"];
            let store = [
                upsert_statement(backend, sample, Scope::Actor, "sk", "k", "1".into(), now),
                get_statement(backend, "sk", "k"),
                list_statement(backend, "sk", Some("ns1."), 101),
                snapshot_statement(backend, keys),
            ];
            let floor = [
                upsert_values(sample, "actor", "sk", "k", "1".into(), now),
                vec!["sk".into(), "k".into()],
                list_values("sk", "ns1.", "ns1/"),
                keys.iter().map(|k| (*k).into()).collect(),
            ];
            for (stmt, values) in store.iter().zip(&floor) {
                let store_values = stmt
                    .values
                    .as_ref()
                    .map(|v| v.0.clone())
                    .unwrap_or_default();
                assert_eq!(
                    &store_values, values,
                    "the floor binds other values than the store for {}",
                    stmt.sql
                );
            }
            let [upsert, get, list, snapshot] = store.map(|s| Arc::from(s.sql));
            Self {
                upsert,
                get,
                list,
                snapshot,
            }
        }
    }

    /// The upsert's values, in the store's column order.
    pub fn upsert_values(
        c: &IdentityColumns,
        scope: &str,
        scope_key: &str,
        key: &str,
        value_json: String,
        now: chrono::NaiveDateTime,
    ) -> Vec<Value> {
        vec![
            c.runner_id.as_str().into(),
            c.binding_identity.as_str().into(),
            scope.into(),
            scope_key.into(),
            key.into(),
            value_json.into(),
            c.bot_id.clone().into(),
            c.workspace_id.clone().into(),
            c.conversation_id.clone().into(),
            c.thread_id.clone().into(),
            c.actor_type.clone().into(),
            c.actor_id.clone().into(),
            c.subject_type.clone().into(),
            c.subject_id.clone().into(),
            now.into(),
            now.into(),
        ]
    }

    /// A prefix list's values: scope key, the range, and the page size + 1.
    pub fn list_values(scope_key: &str, from: &str, to: &str) -> Vec<Value> {
        vec![scope_key.into(), from.into(), to.into(), 101u64.into()]
    }

    macro_rules! backend {
        ($name:ident, $db:ty, $pool:ty) => {
            pub mod $name {
                use super::Sql;
                use sea_orm::{Value, sqlx};

                type Query<'q> = sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>;

                /// Binds a value the way the floor's values come: text,
                /// timestamps and the list's limit.
                fn bind(q: Query<'_>, v: Value) -> Query<'_> {
                    match v {
                        Value::String(s) => q.bind(s),
                        Value::ChronoDateTime(t) => q.bind(t),
                        Value::BigUnsigned(n) => q.bind(n.map(|n| n as i64)),
                        other => panic!("the floor binds no {other:?}"),
                    }
                }

                /// Through a transaction pooler: the statement with its
                /// values inlined, by the simple query protocol (as the
                /// store sends it there).
                fn inlined_sql(sql: &str, values: Vec<Value>) -> String {
                    sea_orm::Statement::from_sql_and_values(
                        sea_orm::DbBackend::Postgres,
                        sql,
                        values,
                    )
                    .to_string()
                }

                pub async fn set(
                    pool: &$pool,
                    sql: &Sql,
                    values: Vec<Value>,
                ) -> Result<(), sqlx::Error> {
                    if super::super::pooled() {
                        let text = inlined_sql(&sql.upsert, values);
                        return sqlx::raw_sql(sqlx::AssertSqlSafe(text))
                            .execute(pool)
                            .await
                            .map(|_| ());
                    }
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.upsert.clone()));
                    for v in values {
                        q = bind(q, v);
                    }
                    q.execute(pool).await.map(|_| ())
                }

                pub async fn get(
                    pool: &$pool,
                    sql: &Sql,
                    scope_key: &str,
                    key: &str,
                ) -> Result<Option<String>, sqlx::Error> {
                    if super::super::pooled() {
                        use sqlx::Row;
                        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(inlined_sql(
                            &sql.get,
                            vec![scope_key.into(), key.into()],
                        )))
                        .fetch_all(pool)
                        .await?;
                        return rows
                            .first()
                            .map(|r| r.try_get::<Option<String>, _>(0))
                            .transpose()
                            .map(Option::flatten);
                    }
                    sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql.get.clone()))
                        .bind(scope_key)
                        .bind(key)
                        .fetch_optional(pool)
                        .await
                        .map(Option::flatten)
                }

                pub async fn list(
                    pool: &$pool,
                    sql: &Sql,
                    scope_key: &str,
                    from: &str,
                    to: &str,
                ) -> Result<Vec<String>, sqlx::Error> {
                    if super::super::pooled() {
                        use sqlx::Row;
                        let text = inlined_sql(&sql.list, super::list_values(scope_key, from, to));
                        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(text))
                            .fetch_all(pool)
                            .await?;
                        return rows.iter().map(|r| r.try_get::<String, _>(0)).collect();
                    }
                    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.list.clone()))
                        .bind(scope_key)
                        .bind(from)
                        .bind(to)
                        .bind(101i64)
                        .fetch_all(pool)
                        .await
                }

                pub async fn snapshot(
                    pool: &$pool,
                    sql: &Sql,
                    keys: &[&str; 4],
                ) -> Result<usize, sqlx::Error> {
                    if super::super::pooled() {
                        let values = keys.iter().map(|k| (*k).into()).collect();
                        let text = inlined_sql(&sql.snapshot, values);
                        return Ok(sqlx::raw_sql(sqlx::AssertSqlSafe(text))
                            .fetch_all(pool)
                            .await?
                            .len());
                    }
                    let rows: Vec<(String, String, Option<String>)> =
                        sqlx::query_as(sqlx::AssertSqlSafe(sql.snapshot.clone()))
                            .bind(keys[0])
                            .bind(keys[1])
                            .bind(keys[2])
                            .bind(keys[3])
                            .fetch_all(pool)
                            .await?;
                    Ok(rows.len())
                }
            }
        };
    }

    backend!(sqlite, sqlx::Sqlite, sqlx::SqlitePool);
    backend!(postgres, sqlx::Postgres, sqlx::PgPool);
    backend!(mysql, sqlx::MySql, sqlx::MySqlPool);
}

/// Dispatches a floor call to the pool of the backend.
macro_rules! floor_call {
    ($db:expr, $f:ident ( $($arg:expr),* )) => {
        match $db.get_database_backend() {
            sea_orm::DbBackend::Postgres => floor::postgres::$f($db.get_postgres_connection_pool(), $($arg),*).await,
            sea_orm::DbBackend::MySql => floor::mysql::$f($db.get_mysql_connection_pool(), $($arg),*).await,
            _ => floor::sqlite::$f($db.get_sqlite_connection_pool(), $($arg),*).await,
        }
    };
}

struct Bench {
    db: Arc<DatabaseConnection>,
    /// The same database on every node given (just `db` off a cluster).
    nodes: Vec<Arc<DatabaseConnection>>,
    sql: floor::Sql,
    run: usize,
}

impl Bench {
    fn scope_for(&self, floor: bool, workload: &str) -> String {
        format!(
            "{workload}-{}-{}",
            if floor { "floor" } else { "store" },
            self.run
        )
    }

    /// a_insert then a_overwrite on a fresh conversation: ops/s of each.
    async fn a(&self, n: usize, floor: bool) -> (f64, f64) {
        let ctx = context(&self.scope_for(floor, "a"), "u-1");
        let store = store_on(&self.db);
        let scope_key = ctx.scope_key(Scope::Conversation).unwrap().to_owned();
        let mut rates = Vec::new();
        for generation in 0..2 {
            let started = Instant::now();
            for i in 0..n {
                let key = format!("key-{i}");
                let v = value(i, generation);
                if floor {
                    let row = floor::upsert_values(
                        ctx.columns(),
                        "conversation",
                        &scope_key,
                        &key,
                        serde_json::to_string(&v).unwrap(),
                        service::store::now(self.db.get_database_backend()),
                    );
                    floor_call!(self.db, set(&self.sql, row)).unwrap();
                } else {
                    store
                        .set(&ctx, Scope::Conversation, &key, &v)
                        .await
                        .unwrap();
                }
            }
            rates.push(n as f64 / started.elapsed().as_secs_f64());
        }
        (rates[0], rates[1])
    }

    async fn b_get(&self, n: usize, floor: bool) -> f64 {
        let ctx = context(&self.scope_for(floor, "a"), "u-1");
        let store = store_on(&self.db);
        let scope_key = ctx.scope_key(Scope::Conversation).unwrap().to_owned();
        let started = Instant::now();
        for i in 0..n {
            let key = format!("key-{i}");
            let found = if floor {
                floor_call!(self.db, get(&self.sql, &scope_key, &key))
                    .unwrap()
                    .is_some()
            } else {
                store
                    .get(&ctx, Scope::Conversation, &key)
                    .await
                    .unwrap()
                    .is_some()
            };
            assert!(found, "b_get: {key} missing");
        }
        n as f64 / started.elapsed().as_secs_f64()
    }

    /// 1,000 keys in an actor scope, ten prefixes of 100.
    async fn seed_c(&self, floor: bool) -> StateContext {
        let ctx = context("c", &self.scope_for(floor, "c"));
        let store = store_on(&self.db);
        for k in 0..1000 {
            let key = format!("ns{}.{:03}", k % 10, k / 10);
            store
                .set(&ctx, Scope::Actor, &key, &value(k, 0))
                .await
                .unwrap();
        }
        ctx
    }

    async fn c_list(&self, ctx: &StateContext, n: usize, floor: bool) -> f64 {
        let store = store_on(&self.db);
        let scope_key = ctx.scope_key(Scope::Actor).unwrap().to_owned();
        let started = Instant::now();
        for k in 0..n {
            let prefix = format!("ns{}.", k % 10);
            let count = if floor {
                let end = format!("ns{}/", k % 10);
                floor_call!(self.db, list(&self.sql, &scope_key, &prefix, &end))
                    .unwrap()
                    .len()
            } else {
                let page = store
                    .list(ctx, Scope::Actor, Some(&prefix), None)
                    .await
                    .unwrap();
                assert!(!page.has_more);
                page.keys.len()
            };
            assert_eq!(count, 100, "c_list");
        }
        n as f64 / started.elapsed().as_secs_f64()
    }

    async fn seed_d(&self, floor: bool) -> StateContext {
        let ctx = context(&self.scope_for(floor, "d"), &self.scope_for(floor, "d"));
        let store = store_on(&self.db);
        for scope in Scope::ALL {
            for k in 0..10 {
                store
                    .set(&ctx, scope, &format!("k{k}"), &value(k, 0))
                    .await
                    .unwrap();
            }
        }
        ctx
    }

    async fn d_snapshot(&self, ctx: &StateContext, n: usize, floor: bool) -> f64 {
        let store = store_on(&self.db);
        let policy = StatePolicy::all_scopes();
        // In the store's order: its IN list follows the keys' sort order.
        let mut keys: Vec<&str> = Scope::ALL
            .iter()
            .map(|s| ctx.scope_key(*s).unwrap())
            .collect();
        keys.sort_unstable();
        let keys = [keys[0], keys[1], keys[2], keys[3]];
        let started = Instant::now();
        for _ in 0..n {
            let rows = if floor {
                floor_call!(self.db, snapshot(&self.sql, &keys)).unwrap()
            } else {
                let snap = store.snapshot(ctx, &policy).await.unwrap();
                snap.values().map(BTreeMap::len).sum::<usize>() - 1 // the seeded alias
            };
            assert_eq!(rows, 40, "d_snapshot");
        }
        n as f64 / started.elapsed().as_secs_f64()
    }

    /// 32 tasks × `per_task` sets on 50 shared keys: ops/s, errors, rows.
    async fn e_concurrent(&self, per_task: usize, floor: bool) -> (f64, usize, usize) {
        let ctx = Arc::new(context("e", &format!("e-{floor}")));
        let scope_key = ctx.scope_key(Scope::Actor).unwrap().to_owned();
        self.db
            .execute_unprepared(
                &sea_orm::Statement::from_sql_and_values(
                    self.db.get_database_backend(),
                    match self.db.get_database_backend() {
                        sea_orm::DbBackend::Postgres => {
                            "DELETE FROM agent_runner_state WHERE scope_key = $1"
                        }
                        _ => "DELETE FROM agent_runner_state WHERE scope_key = ?",
                    },
                    [scope_key.clone().into()],
                )
                .to_string(),
            )
            .await
            .unwrap();
        let started = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|task| {
                let db = self.nodes[task % self.nodes.len()].clone();
                let (ctx, scope_key) = (ctx.clone(), scope_key.clone());
                let sql = floor::Sql::new(db.get_database_backend(), ctx.columns());
                tokio::spawn(async move {
                    let store = store_on(&db);
                    let mut errors = 0;
                    for i in 0..per_task {
                        let key = format!("shared-{}", (task * 7 + i) % 50);
                        let v = value(i, task);
                        let ok = if floor {
                            let row = floor::upsert_values(
                                ctx.columns(),
                                "actor",
                                &scope_key,
                                &key,
                                serde_json::to_string(&v).unwrap(),
                                service::store::now(db.get_database_backend()),
                            );
                            floor_call!(db, set(&sql, row)).is_ok()
                        } else {
                            store.set(&ctx, Scope::Actor, &key, &v).await.is_ok()
                        };
                        errors += usize::from(!ok);
                    }
                    errors
                })
            })
            .collect();
        let mut errors = 0;
        for t in tasks {
            errors += t.await.unwrap();
        }
        let rate = (32 * per_task) as f64 / started.elapsed().as_secs_f64();
        let page = store_on(&self.db)
            .list(&ctx, Scope::Actor, Some("shared-"), None)
            .await
            .unwrap();
        (rate, errors, page.keys.len())
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backend = Backend::parse(&args.backend).unwrap_or_else(|| {
        panic!(
            "unknown backend {}: sqlite, postgres or mysql",
            args.backend
        )
    });
    // A database of its own, dropped at the end (the test harness's).
    if let Some(url) = args.url.first() {
        let parsed = service::connection::DbUrl::parse(url).expect("a database URL");
        POOLED.store(
            parsed.pooler() == service::connection::Pooler::Transaction,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let t = TestDb::create(backend, "bench_store", args.url.first().map(String::as_str)).await;
    let db = Arc::new(t.db.clone());
    let mut nodes = vec![db.clone()];
    for url in args.url.iter().skip(1) {
        let mut node = url::Url::parse(url).expect("a node URL");
        node.set_path(url::Url::parse(&t.url).expect("the test URL").path());
        let conn = service::connection::connect(node.as_str())
            .await
            .unwrap_or_else(|e| panic!("connect {node}: {e}"));
        nodes.push(Arc::new(conn));
    }
    if pooled() {
        // Through the pooler: one transaction that drops its statements.
        let session = service::connection::PooledSession::begin(&db)
            .await
            .unwrap();
        Migrator::up(session.work(), None).await.unwrap();
        session.commit().await.unwrap();
    } else {
        Migrator::up(&*db, None).await.unwrap();
    }

    let mut store: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut floor_rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let (mut e_errors, mut e_floor_errors, mut e_final_rows) = (0, 0, 0);
    for run in 0..=args.runs {
        let warm_up = run == 0;
        let scale = if warm_up { 10 } else { 1 };
        let bench = Bench {
            db: db.clone(),
            nodes: nodes.clone(),
            sql: floor::Sql::new(
                db.get_database_backend(),
                context("sample", "u-1").columns(),
            ),
            run,
        };
        // Alternate which goes first, so that neither always runs warmer.
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for floor in order {
            let out = if floor { &mut floor_rates } else { &mut store };
            let (insert, overwrite) = bench.a(5000 / scale, floor).await;
            let get = bench.b_get(5000 / scale, floor).await;
            let c_ctx = bench.seed_c(floor).await;
            let list = bench.c_list(&c_ctx, 500 / scale, floor).await;
            let d_ctx = bench.seed_d(floor).await;
            let snapshot = bench.d_snapshot(&d_ctx, 1000 / scale, floor).await;
            let (concurrent, errors, rows) = bench.e_concurrent(200 / scale, floor).await;
            eprintln!(
                "{} run {run}{}: a_insert {insert:.0}, a_overwrite {overwrite:.0}, b_get {get:.0}, \
                 c_list {list:.0}, d_snapshot {snapshot:.0}, e_concurrent {concurrent:.0} ops/s ({errors} errors, {rows} rows)",
                if floor { "floor" } else { "store" },
                if warm_up { " (warm-up)" } else { "" }
            );
            if warm_up {
                continue;
            }
            for (k, v) in [
                ("a_insert", insert),
                ("a_overwrite", overwrite),
                ("b_get", get),
                ("c_list", list),
                ("d_snapshot", snapshot),
                ("e_concurrent", concurrent),
            ] {
                out.entry(k).or_default().push(v);
            }
            if floor {
                e_floor_errors += errors;
            } else {
                e_errors += errors;
                e_final_rows = rows;
            }
        }
    }
    fn medians(m: BTreeMap<&'static str, Vec<f64>>) -> BTreeMap<&'static str, f64> {
        m.into_iter().map(|(k, v)| (k, median(v))).collect()
    }
    let store = medians(store);
    let floor_rates = medians(floor_rates);
    let ratio: BTreeMap<&str, f64> = store
        .iter()
        .map(|(k, v)| (*k, (v / floor_rates[k] * 100.0).round() / 100.0))
        .collect();
    println!(
        "{}",
        json!({
            "backend": backend.name(),
            "runs": args.runs,
            "median_ops_per_s": store,
            "floor_ops_per_s": floor_rates,
            "ratio_to_floor": ratio,
            "e_errors": e_errors,
            "e_floor_errors": e_floor_errors,
            "e_final_rows": e_final_rows,
        })
    );
}
