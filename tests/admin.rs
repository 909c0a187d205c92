//! `state-admin` on a seeded database, on every backend: rows written by the
//! store and rows inserted as LangBot writes them are treated alike.

use std::process::{Command, Output};

use migration::{Migrator, MigratorTrait};
use serde_json::{Value, json};
use service::{Scope, StateContext, StateStore};
use testkit::{TestDb, admin_bin, on_every_topology};

const RUNNER: &str = "plugin:langbot/local-agent/default";
const OTHER_RUNNER: &str = "plugin:langbot/dify-agent/default";

fn admin(url: &str, args: &[&str]) -> Output {
    Command::new(admin_bin())
        .args([&["-u", url], args].concat())
        .env_remove("DATABASE_URL")
        .output()
        .expect("run state-admin")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "state-admin failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ctx(runner: &str, conversation: &str, actor: &str) -> StateContext {
    testkit::user_context(runner, conversation, actor)
}

/// Bob, bob and "Bob " in their own conversations, another runner, and one
/// row as LangBot's Python writes it.
async fn seed(t: &TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    let store = StateStore::new(&t.db);
    for (runner, conversation, actor) in [
        (RUNNER, "c-bob", "Bob"),
        (RUNNER, "c-lower", "bob"),
        (RUNNER, "c-space", "Bob "),
        (OTHER_RUNNER, "c-bob", "Bob"),
    ] {
        let c = ctx(runner, conversation, actor);
        store
            .set(
                &c,
                Scope::Conversation,
                "memory.summary",
                &json!({"by": actor}),
            )
            .await
            .unwrap();
        store
            .set(&c, Scope::Actor, "prefs", &json!([actor]))
            .await
            .unwrap();
    }
    let c = ctx(RUNNER, "c-py", "Bob");
    t.exec(&format!(
        "INSERT INTO agent_runner_state (runner_id, binding_identity, scope, scope_key, state_key, \
         value_json, bot_id, conversation_id, actor_type, actor_id, created_at, updated_at) VALUES \
         ('{RUNNER}', 'pipeline-1', 'conversation', '{}', 'memory.python', '{PYTHON_TEXT}', \
         'bot-1', 'c-py', 'user', 'Bob', '2025-01-01 00:00:00', '2025-01-01 00:00:00')",
        c.scope_key(Scope::Conversation).unwrap()
    ))
    .await;
}

async fn count(t: &TestDb) -> usize {
    t.rows_as_text("SELECT id FROM agent_runner_state")
        .await
        .len()
}

fn export(url: &str, filters: &[&str]) -> Vec<Value> {
    ok(admin(url, &[&["export"], filters].concat()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn stats_list_and_export(t: TestDb) {
    seed(&t).await;
    let stats: Value = serde_json::from_str(&ok(admin(&t.url, &["stats", "--json"]))).unwrap();
    let by_runner = stats["by_runner_id"].as_array().unwrap();
    assert_eq!(by_runner.len(), 2);
    assert_eq!(by_runner[0]["runner_id"], OTHER_RUNNER);
    assert_eq!(by_runner[0]["rows"], 2);
    assert_eq!(by_runner[1]["rows"], 7);
    let by_scope = stats["by_scope"].as_array().unwrap();
    assert_eq!(by_scope[0]["scope"], "actor");
    assert_eq!(by_scope[0]["rows"], 4);
    assert!(by_scope[1]["value_bytes"].as_i64().unwrap() > 0);

    let all = export(&t.url, &[]);
    assert_eq!(all.len(), 9);
    let python = all
        .iter()
        .find(|r| r["state_key"] == "memory.python")
        .unwrap();
    // The stored text, unchanged, beside the value read exactly.
    assert_eq!(python["value_json"], PYTHON_TEXT);
    assert_eq!(python["value"]["n"], json!(1));
    assert_eq!(
        python["value"]["f"].as_f64().unwrap().to_bits(),
        0.9999999999999999f64.to_bits()
    );
    assert_eq!(python["value"]["e"].as_f64(), Some(1e-07));
    assert!(python.get("value_error").is_none());

    let bobs = export(&t.url, &["--actor-id", "Bob", "--runner", RUNNER]);
    assert_eq!(bobs.len(), 3, "{bobs:?}");
    assert!(bobs.iter().all(|r| r["actor_id"] == "Bob"));
    let scoped = export(
        &t.url,
        &["--conversation", "c-bob", "--scope", "conversation"],
    );
    assert_eq!(scoped.len(), 2);
    let prefixed = export(&t.url, &["--key-prefix", "memory."]);
    assert_eq!(prefixed.len(), 5);

    let listed = ok(admin(&t.url, &["list", "--bot", "bot-1"]));
    assert_eq!(listed.lines().count(), 1 + 9, "{listed}");

    // A value Python wrote that JSON cannot hold: exported as stored, with
    // the reason it has no decoded value.
    t.exec(&format!(
        "INSERT INTO agent_runner_state (runner_id, binding_identity, scope, scope_key, state_key, \
         value_json, created_at, updated_at) VALUES ('{RUNNER}', 'pipeline-1', 'runner', 'runner:v2:nan', \
         'nan.row', '[NaN, 1e-07]', '2025-01-01 00:00:00', '2025-01-01 00:00:00')"
    ))
    .await;
    let nan = export(&t.url, &["--key-prefix", "nan."]);
    assert_eq!(nan.len(), 1);
    assert_eq!(nan[0]["value_json"], "[NaN, 1e-07]");
    assert_eq!(nan[0]["value"], Value::Null);
    assert!(
        nan[0]["value_error"].as_str().unwrap().contains("NaN"),
        "{}",
        nan[0]
    );
}

/// A value as LangBot's Python writes it: `", "` separators, floats in
/// Python's repr, one that a lenient parser reads one step off.
const PYTHON_TEXT: &str = r#"{"from": "python", "n": 1, "f": 0.9999999999999999, "e": 1e-07}"#;

async fn get_by_key_and_by_identity(t: TestDb) {
    seed(&t).await;
    let c = ctx(RUNNER, "c-bob", "Bob");
    let by_key = ok(admin(
        &t.url,
        &[
            "get",
            "--scope-key",
            c.scope_key(Scope::Actor).unwrap(),
            "--key",
            "prefs",
        ],
    ));
    assert_eq!(by_key.trim(), r#"["Bob"]"#);
    let by_identity = ok(admin(
        &t.url,
        &[
            "get",
            "--scope",
            "conversation",
            "--key",
            "memory.summary",
            "--runner",
            RUNNER,
            "--binding-id",
            "pipeline-1",
            "--bot",
            "bot-1",
            "--conversation",
            "c-bob",
        ],
    ));
    assert_eq!(by_identity.trim(), r#"{"by":"Bob"}"#);
    let missing = admin(
        &t.url,
        &["get", "--scope-key", "runner:v2:none", "--key", "k"],
    );
    assert_eq!(missing.status.code(), Some(1));
}

async fn purge_is_exact_and_dry_by_default(t: TestDb) {
    seed(&t).await;
    let before = count(&t).await;
    let dry = ok(admin(&t.url, &["purge", "--actor-id", "Bob"]));
    assert!(dry.contains("would delete 5 row(s)"), "{dry}");
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(count(&t).await, before, "a dry run deleted rows");

    let done = ok(admin(&t.url, &["purge", "--actor-id", "Bob", "--yes"]));
    assert!(done.contains("deleted 5 row(s)"), "{done}");
    let left = export(&t.url, &[]);
    assert_eq!(left.len(), before - 5);
    let actors: Vec<&str> = left
        .iter()
        .map(|r| r["actor_id"].as_str().unwrap())
        .collect();
    assert!(
        actors.iter().all(|a| *a == "bob" || *a == "Bob "),
        "{actors:?}"
    );

    // A conversation's memory.
    let done = ok(admin(
        &t.url,
        &[
            "purge",
            "--conversation",
            "c-lower",
            "--scope",
            "conversation",
            "--yes",
        ],
    ));
    assert!(done.contains("deleted 1 row(s)"), "{done}");
    assert_eq!(count(&t).await, before - 6);

    // A purge needs a subject.
    let refused = admin(&t.url, &["purge", "--scope", "actor", "--yes"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(count(&t).await, before - 6);
}

async fn hostile_filters_are_data(t: TestDb) {
    seed(&t).await;
    let before = count(&t).await;
    for hostile in [
        "x' OR '1'='1",
        "Bob'; DELETE FROM agent_runner_state; --",
        "%",
        "\\",
    ] {
        let out = ok(admin(&t.url, &["purge", "--actor-id", hostile, "--yes"]));
        assert!(out.contains("deleted 0 row(s)"), "{hostile}: {out}");
        assert!(export(&t.url, &["--key-prefix", hostile]).is_empty());
    }
    assert!(export(&t.url, &["--key-prefix", "%"]).is_empty());
    assert_eq!(count(&t).await, before);
}

/// The library under the binary: typed results and errors. Behind a
/// transaction pooler it runs, as the binary does, in a `PooledSession`.
async fn the_library_answers_in_types(t: TestDb) {
    use service::connection::{DbUrl, PooledSession, Pooler};
    seed(&t).await;
    if DbUrl::parse(&t.url).unwrap().pooler() == Pooler::Transaction {
        let session = PooledSession::begin(&t.app_db).await.unwrap();
        library_checks(session.work()).await;
        session.commit().await.unwrap();
    } else {
        library_checks(&t.app_db).await;
    }
    assert_eq!(count(&t).await, 7, "the purge is not visible afterwards");
}

async fn library_checks<C: sea_orm::ConnectionTrait + sea_orm::TransactionTrait>(db: &C) {
    use service::admin::{AdminError, Filter, PurgeGroup};
    let stats = service::admin::stats(db).await.unwrap();
    let runners: Vec<(&str, i64)> = stats
        .by_runner_id
        .iter()
        .map(|g| (g.name.as_str(), g.rows))
        .collect();
    assert_eq!(runners, [(OTHER_RUNNER, 2), (RUNNER, 7)]);
    assert!(stats.by_scope.iter().all(|g| g.value_bytes > 0));

    let unfiltered = Filter {
        scope: Some(Scope::Actor),
        ..Filter::default()
    };
    assert!(matches!(
        service::admin::purge(db, &unfiltered, true).await,
        Err(AdminError::PurgeUnfiltered)
    ));
    let bob = Filter {
        actor_id: Some("Bob".into()),
        runner: Some(OTHER_RUNNER.into()),
        ..Filter::default()
    };
    let dry = service::admin::purge(db, &bob, false).await.unwrap();
    let expected = ["actor", "conversation"].map(|scope| PurgeGroup {
        runner_id: OTHER_RUNNER.into(),
        scope: scope.into(),
        rows: 1,
    });
    assert_eq!(
        (dry.groups.as_slice(), dry.total, dry.deleted),
        (&expected[..], 2, false)
    );
    let mut ids = Vec::new();
    let seen = service::admin::for_each_row(db, &bob, |row| {
        ids.push(row.id);
        Ok::<_, sea_orm::DbErr>(())
    })
    .await
    .unwrap();
    assert_eq!((seen, ids.is_sorted()), (2, true));
    let done = service::admin::purge(db, &bob, true).await.unwrap();
    assert_eq!((done.total, done.deleted), (2, true));
}

#[test]
fn scope_key_matches_the_identity_functions() {
    let out = ok(Command::new(admin_bin())
        .args([
            "scope-key",
            "--runner",
            RUNNER,
            "--binding-id",
            "pipeline-1",
            "--bot",
            "bot-1",
            "--conversation",
            "c-bob",
            "--actor-type",
            "user",
            "--actor-id",
            "Bob",
        ])
        .output()
        .unwrap());
    let c = ctx(RUNNER, "c-bob", "Bob");
    let expected = format!(
        "binding_identity\tpipeline-1\nconversation\t{}\nactor\t{}\nsubject\t(no identity for this scope)\nrunner\t{}\n",
        c.scope_key(Scope::Conversation).unwrap(),
        c.scope_key(Scope::Actor).unwrap(),
        c.scope_key(Scope::Runner).unwrap()
    );
    assert_eq!(out, expected);
}

on_every_topology!(
    stats_list_and_export,
    get_by_key_and_by_identity,
    purge_is_exact_and_dry_by_default,
    hostile_filters_are_data,
    the_library_answers_in_types,
);
