//! Run authorization decides as LangBot's handler does, on every branch:
//! a table of every check × operation × present/absent/empty inputs ×
//! sessions live, ended, expired and replaced, against an oracle written
//! from SPEC section 5 (and LangBot's `_validate_agent_run_session` and
//! `_resolve_state_scope`); the empty plugin identity rule on each of the
//! seven checks; and the state-access scenarios of LangBot's own unit tests
//! (`tests/unit_tests/agent/test_state_api_auth.py`), ported.

use std::collections::BTreeMap;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use serde_json::json;
use service::run::{RunRegistry, RunSession, RunStateError, StateCall};
use service::store::StateContext;
use service::{Actor, Binding, Event, IdentityColumns, Scope, StatePolicy};
use testkit::{Backend, TestDb};

const RUNNER: &str = "plugin:test/runner/default";
const OWNER: &str = "test/runner";
const OTHER: &str = "other/plugin";

async fn sqlite() -> TestDb {
    let t = TestDb::new(Backend::Sqlite, "run_authorization")
        .await
        .expect("sqlite");
    Migrator::up(&t.db, None).await.unwrap();
    t
}

/// An event with a conversation and an actor, and no subject: the subject
/// scope has no key.
fn context() -> StateContext {
    let binding = Binding {
        binding_id: Some("binding_1".into()),
        ..Binding::default()
    };
    let event = Event {
        bot_id: Some("bot-1".into()),
        conversation_id: Some("conv_123".into()),
        actor: Some(Actor {
            actor_type: None,
            actor_id: Some("u-1".into()),
        }),
        ..Event::default()
    };
    StateContext::new(IdentityColumns::from_event(RUNNER, &binding, &event))
}

/// What a session may vary in.
#[derive(Clone, Copy, Debug)]
struct Variant {
    identity: Option<&'static str>,
    /// `None`: no `state` entry in the APIs at all.
    state_api: Option<bool>,
    enable_state: bool,
}

fn session(run_id: &str, v: Variant) -> RunSession {
    RunSession {
        run_id: run_id.into(),
        runner_id: RUNNER.into(),
        plugin_identity: v.identity.map(str::to_owned),
        apis: v
            .state_api
            .map(|on| BTreeMap::from([("state".to_owned(), on)]))
            .unwrap_or_default(),
        // Conversation and actor have keys; subject is enabled without one;
        // runner is not enabled.
        policy: StatePolicy {
            enable_state: v.enable_state,
            state_scopes: vec![Scope::Conversation, Scope::Actor, Scope::Subject],
        },
        context: context(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Get,
    Set,
    Delete,
    List,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Set => "set",
            Self::Delete => "delete",
            Self::List => "list",
        }
    }
}

/// Where the call's run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Absent,
    Empty,
    NeverRegistered,
    Live,
    Ended,
    Expired,
    /// Registered once with other settings, then again with the variant:
    /// the second decides.
    Replaced,
}

/// The decision as SPEC section 5 states it, in check order: `Ok(())` or
/// the error message.
fn oracle(
    op: Op,
    run: Run,
    scope: Option<&str>,
    key: Option<&str>,
    caller: Option<&str>,
    v: Variant,
) -> Result<(), String> {
    let present = |s: Option<&str>| s.is_some_and(|s| !s.is_empty());
    let run_id = match run {
        Run::Absent | Run::Empty => return Err("run_id is required".into()),
        Run::NeverRegistered => "run-never",
        _ => "run-1",
    };
    // 1. run_id, scope, key (not for list) present.
    if !present(scope) {
        return Err("scope is required".into());
    }
    if op != Op::List && !present(key) {
        return Err("key is required".into());
    }
    // 2. a live session.
    if matches!(run, Run::NeverRegistered | Run::Ended | Run::Expired) {
        return Err(format!("Run session {run_id} not found or expired"));
    }
    // 3. the owner's identity, when the session has one (empty = none).
    if let Some(owner) = v.identity.filter(|s| !s.is_empty()) {
        match caller.filter(|s| !s.is_empty()) {
            None => {
                return Err(format!(
                    "caller_plugin_identity is required for run_id {run_id}"
                ));
            }
            Some(c) if c != owner => {
                return Err(format!("Plugin identity mismatch for run_id {run_id}"));
            }
            Some(_) => {}
        }
    }
    // 4. the state API granted.
    if v.state_api != Some(true) {
        return Err(format!("State {} access not authorized", op.name()));
    }
    // 5. state enabled.
    if !v.enable_state {
        return Err("State access is disabled by binding policy".into());
    }
    // 6. scope enabled (a name that is no scope is not enabled either).
    let scope = scope.unwrap_or_default();
    if !matches!(scope, "conversation" | "actor" | "subject") {
        return Err(format!(
            "Scope \"{scope}\" is not enabled by binding policy"
        ));
    }
    // 7. the run has a key for it.
    if scope == "subject" {
        return Err(format!("Scope key not available for scope \"{scope}\""));
    }
    Ok(())
}

async fn perform(
    registry: &RunRegistry,
    store: service::StateStore<'_, sea_orm::DatabaseConnection>,
    op: Op,
    call: StateCall<'_>,
) -> Result<(), RunStateError> {
    match op {
        Op::Get => registry.get(store, call).await.map(|_| ()),
        Op::Set => registry.set(store, call, &json!({"v": 1})).await,
        Op::Delete => registry.delete(store, call).await.map(|_| ()),
        Op::List => registry.list(store, call, None, None).await.map(|_| ()),
    }
}

/// Registries holding `run-1` in each state, for one session variant.
fn registries(v: Variant) -> BTreeMap<&'static str, RunRegistry> {
    let live = RunRegistry::default();
    live.register(session("run-1", v));
    let ended = RunRegistry::default();
    ended.register(session("run-1", v));
    assert!(ended.end("run-1"));
    // A zero time to live: registered, and gone at once.
    let expired = RunRegistry::new(Duration::ZERO);
    expired.register(session("run-1", v));
    let replaced = RunRegistry::default();
    replaced.register(session(
        "run-1",
        Variant {
            identity: Some("first/owner"),
            state_api: Some(!matches!(v.state_api, Some(true))),
            enable_state: !v.enable_state,
        },
    ));
    replaced.register(session("run-1", v));
    BTreeMap::from([
        ("live", live),
        ("ended", ended),
        ("expired", expired),
        ("replaced", replaced),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_branch_decides_as_the_spec_says() {
    let t = sqlite().await;
    let runs = [
        Run::Absent,
        Run::Empty,
        Run::NeverRegistered,
        Run::Live,
        Run::Ended,
        Run::Expired,
        Run::Replaced,
    ];
    let scopes = [
        None,
        Some(""),
        Some("bogus"),
        Some("runner"),
        Some("conversation"),
        Some("actor"),
        Some("subject"),
    ];
    let keys = [None, Some(""), Some("k")];
    let callers = [None, Some(""), Some(OWNER), Some(OTHER)];
    let identities = [Some(OWNER), None, Some("")];
    let apis = [Some(true), Some(false), None];
    let (mut cases, mut allowed, mut failures) = (0, 0, Vec::new());
    for identity in identities {
        for state_api in apis {
            for enable_state in [true, false] {
                let v = Variant {
                    identity,
                    state_api,
                    enable_state,
                };
                let regs = registries(v);
                for run in runs {
                    let (registry, run_id) = match run {
                        Run::Absent => (&regs["live"], None),
                        Run::Empty => (&regs["live"], Some("")),
                        Run::NeverRegistered => (&regs["live"], Some("run-never")),
                        Run::Live => (&regs["live"], Some("run-1")),
                        Run::Ended => (&regs["ended"], Some("run-1")),
                        Run::Expired => (&regs["expired"], Some("run-1")),
                        Run::Replaced => (&regs["replaced"], Some("run-1")),
                    };
                    for op in [Op::Get, Op::Set, Op::Delete, Op::List] {
                        for scope in scopes {
                            for key in keys {
                                for caller in callers {
                                    let call = StateCall {
                                        run_id,
                                        scope,
                                        key,
                                        caller_plugin_identity: caller,
                                    };
                                    let want = oracle(op, run, scope, key, caller, v);
                                    let got = perform(registry, t.store(), op, call)
                                        .await
                                        .map_err(|e| e.to_string());
                                    cases += 1;
                                    allowed += usize::from(want.is_ok());
                                    if got != want {
                                        failures.push(format!(
                                            "{op:?} {run:?} scope={scope:?} key={key:?} caller={caller:?} {v:?}: \
                                             got {got:?}, want {want:?}"
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!("{cases} calls, {allowed} allowed");
    assert!(allowed > 0 && allowed < cases);
    assert!(
        failures.is_empty(),
        "{} of {cases} differ:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

/// A session registered with an empty plugin identity is served to any
/// caller, as LangBot serves it; each later check still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_plugin_identity_counts_as_none_on_every_check() {
    let t = sqlite().await;
    let empty = Variant {
        identity: Some(""),
        state_api: Some(true),
        enable_state: true,
    };
    let with = |v: Variant| {
        let r = RunRegistry::default();
        r.register(session("run-1", v));
        r
    };
    let callers = [None, Some(""), Some(OWNER), Some(OTHER)];
    for caller in callers {
        let msg = |r: Result<(), RunStateError>| r.map_err(|e| e.to_string());
        let r = with(empty);
        let call = |run_id, scope, key| StateCall {
            run_id,
            scope: Some(scope),
            key,
            caller_plugin_identity: caller,
        };
        // 1. a missing key is still reported first.
        assert_eq!(
            msg(perform(
                &r,
                t.store(),
                Op::Get,
                call(Some("run-1"), "conversation", None)
            )
            .await),
            Err("key is required".into())
        );
        // 2. an unknown run is still unknown.
        assert_eq!(
            msg(perform(
                &r,
                t.store(),
                Op::Get,
                call(Some("run-x"), "conversation", Some("k"))
            )
            .await),
            Err("Run session run-x not found or expired".into())
        );
        // 3. any caller passes the identity check: the call succeeds.
        assert_eq!(
            msg(perform(
                &r,
                t.store(),
                Op::Set,
                call(Some("run-1"), "conversation", Some("k"))
            )
            .await),
            Ok(()),
            "{caller:?}"
        );
        // 4. the state API must still be granted.
        let r4 = with(Variant {
            state_api: None,
            ..empty
        });
        assert_eq!(
            msg(perform(
                &r4,
                t.store(),
                Op::Get,
                call(Some("run-1"), "conversation", Some("k"))
            )
            .await),
            Err("State get access not authorized".into())
        );
        // 5. state must still be enabled.
        let r5 = with(Variant {
            enable_state: false,
            ..empty
        });
        assert_eq!(
            msg(perform(
                &r5,
                t.store(),
                Op::Get,
                call(Some("run-1"), "conversation", Some("k"))
            )
            .await),
            Err("State access is disabled by binding policy".into())
        );
        // 6. the scope must still be enabled.
        assert_eq!(
            msg(perform(
                &r,
                t.store(),
                Op::Get,
                call(Some("run-1"), "runner", Some("k"))
            )
            .await),
            Err("Scope \"runner\" is not enabled by binding policy".into())
        );
        // 7. the run must still have a key for it.
        assert_eq!(
            msg(perform(
                &r,
                t.store(),
                Op::Get,
                call(Some("run-1"), "subject", Some("k"))
            )
            .await),
            Err("Scope key not available for scope \"subject\"".into())
        );
    }
}

/// LangBot's `test_state_api_auth.py`, ported: each refusal of STATE_GET, the
/// set → get → list → delete flow, and the policy and scope keys read from
/// the session's authorization snapshot.
mod langbot_state_api_auth {
    use super::*;

    fn flow_session(run_id: &str, policy: StatePolicy) -> RunSession {
        RunSession {
            policy,
            ..session(
                run_id,
                Variant {
                    identity: Some(OWNER),
                    state_api: Some(true),
                    enable_state: true,
                },
            )
        }
    }

    fn call<'a>(
        run_id: Option<&'a str>,
        scope: &'a str,
        key: Option<&'a str>,
        caller: Option<&'a str>,
    ) -> StateCall<'a> {
        StateCall {
            run_id,
            scope: Some(scope),
            key,
            caller_plugin_identity: caller,
        }
    }

    async fn get_error(r: &RunRegistry, t: &TestDb, c: StateCall<'_>) -> String {
        r.get(t.store(), c).await.unwrap_err().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_get_refusals() {
        let t = sqlite().await;
        let r = RunRegistry::default();
        // missing run_id
        assert!(
            get_error(
                &r,
                &t,
                call(None, "conversation", Some("test_key"), Some(OWNER))
            )
            .await
            .contains("run_id is required")
        );
        // run not found
        assert!(
            get_error(
                &r,
                &t,
                call(
                    Some("nonexistent_run"),
                    "conversation",
                    Some("test_key"),
                    Some(OWNER)
                )
            )
            .await
            .contains("not found or expired")
        );
        // missing caller_plugin_identity
        r.register(flow_session("run_missing_caller", StatePolicy::default()));
        assert!(
            get_error(
                &r,
                &t,
                call(
                    Some("run_missing_caller"),
                    "conversation",
                    Some("test_key"),
                    None
                )
            )
            .await
            .contains("caller_plugin_identity is required")
        );
        // caller identity mismatch
        r.register(flow_session("run_mismatch", StatePolicy::default()));
        assert!(
            get_error(
                &r,
                &t,
                call(
                    Some("run_mismatch"),
                    "conversation",
                    Some("test_key"),
                    Some("wrong/plugin")
                )
            )
            .await
            .contains("Plugin identity mismatch")
        );
        // enable_state false
        r.register(flow_session(
            "run_disabled",
            StatePolicy {
                enable_state: false,
                state_scopes: vec![Scope::Conversation],
            },
        ));
        assert!(
            get_error(
                &r,
                &t,
                call(
                    Some("run_disabled"),
                    "conversation",
                    Some("test_key"),
                    Some(OWNER)
                )
            )
            .await
            .contains("disabled")
        );
        // scope not enabled
        r.register(flow_session(
            "run_scope_off",
            StatePolicy {
                enable_state: true,
                state_scopes: vec![Scope::Conversation],
            },
        ));
        assert!(
            get_error(
                &r,
                &t,
                call(
                    Some("run_scope_off"),
                    "actor",
                    Some("test_key"),
                    Some(OWNER)
                )
            )
            .await
            .contains("not enabled")
        );
        // scope enabled but no scope key for it (no subject in the event)
        r.register(flow_session("run_no_key", StatePolicy::all_scopes()));
        assert!(
            get_error(
                &r,
                &t,
                call(Some("run_no_key"), "subject", Some("test_key"), Some(OWNER))
            )
            .await
            .contains("Scope key not available")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_set_get_list_delete_flow() {
        let t = sqlite().await;
        let r = RunRegistry::default();
        r.register(flow_session(
            "run_full_flow",
            StatePolicy {
                enable_state: true,
                state_scopes: vec![Scope::Conversation, Scope::Runner],
            },
        ));
        let c = |key| call(Some("run_full_flow"), "conversation", key, Some(OWNER));
        r.set(
            t.store(),
            c(Some("external.test_key")),
            &json!({"data": "test_value"}),
        )
        .await
        .unwrap();
        assert_eq!(
            r.get(t.store(), c(Some("external.test_key")))
                .await
                .unwrap(),
            Some(json!({"data": "test_value"}))
        );
        let page = r
            .list(t.store(), c(None), Some("external."), None)
            .await
            .unwrap();
        assert!(
            page.keys.contains(&"external.test_key".to_owned()),
            "{page:?}"
        );
        assert!(
            r.delete(t.store(), c(Some("external.test_key")))
                .await
                .unwrap()
        );
        assert_eq!(
            r.get(t.store(), c(Some("external.test_key")))
                .await
                .unwrap(),
            None
        );
        assert!(r.end("run_full_flow"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn policy_and_scope_keys_come_from_the_session() {
        let t = sqlite().await;
        let r = RunRegistry::default();
        r.register(flow_session(
            "run_policy_top_level",
            StatePolicy {
                enable_state: false,
                state_scopes: vec![],
            },
        ));
        let err = get_error(
            &r,
            &t,
            call(
                Some("run_policy_top_level"),
                "conversation",
                Some("test_key"),
                Some(OWNER),
            ),
        )
        .await;
        assert!(err.to_lowercase().contains("disabled"), "{err}");
        r.register(flow_session(
            "run_context_top_level",
            StatePolicy {
                enable_state: true,
                state_scopes: vec![Scope::Conversation],
            },
        ));
        r.set(
            t.store(),
            call(
                Some("run_context_top_level"),
                "conversation",
                Some("test_key"),
                Some(OWNER),
            ),
            &json!("test_value"),
        )
        .await
        .unwrap();
        // The value went under the session's own conversation scope key.
        let key = context().scope_key(Scope::Conversation).unwrap().to_owned();
        let found = service::StateStore::new(&t.db)
            .get_by_scope_key(&key, "test_key")
            .await
            .unwrap();
        assert_eq!(found, Some(json!("test_value")));
    }
}

/// LangBot's `test_handler_auth.py` identity and unregister scenarios, as
/// state calls: the owner passes, another plugin and a caller without
/// identity are refused, and an ended run is gone.
mod langbot_handler_auth {
    use super::*;

    fn owned(run_id: &str) -> RunSession {
        session(
            run_id,
            Variant {
                identity: Some(OWNER),
                state_api: Some(true),
                enable_state: true,
            },
        )
    }

    fn call<'a>(run_id: &'a str, caller: Option<&'a str>) -> StateCall<'a> {
        StateCall {
            run_id: Some(run_id),
            scope: Some("conversation"),
            key: Some("k"),
            caller_plugin_identity: caller,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_plugin_identity_allowed() {
        let t = sqlite().await;
        let r = RunRegistry::default();
        r.register(owned("run_identity_match"));
        assert_eq!(
            r.get(t.store(), call("run_identity_match", Some(OWNER)))
                .await
                .unwrap(),
            None
        );
        assert!(r.end("run_identity_match"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn different_plugin_identity_denied() {
        let t = sqlite().await;
        let r = RunRegistry::default();
        r.register(owned("run_identity_mismatch"));
        let err = r
            .get(t.store(), call("run_identity_mismatch", Some(OTHER)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RunStateError::PluginIdentityMismatch(_)),
            "{err}"
        );
        assert!(err.to_string().to_lowercase().contains("mismatch"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_id_requires_caller_identity() {
        let t = sqlite().await;
        let r = RunRegistry::default();
        r.register(owned("run_no_caller_identity"));
        let err = r
            .get(t.store(), call("run_no_caller_identity", None))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("caller_plugin_identity is required"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unregister_removes_session() {
        let t = sqlite().await;
        let r = RunRegistry::default();
        r.register(owned("run_unregister_test"));
        assert!(r.session("run_unregister_test").is_some());
        assert!(r.end("run_unregister_test"));
        assert!(r.session("run_unregister_test").is_none());
        let err = r
            .get(t.store(), call("run_unregister_test", Some(OWNER)))
            .await
            .unwrap_err();
        assert!(matches!(err, RunStateError::SessionNotFound(_)), "{err}");
    }
}
