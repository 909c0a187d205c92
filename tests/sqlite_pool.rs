//! A SQLite file as the recommended settings open it
//! (`service::connection::connect_options`): two connections, so reads go
//! on beside a writer, and write transactions that take SQLite's write lock
//! when they begin (`begin_writing`), so that reading first cannot make
//! their first write fail.

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::SqliteConnectOptions;
use sea_orm::sqlx::{Connection, SqliteConnection};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use service::connection::begin_writing;
use service::{Scope, StateStore};
use testkit::{Backend, TestDb};

async fn migrated(hint: &str) -> TestDb {
    let t = TestDb::create(Backend::Sqlite, hint, None).await;
    Migrator::up(&t.db, None).await.unwrap();
    t
}

/// A second connection to the same file that never waits for a lock: it
/// tells at once whether someone holds SQLite's write lock.
async fn impatient(t: &TestDb) -> SqliteConnection {
    let options: SqliteConnectOptions = t.url.parse().unwrap();
    SqliteConnection::connect_with(&options.busy_timeout(std::time::Duration::ZERO))
        .await
        .unwrap()
}

/// Whether the write lock is free: `BEGIN IMMEDIATE` takes it or fails
/// with SQLITE_BUSY (5) at once.
async fn write_lock_is_free(conn: &mut SqliteConnection) -> bool {
    match sea_orm::sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
    {
        Ok(_) => {
            sea_orm::sqlx::raw_sql("ROLLBACK")
                .execute(&mut *conn)
                .await
                .unwrap();
            true
        }
        Err(e) => {
            let code = e.as_database_error().and_then(|d| d.code());
            assert_eq!(code.as_deref(), Some("5"), "not SQLITE_BUSY: {e}");
            false
        }
    }
}

mod reads_go_on_beside_an_open_write_transaction {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        let t = migrated("sqlite_pool_reads").await;
        let ctx = testkit::user_context("plugin:langbot/local-agent/default", "c-1", "u-1");
        let store = StateStore::new(&t.db);
        store
            .set(&ctx, Scope::Actor, "k", &json!("before"))
            .await
            .unwrap();

        let txn = begin_writing(&t.db, None).await.unwrap();
        StateStore::new(&txn)
            .set(&ctx, Scope::Actor, "k", &json!("after"))
            .await
            .unwrap();
        // The transaction holds one of the pool's connections; a read goes on
        // the other and sees what is committed.
        assert_eq!(
            store.get(&ctx, Scope::Actor, "k").await.unwrap(),
            Some(json!("before"))
        );
        txn.commit().await.unwrap();
        assert_eq!(
            store.get(&ctx, Scope::Actor, "k").await.unwrap(),
            Some(json!("after"))
        );
    }
}

mod a_write_transaction_holds_the_write_lock_from_its_begin {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        let t = migrated("sqlite_pool_lock").await;
        let mut other = impatient(&t).await;
        let read = || {
            sea_orm::Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                "SELECT COUNT(*) FROM agent_runner_state",
            )
        };

        // A plain (deferred) transaction that has only read holds no write
        // lock: another connection may write, and then its own first write
        // would fail.
        let deferred = t.db.begin().await.unwrap();
        deferred.query_one_raw(read()).await.unwrap();
        assert!(write_lock_is_free(&mut other).await);
        deferred.rollback().await.unwrap();

        // `begin_writing` takes it at once: nobody writes in between.
        let txn = begin_writing(&t.db, None).await.unwrap();
        txn.query_one_raw(read()).await.unwrap();
        assert!(!write_lock_is_free(&mut other).await);
        txn.commit().await.unwrap();
        assert!(write_lock_is_free(&mut other).await);
    }
}

/// The pragmas a pool's connections run with.
async fn pragmas(db: &sea_orm::DatabaseConnection, names: &[&str]) -> Vec<String> {
    let mut values = Vec::new();
    for name in names {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("PRAGMA {name}"),
            ))
            .await
            .unwrap()
            .unwrap();
        // Numbers for most pragmas, text for `journal_mode`.
        let value = row
            .try_get_by_index::<i64>(0)
            .map(|n| n.to_string())
            .or_else(|_| row.try_get_by_index::<String>(0))
            .unwrap();
        values.push(value);
    }
    values
}

/// A batch job's pool adds its cache settings to the shared ones rather
/// than replacing them (SeaORM keeps one SQLite option mapper: a second
/// one replaces the first).
mod every_pool_keeps_the_shared_sqlite_settings {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        let t = migrated("sqlite_pool_pragmas").await;
        let shared = [
            "journal_mode",
            "synchronous",
            "busy_timeout",
            "foreign_keys",
        ];
        let expected = ["wal", "1", "30000", "1"];

        let service =
            sea_orm::Database::connect(service::connection::connect_options(&t.url).unwrap())
                .await
                .unwrap();
        assert_eq!(pragmas(&service, &shared).await, expected);
        service.close().await.unwrap();

        let batch =
            sea_orm::Database::connect(service::connection::batch_connect_options(&t.url).unwrap())
                .await
                .unwrap();
        assert_eq!(pragmas(&batch, &shared).await, expected);
        assert_eq!(
            pragmas(&batch, &["cache_size", "temp_store"]).await,
            ["-16384", "2"]
        );
        batch.close().await.unwrap();
    }
}
