//! The legacy runner port (SPEC section 6) through the database, on tables
//! made from LangBot's own DDL, on every backend: vectors, reversibility,
//! bad shapes, idempotence, and a migration process killed mid-run.

use migration::pipeline_rewrite::{Overlap, restore_all};
use migration::port::{BACKUP_TABLE, port_all};
use migration::{Migrator, MigratorTrait, catalog};
use sea_orm::ConnectionTrait;
use serde_json::Value;
use service::legacy::{Ported, port_config};
use testkit::{Backend, TestDb, committed_rows, kill_four_times, on_every_backend, read_vectors};

/// Shapes the rules cannot apply to: left byte for byte, and reported. (Text
/// that is not JSON at all fits only SQLite's column: PostgreSQL's `json` and
/// MariaDB's JSON check refuse it.)
const UNPORTABLE: &[&str] = &[
    r#"{"ai": ["a list"]}"#,
    r#"{"ai": {"runner": "local-agent"}}"#,
    r#"{"ai": {"runner": {"runner": "local-agent"}, "runner_config": []}}"#,
];

/// Every vector input as a row (half compact, half pretty, so that
/// "byte for byte" means something), plus the unportable shapes.
fn vector_rows() -> (Vec<(String, String)>, Vec<Value>) {
    let file = read_vectors("config_migration.json");
    let cases = file["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "config_migration.json holds no case");
    let mut rows = Vec::new();
    let mut migrated = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let text = if i % 2 == 0 {
            serde_json::to_string(&case["input"]).unwrap()
        } else {
            serde_json::to_string_pretty(&case["input"]).unwrap()
        };
        rows.push((format!("p-{i:04}"), text));
        migrated.push(case["migrated"].clone());
    }
    for (i, text) in UNPORTABLE.iter().enumerate() {
        rows.push((format!("x-{i}"), (*text).to_owned()));
    }
    (rows, migrated)
}

const NOT_JSON: &str = "{not json";

async fn vectors_port_and_restore(t: TestDb) {
    t.create_langbot_schema().await;
    let (mut rows, migrated) = vector_rows();
    if t.backend == Backend::Sqlite {
        rows.push(("y-0".into(), NOT_JSON.into()));
    }
    let unportable = rows.len() - migrated.len();
    t.insert_pipelines(&rows).await;
    let original = t.pipeline_configs().await;
    assert_eq!(
        original, rows,
        "the database changed the config text on insert"
    );

    // The schema migration and the port; not the runner id rename after it.
    Migrator::up(&t.db, Some(2)).await.unwrap();
    let after = t.pipeline_configs().await;
    let mut changed = 0;
    for ((uuid, text), ((_, before), expected)) in after.iter().zip(rows.iter().zip(&migrated)) {
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(&value, expected, "pipeline {uuid}");
        if text != before {
            changed += 1;
        }
    }
    for ((uuid, text), (_, before)) in after.iter().zip(&rows).skip(migrated.len()) {
        assert_eq!(text, before, "unportable pipeline {uuid} was touched");
    }
    let kept = t
        .rows_as_text(&format!("SELECT uuid FROM {BACKUP_TABLE}"))
        .await;
    assert_eq!(kept.len(), changed, "one kept original per changed row");

    // A second pass changes nothing and reports the same bad shapes.
    let again = port_all(&t.db, 50, Overlap::AUTO).await.unwrap();
    assert_eq!((again.changed, again.reported), (0, unportable as u64));
    assert_eq!(t.pipeline_configs().await, after);

    Migrator::down(&t.db, Some(1)).await.unwrap();
    assert_eq!(
        t.pipeline_configs().await,
        rows,
        "down must restore every config byte for byte"
    );
    assert!(!catalog::table_exists(&t.db, BACKUP_TABLE).await.unwrap());
}

async fn no_pipelines_table_is_a_no_op(t: TestDb) {
    let summary = port_all(&t.db, 10, Overlap::SERIAL).await.unwrap();
    assert_eq!(summary.scanned, 0);
    assert!(!catalog::table_exists(&t.db, BACKUP_TABLE).await.unwrap());
}

/// Realistic legacy configs: the vector inputs again and again, each with a
/// unique uuid.
fn many_rows(n: usize) -> Vec<(String, String)> {
    let (base, _) = vector_rows();
    (0..n)
        .map(|i| (format!("k-{i:06}"), base[i % base.len()].1.clone()))
        .collect()
}

/// The table an uninterrupted run produces, by the pure function.
fn expected_after_port(rows: &[(String, String)]) -> Vec<(String, Value)> {
    rows.iter()
        .map(|(uuid, text)| {
            let value = match serde_json::from_str::<Value>(text) {
                Ok(v) => match port_config(&v) {
                    Ported::Changed(p) => p,
                    _ => v,
                },
                Err(_) => Value::String(text.clone()),
            };
            (uuid.clone(), value)
        })
        .collect()
}

/// How many of `rows` an uninterrupted port changes into `expected`.
fn changed_by_port(rows: &[(String, String)], expected: &[(String, Value)]) -> u64 {
    expected
        .iter()
        .zip(rows)
        .filter(|((_, after), (_, text))| {
            serde_json::from_str::<Value>(text).ok().as_ref() != Some(after)
        })
        .count() as u64
}

/// `n` of [`many_rows`] inserted into LangBot's pipelines table (which
/// must exist): the rows, what an uninterrupted port leaves, and how many
/// rows it changes.
async fn seed(t: &TestDb, n: usize) -> (Vec<(String, String)>, Vec<(String, Value)>, u64) {
    let rows = many_rows(n);
    t.insert_pipelines(&rows).await;
    let expected = expected_after_port(&rows);
    let changed = changed_by_port(&rows, &expected);
    (rows, expected, changed)
}

fn parsed(rows: Vec<(String, String)>) -> Vec<(String, Value)> {
    rows.into_iter()
        .map(|(uuid, text)| {
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (uuid, value)
        })
        .collect()
}

/// Batches of any size, one at a time or two at once, and inside a
/// caller's transaction where there is one: every row is read once, and the
/// table ends as an uninterrupted run of the pure function leaves it.
async fn every_row_once_at_any_batch_size(t: TestDb) {
    use sea_orm::TransactionTrait;
    t.create_langbot_schema().await;
    let (rows, expected, changed) = seed(&t, 23).await;
    assert!(changed > 0 && changed < rows.len() as u64);
    for batch_size in [1, 4, 22, 23, 24] {
        for overlap in [Overlap::SERIAL, Overlap::AUTO] {
            let summary = port_all(&t.db, batch_size, overlap).await.unwrap();
            assert_eq!(
                (summary.scanned, summary.changed),
                (rows.len() as u64, changed),
                "batches of {batch_size}, {overlap:?}"
            );
            assert_eq!(parsed(t.pipeline_configs().await), expected);
            restore_all(&t.db, BACKUP_TABLE, batch_size).await.unwrap();
            assert_eq!(t.pipeline_configs().await, rows);
        }
    }
    // In a transaction (the migration binary behind a transaction pooler,
    // PostgreSQL only: MySQL commits at the backup table's DDL), where
    // `AUTO` must run one batch at a time: two would share its connection.
    if t.backend == Backend::MySql {
        return;
    }
    let txn = t.db.begin().await.unwrap();
    let summary = port_all(&txn, 5, Overlap::AUTO).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(summary.changed, changed);
    assert_eq!(parsed(t.pipeline_configs().await), expected);
}

/// A batch whose write loses a conflict (a deadlock, injected once by a
/// trigger on the second update) is rolled back and redone over its own
/// rows while the next batch is in flight: every row is counted once, and
/// the table and the kept originals are an uninterrupted run's.
async fn a_batch_that_loses_a_conflict_is_redone(t: TestDb) {
    t.create_langbot_schema().await;
    match t.backend {
        Backend::Postgres => {
            t.exec("CREATE SEQUENCE updates_seen").await;
            t.exec(
                "CREATE FUNCTION lose_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF nextval('updates_seen') = 2 THEN \
                 RAISE EXCEPTION 'injected deadlock' USING ERRCODE = '40P01'; END IF; \
                 RETURN NULL; END $$",
            )
            .await;
            t.exec(
                "CREATE TRIGGER lose_once BEFORE UPDATE ON legacy_pipelines \
                 FOR EACH STATEMENT EXECUTE FUNCTION lose_once()",
            )
            .await;
        }
        Backend::MySql => {
            // A sequence: its numbers are not rolled back with the batch.
            t.exec("CREATE SEQUENCE updates_seen").await;
            t.exec(
                "CREATE TRIGGER lose_once BEFORE UPDATE ON legacy_pipelines FOR EACH ROW \
                 BEGIN IF NEXTVAL(updates_seen) = 2 THEN \
                 SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'injected deadlock'; \
                 END IF; END",
            )
            .await;
        }
        Backend::Sqlite => unreachable!("run on the servers only"),
    }
    let (rows, expected, changed) = seed(&t, 23).await;
    let summary = port_all(&t.db, 4, Overlap::AUTO).await.unwrap();
    assert_eq!(
        (summary.scanned, summary.changed),
        (rows.len() as u64, changed)
    );
    assert_eq!(parsed(t.pipeline_configs().await), expected);
    assert_eq!(committed_rows(&t.db, BACKUP_TABLE).await, changed);
    // The conflict did happen: the update that lost was not the last.
    let next = match t.backend {
        Backend::Postgres => "SELECT nextval('updates_seen')",
        _ => "SELECT NEXTVAL(updates_seen)",
    };
    let next =
        t.db.query_one_raw(sea_orm::Statement::from_string(
            t.db.get_database_backend(),
            next,
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    assert!(next > 3, "the injected conflict never fired: {next}");
}

/// Opening a batch behind a row lock held elsewhere (LangBot saving a
/// pipeline) for longer than the server's lock timeout fails with `55P03`
/// before anything is written; the batch is opened again, and once the lock
/// is gone the port ends exact. The lock is released only after a second
/// attempt is seen waiting on it (a new transaction in `pg_stat_activity`).
async fn opening_a_batch_is_retried_behind_a_lock(t: TestDb) {
    use sea_orm::TransactionTrait;
    t.create_langbot_schema().await;
    let (rows, expected, changed) = seed(&t, 23).await;
    let query_i64 = |sql: String| {
        let db = &t.db;
        async move {
            db.query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                sql,
            ))
            .await
            .unwrap()
            .and_then(|row| row.try_get_by_index::<i64>(0).ok())
        }
    };
    // Sessions opened from now on give up waiting for a lock after 200 ms.
    t.exec(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET lock_timeout = ''200ms''',          current_database()); END $$",
    )
    .await;
    let holder = t.db.begin().await.unwrap();
    holder
        .execute_unprepared(
            "SELECT 1 FROM legacy_pipelines ORDER BY uuid OFFSET 9 LIMIT 1 FOR UPDATE",
        )
        .await
        .unwrap();
    let holder_pid = holder
        .query_one_raw(sea_orm::Statement::from_string(
            t.db.get_database_backend(),
            "SELECT pg_backend_pid()::bigint",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    let port_pool =
        sea_orm::Database::connect(service::connection::batch_connect_options(&t.url).unwrap())
            .await
            .unwrap();
    let port = tokio::spawn(async move {
        let summary = port_all(&port_pool, 4, Overlap::AUTO).await;
        port_pool.close().await.unwrap();
        summary
    });
    // Each attempt waits on the holder's lock in a transaction of its own.
    let waiting = format!(
        "SELECT (extract(epoch FROM xact_start) * 1000000)::bigint FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' \
         AND {holder_pid} = ANY(pg_blocking_pids(pid))"
    );
    let mut first_attempt = None;
    // Bounds a failure only (the port waiting without a lock timeout).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        assert!(
            !port.is_finished(),
            "the port ended while the lock was held"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no second attempt was seen waiting on the lock"
        );
        match (first_attempt, query_i64(waiting.clone()).await) {
            (None, Some(started)) => first_attempt = Some(started),
            (Some(first), Some(started)) if started != first => break,
            _ => {}
        }
        // A poll interval, not a stand-in for progress: the loop ends on
        // what the server shows.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    holder.rollback().await.unwrap();
    let summary = port.await.unwrap().unwrap();
    assert_eq!(
        (summary.scanned, summary.changed),
        (rows.len() as u64, changed)
    );
    assert_eq!(parsed(t.pipeline_configs().await), expected);
    assert_eq!(committed_rows(&t.db, BACKUP_TABLE).await, changed);
}

/// PostgreSQL only: MariaDB's lock wait timeout cannot be set for the
/// port's sessions alone without a global change other tests would see.
mod opening_a_batch_is_retried_behind_a_lock {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        testkit::run_on(
            Backend::Postgres,
            "open_retried",
            opening_a_batch_is_retried_behind_a_lock,
        )
        .await;
    }
}

/// The port's name: the kill tests apply it, and only it, by name.
const PORT: &str = "m20261125_000002_port_legacy_runner_blocks";

/// SIGKILL the migration binary at four points of observed progress (kept
/// originals), drawn afresh each run, then let it finish: the table equals an
/// uninterrupted run's, and `down` restores every original.
async fn killed_and_rerun(t: TestDb) {
    t.create_langbot_schema().await;
    let (rows, expected, changed) = seed(&t, 20_000).await;
    // The schema first; the killed runs apply the port alone, by name.
    Migrator::up(&t.db, Some(1)).await.unwrap();
    let spawn = |args: &[&str]| t.spawn_migration(200, args);
    kill_four_times(
        changed,
        || spawn(&["up", "--to", PORT]),
        || committed_rows(&t.db, BACKUP_TABLE),
    )
    .await;
    let out = spawn(&["up", "--to", PORT]).wait_with_output().unwrap();
    assert!(out.status.success(), "final run failed");
    let status = t.migration_status().await;
    assert_eq!(
        status.last().map(String::as_str),
        Some(PORT),
        "only the port may have been applied: {status:?}"
    );

    assert_eq!(parsed(t.pipeline_configs().await), expected);
    assert_eq!(committed_rows(&t.db, BACKUP_TABLE).await, changed);

    let out = spawn(&["down", "--to", PORT]).wait_with_output().unwrap();
    assert!(out.status.success(), "down failed");
    assert_eq!(
        t.pipeline_configs().await,
        rows,
        "down must restore every original"
    );
}

/// The servers only: SQLite has one writer and no conflicts to lose.
mod a_batch_that_loses_a_conflict_is_redone {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        testkit::run_on(
            Backend::Postgres,
            "conflict_redone",
            a_batch_that_loses_a_conflict_is_redone,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        testkit::run_on(
            Backend::MySql,
            "conflict_redone",
            a_batch_that_loses_a_conflict_is_redone,
        )
        .await;
    }
}

/// Two batches in flight only on a server pool that may open two
/// connections (the migration binary's), whatever the caller asks; one in
/// a transaction, whose nested transactions would share its connection;
/// one on SQLite.
async fn two_batches_only_where_the_connection_allows(t: TestDb) {
    use sea_orm::{DatabaseExecutor, TransactionTrait};
    let server = t.backend != Backend::Sqlite;
    let batch_pool =
        sea_orm::Database::connect(service::connection::batch_connect_options(&t.url).unwrap())
            .await
            .unwrap();
    let on_batch_pool = DatabaseExecutor::from(&batch_pool);
    assert_eq!(
        Overlap::AUTO.batches_in_flight(&on_batch_pool),
        if server { 2 } else { 1 }
    );
    assert_eq!(Overlap::SERIAL.batches_in_flight(&on_batch_pool), 1);
    let txn = batch_pool.begin().await.unwrap();
    assert_eq!(Overlap::AUTO.batches_in_flight(&(&txn).into()), 1);
    txn.rollback().await.unwrap();
    let mut one = service::connection::connect_options(&t.url).unwrap();
    one.max_connections(1).min_connections(1);
    let one = sea_orm::Database::connect(one).await.unwrap();
    assert_eq!(Overlap::AUTO.batches_in_flight(&(&one).into()), 1);
    one.close().await.unwrap();
    batch_pool.close().await.unwrap();
}

on_every_backend!(
    two_batches_only_where_the_connection_allows,
    vectors_port_and_restore,
    no_pipelines_table_is_a_no_op,
    every_row_once_at_any_batch_size,
    killed_and_rerun
);
