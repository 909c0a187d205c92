//! The store's own server connections (`service::server_connections`):
//! what they add to the pool's behaviour. A call dropped mid-statement
//! keeps its place until its answer comes, and its connection is kept; the
//! set never opens more than its bound; a closed set refuses calls; the server's answer to a statement (an error) keeps the
//! connection, and reaches the caller as the pool reports it; a TLS-only
//! server refused in plain text says so. (Dead connections:
//! `tests/dead_connections.rs`; every store scenario runs on them too,
//! `::postgres_own`, `::mysql_own`.)

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};
use serde_json::json;
use service::server_connections::{ServerConnections, ServerConnectionsStats};
use service::{Scope, StateContext, StateError, StateStore};
use testkit::{Backend, TestDb, Topology};

fn ctx() -> StateContext {
    testkit::user_context("plugin:langbot/local-agent/default", "c-1", "u-1")
}

async fn own(backend: Backend, hint: &str) -> TestDb {
    TestDb::on(backend, Topology::Own, hint)
        .await
        .expect("left out by TEST_BACKENDS but not filtered out")
}

/// Statements on the test's database waiting for a row lock.
async fn lock_waits(watcher: &DatabaseConnection) -> usize {
    let sql = match watcher.get_database_backend() {
        DbBackend::Postgres => {
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'"
        }
        _ => {
            // Statements running on the test's database but this one: the
            // lock holder sleeps between its statements.
            "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND COMMAND IN ('Query', 'Execute') AND ID <> CONNECTION_ID()"
        }
    };
    let row = watcher
        .query_one_raw(Statement::from_string(watcher.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    usize::try_from(row.try_get_by_index::<i64>(0).unwrap()).unwrap()
}

/// Polls until `n` statements wait for the lock.
async fn until_lock_waits(watcher: &DatabaseConnection, n: usize) {
    let mut polls = 0;
    while lock_waits(watcher).await < n {
        polls += 1;
        assert!(polls < 100_000, "{n} statements never waited for the lock");
        tokio::task::yield_now().await;
    }
}

/// Holds the row lock on every row of `key` in a transaction of `db`'s.
async fn lock_rows(db: &DatabaseConnection, key: &str) -> sea_orm::DatabaseTransaction {
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared(&format!(
        "UPDATE agent_runner_state SET value_json = value_json WHERE state_key = '{key}'"
    ))
    .await
    .unwrap();
    txn
}

/// A connection of the test's own, for watching the server.
async fn watcher(t: &TestDb) -> DatabaseConnection {
    Database::connect(t.direct_url.as_str()).await.unwrap()
}

/// A call dropped while its statement waits on the server (behind a row
/// lock): its session goes on, so it keeps its place in the bound (a set of
/// one here: the next call waits for it) until its answer comes, which is
/// read to the end; the connection then serves the next call.
async fn a_cancelled_call_keeps_its_place_until_its_answer(backend: Backend) {
    let t = own(backend, "cancelled_call").await;
    Migrator::up(&t.db, None).await.unwrap();
    let server = ServerConnections::open(&t.url, 1).await.unwrap().unwrap();
    let store = |db: DatabaseConnection, set: ServerConnections, value: i32| async move {
        StateStore::new(&db)
            .server_connections(Some(&set))
            .set(&ctx(), Scope::Actor, "k", &json!(value))
            .await
    };
    store(t.app_db.clone(), server.clone(), 1).await.unwrap();

    let txn = lock_rows(&t.db, "k").await;
    let cancelled = tokio::spawn(store(t.app_db.clone(), server.clone(), 2));
    let watch = watcher(&t).await;
    until_lock_waits(&watch, 1).await;
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());

    let next = tokio::spawn(store(t.app_db.clone(), server.clone(), 3));
    let mut polls = 0;
    while server.stats().waited_for_connection < 1 {
        polls += 1;
        assert!(polls < 100_000, "the next call never waited for the place");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        lock_waits(&watch).await,
        1,
        "a second session went to the server"
    );
    txn.rollback().await.unwrap();
    next.await.unwrap().unwrap();
    assert_eq!(
        server.stats(),
        ServerConnectionsStats {
            connections_opened: 1,
            pinged: 0,
            dropped: 0,
            waited_for_connection: 1,
            recovered: 1,
        }
    );
    // The cancelled upsert ran when the lock went, before the next call.
    assert_eq!(
        t.store().get(&ctx(), Scope::Actor, "k").await.unwrap(),
        Some(json!(3))
    );
    watch.close().await.unwrap();
    server.close().await;
}

/// Twelve calls at once behind a held row lock on a set of three: three
/// wait on the server, nine for a connection, and no more than three are
/// ever opened.
async fn the_set_is_bounded(backend: Backend) {
    const MAX: usize = 3;
    const CALLS: usize = 12;
    let t = own(backend, "bounded").await;
    Migrator::up(&t.db, None).await.unwrap();
    let server = ServerConnections::open(&t.url, MAX).await.unwrap().unwrap();
    let c = ctx();
    StateStore::new(&t.app_db)
        .server_connections(Some(&server))
        .set(&c, Scope::Actor, "k", &json!(0))
        .await
        .unwrap();

    let txn = lock_rows(&t.db, "k").await;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let (db, set) = (t.app_db.clone(), server.clone());
            tokio::spawn(async move {
                StateStore::new(&db)
                    .server_connections(Some(&set))
                    .set(&ctx(), Scope::Actor, "k", &json!(i))
                    .await
            })
        })
        .collect();
    let watch = watcher(&t).await;
    until_lock_waits(&watch, MAX).await;
    let mut polls = 0;
    while server.stats().waited_for_connection < (CALLS - MAX) as u64 {
        polls += 1;
        assert!(polls < 100_000, "the calls past the bound never waited");
        tokio::task::yield_now().await;
    }
    assert_eq!(lock_waits(&watch).await, MAX);
    txn.rollback().await.unwrap();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(
        server.stats(),
        ServerConnectionsStats {
            connections_opened: MAX as u64,
            pinged: 0,
            dropped: 0,
            waited_for_connection: (CALLS - MAX) as u64,
            recovered: 0,
        }
    );
    watch.close().await.unwrap();
    server.close().await;
}

/// A closed set refuses calls as a closed pool does, and closes a
/// connection that comes back after.
async fn a_closed_set_refuses_calls(backend: Backend) {
    let t = own(backend, "closed_set").await;
    Migrator::up(&t.db, None).await.unwrap();
    let server = ServerConnections::open(&t.url, 2).await.unwrap().unwrap();
    let on = |set: &ServerConnections| {
        let set = set.clone();
        let db = t.app_db.clone();
        async move {
            StateStore::new(&db)
                .server_connections(Some(&set))
                .get(&ctx(), Scope::Actor, "k")
                .await
        }
    };
    assert_eq!(on(&server).await.unwrap(), None);
    server.close().await;
    let err = on(&server).await.unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Db(sea_orm::DbErr::ConnectionAcquire(
                sea_orm::ConnAcquireErr::ConnectionClosed
            ))
        ),
        "{err:?}"
    );
    assert_eq!(server.stats().dropped, 1);
}

/// A statement the server refuses (here: no table yet) is the server's
/// answer, not a lost connection: the error reaches the caller as the pool
/// reports it (sqlx's own error, with the server's code) and the connection
/// serves the next call.
async fn a_refused_statement_keeps_its_connection(backend: Backend) {
    let t = own(backend, "refused_statement").await;
    let server = t.server.clone().unwrap();
    let c = ctx();
    for _ in 0..2 {
        let err = t
            .store()
            .set(&c, Scope::Actor, "k", &json!(1))
            .await
            .unwrap_err();
        let StateError::Db(db_err) = &err else {
            panic!("not a database error: {err:?}");
        };
        let on_pool = StateStore::new(&t.app_db)
            .set(&c, Scope::Actor, "k", &json!(1))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), on_pool.to_string());
        let code = match db_err {
            sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e)) => e
                .as_database_error()
                .and_then(|d| d.code().map(|c| c.into_owned())),
            other => panic!("not the driver's error: {other:?}"),
        };
        let expected = match backend {
            Backend::Postgres => "42P01",
            _ => "42S02",
        };
        assert_eq!(code.as_deref(), Some(expected), "{db_err:?}");
    }
    assert_eq!(
        server.stats(),
        ServerConnectionsStats {
            connections_opened: 1,
            ..ServerConnectionsStats::default()
        }
    );
}

macro_rules! on_both_servers {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_own() {
                super::$scenario(Backend::Postgres).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql_own() {
                super::$scenario(Backend::MySql).await;
            }
        }
    )*};
}

on_both_servers!(
    a_cancelled_call_keeps_its_place_until_its_answer,
    the_set_is_bounded,
    a_closed_set_refuses_calls,
    a_refused_statement_keeps_its_connection,
);

mod a_tls_only_server_refused_in_plain_text_says_so {
    use service::connection::ConnectError;

    /// The first connection opens with `open`, so a URL that cannot serve
    /// fails there, named as `probe` names it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_tls() {
        let url = testkit::tls_only_postgres_in_plain_text();
        let err = super::ServerConnections::open(&url, 2).await.unwrap_err();
        assert!(matches!(err, ConnectError::TlsRequired(_)), "{err:?}");
    }
}
