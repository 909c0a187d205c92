//! The state store's conformance suite (SPEC section 5), each scenario run
//! on SQLite, PostgreSQL and MariaDB. Results that must agree across
//! backends share one snapshot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use migration::{Migrator, MigratorTrait};
use sea_orm::TransactionTrait;
use serde_json::{Value, json};
use service::store::{MAX_VALUE_BYTES, StateContext, StateStore};
use service::{Actor, Binding, Event, IdentityColumns, Scope, StateError, StatePolicy, Subject};
use testkit::{TestDb, on_every_store_topology, with_snapshots};

const RUNNER: &str = "plugin:test/runner/default";

fn event() -> Event {
    Event {
        bot_id: Some("bot-1".into()),
        workspace_id: Some("ws-1".into()),
        conversation_id: Some("conv-1".into()),
        thread_id: None,
        actor: Some(Actor {
            actor_type: Some("user".into()),
            actor_id: Some("Bob".into()),
        }),
        subject: Some(Subject {
            subject_type: Some("doc".into()),
            subject_id: Some("d-1".into()),
        }),
    }
}

fn binding() -> Binding {
    Binding {
        binding_id: Some("binding-1".into()),
        ..Binding::default()
    }
}

fn ctx_for(event: &Event) -> StateContext {
    StateContext::new(IdentityColumns::from_event(RUNNER, &binding(), event))
}

fn ctx() -> StateContext {
    ctx_for(&event())
}

async fn migrated(t: &TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
}

async fn row_count(t: &TestDb) -> usize {
    t.rows_as_text("SELECT id FROM agent_runner_state")
        .await
        .len()
}

fn shared_snapshot(name: &str, value: String) {
    with_snapshots(|| insta::assert_snapshot!(name, value));
}

/// Keys that differ in case, trailing space or normalisation are distinct;
/// lists sort by code point; prefixes are literal. One transcript, shared by
/// all backends.
async fn uniform_semantics(t: TestDb) {
    migrated(&t).await;
    let store = t.store();
    let c = ctx();
    let keys = [
        "key", "Key", "key ", "é", "e\u{301}", "b", "ä", "_", "a", "z", "B", "A", "a%b", "a_b",
        "a\\b", "axb", "a%",
    ];
    for (i, key) in keys.iter().enumerate() {
        store.set(&c, Scope::Actor, key, &json!(i)).await.unwrap();
    }
    let mut transcript = String::new();
    for (i, key) in keys.iter().enumerate() {
        let got = store.get(&c, Scope::Actor, key).await.unwrap();
        assert_eq!(got, Some(json!(i)), "key {key:?} read another key's value");
        writeln!(transcript, "get {key:?} => {}", got.unwrap()).unwrap();
    }
    let all = store.list(&c, Scope::Actor, None, None).await.unwrap();
    assert_eq!(all.keys.len(), keys.len());
    let mut sorted: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    sorted.sort(); // Rust orders strings by code point.
    assert_eq!(all.keys, sorted);
    writeln!(transcript, "list => {:?}", all.keys).unwrap();
    for prefix in ["a%", "a_", "a\\", "k", "key", "e", "A", "%", "_"] {
        let page = store
            .list(&c, Scope::Actor, Some(prefix), None)
            .await
            .unwrap();
        let expected: Vec<&String> = sorted.iter().filter(|k| k.starts_with(prefix)).collect();
        assert_eq!(
            page.keys.iter().collect::<Vec<_>>(),
            expected,
            "prefix {prefix:?}"
        );
        writeln!(transcript, "list prefix {prefix:?} => {:?}", page.keys).unwrap();
    }
    shared_snapshot("uniform_semantics", transcript);
}

async fn big_values_round_trip_byte_for_byte(t: TestDb) {
    migrated(&t).await;
    let store = t.store();
    let c = ctx();
    // Exactly 262,144 bytes serialised: mixed 1-, 2- and 4-byte characters.
    let unit = "aé🌍"; // 7 bytes
    let body = MAX_VALUE_BYTES - 2;
    let mut text = unit.repeat(body / unit.len());
    text.push_str(&"x".repeat(body - text.len()));
    let value = Value::String(text);
    assert_eq!(value.to_string().len(), MAX_VALUE_BYTES);
    store
        .set(&c, Scope::Conversation, "big", &value)
        .await
        .unwrap();
    assert_eq!(
        store.get(&c, Scope::Conversation, "big").await.unwrap(),
        Some(value.clone())
    );
    let stored = t
        .rows_as_text("SELECT value_json FROM agent_runner_state WHERE state_key = 'big'")
        .await;
    assert_eq!(stored[0][0].as_deref(), Some(value.to_string().as_str()));

    let over = Value::String(format!("{}y", value.as_str().unwrap()));
    let err = store
        .set(&c, Scope::Conversation, "over", &over)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "value is 262145 bytes as JSON, over the limit of 262144 bytes"
    );
    assert_eq!(row_count(&t).await, 1, "a refused value wrote a row");
}

/// Refusals happen before any SQL: this database has no table at all, so a
/// statement that ran would fail with a database error instead.
async fn invalid_text_is_refused_before_sql(t: TestDb) {
    let store = t.store();
    let c = ctx();
    let mut transcript = String::new();
    let mut record = |what: &str, r: Result<(), StateError>| {
        let err = r.expect_err(what);
        assert!(!matches!(err, StateError::Db(_)), "{what}: SQL ran: {err}");
        writeln!(transcript, "{what} => {err}").unwrap();
    };
    record(
        "state_key of 256 chars",
        store
            .set(&c, Scope::Actor, &"k".repeat(256), &json!(1))
            .await,
    );
    record(
        "state_key with NUL",
        store.set(&c, Scope::Actor, "a\0", &json!(1)).await,
    );
    let mut long_type = event();
    long_type.actor.as_mut().unwrap().actor_type = Some("t".repeat(51));
    record(
        "actor_type of 51 chars",
        store
            .set(&ctx_for(&long_type), Scope::Actor, "k", &json!(1))
            .await,
    );
    let mut nul_bot = event();
    nul_bot.bot_id = Some("bot\0".into());
    record(
        "bot_id with NUL",
        store
            .set(&ctx_for(&nul_bot), Scope::Runner, "k", &json!(1))
            .await,
    );
    let mut long_runner = IdentityColumns::from_event(RUNNER, &binding(), &event());
    long_runner.runner_id = "r".repeat(256);
    record(
        "runner_id of 256 chars",
        store
            .set(
                &StateContext::new(long_runner),
                Scope::Runner,
                "k",
                &json!(1),
            )
            .await,
    );
    record(
        "value over 256 KiB",
        store
            .set(&c, Scope::Actor, "k", &json!("x".repeat(MAX_VALUE_BYTES)))
            .await,
    );
    record(
        "get with NUL key",
        store.get(&c, Scope::Actor, "\0").await.map(|_| ()),
    );
    record(
        "list with NUL prefix",
        store
            .list(&c, Scope::Actor, Some("\0"), None)
            .await
            .map(|_| ()),
    );
    shared_snapshot("invalid_text_refusals", transcript);
}

async fn hostile_keys_are_data(t: TestDb) {
    migrated(&t).await;
    let store = t.store();
    let c = ctx();
    let hostile = [
        "'; DROP TABLE agent_runner_state; --",
        "\" OR 1=1 --",
        "\\'",
        "\\",
        "Robert'); DELETE FROM agent_runner_state;--",
        "`backtick`",
        "$1",
        "?",
    ];
    for key in hostile {
        store
            .set(&c, Scope::Runner, key, &json!(key))
            .await
            .unwrap();
    }
    for key in hostile {
        assert_eq!(
            store.get(&c, Scope::Runner, key).await.unwrap(),
            Some(json!(key))
        );
        let page = store
            .list(&c, Scope::Runner, Some(key), None)
            .await
            .unwrap();
        assert_eq!(page.keys.first().map(String::as_str), Some(key));
    }
    assert_eq!(row_count(&t).await, hostile.len());
}

async fn apply_update_checks_in_order(t: TestDb) {
    migrated(&t).await;
    let store = t.store();
    let no_subject = ctx_for(&Event {
        subject: None,
        ..event()
    });
    let disabled = StatePolicy {
        enable_state: false,
        ..StatePolicy::all_scopes()
    };
    let default = StatePolicy::default();
    let all = StatePolicy::all_scopes();
    let big = json!("x".repeat(MAX_VALUE_BYTES));
    let cases: [(&str, &StateContext, &StatePolicy, &str, &str, &Value); 6] = [
        (
            "disabled, bad scope",
            &no_subject,
            &disabled,
            "bogus",
            "k",
            &big,
        ),
        (
            "bad scope, not enabled",
            &no_subject,
            &default,
            "Actor",
            "k",
            &big,
        ),
        (
            "not enabled, no identity",
            &no_subject,
            &default,
            "subject",
            "k",
            &big,
        ),
        (
            "no identity, bad value",
            &no_subject,
            &all,
            "subject",
            "k",
            &big,
        ),
        ("bad key and value", &no_subject, &all, "actor", "\0", &big),
        ("bad value", &no_subject, &all, "actor", "k", &big),
    ];
    let mut transcript = String::new();
    for (what, c, policy, scope, key, value) in cases {
        let err = store
            .apply_update(c, policy, scope, key, value)
            .await
            .unwrap_err();
        writeln!(transcript, "{what} => {err}").unwrap();
    }
    assert_eq!(row_count(&t).await, 0);
    store
        .apply_update(&no_subject, &default, "actor", "k", &json!({"ok": true}))
        .await
        .unwrap();
    assert_eq!(
        store.get(&no_subject, Scope::Actor, "k").await.unwrap(),
        Some(json!({"ok": true}))
    );
    shared_snapshot("apply_update_errors", transcript);
}

async fn snapshot_rules(t: TestDb) {
    migrated(&t).await;
    let store = t.store();
    let c = ctx();
    for scope in Scope::ALL {
        store
            .set(&c, scope, "k", &json!(scope.as_str()))
            .await
            .unwrap();
    }
    let mut transcript = String::new();
    let disabled = StatePolicy {
        enable_state: false,
        ..StatePolicy::all_scopes()
    };
    for (what, policy) in [
        ("disabled", disabled),
        ("default", StatePolicy::default()),
        ("all", StatePolicy::all_scopes()),
    ] {
        let snap = store.snapshot(&c, &policy).await.unwrap();
        assert_eq!(snap.len(), 4, "all four scopes are always present");
        writeln!(
            transcript,
            "{what} => {}",
            serde_json::to_string(&snap).unwrap()
        )
        .unwrap();
    }
    // Seeded, not persisted; a stored value wins.
    assert_eq!(
        store
            .get(&c, Scope::Conversation, "conversation_id")
            .await
            .unwrap(),
        None
    );
    store
        .set(&c, Scope::Conversation, "conversation_id", &json!("stored"))
        .await
        .unwrap();
    let snap = store.snapshot(&c, &StatePolicy::default()).await.unwrap();
    writeln!(
        transcript,
        "stored alias => {}",
        serde_json::to_string(&snap).unwrap()
    )
    .unwrap();
    // No identity: empty scopes, no seed.
    let bare = ctx_for(&Event {
        conversation_id: None,
        actor: None,
        ..event()
    });
    let snap = store
        .snapshot(&bare, &StatePolicy::all_scopes())
        .await
        .unwrap();
    writeln!(
        transcript,
        "no identity => {}",
        serde_json::to_string(&snap).unwrap()
    )
    .unwrap();
    shared_snapshot("snapshot_rules", transcript);
}

/// Rows as LangBot's Python writes them (`json.dumps(v, ensure_ascii=False)`,
/// with ", " and ": "), inserted by plain SQL.
async fn langbot_rows_read_back(t: TestDb) {
    migrated(&t).await;
    let c = ctx();
    let cols = c.columns();
    let key = c.scope_key(Scope::Conversation).unwrap();
    for (state_key, value) in [
        (
            "py",
            Some("{\"text\": \"héllo 🌍\", \"list\": [1, 2.5, null], \"nested\": {\"a\": true}}"),
        ),
        ("nan", Some("NaN")),
        ("broken", Some("{not json")),
        ("null", None),
    ] {
        let value = value.map_or("NULL".to_owned(), |v| format!("'{v}'"));
        t.exec(&format!(
            "INSERT INTO agent_runner_state (runner_id, binding_identity, scope, scope_key, state_key, \
             value_json, bot_id, workspace_id, conversation_id, created_at, updated_at) VALUES \
             ('{}', '{}', 'conversation', '{key}', '{state_key}', {value}, 'bot-1', 'ws-1', 'conv-1', \
             '2025-01-01 00:00:00.123456', '2025-01-01 00:00:00.123456')",
            cols.runner_id, cols.binding_identity
        ))
        .await;
    }
    let store = t.store();
    assert_eq!(
        store.get(&c, Scope::Conversation, "py").await.unwrap(),
        Some(json!({"text": "héllo 🌍", "list": [1, 2.5, null], "nested": {"a": true}}))
    );
    assert!(matches!(
        store.get(&c, Scope::Conversation, "broken").await,
        Err(StateError::UnreadableValue {
            source: service::value::ValueError::NotJson(_),
            ..
        })
    ));
    assert_eq!(
        store.get(&c, Scope::Conversation, "null").await.unwrap(),
        None
    );
    let page = store
        .list(&c, Scope::Conversation, None, None)
        .await
        .unwrap();
    assert_eq!(page.keys, ["broken", "nan", "null", "py"]);
    // NaN is what Python reads but a JSON value cannot hold: get and
    // snapshot say so, naming the key, rather than change or drop it.
    let err = store.get(&c, Scope::Conversation, "nan").await.unwrap_err();
    assert!(
        matches!(
            &err,
            StateError::UnreadableValue {
                state_key,
                source: service::value::ValueError::NonFiniteNumber { token: "NaN" },
                ..
            } if state_key == "nan"
        ),
        "{err:?}"
    );
    let err = store
        .snapshot(&c, &StatePolicy::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StateError::UnreadableValue { state_key, .. } if state_key == "nan"),
        "{err:?}"
    );
    store.delete(&c, Scope::Conversation, "nan").await.unwrap();
    // Text LangBot's reader rejects too, and a missing value, are skipped (and
    // logged), as LangBot's snapshot skips them.
    let snap = store.snapshot(&c, &StatePolicy::default()).await.unwrap();
    let conversation: Vec<&String> = snap[&Scope::Conversation].keys().collect();
    assert_eq!(conversation, ["external.conversation_id", "py"]);
    // A later set through the store keeps LangBot's row and its context.
    store
        .set(&c, Scope::Conversation, "py", &json!(2))
        .await
        .unwrap();
    assert_eq!(
        store.get(&c, Scope::Conversation, "py").await.unwrap(),
        Some(json!(2))
    );
    assert_eq!(row_count(&t).await, 3);
}

async fn concurrent_sets_never_fail(t: TestDb) {
    migrated(&t).await;
    let t = Arc::new(t);
    let c = Arc::new(ctx());
    let mut tasks = Vec::new();
    for task in 0..32 {
        let (t, c) = (t.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let store = t.store();
            let mut errors = Vec::new();
            for i in 0..200 {
                let key = format!("shared-{}", (task * 7 + i) % 50);
                if let Err(e) = store
                    .set(&c, Scope::Actor, &key, &json!({"task": task, "i": i}))
                    .await
                {
                    errors.push(e.to_string());
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.unwrap());
    }
    assert_eq!(errors, Vec::<String>::new(), "{} errors", errors.len());
    assert_eq!(row_count(&t).await, 50);
}

async fn overwrite_moves_only_value_and_updated_at(t: TestDb) {
    migrated(&t).await;
    let store = t.store();
    store
        .set(&ctx(), Scope::Conversation, "k", &json!(1))
        .await
        .unwrap();
    let select = "SELECT value_json, actor_id, created_at, updated_at FROM agent_runner_state";
    let first = t.rows_as_text(select).await;
    // MySQL DATETIME keeps whole seconds.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Same conversation key, another actor: the row's context stays.
    let other_actor = ctx_for(&Event {
        actor: Some(Actor {
            actor_type: None,
            actor_id: Some("alice".into()),
        }),
        ..event()
    });
    assert_eq!(
        other_actor.scope_key(Scope::Conversation),
        ctx().scope_key(Scope::Conversation)
    );
    store
        .set(&other_actor, Scope::Conversation, "k", &json!(2))
        .await
        .unwrap();
    let second = t.rows_as_text(select).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0][0].as_deref(), Some("2"));
    assert_eq!(
        second[0][1].as_deref(),
        Some("Bob"),
        "context columns changed"
    );
    assert_eq!(second[0][2], first[0][2], "created_at moved");
    assert!(second[0][3] > first[0][3], "updated_at did not move");
}

async fn delete_list_limits_and_alias(t: TestDb) {
    migrated(&t).await;
    let store = t.store();
    let c = ctx();
    for i in 0..150 {
        store
            .set(&c, Scope::Runner, &format!("k{i:03}"), &json!(i))
            .await
            .unwrap();
    }
    let mut results = BTreeMap::new();
    for limit in [None, Some(0), Some(-5), Some(10), Some(100), Some(500)] {
        let page = store.list(&c, Scope::Runner, None, limit).await.unwrap();
        results.insert(format!("{limit:?}"), (page.keys.len(), page.has_more));
    }
    assert_eq!(results["None"], (100, true));
    assert_eq!(results["Some(0)"], (100, true));
    assert_eq!(results["Some(-5)"], (100, true));
    assert_eq!(results["Some(10)"], (10, true));
    assert_eq!(results["Some(100)"], (100, true));
    assert_eq!(results["Some(500)"], (100, true));
    assert_eq!(
        results.len(),
        6,
        "a limit case was not checked: {results:?}"
    );
    let page = store
        .list(&c, Scope::Runner, Some("k1"), None)
        .await
        .unwrap();
    assert_eq!((page.keys.len(), page.has_more), (50, false));
    let page = store
        .list(&c, Scope::Runner, Some("k0"), None)
        .await
        .unwrap();
    assert_eq!((page.keys.len(), page.has_more), (100, false));

    assert!(store.delete(&c, Scope::Runner, "k000").await.unwrap());
    assert!(!store.delete(&c, Scope::Runner, "k000").await.unwrap());

    store
        .set(&c, Scope::Actor, "conversation_id", &json!("c"))
        .await
        .unwrap();
    assert_eq!(
        store
            .get(&c, Scope::Actor, "external.conversation_id")
            .await
            .unwrap(),
        Some(json!("c"))
    );
    let page = store
        .list(&c, Scope::Actor, Some("conversation_id"), None)
        .await
        .unwrap();
    assert_eq!(page.keys, ["external.conversation_id"]);
    assert!(
        store
            .delete(&c, Scope::Actor, "conversation_id")
            .await
            .unwrap()
    );
}

async fn works_inside_the_callers_transaction(t: TestDb) {
    migrated(&t).await;
    let c = ctx();
    // The store's own connections (inline SQLite, a server's) are not the
    // transaction's: given them, the store still writes in the transaction.
    let txn = t.db.begin().await.unwrap();
    StateStore::new(&txn)
        .inline_sqlite(t.inline.as_ref())
        .server_connections(t.server.as_ref())
        .set(&c, Scope::Actor, "k", &json!(1))
        .await
        .unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(t.store().get(&c, Scope::Actor, "k").await.unwrap(), None);

    let txn = t.db.begin().await.unwrap();
    StateStore::new(&txn)
        .set(&c, Scope::Actor, "k", &json!(2))
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(
        t.store().get(&c, Scope::Actor, "k").await.unwrap(),
        Some(json!(2))
    );
}

on_every_store_topology!(
    uniform_semantics,
    big_values_round_trip_byte_for_byte,
    invalid_text_is_refused_before_sql,
    hostile_keys_are_data,
    apply_update_checks_in_order,
    snapshot_rules,
    langbot_rows_read_back,
    concurrent_sets_never_fail,
    overwrite_moves_only_value_and_updated_at,
    delete_list_limits_and_alias,
    works_inside_the_callers_transaction,
);
