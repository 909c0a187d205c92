//! `StoreConnection`: one call from a URL to a pool and a store set up as
//! the URL says. (Its SQLite side, the inline connections, is in
//! `tests/inline_sqlite.rs`.)

use serde_json::json;
use service::Scope;
use service::connection::{ConnectError, Pooler, StoreConnection};
use testkit::{Backend, TestDb, Topology};

const RUNNER: &str = "plugin:langbot/local-agent/default";

mod a_refusing_server_says_why {
    use super::*;

    /// A TLS-only server reached without TLS: the pool only times out or
    /// fails, and `open` says what `probe` finds, TLS required.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_tls() {
        let url = testkit::tls_only_postgres_in_plain_text();
        let err = StoreConnection::open(&url).await.unwrap_err();
        assert!(matches!(err, ConnectError::TlsRequired(_)), "{err:?}");
    }
}

mod the_pooler_comes_from_the_url {
    use super::*;

    /// Through PgBouncer: `pooler=transaction` sets the store's simple
    /// protocol, and the store works there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_pgbouncer() {
        let t = TestDb::on(
            Backend::Postgres,
            Topology::Pooler,
            "store_connection_pooler",
        )
        .await
        .expect("left out by TEST_BACKENDS but not filtered out");
        migration::Migrator::up(&t.db, None).await.unwrap();
        let conn = StoreConnection::open(&t.url).await.unwrap();
        assert_eq!(conn.pooler(), Pooler::Transaction);
        assert!(conn.inline_sqlite().is_none());
        let ctx = testkit::user_context(RUNNER, "c-1", "u-1");
        conn.store()
            .set(&ctx, Scope::Actor, "k", &json!({"through": "pgbouncer"}))
            .await
            .unwrap();
        assert_eq!(
            t.store().get(&ctx, Scope::Actor, "k").await.unwrap(),
            Some(json!({"through": "pgbouncer"}))
        );
        conn.close().await.unwrap();
    }

    use migration::MigratorTrait;
}
