use migration::{Migrator, MigratorTrait};
use serde_json::json;
use service::{Scope, StatePolicy};
use std::time::Instant;

#[tokio::main]
async fn main() {
    let t = testkit::TestDb::create(testkit::Backend::Sqlite, "lst", None).await;
    Migrator::up(&t.db, None).await.unwrap();
    let conn = service::connection::StoreConnection::open(&t.url)
        .await
        .unwrap();
    let store = conn.store();
    let ctx = testkit::user_context("plugin:langbot/local-agent/default", "c", "u");
    for k in 0..300 {
        store
            .set(
                &ctx,
                Scope::Actor,
                &format!("ns{}.{:03}", k % 3, k / 3),
                &json!({"i": k, "note": "conversation memo ".repeat(4)}),
            )
            .await
            .unwrap();
    }
    for k in 0..20 {
        store.set(&ctx, Scope::Conversation, &format!("k{k}"), &json!({"i": k, "gen": 0, "note": "conversation memo ".repeat(4), "tags": ["a","b","c"]})).await.unwrap();
    }
    let policy = StatePolicy::all_scopes();
    for round in 0..3 {
        let n = 50_000;
        let start = Instant::now();
        for i in 0..n {
            std::hint::black_box(
                store
                    .list(&ctx, Scope::Actor, Some(&format!("ns{}.", i % 3)), None)
                    .await
                    .unwrap(),
            );
        }
        let l = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(store.snapshot(&ctx, &policy).await.unwrap());
        }
        let s = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        let start = Instant::now();
        for i in 0..n {
            std::hint::black_box(
                store
                    .get(&ctx, Scope::Actor, &format!("ns{}.{:03}", i % 3, i % 100))
                    .await
                    .unwrap(),
            );
        }
        let g = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        eprintln!("round {round}: list {l:.1} µs, snapshot {s:.1} µs, get {g:.2} µs");
    }
}
