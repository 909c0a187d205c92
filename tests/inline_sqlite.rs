//! The store's inline SQLite connections (`service::inline_sqlite`) where
//! they differ from the pool: a locked database is waited for on a blocking
//! thread, checkpoints run there too, and what they cannot serve they say.
//! The conformance suites run every store scenario on them as well
//! (`::sqlite_own`, `testkit::on_every_store_topology!`).

use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;
use service::connection::{ConnectError, StoreConnection, begin_writing};
use service::inline_sqlite::InlineSqlite;
use service::{Scope, StateError};
use testkit::{Backend, TestDb, Topology};

const RUNNER: &str = "plugin:langbot/local-agent/default";

async fn migrated(hint: &str) -> TestDb {
    let t = TestDb::on(Backend::Sqlite, Topology::Own, hint)
        .await
        .expect("SQLite is always selected here (the test name ends in ::sqlite_own)");
    Migrator::up(&t.db, None).await.unwrap();
    t
}

fn inline(t: &TestDb) -> &InlineSqlite {
    t.inline.as_ref().expect("the inline topology has them")
}

/// Polls `done` until it holds: a bound for a failure, never a pause that
/// stands in for progress.
async fn until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until `set` is counted as waiting for the lock on `inline`, and
/// fails if it returned instead, while the lock is held.
async fn until_waiting<T: std::fmt::Debug>(
    inline: &InlineSqlite,
    set: &mut tokio::task::JoinHandle<T>,
) {
    until("the set waits for the lock, or returns", || {
        inline.stats().waited_for_lock >= 1 || set.is_finished()
    })
    .await;
    assert!(
        !set.is_finished(),
        "it returned while the lock was held: {:?}",
        set.await
    );
}

mod a_locked_database_is_waited_for_off_the_async_thread {
    use super::*;

    /// Another connection holds SQLite's write lock: the inline set finds
    /// the database locked, goes to a blocking thread to wait, and lands
    /// once the lock is released; both writes are kept. On a runtime of one
    /// thread, which a set that waited in it would stop (the test polls
    /// and commits on that thread).
    #[tokio::test(flavor = "current_thread")]
    async fn sqlite_own() {
        let t = migrated("inline_locked").await;
        let ctx = testkit::user_context(RUNNER, "c-1", "u-1");
        let blocker = begin_writing(&t.db, None).await.unwrap();
        let blocked = StateStore::new(&blocker);
        blocked
            .set(&ctx, Scope::Actor, "held", &json!("by the transaction"))
            .await
            .unwrap();

        let t = std::sync::Arc::new(t);
        let mut waiting = {
            let (t, ctx) = (t.clone(), ctx.clone());
            tokio::spawn(async move {
                t.store()
                    .set(&ctx, Scope::Actor, "waited", &json!("inline"))
                    .await
            })
        };
        until_waiting(inline(&t), &mut waiting).await;
        blocker.commit().await.unwrap();
        waiting.await.unwrap().unwrap();

        let store = t.store();
        assert_eq!(
            store.get(&ctx, Scope::Actor, "held").await.unwrap(),
            Some(json!("by the transaction"))
        );
        assert_eq!(
            store.get(&ctx, Scope::Actor, "waited").await.unwrap(),
            Some(json!("inline"))
        );
    }

    use service::StateStore;
}

mod writers_queued_behind_a_lock_share_a_few_connections {
    use super::*;

    /// 32 sets meet a held write lock: as many wait on blocking threads as
    /// there are connections to spare, the rest wait for a connection
    /// without a thread; all land once the lock goes, and no more than
    /// `MAX_CONNECTIONS` connections were ever opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_own() {
        let t = std::sync::Arc::new(migrated("inline_queued").await);
        let ctx = testkit::user_context(RUNNER, "c-1", "u-1");
        let blocker = begin_writing(&t.db, None).await.unwrap();
        let sets: Vec<_> = (0..32)
            .map(|i| {
                let (t, ctx) = (t.clone(), ctx.clone());
                tokio::spawn(async move {
                    t.store()
                        .set(&ctx, Scope::Actor, &format!("k{i}"), &json!(i))
                        .await
                })
            })
            .collect();
        let max = service::inline_sqlite::MAX_CONNECTIONS as u64;
        until("every connection holds a waiting set", || {
            inline(&t).stats().waited_for_lock >= max
        })
        .await;
        assert!(
            sets.iter().all(|s| !s.is_finished()),
            "a set returned under the lock"
        );
        blocker.commit().await.unwrap();
        for set in sets {
            set.await.unwrap().unwrap();
        }
        let page = t
            .store()
            .list(&ctx, Scope::Actor, None, None)
            .await
            .unwrap();
        assert_eq!(page.keys.len(), 32);
        let opened = inline(&t).stats().connections_opened;
        assert!(opened <= max, "{opened} connections opened");
    }
}

mod commits_past_the_mark_checkpoint_off_the_async_thread {
    use super::*;

    /// Inline connections have SQLite's automatic checkpoint off; a commit
    /// past 1,000 log pages starts one on a blocking thread, which copies
    /// the log into the database file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_own() {
        let t = migrated("inline_checkpoint").await;
        let ctx = testkit::user_context(RUNNER, "c-1", "u-1");
        let store = t.store();
        let file = inline(&t).path().to_owned();
        let before = std::fs::metadata(&file).unwrap().len();
        // 40 values of 200,000 bytes: some 2,000 pages of log.
        let big = "x".repeat(200_000);
        for i in 0..40 {
            store
                .set(&ctx, Scope::Actor, &format!("big-{i}"), &json!(big))
                .await
                .unwrap();
        }
        until("a checkpoint finishes", || {
            inline(&t).stats().checkpoints >= 1
        })
        .await;
        let after = std::fs::metadata(&file).unwrap().len();
        assert!(
            after >= before + 2_000_000,
            "the database file grew from {before} to only {after} bytes"
        );
        assert_eq!(
            store.get(&ctx, Scope::Actor, "big-39").await.unwrap(),
            Some(json!(big))
        );
    }
}

mod a_steady_writer_keeps_the_log_small {
    use super::*;

    /// One task writing without pause, some 30 MiB through the log: past
    /// 4,000 log pages (16 MiB) a commit waits for a checkpoint, which then
    /// copies the whole log, so the log starts over and stays under 20 MiB.
    /// (With checkpoints no writer waited for, a release build outran them
    /// and the log grew with every write, to 1 GB over 20,000 sets; this
    /// debug build writes too slowly to show that, so this guards the
    /// bound, not the waiting.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_own() {
        let t = migrated("inline_steady_writer").await;
        let ctx = testkit::user_context(RUNNER, "c-1", "u-1");
        let store = t.store();
        let log = inline(&t).path().with_extension("db-wal");
        let value = json!("x".repeat(8_000));
        for i in 0..3_000 {
            store
                .set(&ctx, Scope::Actor, &format!("k{i}"), &value)
                .await
                .unwrap();
        }
        let size = std::fs::metadata(&log).unwrap().len();
        until("three checkpoints finish", || {
            inline(&t).stats().checkpoints >= 3
        })
        .await;
        assert!(size < 20 << 20, "the log grew to {size} bytes");
    }
}

mod errors_are_the_pools_errors {
    use super::*;

    /// SQLite's code as sqlx reports it, from the store's error.
    fn sqlite_code(err: &StateError) -> Option<String> {
        let StateError::Db(
            DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e)),
        ) = err
        else {
            return None;
        };
        Some(e.as_database_error()?.code()?.into_owned())
    }

    /// A store statement that fails inline fails as it does on the pool:
    /// the same error, text and SQLite code, so that what reads sqlx's
    /// errors (retries, `DbErr::sql_err`) reads these.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_own() {
        let t = TestDb::on(Backend::Sqlite, Topology::Own, "inline_errors")
            .await
            .unwrap();
        let ctx = testkit::user_context(RUNNER, "c-1", "u-1");
        let on_pool = service::StateStore::new(&t.db);
        // No table yet.
        let inline = t.store().get(&ctx, Scope::Actor, "k").await.unwrap_err();
        let pool = on_pool.get(&ctx, Scope::Actor, "k").await.unwrap_err();
        assert_eq!(inline.to_string(), pool.to_string());
        assert_eq!(
            inline.to_string(),
            "database error: Query Error: error returned from database: (code: 1) no such \
             table: agent_runner_state"
        );
        assert_eq!(sqlite_code(&inline).as_deref(), Some("1"));
        let inline = t
            .store()
            .set(&ctx, Scope::Actor, "k", &json!(1))
            .await
            .unwrap_err();
        let pool = on_pool
            .set(&ctx, Scope::Actor, "k", &json!(1))
            .await
            .unwrap_err();
        assert_eq!(inline.to_string(), pool.to_string());
        assert_eq!(sqlite_code(&inline), sqlite_code(&pool));
    }

    use sea_orm::{DbErr, RuntimeErr};
}

mod open_says_what_it_cannot_serve {
    use super::*;

    /// `None` where the store must stay on the pool; an error, keeping
    /// SQLite's, where the file cannot be opened; read-only as the URL says.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_own() {
        for url in [
            "postgres://u@localhost/db",
            "mysql://u@localhost/db",
            "sqlite::memory:",
            "sqlite://x.db?mode=memory",
            "sqlite://x.db?cache=shared",
            "sqlite://x.db?immutable=1",
            "sqlite://x.db?vfs=unix-dotfile",
            "sqlite://",
        ] {
            assert!(InlineSqlite::open(url).await.unwrap().is_none(), "{url}");
        }
        assert!(matches!(
            InlineSqlite::open("nonsense").await,
            Err(ConnectError::BadUrl(_))
        ));
        let missing =
            std::env::temp_dir().join(format!("inline-missing-{}.db", std::process::id()));
        let err = InlineSqlite::open(&format!("sqlite://{}?mode=rw", missing.display()))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Sqlite(_)), "{err:?}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is kept: {err}"
        );
        assert!(!missing.exists(), "opening created the file");

        // A file in rollback-journal mode: its writes would sync in the
        // committing thread, so the store stays on the pool.
        let journal =
            std::env::temp_dir().join(format!("inline-journal-{}.db", std::process::id()));
        let url = format!("sqlite://{}?mode=rwc", journal.display());
        {
            use sea_orm::sqlx::Connection;
            use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
            let options: SqliteConnectOptions = url.parse().unwrap();
            let conn = sea_orm::sqlx::SqliteConnection::connect_with(
                &options.journal_mode(SqliteJournalMode::Delete),
            )
            .await
            .unwrap();
            conn.close().await.unwrap();
        }
        let opened = InlineSqlite::open(&url).await;
        std::fs::remove_file(&journal).unwrap();
        assert!(opened.unwrap().is_none());

        // Read-only: reads are served, writes refused.
        let t = migrated("inline_read_only").await;
        let ctx = testkit::user_context(RUNNER, "c-1", "u-1");
        t.store()
            .set(&ctx, Scope::Actor, "k", &json!(1))
            .await
            .unwrap();
        let path = inline(&t).path().display().to_string();
        let ro = StoreConnection::open(&format!("sqlite://{path}?mode=ro"))
            .await
            .unwrap();
        assert!(ro.inline_sqlite().is_some());
        assert_eq!(
            ro.store().get(&ctx, Scope::Actor, "k").await.unwrap(),
            Some(json!(1))
        );
        let err = ro
            .store()
            .set(&ctx, Scope::Actor, "k", &json!(2))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
        ro.close().await.unwrap();
        assert_eq!(
            t.store().get(&ctx, Scope::Actor, "k").await.unwrap(),
            Some(json!(1))
        );
    }
}

mod store_connection_sets_up_the_store {
    use super::*;

    /// `StoreConnection` gives a SQLite file inline connections, and the
    /// store it builds sends its statements there: a set that meets the
    /// write lock is counted as their wait, and lands in the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_own() {
        let t = migrated("inline_store_connection").await;
        let conn = StoreConnection::open(&t.url).await.unwrap();
        let inline = conn.inline_sqlite().expect("a SQLite file");
        assert_eq!(inline.path(), self::inline(&t).path());
        let ctx = testkit::user_context(RUNNER, "c-1", "u-1");
        // Hold the write lock: only an inline statement counts a wait.
        let blocker = begin_writing(&t.db, None).await.unwrap();
        blocker
            .execute_raw(Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                "DELETE FROM agent_runner_state",
            ))
            .await
            .unwrap();
        let mut set = {
            let conn = conn.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                conn.store()
                    .set(&ctx, Scope::Actor, "k", &json!("via StoreConnection"))
                    .await
            })
        };
        until_waiting(conn.inline_sqlite().unwrap(), &mut set).await;
        blocker.commit().await.unwrap();
        set.await.unwrap().unwrap();
        assert_eq!(
            t.store().get(&ctx, Scope::Actor, "k").await.unwrap(),
            Some(json!("via StoreConnection"))
        );
        conn.close().await.unwrap();
    }
}

mod a_store_on_a_server_leaves_inline_connections_alone {
    use super::*;

    /// Inline connections given to a store on another backend are not
    /// used: its statements go to its server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(t) = TestDb::new(Backend::Postgres, "inline_on_a_server").await else {
            panic!("left out by TEST_BACKENDS but not filtered out");
        };
        Migrator::up(&t.db, None).await.unwrap();
        // A SQLite file without the table: a statement sent there fails.
        let sqlite = TestDb::create(Backend::Sqlite, "inline_unused", None).await;
        let inline = InlineSqlite::open(&sqlite.url).await.unwrap();
        assert!(inline.is_some());
        let store = service::StateStore::new(&t.db).inline_sqlite(inline.as_ref());
        let ctx = testkit::user_context(RUNNER, "c-1", "u-1");
        store.set(&ctx, Scope::Actor, "k", &json!(1)).await.unwrap();
        assert_eq!(
            store.get(&ctx, Scope::Actor, "k").await.unwrap(),
            Some(json!(1))
        );
    }
}
