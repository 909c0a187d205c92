//! The runner id rename (SPEC section 7) through the database, on every
//! backend: vectors, conflicts, the store finding renamed rows, `down`
//! returning both tables to their content, and a killed-and-rerun binary.

use migration::pipeline_rewrite::rewrite_all;
use migration::rename::{
    CONFIG_BACKUP_TABLE, CONFLICTS_TABLE, RENAME_LOG_TABLE, rename_state_rows,
};
use migration::{Migrator, MigratorTrait, catalog};
use serde_json::{Value, json};
use service::rename::{Renames, rename_row};
use service::{Actor, Binding, Event, IdentityColumns, Scope, StateContext, StateStore};
use testkit::{TestDb, committed_rows, kill_four_times, on_every_backend, read_vectors};

const STATE_ROWS: &str = "SELECT id, runner_id, binding_identity, scope, scope_key, state_key, value_json, \
    bot_id, workspace_id, conversation_id, thread_id, actor_type, actor_id, subject_type, subject_id \
    FROM agent_runner_state ORDER BY id";

fn sql_text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        other => other.to_string(),
    }
}

/// Inserts a vector state row as LangBot would have stored it.
async fn insert_row(t: &TestDb, row: &Value) {
    let cols = [
        "id",
        "runner_id",
        "binding_identity",
        "scope",
        "scope_key",
        "state_key",
        "bot_id",
        "workspace_id",
        "conversation_id",
        "thread_id",
        "actor_type",
        "actor_id",
        "subject_type",
        "subject_id",
    ];
    let values: Vec<String> = cols.iter().map(|c| sql_text(&row[*c])).collect();
    t.exec(&format!(
        "INSERT INTO agent_runner_state ({}, value_json, created_at, updated_at) VALUES ({}, '{{\"v\": 1}}', \
         '2025-01-01 00:00:00', '2025-01-01 00:00:00')",
        cols.join(", "),
        values.join(", ")
    ))
    .await;
}

async fn configs(t: &TestDb) -> Vec<(String, Value)> {
    t.pipeline_configs()
        .await
        .into_iter()
        .map(|(uuid, text)| (uuid, serde_json::from_str(&text).unwrap()))
        .collect()
}

/// Every vector through the database: documents as pipeline configs, rows
/// as state rows; then `down` of the rename alone restores both tables.
async fn vectors_rename_and_restore(t: TestDb) {
    // LangBot's tables, adopted and ported (empty), before the rename runs.
    t.create_langbot_schema().await;
    Migrator::up(&t.db, Some(2)).await.unwrap();
    let file = read_vectors("runner_id_rename.json");
    let docs = file["json_documents"].as_array().unwrap();
    let rows = file["state_rows"].as_array().unwrap();
    assert!(
        !docs.is_empty() && !rows.is_empty(),
        "runner_id_rename.json holds no case"
    );
    let pipelines: Vec<(String, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, doc)| (format!("p-{i:04}"), doc["input"].to_string()))
        .collect();
    t.insert_pipelines(&pipelines).await;
    for case in rows {
        insert_row(&t, &case["row"]).await;
    }
    let pipelines_before = t
        .rows_as_text("SELECT uuid, config FROM legacy_pipelines ORDER BY uuid")
        .await;
    let rows_before = t.rows_as_text(STATE_ROWS).await;

    Migrator::up(&t.db, None).await.unwrap();

    for ((uuid, got), doc) in configs(&t).await.iter().zip(docs) {
        assert_eq!(got, &doc["expected"], "pipeline {uuid}");
    }
    let after = t.rows_as_text(STATE_ROWS).await;
    let mut conflicts = 0;
    for (case, before) in rows.iter().zip(&rows_before) {
        let id = case["row"]["id"].to_string();
        let now = after.iter().find(|r| r[0].as_deref() == Some(id.as_str()));
        match (&case["expected"], now) {
            (Value::Null, Some(now)) => assert_eq!(now, before, "row {id} was touched"),
            (expected, Some(now)) => {
                assert_eq!(
                    now[1].as_deref(),
                    expected["runner_id"].as_str(),
                    "row {id}"
                );
                assert_eq!(
                    now[2].as_deref(),
                    expected["binding_identity"].as_str(),
                    "row {id}"
                );
                assert_eq!(
                    now[4].as_deref(),
                    expected["scope_key"].as_str(),
                    "row {id}"
                );
            }
            (_, None) => conflicts += 1,
        }
    }
    let kept = t
        .rows_as_text(&format!("SELECT id FROM {CONFLICTS_TABLE}"))
        .await;
    assert_eq!(kept.len(), conflicts, "every removed row is kept");
    assert_eq!(after.len() + conflicts, rows_before.len());

    // A second pass is a no-op.
    let again = rename_state_rows(&t.db, 7).await.unwrap();
    assert_eq!((again.renamed, again.conflicts), (0, 0));

    Migrator::down(&t.db, Some(1)).await.unwrap();
    assert_eq!(
        t.rows_as_text(STATE_ROWS).await,
        rows_before,
        "down must restore the state rows"
    );
    assert_eq!(
        t.rows_as_text("SELECT uuid, config FROM legacy_pipelines ORDER BY uuid")
            .await,
        pipelines_before,
        "down must restore the configs"
    );
    for table in [RENAME_LOG_TABLE, CONFLICTS_TABLE] {
        assert!(
            !catalog::table_exists(&t.db, table).await.unwrap(),
            "{table} left behind"
        );
    }
}

fn ctx(runner: &str) -> StateContext {
    let event = Event {
        bot_id: Some("bot-1".into()),
        conversation_id: Some("conv-1".into()),
        actor: Some(Actor {
            actor_type: None,
            actor_id: Some("u-1".into()),
        }),
        ..Event::default()
    };
    let binding = Binding {
        binding_id: Some(format!("pipeline_p1_{runner}")),
        ..Binding::default()
    };
    StateContext::new(IdentityColumns::from_event(runner, &binding, &event))
}

/// A row written before the rename is found under the new id afterwards; a
/// row that meets an existing one under its new key loses, is kept, and
/// comes back with `down`.
async fn store_finds_renamed_rows_and_conflicts_are_kept(t: TestDb) {
    Migrator::up(&t.db, Some(2)).await.unwrap();
    let (old, new) = (
        "plugin:langbot/dify-agent/default",
        "plugin:langbot-team/DifyAgent/default",
    );
    let store = StateStore::new(&t.db);
    store
        .set(&ctx(old), Scope::Conversation, "memo", &json!("before"))
        .await
        .unwrap();
    store
        .set(&ctx(old), Scope::Actor, "clash", &json!("old loses"))
        .await
        .unwrap();
    store
        .set(&ctx(new), Scope::Actor, "clash", &json!("new wins"))
        .await
        .unwrap();
    let before = t.rows_as_text(STATE_ROWS).await;

    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(
        store
            .get(&ctx(new), Scope::Conversation, "memo")
            .await
            .unwrap(),
        Some(json!("before"))
    );
    assert_eq!(
        store
            .get(&ctx(old), Scope::Conversation, "memo")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.get(&ctx(new), Scope::Actor, "clash").await.unwrap(),
        Some(json!("new wins"))
    );
    assert_eq!(t.rows_as_text(STATE_ROWS).await.len(), 2);
    assert_eq!(
        t.rows_as_text(&format!("SELECT id FROM {CONFLICTS_TABLE}"))
            .await
            .len(),
        1
    );

    Migrator::down(&t.db, Some(1)).await.unwrap();
    assert_eq!(t.rows_as_text(STATE_ROWS).await, before);
}

/// The rename's name: the kill tests apply it by name.
const RENAME: &str = "m20261125_000003_rename_runner_ids";

/// SIGKILL the binary during the rename at several points, then let it
/// finish: the tables equal an uninterrupted run's, and `down` restores.
async fn killed_and_rerun(t: TestDb) {
    // LangBot's tables, adopted and ported (empty), before the rename runs.
    t.create_langbot_schema().await;
    Migrator::up(&t.db, Some(2)).await.unwrap();
    let renames = Renames::official();
    let olds: Vec<&str> = service::rename::RUNNER_ID_RENAMES
        .iter()
        .map(|(o, _)| *o)
        .collect();
    let mut values = Vec::new();
    for i in 0..6000 {
        let runner = olds[i % olds.len()];
        values.push(format!(
            "({}, '{runner}', 'pipeline_p{i}_{runner}', 'runner', 'runner:v2:legacy{i}', 'k', '{{\"i\": {i}}}', \
             '2025-01-01 00:00:00', '2025-01-01 00:00:00')",
            i + 1
        ));
        if values.len() == 500 {
            t.exec(&format!(
                "INSERT INTO agent_runner_state (id, runner_id, binding_identity, scope, scope_key, state_key, \
                 value_json, created_at, updated_at) VALUES {}",
                values.join(", ")
            ))
            .await;
            values.clear();
        }
    }
    let pipelines: Vec<(String, String)> = (0..2000)
        .map(|i| {
            let config = json!({"ai": {"runner": {"id": olds[i % olds.len()]}}});
            (format!("q-{i:05}"), config.to_string())
        })
        .collect();
    t.insert_pipelines(&pipelines).await;
    let before = t.rows_as_text(STATE_ROWS).await;
    let pipelines_before = t
        .rows_as_text("SELECT uuid, config FROM legacy_pipelines ORDER BY uuid")
        .await;
    let spawn = |args: &[&str]| t.spawn_migration(100, args);
    // Progress is what the rename has committed: kept configs, then logged
    // state rows (every row here is renamed; none conflicts).
    let total = (pipelines.len() + 6000) as u64;
    let progress = || async {
        committed_rows(&t.db, CONFIG_BACKUP_TABLE).await
            + committed_rows(&t.db, RENAME_LOG_TABLE).await
    };
    kill_four_times(total, || spawn(&["up", "--to", RENAME]), progress).await;
    assert!(
        spawn(&["up", "--to", RENAME]).wait().unwrap().success(),
        "final run failed"
    );
    assert_eq!(progress().await, total);

    let after = t.rows_as_text(STATE_ROWS).await;
    assert_eq!(after.len(), before.len());
    for (row, now) in before.iter().zip(&after) {
        let identity = IdentityColumns {
            runner_id: row[1].clone().unwrap(),
            binding_identity: row[2].clone().unwrap(),
            ..IdentityColumns::default()
        };
        let expected =
            rename_row(&renames, "runner", row[4].as_deref().unwrap(), &identity).unwrap();
        assert_eq!(now[1].as_deref(), Some(expected.runner_id.as_str()));
        assert_eq!(now[4].as_deref(), Some(expected.scope_key.as_str()));
    }
    for (uuid, config) in configs(&t).await {
        let runner = config["ai"]["runner"]["id"].as_str().unwrap().to_owned();
        assert!(
            runner.starts_with("plugin:langbot-team/"),
            "{uuid}: {runner}"
        );
    }
    // Nothing left to do for a rerun.
    let again = rewrite_all(
        &t.db,
        &migration::pipeline_rewrite::Rewrite {
            label: "check",
            backup_table: "rename_check_backup",
            transform: |v| Ok(Renames::official().apply_json(v)),
        },
        500,
        migration::pipeline_rewrite::Overlap::AUTO,
    )
    .await
    .unwrap();
    assert_eq!(again.changed, 0);

    assert!(
        spawn(&["down", "--to", RENAME]).wait().unwrap().success(),
        "down failed"
    );
    assert_eq!(t.rows_as_text(STATE_ROWS).await, before);
    assert_eq!(
        t.rows_as_text("SELECT uuid, config FROM legacy_pipelines ORDER BY uuid")
            .await,
        pipelines_before
    );
}

on_every_backend!(
    vectors_rename_and_restore,
    store_finds_renamed_rows_and_conflicts_are_kept,
    killed_and_rerun,
);
