//! The deploy binary under the faults production produces by itself: a
//! server that closes idle sessions, connections cut, black-holed or killed
//! by the server, a server crash, and a binary older than the database.
//!
//! Each fault lands at observed progress (originals kept in the port's
//! backup table, or the lease row changing hands), never after a sleep.
//! Each run then must look like an uninterrupted one: every migration
//! recorded once, every pipeline config equal to what an uninterrupted
//! `up` made of the same rows on a database of its own, every original
//! kept; and no two migrators worked at once: a second migrator either
//! waited for the first to release (no takeover in its log, and the first
//! never lost its lease), or took over only a lease the first had lost
//! (the first stopped with "lost the migration lock").

use std::process::{Child, Command, Output, Stdio};

use migration::port::BACKUP_TABLE;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use testkit::{Backend, FaultProxy, TestDb, committed_rows, migration_bin};

/// Legacy pipelines per run: 80 batches of [`BATCH`].
const ROWS: usize = 4000;
const BATCH: &str = "50";

fn legacy_rows() -> Vec<(String, String)> {
    (0..ROWS)
        .map(|i| {
            (
                format!("p-{i:05}"),
                format!(
                    r#"{{"ai": {{"runner": {{"runner": "local-agent"}}, "local-agent": {{"n": {i}}}}}}}"#
                ),
            )
        })
        .collect()
}

/// A database LangBot made, with [`legacy_rows`] to port.
async fn langbot_database(backend: Backend, hint: &str, base: Option<&str>) -> TestDb {
    let t = TestDb::create(backend, hint, base).await;
    t.create_langbot_schema().await;
    t.insert_pipelines(&legacy_rows()).await;
    t
}

/// The `migration` binary on `url` with `args`, its stderr captured.
fn spawn(url: &str, args: &[&str]) -> Child {
    Command::new(migration_bin())
        .args(["-u", url, "--batch-size", BATCH])
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the migration binary")
}

/// Waits for `child` without blocking the runtime.
async fn finish(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait for migration"))
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What an uninterrupted `up` makes of [`legacy_rows`] on `backend`.
async fn uninterrupted(backend: Backend) -> Vec<(String, String)> {
    let t = langbot_database(backend, "reference", None).await;
    let out = finish(spawn(&t.url, &["up"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    t.pipeline_configs().await
}

/// Every migration recorded once, the configs as an uninterrupted run
/// left them, every original kept; `down -n 2` then restores every
/// original.
async fn assert_like_uninterrupted(t: &TestDb) {
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    assert_eq!(t.migration_status().await, names, "each migration once");
    assert_eq!(t.pipeline_configs().await, uninterrupted(t.backend).await);
    assert_eq!(committed_rows(&t.db, BACKUP_TABLE).await, ROWS as u64);
    let out = finish(spawn(&t.direct_url, &["down", "-n", "2"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(t.pipeline_configs().await, legacy_rows());
}

/// Waits until the port has committed at least `rows` originals while
/// `child` still runs.
async fn until_ported(t: &TestDb, child: &mut Child, rows: u64) -> u64 {
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the migration ended before the fault could land mid-run"
        );
        let done = committed_rows(&t.db, BACKUP_TABLE).await;
        if done >= rows {
            assert!(done < ROWS as u64, "the port finished before the fault");
            return done;
        }
        // A poll interval: the loop ends on what the database shows.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The holder of the lease row, if any.
async fn lease_holder(db: &DatabaseConnection) -> Option<String> {
    if !migration::catalog::table_exists(db, migration::lock::LOCK_TABLE)
        .await
        .unwrap()
    {
        return None;
    }
    let sql = format!(
        "SELECT holder FROM {} WHERE name = '{}'",
        migration::lock::LOCK_TABLE,
        migration::lock::LOCK_NAME
    );
    db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .map(|r| r.try_get_by_index::<String>(0).unwrap())
}

/// Asserts a line of ours, without any driver's formatting.
fn assert_plain(line: &str) {
    for leak in [
        "Execution Error",
        "Query Error",
        "Custom Error",
        "Connection Error",
        "error returned from database",
        " at line ",
        "WARN sqlx",
    ] {
        assert!(
            !line.contains(leak),
            "driver formatting ({leak}) in: {line}"
        );
    }
}

/// A run that lost its server, waited for it and finished.
fn assert_resumed(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
    assert!(stderr(out).contains("resuming the run"), "{}", stderr(out));
    assert_plain(&stderr(out));
}

/// A second migrator that waited for the first and took nothing over.
fn assert_waited(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
    assert!(!stderr(out).contains("taking over"), "{}", stderr(out));
}

/// The database's name in `url`.
fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned()
}

/// PostgreSQL ends every session idle for 300 ms (`idle_session_timeout`,
/// a managed server's setting, here far shorter than the lease's renewals
/// apart): a lone `up` completes, and so do two started one after the
/// other, the second waiting for the first without taking anything over.
async fn idle_session_timeout(staggered: bool) {
    let t = langbot_database(Backend::Postgres, "idle_timeout", None).await;
    t.exec(&format!(
        "ALTER DATABASE {} SET idle_session_timeout = '300ms'",
        database_name(&t.url)
    ))
    .await;
    let args = ["--lock-lease", "6", "up"];
    let mut first = spawn(&t.url, &args);
    let second = if staggered {
        until_ported(&t, &mut first, 1).await;
        Some(spawn(&t.url, &args))
    } else {
        None
    };
    let out = finish(first).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_plain(&stderr(&out));
    if let Some(second) = second {
        assert_waited(&finish(second).await);
    }
    assert_like_uninterrupted(&t).await;
}

mod idle_session_timeout {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lone_postgres() {
        super::idle_session_timeout(false).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn staggered_postgres() {
        super::idle_session_timeout(true).await;
    }
}

/// Every connection of the holder is cut mid-port (through a proxy) while
/// a second `up` waits: the holder reconnects and finishes, keeping its
/// lease; the second then finds nothing to do.
async fn holder_cut_mid_run(backend: Backend) {
    let t = langbot_database(backend, "cut", None).await;
    let proxy = FaultProxy::start(&t.url).await;
    let mut holder = spawn(&proxy.url(&t.url), &["--lock-lease", "6", "up"]);
    until_ported(&t, &mut holder, 1).await;
    let waiter = spawn(&t.url, &["--lock-lease", "6", "up"]);
    let before = proxy.accepted();
    until_ported(&t, &mut holder, 200).await;
    proxy.cut();
    let out = finish(holder).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_plain(&stderr(&out));
    assert!(
        proxy.accepted() > before,
        "the holder never reconnected after the cut"
    );
    assert_waited(&finish(waiter).await);
    assert_like_uninterrupted(&t).await;
}

/// The server ends every session of the holder mid-port
/// (`pg_terminate_backend`, MariaDB's `KILL CONNECTION`), the lease's
/// among them; a second `up` started then waits for the holder, which
/// reconnects and finishes.
async fn holder_sessions_killed(backend: Backend) {
    let mut t = langbot_database(backend, "killed", None).await;
    let mut holder = spawn(&t.url, &["--lock-lease", "6", "up"]);
    until_ported(&t, &mut holder, 200).await;
    let killer = Database::connect(t.direct_url.as_str()).await.unwrap();
    let sessions = testkit::other_sessions(&killer).await;
    assert!(!sessions.is_empty());
    for id in &sessions {
        let sql = match backend {
            Backend::Postgres => format!("SELECT pg_terminate_backend({id})"),
            _ => format!("KILL CONNECTION {id}"),
        };
        // A session may have ended by itself meanwhile.
        killer.execute_unprepared(&sql).await.ok();
    }
    // The test's own pools were among them.
    t.reconnect().await;
    let waiter = spawn(&t.url, &["--lock-lease", "6", "up"]);
    let out = finish(holder).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_plain(&stderr(&out));
    assert_waited(&finish(waiter).await);
    killer.close().await.ok();
    assert_like_uninterrupted(&t).await;
}

/// The holder's traffic is black-holed mid-port for longer than a lease:
/// it stops on its own ("lost the migration lock"), a second `up` takes
/// the expired lease over and finishes; once traffic flows again, nothing
/// the holder had in flight commits.
async fn holder_black_holed(backend: Backend) {
    let t = langbot_database(backend, "black_hole", None).await;
    let proxy = FaultProxy::start(&t.url).await;
    let mut holder = spawn(&proxy.url(&t.url), &["--lock-lease", "6", "up"]);
    until_ported(&t, &mut holder, 200).await;
    let first = lease_holder(&t.db).await.expect("the holder's lease");
    proxy.black_hole(true);
    let mut second = spawn(&t.url, &["--lock-lease", "6", "up"]);
    // Traffic flows again once the second migrator holds the lease.
    loop {
        if lease_holder(&t.db).await.is_some_and(|h| h != first) {
            break;
        }
        if second.try_wait().unwrap().is_some() {
            let out = finish(second).await;
            panic!(
                "the second migrator ended without taking the lease over: {}",
                stderr(&out)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    proxy.black_hole(false);
    let out = finish(second).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lease had expired: taking over"),
        "{}",
        stderr(&out)
    );
    let out = finish(holder).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // "lost the migration lock", or, when the server still did not answer
    // as it stopped, "the database server stopped answering ... lease".
    let line = stderr(&out)
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("lost the migration lock") || line.contains("stopped answering"),
        "{}",
        stderr(&out)
    );
    assert_plain(&stderr(&out));
    assert_like_uninterrupted(&t).await;
}

/// Every chunk between the holder and its server is delayed by 5 ms (a
/// slow, far network): the run is slower, not failed; its renewals, each
/// with a deadline, keep its lease, and a second `up` waits without taking
/// anything over.
async fn slow_network(backend: Backend) {
    let t = langbot_database(backend, "slow_network", None).await;
    let proxy = FaultProxy::start(&t.url).await;
    proxy.delay(std::time::Duration::from_millis(5));
    let mut holder = spawn(&proxy.url(&t.url), &["--lock-lease", "6", "up"]);
    until_ported(&t, &mut holder, 1).await;
    let waiter = spawn(&t.url, &["--lock-lease", "6", "up"]);
    let out = finish(holder).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_plain(&stderr(&out));
    assert_waited(&finish(waiter).await);
    assert_like_uninterrupted(&t).await;
}

macro_rules! on_both_servers {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(testkit::Backend::Postgres).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$scenario(testkit::Backend::MySql).await;
            }
        }
    )*};
}

on_both_servers!(
    holder_cut_mid_run,
    holder_sessions_killed,
    holder_black_holed,
    slow_network,
    takeover_after_a_long_wait
);

/// Runs `scripts/test-dbs.sh` with `args`, on a blocking thread; its
/// stdout.
async fn test_dbs(args: &[&str]) -> String {
    let script = testkit::workspace_root().join("scripts/test-dbs.sh");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || Command::new(script).args(&args).output())
        .await
        .unwrap()
        .expect("run scripts/test-dbs.sh");
    assert!(
        out.status.success(),
        "test-dbs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The server is SIGKILLed mid-port and started again (crash recovery).
/// With `--wait-for-db`, the run waits for it and finishes; without, it
/// ends with one line saying the connection was lost and that rerunning
/// resumes, and the rerun finishes. Runs on the server kept for restarts.
async fn server_crash(backend: Backend, wait: bool) {
    let (var, instance) = match backend {
        Backend::Postgres => ("TEST_POSTGRES_RESTART_URL", "postgres-restart"),
        _ => ("TEST_MYSQL_RESTART_URL", "mariadb-restart"),
    };
    let base = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set"));
    let mut t = langbot_database(backend, "crash", Some(&base)).await;
    let args: &[&str] = if wait {
        &["--lock-lease", "5", "--wait-for-db", "120", "up"]
    } else {
        &["--lock-lease", "5", "up"]
    };
    let mut run = spawn(&t.url, args);
    until_ported(&t, &mut run, 500).await;
    test_dbs(&["crash", instance]).await;
    if wait {
        test_dbs(&["up", instance]).await;
        assert_resumed(&finish(run).await);
    } else {
        let out = finish(run).await;
        test_dbs(&["up", instance]).await;
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let line = stderr(&out)
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no error line: {}", stderr(&out)))
            .to_owned();
        assert!(
            line.contains("the connection to the database server was lost")
                && line.contains("rerunning `migration up` resumes"),
            "{line}"
        );
        assert_plain(&stderr(&out));
        // The lease the crashed run could not release expires first.
        let out = finish(spawn(&t.url, &["--lock-lease", "5", "up"])).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // The test's own pools lost their connections with the server.
    t.reconnect().await;
    assert_like_uninterrupted(&t).await;
}

mod server_crash {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waited_for_postgres() {
        super::server_crash(testkit::Backend::Postgres, true).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waited_for_mysql() {
        super::server_crash(testkit::Backend::MySql, true).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn not_waited_for_postgres() {
        super::server_crash(testkit::Backend::Postgres, false).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn not_waited_for_mysql() {
        super::server_crash(testkit::Backend::MySql, false).await;
    }
}

/// The binary of an older release on a database a newer one migrated (a
/// rolled-back deploy): `status` and `up` exit 0 and name the newer
/// migrations, `down` refuses, naming them, and changes nothing.
async fn older_binary_on_a_newer_database(t: TestDb) {
    let up = finish(spawn(&t.url, &["up"])).await;
    assert!(up.status.success(), "{}", stderr(&up));
    let future = "m20270101_000001_from_a_newer_release";
    t.exec(&format!(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('{future}', 0)"
    ))
    .await;
    let history = t.migration_status().await;
    let out = finish(spawn(&t.url, &["status"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("Applied  {future} (by a newer release")),
        "{text}"
    );
    let out = finish(spawn(&t.url, &["status", "--format", "json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ahead"], serde_json::json!([future]));
    assert_eq!(json["pending"], serde_json::json!([]));
    let out = finish(spawn(&t.url, &["up"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("newer release"), "{}", stderr(&out));
    assert!(stderr(&out).contains(future), "{}", stderr(&out));
    for down in [&["down"][..], &["down", "-n", "3"], &["reset", "--force"]] {
        let out = finish(spawn(&t.url, down)).await;
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("refusing"), "{}", stderr(&out));
        assert!(stderr(&out).contains(future), "{}", stderr(&out));
        assert_plain(&stderr(&out));
    }
    assert_eq!(t.migration_status().await, history, "nothing changed");
}

testkit::on_every_topology!(older_binary_on_a_newer_database);

/// Behind PgBouncer in transaction mode without `?pooler=transaction`, the
/// prepared-statement clash says which setting fixes it. (A run may be
/// lucky and meet no clash: PgBouncer may hand each client a server
/// connection of its own; it is tried up to five times.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_without_the_pooler_setting_says_so_postgres_pgbouncer() {
    let t = TestDb::on(
        Backend::Postgres,
        testkit::Topology::Pooler,
        "no_pooler_param",
    )
    .await
    .expect("PostgreSQL behind PgBouncer");
    let mut url = url::Url::parse(&t.url).unwrap();
    url.set_query(None);
    let mut failures = Vec::new();
    for _ in 0..5 {
        let out = finish(spawn(url.as_str(), &["up"])).await;
        if out.status.success() {
            continue;
        }
        failures.push(stderr(&out));
        break;
    }
    let failure = failures
        .pop()
        .expect("five runs through PgBouncer without ?pooler=transaction met no clash");
    assert!(failure.contains("add `?pooler=transaction`"), "{failure}");
    assert_plain(&failure);
}

/// On Galera, the node the holder is connected to is SIGKILLed mid-port
/// while a second `up` waits on another node: the holder ends with the
/// lost-connection line, the second takes the expired lease over and
/// finishes; the killed node then rejoins the cluster. Runs alone among
/// the tests that use nodes 2 and 3 (`.config/nextest.toml`).
async fn galera_node_killed(t: TestDb) {
    let nodes = t.node_urls();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    t.create_langbot_schema().await;
    t.insert_pipelines(&legacy_rows()).await;
    // Node 3 must have every row before the holder reads them there.
    let n3 = Database::connect(nodes[2].as_str()).await.unwrap();
    while committed_rows(&n3, "legacy_pipelines").await < ROWS as u64 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    n3.close().await.ok();
    let mut holder = spawn(&nodes[2], &["--lock-lease", "6", "up"]);
    until_ported(&t, &mut holder, 200).await;
    let second = spawn(&nodes[1], &["--lock-lease", "6", "up"]);
    test_dbs(&["crash", "galera3"]).await;
    let held = finish(holder).await;
    let out = finish(second).await;
    // The cluster is whole again before anything is asserted.
    test_dbs(&["up", "galera3"]).await;
    assert_eq!(held.status.code(), Some(1), "{}", stderr(&held));
    // The holder's pool may still be trying to reconnect when its lease
    // runs out: either way the line says the server went away.
    assert!(
        stderr(&held).contains("rerunning `migration up` resumes"),
        "{}",
        stderr(&held)
    );
    assert_plain(&stderr(&held));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lease had expired: taking over"),
        "{}",
        stderr(&out)
    );
    assert_like_uninterrupted(&t).await;
}

testkit::on_galera!(galera_node_killed);

/// A PostgreSQL failover mid-port: the primary is SIGKILLed, its streaming
/// standby (made with `pg_basebackup`) promoted, and the stable address the
/// deploy uses (a proxy) repointed to it. With `--wait-for-db`, the running
/// `up` waits, resumes on the new primary and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failover_mid_port_postgres() {
    let urls = test_dbs(&["failover-pair"]).await;
    let url_of = |var: &str| {
        urls.lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!("no {var} in: {urls}"))
            .to_owned()
    };
    let (primary, standby) = (
        url_of("TEST_POSTGRES_PRIMARY_URL"),
        url_of("TEST_POSTGRES_STANDBY_URL"),
    );
    let proxy = FaultProxy::start(&primary).await;
    let mut t = langbot_database(Backend::Postgres, "failover", Some(&proxy.url(&primary))).await;
    // The standby has every row before the primary goes.
    let name = database_name(&t.url);
    let replica = loop {
        let url = format!("{standby}/{name}");
        if let Ok(db) = Database::connect(url.as_str()).await {
            break db;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    while committed_rows(&replica, "legacy_pipelines").await < ROWS as u64 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    replica.close().await.ok();
    let mut run = spawn(&t.url, &["--lock-lease", "6", "--wait-for-db", "120", "up"]);
    until_ported(&t, &mut run, 200).await;
    test_dbs(&["crash", "postgres-primary"]).await;
    // The run tries its server again while only the dead primary is behind
    // the address: the proxy accepts, and hangs up.
    let before = proxy.accepted();
    while proxy.accepted() == before {
        assert!(run.try_wait().unwrap().is_none(), "the run ended");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    test_dbs(&["failover-promote"]).await;
    proxy.repoint(&standby);
    proxy.cut();
    assert_resumed(&finish(run).await);
    t.reconnect().await;
    assert_like_uninterrupted(&t).await;
    drop(t);
    test_dbs(&["failover-stop"]).await;
}

/// A takeover that waited behind a row lock for longer than a lease (the
/// cut-off holder's transaction still open on the server) keeps the lease
/// it took: it counts from the moment it was taken, not from when the
/// statement was sent. Here the test itself holds the expired lease row
/// locked until the migrator has waited a whole lease.
async fn takeover_after_a_long_wait(backend: Backend) {
    use sea_orm::TransactionTrait;
    let t = langbot_database(backend, "long_wait", None).await;
    migration::lock::ensure_table(&t.db).await.unwrap();
    t.exec(&format!(
        "INSERT INTO {} (name, holder, session, acquired_at_ms, expires_at_ms) \
         VALUES ('{}', 'gone-host:1:dead', '', 0, 0)",
        migration::lock::LOCK_TABLE,
        migration::lock::LOCK_NAME
    ))
    .await;
    let blocker = Database::connect(t.direct_url.as_str()).await.unwrap();
    let txn = blocker.begin().await.unwrap();
    txn.execute_unprepared(&format!(
        "SELECT holder FROM {} FOR UPDATE",
        migration::lock::LOCK_TABLE
    ))
    .await
    .unwrap();
    let lease = std::time::Duration::from_secs(2);
    let mut run = spawn(&t.url, &["--lock-lease", "2", "up"]);
    // The migrator's statement on the lease row waits for the lock...
    let waiting = match backend {
        Backend::Postgres => {
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%migration_lock%' AND datname = current_database()"
        }
        _ => {
            "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND INFO LIKE '%migration_lock%' AND ID <> CONNECTION_ID()"
        }
    };
    loop {
        assert!(run.try_wait().unwrap().is_none(), "the migrator ended");
        let row =
            t.db.query_one_raw(Statement::from_string(t.db.get_database_backend(), waiting))
                .await
                .unwrap()
                .unwrap();
        if row.try_get_by_index::<i64>(0).unwrap() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // ... for longer than a lease: that length of time is what is tested.
    let waited = std::time::Instant::now();
    while waited.elapsed() < lease + lease / 2 {
        assert!(run.try_wait().unwrap().is_none(), "the migrator ended");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    txn.rollback().await.unwrap();
    blocker.close().await.ok();
    let out = finish(run).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lease had expired: taking over"),
        "{}",
        stderr(&out)
    );
    assert_like_uninterrupted(&t).await;
}
