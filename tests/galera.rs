//! A multi-writer cluster: MariaDB Galera, 3 nodes. Deploys from every node
//! at once, store writes on every node, data migrations on one node while
//! another edits pipelines and writes state; and the rule Galera imposes on
//! every backend: each table this workspace creates has a primary key.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use migration::{Migrator, MigratorTrait, catalog};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};
use service::legacy::{Ported, port_config};
use service::rename::{RUNNER_ID_RENAMES, Renames};
use service::{Actor, Binding, Event, IdentityColumns, Scope, StateContext, StateStore};
use testkit::{Backend, TestDb, migration_bin, on_every_topology, on_galera};

async fn connect(url: &str) -> DatabaseConnection {
    service::connection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// One connection to a node that waits, before each read, until the node
/// has applied every write the cluster committed before it (Galera applies
/// other nodes' writes a moment after they commit).
async fn connect_synced(url: &str) -> DatabaseConnection {
    let mut opts = service::connection::connect_options(url).unwrap();
    opts.max_connections(1).min_connections(1);
    let db = sea_orm::Database::connect(opts)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    db.execute_unprepared("SET SESSION wsrep_sync_wait = 1")
        .await
        .unwrap();
    db
}

async fn texts(db: &DatabaseConnection, sql: &str) -> Vec<Vec<Option<String>>> {
    let rows = db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|r| {
            (0..r.column_names().len())
                .map(|i| {
                    r.try_get_by_index::<Option<String>>(i)
                        .or_else(|_| {
                            r.try_get_by_index::<Option<i64>>(i)
                                .map(|v| v.map(|v| v.to_string()))
                        })
                        .unwrap_or(None)
                })
                .collect()
        })
        .collect()
}

fn spawn_migration(url: &str, args: &[&str]) -> std::process::Child {
    Command::new(migration_bin())
        .args(["-u", url])
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the migration binary")
}

/// Six replicas, two per node, deploy at once: all exit 0, each migration
/// is recorded once, and every node ends with the same schema.
async fn deploys_from_every_node(t: TestDb) {
    t.create_langbot_schema().await;
    let nodes = t.node_urls();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let children: Vec<_> = nodes
        .iter()
        .chain(&nodes)
        .map(|url| spawn_migration(url, &["up"]))
        .collect();
    let mut logs = String::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        logs.push_str(&stderr);
    }
    assert!(
        logs.contains("galera=true"),
        "the lock did not log Galera: {logs}"
    );
    let expected: Vec<Vec<Option<String>>> = Migrator::migrations()
        .iter()
        .map(|m| vec![Some(m.name().to_owned())])
        .collect();
    let mut schemas = Vec::new();
    for url in &nodes {
        let db = connect_synced(url).await;
        assert_eq!(
            texts(&db, "SELECT version FROM seaql_migrations ORDER BY version").await,
            expected,
            "{url}: each migration recorded once"
        );
        let table = catalog::read_table(&db, "agent_runner_state")
            .await
            .unwrap()
            .unwrap();
        schemas.push((table.to_string(), catalog::table_names(&db).await.unwrap()));
        db.close().await.ok();
    }
    assert_eq!(schemas[0], schemas[1]);
    assert_eq!(schemas[0], schemas[2]);
}

fn context(actor: &str, runner: &str) -> StateContext {
    let binding = Binding {
        binding_id: Some("pipeline-galera".into()),
        ..Binding::default()
    };
    let event = Event {
        bot_id: Some("bot-1".into()),
        conversation_id: Some("conv-1".into()),
        actor: Some(Actor {
            actor_type: None,
            actor_id: Some(actor.into()),
        }),
        ..Event::default()
    };
    StateContext::new(IdentityColumns::from_event(runner, &binding, &event))
}

/// 24 tasks, 8 per node, write shared and own keys at once: certification
/// conflicts are retried like deadlocks, and the end state is exact.
async fn store_writes_on_every_node(t: TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    let nodes = t.node_urls();
    let mut tasks = Vec::new();
    for (n, url) in nodes.iter().enumerate() {
        let db = Arc::new(connect(url).await);
        for task in 0..8 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let store = StateStore::new(&*db);
                let shared = context("shared", "plugin:langbot/local-agent/default");
                let own = context(
                    &format!("n{n}-t{task}"),
                    "plugin:langbot/local-agent/default",
                );
                let mut errors = Vec::new();
                for i in 0..40 {
                    let key = format!("k{}", (task * 7 + i) % 25);
                    if let Err(e) = store
                        .set(&shared, Scope::Actor, &key, &json!({"n": n, "i": i}))
                        .await
                    {
                        errors.push(e.to_string());
                    }
                    if let Err(e) = store
                        .set(&own, Scope::Actor, &format!("own{i}"), &json!(i))
                        .await
                    {
                        errors.push(e.to_string());
                    }
                }
                errors
            }));
        }
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.unwrap());
    }
    assert_eq!(errors, Vec::<String>::new(), "{} errors", errors.len());
    // 25 shared keys, and 40 own keys for each of the 24 tasks, on every node.
    for url in &nodes {
        let db = connect_synced(url).await;
        let n = texts(&db, "SELECT COUNT(*) FROM agent_runner_state").await;
        assert_eq!(n[0][0].as_deref(), Some("985"), "{url}");
        db.close().await.ok();
    }
}

/// Legacy configs, one per pipeline, for the port and then the rename.
fn legacy_config(i: usize) -> Value {
    let runner = ["local-agent", "dify-service-api", "n8n-service-api"][i % 3];
    json!({"ai": {"runner": {"runner": runner}, runner: {"n": i}}, "output": {"i": i}})
}

/// What port then rename make of a config, by the pure functions.
fn expected_config(text: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap();
    let mut v = match port_config(&v) {
        Ported::Changed(p) => p,
        _ => v,
    };
    Renames::official().apply_json(&mut v);
    v
}

/// The legacy port and the rename run on node 1 while node 2 edits
/// pipelines and writes state: the end state is a single server's, nothing
/// is lost, and `down` restores every original.
async fn data_migrations_on_a_live_cluster(t: TestDb) {
    t.create_langbot_schema().await;
    Migrator::up(&t.db, Some(1)).await.unwrap();
    let rows: Vec<(String, String)> = (0..3000)
        .map(|i| (format!("p-{i:05}"), legacy_config(i).to_string()))
        .collect();
    t.insert_pipelines(&rows).await;
    let olds: Vec<&str> = RUNNER_ID_RENAMES.iter().map(|(o, _)| *o).collect();
    let mut values = Vec::new();
    for i in 0..2000 {
        values.push(format!(
            "({}, '{}', 'pipeline_q{i}', 'runner', 'runner:v2:legacy{i}', 'k', '{{\"i\": {i}}}', \
             '2025-01-01 00:00:00', '2025-01-01 00:00:00')",
            i + 1,
            olds[i % olds.len()]
        ));
    }
    for chunk in values.chunks(500) {
        t.exec(&format!(
            "INSERT INTO agent_runner_state (id, runner_id, binding_identity, scope, scope_key, state_key, \
             value_json, created_at, updated_at) VALUES {}",
            chunk.join(", ")
        ))
        .await;
    }
    let configs_before = t
        .rows_as_text("SELECT uuid, CAST(config AS CHAR) FROM legacy_pipelines ORDER BY uuid")
        .await;
    let state_before = t
        .rows_as_text(
            "SELECT id, runner_id, binding_identity, scope_key FROM agent_runner_state ORDER BY id",
        )
        .await;

    let nodes = t.node_urls();
    let node2 = Arc::new(connect(&nodes[1]).await);
    let done = Arc::new(AtomicBool::new(false));
    // Node 2: a LangBot renaming pipelines and writing state, retrying what
    // loses a certification conflict as LangBot's own code would have to.
    let writer = {
        let (db, done) = (node2.clone(), done.clone());
        tokio::spawn(async move {
            let store = StateStore::new(&*db);
            let mut edits = std::collections::BTreeMap::new();
            let mut sets = 0u32;
            let mut round = 0usize;
            while !done.load(Ordering::SeqCst) || round < 50 {
                let uuid = format!("p-{:05}", (round * 37) % 3000);
                let name = format!("edited-{round}");
                let sql =
                    format!("UPDATE legacy_pipelines SET name = '{name}' WHERE uuid = '{uuid}'");
                loop {
                    match db.execute_unprepared(&sql).await {
                        Ok(_) => break,
                        Err(e) if service::retry::is_transient(&e) => continue,
                        Err(e) => panic!("edit on node 2: {e}"),
                    }
                }
                edits.insert(uuid, name);
                let ctx = context(&format!("writer{round}"), "plugin:someone/else/default");
                store
                    .set(&ctx, Scope::Actor, "note", &json!(round))
                    .await
                    .unwrap_or_else(|e| panic!("state write on node 2: {e}"));
                sets += 1;
                round += 1;
            }
            (edits, sets)
        })
    };
    // Node 1: the port and the rename, in small batches.
    let out = spawn_migration(&nodes[0], &["--batch-size", "50", "up"])
        .wait_with_output()
        .unwrap();
    done.store(true, Ordering::SeqCst);
    let (edits, sets) = writer.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "node 2 made {} pipeline edits and {sets} state writes during the migrations; \
         node 1 retried {} batches after write conflicts",
        edits.len(),
        String::from_utf8_lossy(&out.stderr)
            .matches("retrying it")
            .count()
    );

    // Every config ported and renamed, every edit kept, on every node.
    for url in &nodes {
        let db = connect_synced(url).await;
        let after = texts(
            &db,
            "SELECT uuid, CAST(config AS CHAR), name FROM legacy_pipelines ORDER BY uuid",
        )
        .await;
        assert_eq!(after.len(), rows.len(), "{url}");
        for (row, (uuid, text)) in after.iter().zip(&rows) {
            assert_eq!(row[0].as_deref(), Some(uuid.as_str()));
            let config: Value = serde_json::from_str(row[1].as_deref().unwrap()).unwrap();
            assert_eq!(config, expected_config(text), "{url} {uuid}");
            let name = edits.get(uuid).map_or("n", String::as_str);
            assert_eq!(
                row[2].as_deref(),
                Some(name),
                "{url} {uuid}: an edit was lost"
            );
        }
        let renamed = texts(
            &db,
            "SELECT COUNT(*) FROM agent_runner_state WHERE runner_id LIKE 'plugin:langbot-team/%'",
        )
        .await;
        assert_eq!(renamed[0][0].as_deref(), Some("2000"), "{url}");
        let written = texts(
            &db,
            "SELECT COUNT(*) FROM agent_runner_state WHERE runner_id = 'plugin:someone/else/default'",
        )
        .await;
        assert_eq!(
            written[0][0].as_deref(),
            Some(sets.to_string().as_str()),
            "{url}: a state write was lost"
        );
        db.close().await.ok();
    }

    // `down` to before the port restores every original config and state row.
    let out = spawn_migration(
        &nodes[0],
        &["down", "--to", "m20261125_000002_port_legacy_runner_blocks"],
    )
    .wait_with_output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        t.rows_as_text("SELECT uuid, CAST(config AS CHAR) FROM legacy_pipelines ORDER BY uuid")
            .await,
        configs_before
    );
    assert_eq!(
        t.rows_as_text(
            "SELECT id, runner_id, binding_identity, scope_key FROM agent_runner_state \
             WHERE runner_id <> 'plugin:someone/else/default' ORDER BY id"
        )
        .await,
        state_before
    );
    drop(node2);
}

/// Galera replicates only tables with a primary key (and MariaDB can be set
/// to refuse others): every table this workspace creates has one, on every
/// backend. The binary runs, so the lock table is made too.
async fn every_table_has_a_primary_key(t: TestDb) {
    t.create_langbot_schema().await;
    let out = spawn_migration(&t.url, &["up"]).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = catalog::table_names(&t.db).await.unwrap();
    let ours = [
        "seaql_migrations",
        "agent_runner_state",
        "agent_runner_state_origin",
        "legacy_pipelines_runner_port_backup",
        "legacy_pipelines_runner_rename_backup",
        "agent_runner_state_rename_log",
        "agent_runner_state_rename_conflicts",
        migration::lock::LOCK_TABLE,
    ];
    let mut missing_pk = Vec::new();
    for table in ours {
        if table == migration::lock::LOCK_TABLE && t.backend == Backend::Sqlite {
            continue; // SQLite's lock is a file beside the database
        }
        assert!(
            tables.iter().any(|t| t == table),
            "{table} was not created: {tables:?}"
        );
        let sql = match t.backend {
            Backend::Sqlite => {
                format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE pk > 0")
            }
            Backend::Postgres => format!(
                "SELECT COUNT(*) FROM information_schema.table_constraints WHERE table_schema = current_schema() \
                 AND table_name = '{table}' AND constraint_type = 'PRIMARY KEY'"
            ),
            Backend::MySql => format!(
                "SELECT COUNT(*) FROM information_schema.table_constraints WHERE table_schema = DATABASE() \
                 AND table_name = '{table}' AND constraint_type = 'PRIMARY KEY'"
            ),
        };
        let n = t.rows_as_text(&sql).await;
        if n[0][0].as_deref() == Some("0") {
            missing_pk.push(table);
        }
    }
    assert_eq!(
        missing_pk,
        Vec::<&str>::new(),
        "tables without a primary key"
    );
}

on_galera!(
    deploys_from_every_node,
    store_writes_on_every_node,
    data_migrations_on_a_live_cluster,
);

on_every_topology!(every_table_has_a_primary_key);
