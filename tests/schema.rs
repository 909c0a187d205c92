//! The schema migration on every backend: create, adopt LangBot's table,
//! converge on one schema, and round-trip `down` without losing anything.

use migration::catalog::{self, TableSchema};
use migration::origin::{ORIGIN_TABLE, Origin, recorded_origin};
use migration::schema::{INDEXES, LEGACY_SCOPE_KEY_INDEX, TABLE, UNIQUE_KEY};
use migration::{Migrator, MigratorTrait};
use testkit::{Backend, TestDb, on_every_backend, with_snapshots};

const ROWS: &str = "SELECT * FROM agent_runner_state ORDER BY id";
const PIPELINES: &str = "SELECT uuid, name, config FROM legacy_pipelines ORDER BY uuid";
const ALEMBIC: &str = "SELECT version_num FROM alembic_version";

async fn live(t: &TestDb) -> TableSchema {
    catalog::read_table(&t.db, TABLE)
        .await
        .unwrap()
        .expect("agent_runner_state exists")
}

fn snapshot(t: &TestDb, name: &str, value: String) {
    let name = format!("{name}__{}", t.backend.name());
    with_snapshots(|| insta::assert_snapshot!(name, value));
}

async fn drop_index(t: &TestDb, name: &str) {
    match t.backend {
        Backend::MySql => {
            t.exec(&format!("DROP INDEX {name} ON agent_runner_state"))
                .await
        }
        _ => t.exec(&format!("DROP INDEX {name}")).await,
    }
}

/// LangBot's two tables with rows in them, and a stand-in `alembic_version`.
async fn langbot_database(t: &TestDb) {
    t.create_langbot_schema().await;
    t.exec("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        .await;
    t.exec("INSERT INTO alembic_version (version_num) VALUES ('2094993af0')")
        .await;
    t.exec(
        "INSERT INTO agent_runner_state (runner_id, binding_identity, scope, scope_key, state_key, \
         value_json, bot_id, workspace_id, conversation_id, thread_id, actor_type, actor_id, \
         subject_type, subject_id, created_at, updated_at) VALUES \
         ('plugin:langbot/local-agent/default', 'b1', 'conversation', 'conversation:v2:aa', 'memo', \
          '{\"text\": \"héllo 🌍\", \"n\": 1}', 'bot1', NULL, 'c1', NULL, NULL, NULL, NULL, NULL, \
          '2025-01-02 03:04:05', '2025-01-02 03:04:06'), \
         ('plugin:langbot/local-agent/default', 'b1', 'actor', 'actor:v2:bb', 'Bob', \
          NULL, 'bot1', 'ws', NULL, NULL, 'user', 'Bob', NULL, NULL, \
          '2025-02-03 04:05:06', '2025-02-03 04:05:06'), \
         ('plugin:x/y/z', 'g:1', 'runner', 'runner:v2:cc', 'k', \
          '[1, 2, 3]', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
          '2025-03-04 05:06:07', '2025-03-04 05:06:08')",
    )
    .await;
    t.exec(
        "INSERT INTO legacy_pipelines (uuid, name, description, emoji, created_at, updated_at, \
         for_version, is_default, stages, config, extensions_preferences) VALUES \
         ('p-1', 'Default', 'd', NULL, '2025-01-01 00:00:00', '2025-01-01 00:00:00', 'v4', \
          false, '[]', '{\"ai\": {\"runner\": {\"id\": \"plugin:x/y/z\"}, \"runner_config\": {}}}', '{}')",
    )
    .await;
}

async fn fresh_create(t: TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    let schema = live(&t).await;
    snapshot(&t, "schema_after_up", schema.to_string());
    assert_eq!(recorded_origin(&t.db).await.unwrap(), Some(Origin::Created));
    for (name, _) in INDEXES {
        assert!(schema.has_index(name), "{name} missing");
    }
    assert!(schema.has_unique_on(UNIQUE_KEY.1));

    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(live(&t).await, schema, "a second up changed the schema");
}

async fn adopt_langbot_database(t: TestDb) {
    langbot_database(&t).await;
    let langbot = live(&t).await;
    let langbot_pipelines = catalog::read_table(&t.db, "legacy_pipelines")
        .await
        .unwrap();
    drop_index(&t, "ix_agent_runner_state_bot_id").await;
    drop_index(&t, "ix_agent_runner_state_scope_key_lookup").await;
    let rows = t.rows_as_text(ROWS).await;
    let pipelines = t.rows_as_text(PIPELINES).await;
    assert_eq!(rows.len(), 3);

    Migrator::up(&t.db, None).await.unwrap();

    let adopted = live(&t).await;
    // The same snapshot as `fresh_create`: adoption converges on one schema.
    snapshot(&t, "schema_after_up", adopted.to_string());
    snapshot(
        &t,
        "schema_diff_vs_langbot",
        match catalog::diff(&langbot, &adopted) {
            lines if lines.is_empty() => "(no difference)".to_owned(),
            lines => lines.join("\n"),
        },
    );
    assert_eq!(recorded_origin(&t.db).await.unwrap(), Some(Origin::Adopted));
    assert_eq!(t.rows_as_text(ROWS).await, rows, "rows changed");
    assert_eq!(t.rows_as_text(PIPELINES).await, pipelines);
    assert_eq!(
        t.rows_as_text(ALEMBIC).await,
        vec![vec![Some("2094993af0".into())]]
    );
    assert_eq!(
        catalog::read_table(&t.db, "legacy_pipelines")
            .await
            .unwrap(),
        langbot_pipelines
    );

    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(live(&t).await, adopted, "a second up changed the schema");
    assert_eq!(t.rows_as_text(ROWS).await, rows);
    assert_eq!(
        t.rows_as_text("SELECT version FROM seaql_migrations")
            .await
            .len(),
        Migrator::migrations().len()
    );
}

async fn adopted_key_columns_compare_exactly(t: TestDb) {
    langbot_database(&t).await;
    Migrator::up(&t.db, None).await.unwrap();
    // Under LangBot's collations these collide (MySQL: case and trailing
    // space) or sort by locale (PostgreSQL ICU).
    for key in ["b", "B", "a", "a ", "_", "A", "ä", "z"] {
        t.exec(&format!(
            "INSERT INTO agent_runner_state (runner_id, binding_identity, scope, scope_key, state_key, \
             actor_id, created_at, updated_at) VALUES ('r', 'b', 'actor', 's', '{key}', '{key}', \
             '2025-01-01 00:00:00', '2025-01-01 00:00:00')"
        ))
        .await;
    }
    let sorted = t
        .rows_as_text(
            "SELECT state_key FROM agent_runner_state WHERE scope_key = 's' ORDER BY state_key",
        )
        .await;
    let sorted: Vec<_> = sorted.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(sorted, ["A", "B", "_", "a", "a ", "b", "z", "ä"]);
    let matches = t
        .rows_as_text("SELECT actor_id FROM agent_runner_state WHERE actor_id = 'a'")
        .await;
    assert_eq!(matches, vec![vec![Some("a".to_owned())]]);
}

async fn down_up_on_created_table(t: TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    let created = live(&t).await;
    Migrator::down(&t.db, None).await.unwrap();
    assert!(!catalog::table_exists(&t.db, TABLE).await.unwrap());
    assert!(!catalog::table_exists(&t.db, ORIGIN_TABLE).await.unwrap());
    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(live(&t).await, created);
}

async fn down_up_on_adopted_table(t: TestDb) {
    langbot_database(&t).await;
    let langbot = live(&t).await;
    let rows = t.rows_as_text(ROWS).await;
    Migrator::up(&t.db, None).await.unwrap();
    let adopted = live(&t).await;

    Migrator::down(&t.db, None).await.unwrap();
    assert_eq!(
        live(&t).await,
        langbot,
        "down must hand back LangBot's table exactly"
    );
    assert_eq!(t.rows_as_text(ROWS).await, rows);
    assert_eq!(recorded_origin(&t.db).await.unwrap(), None);

    Migrator::up(&t.db, None).await.unwrap();
    assert_eq!(live(&t).await, adopted);
    assert_eq!(t.rows_as_text(ROWS).await, rows);
}

async fn adopt_keeps_pre_2094993af_index(t: TestDb) {
    t.create_langbot_schema().await;
    drop_index(&t, "ix_agent_runner_state_scope_key_lookup").await;
    t.exec(&format!(
        "CREATE INDEX {LEGACY_SCOPE_KEY_INDEX} ON agent_runner_state (scope_key)"
    ))
    .await;
    Migrator::up(&t.db, None).await.unwrap();
    let schema = live(&t).await;
    assert!(
        schema.has_index(LEGACY_SCOPE_KEY_INDEX),
        "older index dropped"
    );
    assert!(schema.has_index("ix_agent_runner_state_scope_key_lookup"));
}

/// The entity is the one source of column facts (the store's length checks
/// read it): it must say what each backend's catalog holds after `up`, for
/// a created table and for an adopted one.
async fn entity_matches_the_migrated_catalog(t: TestDb) {
    use sea_orm::{ColumnTrait, Iterable};
    for adopted in [false, true] {
        if adopted {
            Migrator::down(&t.db, None).await.ok();
            t.create_langbot_schema().await;
        }
        Migrator::up(&t.db, None).await.unwrap();
        let table = live(&t).await;
        for column in entity::agent_runner_state::Column::iter() {
            let def = column.def();
            let name = sea_orm::IdenStatic::as_str(&column).to_owned();
            let live = table
                .column(&name)
                .unwrap_or_else(|| panic!("{name} missing from the catalog"));
            assert_eq!(
                live.nullable,
                def.is_null(),
                "{name} nullability (adopted: {adopted})"
            );
            if let sea_orm::sea_query::ColumnType::String(sea_orm::sea_query::StringLen::N(n)) =
                def.get_column_type()
            {
                assert!(
                    live.data_type.ends_with(&format!("({n})")),
                    "{name}: entity says {n} characters, {} has {} (adopted: {adopted})",
                    t.backend.name(),
                    live.data_type
                );
                assert_eq!(service::store::max_chars(column), *n as usize);
            }
        }
        assert_eq!(
            table.columns.len(),
            entity::agent_runner_state::Column::iter().count(),
            "columns the entity does not know"
        );
    }
}

on_every_backend!(
    entity_matches_the_migrated_catalog,
    fresh_create,
    adopt_langbot_database,
    adopted_key_columns_compare_exactly,
    down_up_on_created_table,
    down_up_on_adopted_table,
    adopt_keeps_pre_2094993af_index,
);
