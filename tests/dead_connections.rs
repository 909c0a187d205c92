//! A live pool outlives its server connections. With the recommended
//! settings (`service::connection::connect_options`: no ping on every
//! acquire), a connection the server ended — as a restart, a failover or a
//! proxy does — is still found out and replaced, and no error reaches the
//! store's caller: the statement goes again on another connection.
//!
//! On every server topology the server ends every session on the test's
//! database (PostgreSQL `pg_terminate_backend`, MariaDB `KILL CONNECTION`),
//! which is what a restart does to a pool, without stopping the server the
//! other tests share. And a real restart, shutdown and start, of the
//! PostgreSQL and MariaDB servers `scripts/test-dbs.sh` keeps for these
//! tests alone (`restart postgres-restart|mariadb-restart`). Server backends
//! only: SQLite has no connection to lose. The store runs on the pool on the
//! direct and PgBouncer topologies, and on its own connections
//! (`service::server_connections`) on the others and in the restart tests,
//! which open it as services do (`StoreConnection`), and also make a call
//! while their server is down, which waits for it to come back.

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use serde_json::json;
use service::server_connections::ServerConnections;
use service::{Scope, StateContext, StatePolicy, StateStore};
use testkit::{Backend, TestDb, on_every_server_topology};

fn ctx(actor: &str) -> StateContext {
    testkit::user_context("plugin:langbot/local-agent/default", "c-1", actor)
}

/// Ends every other session on the test's database and waits until the
/// server reports each of them gone (a pool may open new ones meanwhile);
/// how many it ended.
async fn end_other_sessions(killer: &DatabaseConnection) -> usize {
    let sessions = testkit::other_sessions(killer).await;
    for id in &sessions {
        let sql = match killer.get_database_backend() {
            DbBackend::Postgres => format!("SELECT pg_terminate_backend({id})"),
            _ => format!("KILL CONNECTION {id}"),
        };
        // A session may end by itself meanwhile (MariaDB: unknown thread).
        let _ = killer.execute_unprepared(&sql).await;
    }
    let mut polls = 0;
    while testkit::other_sessions(killer)
        .await
        .iter()
        .any(|id| sessions.contains(id))
    {
        polls += 1;
        assert!(polls < 10_000, "the server never ended the sessions");
        tokio::task::yield_now().await;
    }
    sessions.len()
}

async fn a_pool_survives_its_connections_ending(t: TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    // One connection of its own that the kill spares.
    let mut options = service::connection::connect_options(&t.direct_url).unwrap();
    options.max_connections(1).min_connections(1);
    let killer = Database::connect(options).await.unwrap();

    // The pool under test, as a service would open it, with several
    // connections open and used.
    let before = testkit::other_sessions(&killer).await.len();
    let pool = service::connection::connect(&t.url).await.unwrap();
    let server = t.server.as_ref();
    let store = StateStore::new(&pool)
        .pooled(t.pooler())
        .server_connections(server);
    let writers = eight_writers(&pool, t.pooler(), server, 0);
    assert_eq!(errors_of(writers).await, Vec::<String>::new());
    store
        .set(&ctx("u-0"), Scope::Conversation, "topic", &json!("weather"))
        .await
        .unwrap();

    // The pool under test had connections of its own to lose: its two
    // (`MIN_CONNECTIONS`) at least. Through PgBouncer, every server session
    // on the database is PgBouncer's, shared among its clients, so any of
    // them may have served the pool, and PgBouncer need not have opened a
    // new one for it: at least one is ended.
    let ended = end_other_sessions(&killer).await;
    match t.pooler() {
        service::connection::Pooler::Transaction => {
            assert!(ended >= 1, "PgBouncer had no server session to end");
        }
        _ => assert!(
            ended >= before + service::connection::MIN_CONNECTIONS as usize,
            "only {ended} sessions were open to end, {before} of them not the pool's"
        ),
    }

    calls_after_losing_connections(&pool, t.pooler(), server, || end_other_sessions(&killer)).await;
    pool.close().await.unwrap();
    killer.close().await.unwrap();
}

/// Every call after the pool lost its connections succeeds: reads, an
/// upsert, a list, a snapshot; then, after they are lost `again`, eight
/// writers at once, each finding dead connections first.
async fn calls_after_losing_connections<F, Fut, T>(
    pool: &DatabaseConnection,
    pooler: service::connection::Pooler,
    server: Option<&ServerConnections>,
    again: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let store = StateStore::new(pool)
        .pooled(pooler)
        .server_connections(server);
    let before = server.map(ServerConnections::stats);
    let c = ctx("u-0");
    assert_eq!(
        store.get(&c, Scope::Conversation, "topic").await.unwrap(),
        Some(json!("weather"))
    );
    // The first connection the get took was found dead; the others, idle
    // since before, were pinged before use rather than each tried with the
    // statement.
    if let (Some(server), Some(before)) = (server, before)
        && before.connections_opened - before.dropped >= 2
    {
        assert!(
            server.stats().pinged > before.pinged,
            "the idle connections were not checked: {:?}",
            server.stats()
        );
    }
    store
        .set(&c, Scope::Conversation, "topic", &json!("rain"))
        .await
        .unwrap();
    let page = store.list(&c, Scope::Actor, None, None).await.unwrap();
    assert_eq!(page.keys, ["seen"]);
    let snapshot = store
        .snapshot(&c, &StatePolicy::all_scopes())
        .await
        .unwrap();
    assert_eq!(snapshot[&Scope::Conversation]["topic"], json!("rain"));

    // The store's own connections found theirs dead and dropped them (the
    // first call that met one) or pinged them first (the others, idle since
    // before that loss).
    if let (Some(server), Some(before)) = (server, before) {
        assert!(
            server.stats().dropped > before.dropped,
            "no dead connection was dropped: {:?}",
            server.stats()
        );
    }

    again().await;
    let writers = eight_writers(pool, pooler, server, 1);
    let failed: Vec<String> = errors_of(writers).await;
    assert!(failed.is_empty(), "errors reached the caller: {failed:?}");
    for i in 0..8 {
        let seen = store
            .get(&ctx(&format!("u-{i}")), Scope::Actor, "seen")
            .await
            .unwrap();
        assert_eq!(seen, Some(json!(1)));
    }
}

/// Shuts the test-only server `instance` of `t` down and starts it again;
/// returns once it answers, having checked that it did restart: PostgreSQL's
/// start time moved; MariaDB's `MEMORY` table, which a restart empties, is
/// empty. Each check on a connection of its own.
async fn restart(t: &TestDb, instance: &str) {
    let check = Database::connect(t.direct_url.as_str()).await.unwrap();
    let started = match t.backend {
        Backend::Postgres => "SELECT CAST(pg_postmaster_start_time() AS TEXT)",
        _ => {
            check
                .execute_unprepared(
                    "CREATE TABLE IF NOT EXISTS restart_marker (x INT) ENGINE=MEMORY",
                )
                .await
                .unwrap();
            check
                .execute_unprepared("INSERT INTO restart_marker VALUES (1)")
                .await
                .unwrap();
            "SELECT CAST(COUNT(*) AS CHAR) FROM restart_marker"
        }
    };
    let read = |db: DatabaseConnection| async move {
        let text = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), started))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<String>(0)
            .unwrap();
        db.close().await.unwrap();
        text
    };
    let before = read(check).await;
    test_dbs(&["restart", instance]).await;
    let after = read(Database::connect(t.direct_url.as_str()).await.unwrap()).await;
    match t.backend {
        Backend::Postgres => assert_ne!(before, after, "{instance} did not restart"),
        _ => assert_eq!(after, "0", "{instance} did not restart"),
    }
}

/// Runs `scripts/test-dbs.sh` with `args`, on a blocking thread.
async fn test_dbs(args: &[&str]) {
    let script = testkit::workspace_root().join("scripts/test-dbs.sh");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(script)
            .args(&args)
            .output()
            .expect("run scripts/test-dbs.sh");
        (args, out)
    })
    .await
    .unwrap();
    assert!(
        out.1.status.success(),
        "scripts/test-dbs.sh {}: {}",
        out.0.join(" "),
        String::from_utf8_lossy(&out.1.stderr)
    );
}

/// The server restarts under a live pool with connections open and used:
/// its shutdown ends them all (PostgreSQL tells each it is shutting down;
/// MariaDB closes them), and no call after it fails.
async fn a_pool_survives_a_server_restart(backend: Backend, base_var: &str, instance: &str) {
    let base = std::env::var(base_var).unwrap_or_else(|_| {
        panic!("{base_var} is not set: start the test databases with scripts/test-dbs.sh")
    });
    let t = TestDb::create(backend, "restart", Some(&base)).await;
    Migrator::up(&t.db, None).await.unwrap();
    // As a service opens it: the pool, and the store's own connections.
    let conn = service::connection::StoreConnection::open(&t.url)
        .await
        .unwrap();
    let (pool, pooler, server) = (conn.db(), conn.pooler(), conn.server_connections());
    assert!(
        server.is_some(),
        "a plain server gets the store's own connections"
    );
    assert_eq!(
        errors_of(eight_writers(pool, pooler, server, 0)).await,
        Vec::<String>::new()
    );
    conn.store()
        .set(&ctx("u-0"), Scope::Conversation, "topic", &json!("weather"))
        .await
        .unwrap();
    restart(&t, instance).await;
    calls_after_losing_connections(pool, pooler, server, || restart(&t, instance)).await;

    // A call made while the server is down waits for it to come back (as a
    // call on the pool waits for a connection), and succeeds.
    test_dbs(&["down", instance]).await;
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let call = {
        let (conn, started) = (conn.clone(), started.clone());
        tokio::spawn(async move {
            started.notify_one();
            conn.store()
                .get(&ctx("u-0"), Scope::Conversation, "topic")
                .await
        })
    };
    started.notified().await;
    test_dbs(&["up", instance]).await;
    assert_eq!(call.await.unwrap().unwrap(), Some(json!("rain")));
    conn.close().await.unwrap();
}

/// One test per server: `a_pool_survives_a_server_restart::postgres`, `::mysql`.
mod a_pool_survives_a_server_restart {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        a_pool_survives_a_server_restart(
            Backend::Postgres,
            "TEST_POSTGRES_RESTART_URL",
            "postgres-restart",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        a_pool_survives_a_server_restart(
            Backend::MySql,
            "TEST_MYSQL_RESTART_URL",
            "mariadb-restart",
        )
        .await;
    }
}

/// Eight tasks at once, each setting its own actor's `seen` to `value`.
fn eight_writers(
    pool: &DatabaseConnection,
    pooler: service::connection::Pooler,
    server: Option<&ServerConnections>,
    value: u32,
) -> Vec<tokio::task::JoinHandle<service::Result<()>>> {
    (0..8)
        .map(|i| {
            let (pool, server) = (pool.clone(), server.cloned());
            tokio::spawn(async move {
                StateStore::new(&pool)
                    .pooled(pooler)
                    .server_connections(server.as_ref())
                    .set(&ctx(&format!("u-{i}")), Scope::Actor, "seen", &json!(value))
                    .await
            })
        })
        .collect()
}

async fn errors_of(tasks: Vec<tokio::task::JoinHandle<service::Result<()>>>) -> Vec<String> {
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            errors.push(service::error_line(&e));
        }
    }
    errors
}

on_every_server_topology!(a_pool_survives_its_connections_ending);
