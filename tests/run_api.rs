//! The run-scoped State API: the seven ordered checks, run isolation, session
//! expiry, and the happy path on every backend.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use serde_json::json;
use service::run::{RunRegistry, RunSession, RunStateError, StateCall};
use service::store::StateContext;
use service::{Actor, Binding, Event, IdentityColumns, Scope, StatePolicy};
use testkit::{Backend, TestDb, on_every_store_topology, with_snapshots};

const RUNNER: &str = "plugin:langbot/local-agent/default";
const PLUGIN: &str = "langbot/local-agent";

fn event(conversation: &str) -> Event {
    Event {
        bot_id: Some("bot-1".into()),
        conversation_id: Some(conversation.into()),
        actor: Some(Actor {
            actor_type: None,
            actor_id: Some("u-1".into()),
        }),
        ..Event::default()
    }
}

fn session(run_id: &str, event: &Event) -> RunSession {
    let binding = Binding {
        binding_id: Some("pipeline-1".into()),
        ..Binding::default()
    };
    RunSession {
        run_id: run_id.into(),
        runner_id: RUNNER.into(),
        plugin_identity: Some(PLUGIN.into()),
        apis: BTreeMap::from([("state".to_owned(), true)]),
        policy: StatePolicy::default(),
        context: StateContext::new(IdentityColumns::from_event(RUNNER, &binding, event)),
    }
}

fn call<'a>(run_id: &'a str, scope: &'a str, key: &'a str) -> StateCall<'a> {
    StateCall {
        run_id: Some(run_id),
        scope: Some(scope),
        key: Some(key),
        caller_plugin_identity: Some(PLUGIN),
    }
}

async fn sqlite() -> TestDb {
    let t = TestDb::new(Backend::Sqlite, "run_api")
        .await
        .expect("sqlite");
    Migrator::up(&t.db, None).await.unwrap();
    t
}

/// Each check's message, and requests failing two checks reporting the
/// earlier one: the order is part of the contract.
#[tokio::test]
async fn checks_run_in_order_with_their_messages() {
    let t = sqlite().await;
    let db = t.store();
    let registry = RunRegistry::default();
    registry.register(session("run-1", &event("c-1")));
    let mut no_state = session("no-state", &event("c-1"));
    no_state.apis.insert("state".into(), false);
    no_state.policy.enable_state = false;
    registry.register(no_state);
    let mut disabled = session("disabled", &event("c-1"));
    disabled.policy.enable_state = false;
    disabled.policy.state_scopes = vec![];
    registry.register(disabled);
    let mut no_actor = session(
        "no-actor",
        &Event {
            actor: None,
            ..event("c-1")
        },
    );
    no_actor.policy.state_scopes = vec![Scope::Actor];
    registry.register(no_actor);
    let mut anonymous = session("anonymous", &event("c-1"));
    anonymous.plugin_identity = None;
    registry.register(anonymous);

    let cases: Vec<(&str, StateCall<'_>)> = vec![
        (
            "no run_id, unknown scope",
            StateCall {
                run_id: None,
                ..call("", "bogus", "k")
            },
        ),
        ("empty run_id", call("", "actor", "k")),
        (
            "no scope, unknown run",
            StateCall {
                scope: None,
                ..call("nope", "", "k")
            },
        ),
        (
            "no key, unknown run",
            StateCall {
                key: None,
                ..call("nope", "actor", "")
            },
        ),
        (
            "unknown run, no caller",
            StateCall {
                caller_plugin_identity: None,
                ..call("nope", "actor", "k")
            },
        ),
        (
            "no caller, no state api",
            StateCall {
                caller_plugin_identity: None,
                ..call("no-state", "actor", "k")
            },
        ),
        (
            "other plugin, no state api",
            StateCall {
                caller_plugin_identity: Some("evil/plugin"),
                ..call("no-state", "actor", "k")
            },
        ),
        (
            "no state api, state disabled",
            call("no-state", "actor", "k"),
        ),
        (
            "state disabled, scope not enabled",
            call("disabled", "subject", "k"),
        ),
        (
            "scope not enabled, no key",
            call("no-actor", "subject", "k"),
        ),
        ("not a scope", call("run-1", "Actor", "k")),
        ("no scope key", call("no-actor", "actor", "k")),
        (
            "anonymous session, any caller",
            StateCall {
                caller_plugin_identity: Some("someone/else"),
                ..call("anonymous", "subject", "k")
            },
        ),
    ];
    let mut transcript = String::new();
    for (what, c) in cases {
        let err = registry.get(db, c).await.unwrap_err();
        assert!(
            !matches!(err, RunStateError::State(_)),
            "{what}: reached the store"
        );
        writeln!(transcript, "{what} => {err}").unwrap();
    }
    for (op, err) in [
        (
            "set",
            registry
                .set(db, call("no-state", "actor", "k"), &json!(1))
                .await
                .unwrap_err(),
        ),
        (
            "delete",
            registry
                .delete(db, call("no-state", "actor", "k"))
                .await
                .unwrap_err(),
        ),
        (
            "list",
            registry
                .list(
                    db,
                    StateCall {
                        key: None,
                        ..call("no-state", "actor", "")
                    },
                    None,
                    None,
                )
                .await
                .unwrap_err(),
        ),
    ] {
        writeln!(transcript, "{op} without state api => {err}").unwrap();
    }
    // `list` needs no key.
    let page = registry
        .list(
            db,
            StateCall {
                key: None,
                ..call("run-1", "actor", "")
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert!(page.keys.is_empty());
    with_snapshots(|| insta::assert_snapshot!("run_api_check_order", transcript));
}

/// Two runs of the same runner and plugin never see each other's keys; a
/// plugin with another identity, or none, is refused.
#[tokio::test]
async fn runs_are_isolated() {
    let t = sqlite().await;
    let db = t.store();
    let registry = RunRegistry::default();
    registry.register(session("run-a", &event("conv-a")));
    registry.register(session("run-b", &event("conv-b")));

    registry
        .set(db, call("run-a", "conversation", "memo"), &json!("a's"))
        .await
        .unwrap();
    assert_eq!(
        registry
            .get(db, call("run-b", "conversation", "memo"))
            .await
            .unwrap(),
        None
    );
    let page = registry
        .list(
            db,
            StateCall {
                key: None,
                ..call("run-b", "conversation", "")
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert!(page.keys.is_empty());
    assert!(
        !registry
            .delete(db, call("run-b", "conversation", "memo"))
            .await
            .unwrap()
    );
    assert_eq!(
        registry
            .get(db, call("run-a", "conversation", "memo"))
            .await
            .unwrap(),
        Some(json!("a's"))
    );
    // The actor scope is the same actor in both runs: shared by design.
    registry
        .set(db, call("run-a", "actor", "pref"), &json!(1))
        .await
        .unwrap();
    assert_eq!(
        registry
            .get(db, call("run-b", "actor", "pref"))
            .await
            .unwrap(),
        Some(json!(1))
    );

    for caller in [Some("langbot/other-agent"), None, Some("")] {
        let err = registry
            .get(
                db,
                StateCall {
                    caller_plugin_identity: caller,
                    ..call("run-a", "conversation", "memo")
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RunStateError::PluginIdentityMismatch(_) | RunStateError::CallerIdentityRequired(_)
            ),
            "{caller:?}: {err}"
        );
    }
}

#[tokio::test]
async fn ended_and_expired_sessions_are_gone() {
    let t = sqlite().await;
    // Live within its TTL (30 minutes: no machine is that slow), gone past
    // it (a zero TTL: at once). No timer stands in for either.
    let registry = RunRegistry::default();
    registry.register(session("ends", &event("c")));
    registry.register(session("expires", &event("c")));
    assert_eq!(registry.len(), 2);
    assert!(registry.end("ends"));
    assert!(!registry.end("ends"));
    let err = registry
        .get(t.store(), call("ends", "actor", "k"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Run session ends not found or expired");
    assert!(
        registry
            .get(t.store(), call("expires", "actor", "k"))
            .await
            .is_ok()
    );
    let registry = RunRegistry::new(Duration::ZERO);
    registry.register(session("expires", &event("c")));
    let err = registry
        .get(t.store(), call("expires", "actor", "k"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Run session expires not found or expired");
    assert!(registry.is_empty());
}

#[test]
fn registry_is_safe_under_concurrent_runs() {
    let registry = Arc::new(RunRegistry::default());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let registry = registry.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let run_id = format!("run-{t}-{i}");
                    registry.register(session(&run_id, &event("c")));
                    assert!(registry.session(&run_id).is_some());
                    if i % 2 == 0 {
                        assert!(registry.end(&run_id));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(registry.len(), 8 * 250);
}

/// Set, get, list and delete through the run API land in the run's rows.
async fn happy_path(t: TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    let registry = RunRegistry::default();
    let s = session("run-1", &event("conv-1"));
    let context = s.context.clone();
    registry.register(s);
    let db = t.store();
    registry
        .set(db, call("run-1", "conversation", "a.1"), &json!({"n": 1}))
        .await
        .unwrap();
    registry
        .set(db, call("run-1", "conversation", "a.2"), &json!([2]))
        .await
        .unwrap();
    registry
        .set(db, call("run-1", "actor", "a.1"), &json!("actor"))
        .await
        .unwrap();
    assert_eq!(
        registry
            .get(db, call("run-1", "conversation", "a.1"))
            .await
            .unwrap(),
        Some(json!({"n": 1}))
    );
    let page = registry
        .list(
            db,
            StateCall {
                key: None,
                ..call("run-1", "conversation", "")
            },
            Some("a."),
            None,
        )
        .await
        .unwrap();
    assert_eq!(page.keys, ["a.1", "a.2"]);
    assert!(
        registry
            .delete(db, call("run-1", "conversation", "a.2"))
            .await
            .unwrap()
    );

    // The rows are the run's own, under its scope keys.
    let store = db;
    assert_eq!(
        store
            .get(&context, Scope::Conversation, "a.2")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.get(&context, Scope::Actor, "a.1").await.unwrap(),
        Some(json!("actor"))
    );
    let rows = t
        .rows_as_text(
            "SELECT scope, scope_key, state_key FROM agent_runner_state ORDER BY scope, state_key",
        )
        .await;
    let expected: Vec<Vec<Option<String>>> = vec![
        vec![
            Some("actor".into()),
            context.scope_key(Scope::Actor).map(Into::into),
            Some("a.1".into()),
        ],
        vec![
            Some("conversation".into()),
            context.scope_key(Scope::Conversation).map(Into::into),
            Some("a.1".into()),
        ],
    ];
    assert_eq!(rows, expected);
}

on_every_store_topology!(happy_path);
