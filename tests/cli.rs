//! The deploy binary as a deploy pipeline runs it: a process, its exit code
//! and its output.

use std::path::Path;
use std::process::{Command, Output};

use migration::catalog;
use migration::lock::{LOCK_NAME, LOCK_TABLE};
use migration::port::BACKUP_TABLE;
use migration::schema::{INDEXES, LEGACY_SCOPE_KEY_INDEX, TABLE, UNIQUE_KEY};
use migration::{Migrator, MigratorTrait};
use testkit::{
    Backend, TestDb, Topology, committed_rows, langbot_ddl, migration_bin, on_every_backend,
    on_every_topology,
};

fn migration(cwd: &Path, args: &[&str]) -> Output {
    Command::new(migration_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .output()
        .expect("run migration binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ars-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn open_sqlite(path: &Path) -> sea_orm::DatabaseConnection {
    service::connection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn no_url_creates_the_embedded_sqlite_database() {
    let dir = temp_dir("embedded");
    let out = migration(&dir, &["up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("using embedded SQLite ./agent_runner_state.db"),
        "{}",
        stderr(&out)
    );
    let db = open_sqlite(&dir.join("agent_runner_state.db")).await;
    let schema = catalog::read_table(&db, TABLE).await.unwrap().unwrap();
    assert!(schema.has_unique_on(UNIQUE_KEY.1));
    for (name, _) in INDEXES {
        assert!(schema.has_index(name), "{name}");
    }
    db.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn no_url_adopts_a_langbot_sqlite_file_with_rows() {
    let dir = temp_dir("adopt");
    let path = dir.join("agent_runner_state.db");
    let db = service::connection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    use sea_orm::ConnectionTrait;
    for stmt in langbot_ddl(Backend::Sqlite) {
        db.execute_unprepared(&stmt).await.unwrap();
    }
    for i in 0..50 {
        db.execute_unprepared(&format!(
            "INSERT INTO agent_runner_state (runner_id, binding_identity, scope, scope_key, \
             state_key, value_json, created_at, updated_at) VALUES ('r', 'b', 'runner', \
             'runner:v2:{i}', 'k{i}', '{{\"i\": {i}}}', '2025-01-01 00:00:00', '2025-01-01 00:00:00')"
        ))
        .await
        .unwrap();
    }
    db.close().await.unwrap();

    let out = migration(&dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("adopting existing agent_runner_state"));

    let db = open_sqlite(&path).await;
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT state_key, value_json FROM agent_runner_state ORDER BY id",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 50);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.try_get_by_index::<String>(0).unwrap(), format!("k{i}"));
        assert_eq!(
            r.try_get_by_index::<String>(1).unwrap(),
            format!("{{\"i\": {i}}}")
        );
    }
    db.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_urls_give_one_error_line_and_exit_1() {
    let dir = temp_dir("bad-url");
    for url in [
        "bogus",
        "postgres://nobody@127.0.0.1:1/db",
        "mysql://nobody:secret@127.0.0.1:1/db",
        "sqlite:///nonexistent-dir/x/y.db",
    ] {
        let out = migration(&dir, &["-u", url, "up"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{url}: {err}");
        let lines: Vec<_> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{url}: {err}");
        assert!(lines[0].starts_with("error: cannot connect to "), "{err}");
        assert!(!err.contains("secret"), "password leaked: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn status_gates_deploys_and_never_writes(t: TestDb) {
    let dir = temp_dir(&format!("status-{}", t.backend.name()));
    let out = migration(&dir, &["-u", &t.url, "status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let total = Migrator::migrations().len();
    let counts = |applied: usize| format!("{applied} applied, {} pending", total - applied);
    assert!(stdout(&out).contains(&counts(0)), "{}", stdout(&out));
    assert_eq!(
        catalog::table_names(&t.db).await.unwrap(),
        Vec::<String>::new()
    );

    // Partly migrated.
    let out = migration(&dir, &["-u", &t.url, "up", "-n", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = migration(&dir, &["-u", &t.url, "status"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains(&counts(1)), "{}", stdout(&out));

    let out = migration(&dir, &["-u", &t.url, "up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = migration(&dir, &["-u", &t.url, "status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&counts(total)), "{}", stdout(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `up --to` applies up to a named migration and never past it; `down --to`
/// undoes back to it; an unknown name is one error line listing the names.
async fn up_and_down_to_a_named_migration(t: TestDb) {
    let run = |args: &[&str]| {
        let mut all = vec!["-u", t.url.as_str()];
        all.extend_from_slice(args);
        migration(&std::env::temp_dir(), &all)
    };
    const CREATE: &str = "m20261125_000001_create_agent_runner_state";
    const PORT: &str = "m20261125_000002_port_legacy_runner_blocks";
    let out = run(&["up", "--to", PORT]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(t.migration_status().await, [CREATE, PORT]);
    // Already applied: nothing more.
    let out = run(&["up", "--to", CREATE]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(t.migration_status().await, [CREATE, PORT]);
    let out = run(&["down", "--to", PORT]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(t.migration_status().await, [CREATE]);
    let out = run(&["up", "--to", "m99_nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no migration named \"m99_nope\"") && err.contains(PORT),
        "{err}"
    );
    assert_eq!(t.migration_status().await, [CREATE]);
    let out = run(&["up", "-n", "1", "--to", PORT]);
    assert_eq!(out.status.code(), Some(2), "-n with --to is a usage error");
}

async fn destructive_commands_spare_langbot_tables(t: TestDb) {
    t.create_langbot_schema().await;
    t.exec("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        .await;
    t.exec("INSERT INTO alembic_version (version_num) VALUES ('abc')")
        .await;
    let dir = temp_dir(&format!("fresh-{}", t.backend.name()));
    let out = migration(&dir, &["-u", &t.url, "up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = catalog::table_names(&t.db).await.unwrap();

    for cmd in ["fresh", "refresh", "reset"] {
        let out = migration(&dir, &["-u", &t.url, cmd]);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {}", stderr(&out));
        assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
        assert_eq!(catalog::table_names(&t.db).await.unwrap(), before);
    }
    let out = migration(&dir, &["-u", &t.url, "fresh", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(catalog::table_names(&t.db).await.unwrap(), before);
    assert_eq!(
        t.rows_as_text("SELECT version_num FROM alembic_version")
            .await,
        vec![vec![Some("abc".to_owned())]]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

on_every_backend!(
    up_and_down_to_a_named_migration,
    status_gates_deploys_and_never_writes,
    destructive_commands_spare_langbot_tables,
);

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn eight_migrators_at_once(t: TestDb) {
    let dir = temp_dir(&format!("eight-{}", t.backend.name()));
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(migration_bin())
                .args(["-u", &t.url, "up"])
                .current_dir(&dir)
                .env_remove("DATABASE_URL")
                .env("NO_COLOR", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let applied = t
        .rows_as_text("SELECT version FROM seaql_migrations ORDER BY version")
        .await;
    let expected: Vec<Vec<Option<String>>> = Migrator::migrations()
        .iter()
        .map(|m| vec![Some(m.name().to_owned())])
        .collect();
    assert_eq!(applied, expected, "each migration recorded once");
    let schema = catalog::read_table(&t.db, TABLE).await.unwrap().unwrap();
    let mut names: Vec<&str> = schema.indexes.iter().map(|i| i.name.as_str()).collect();
    let all = names.len();
    names.dedup();
    assert_eq!(names.len(), all);
    assert_eq!(schema.indexes.len(), INDEXES.len() + 2, "{schema}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A lock held elsewhere makes `up` wait, then fail clearly at the timeout;
/// `lock status` shows the holder, `lock release` refuses a live lease and
/// clears it with `--force`; then `up` runs.
async fn lock_wait_times_out_clearly(t: TestDb) {
    use sea_orm::ConnectionTrait;
    let dir = temp_dir(&format!("lock-{}-{:?}", t.backend.name(), t.topology));
    let run = |args: &[&str]| migration(&dir, &[&["-u", t.url.as_str()], args].concat());
    let _file_lock = match t.backend {
        Backend::Sqlite => {
            let path = t
                .url
                .trim_start_matches("sqlite://")
                .split('?')
                .next()
                .unwrap();
            let file = std::fs::File::create(format!("{path}.migration-lock")).unwrap();
            file.lock().unwrap();
            Some(file)
        }
        _ => {
            // A live lease of another migrator, an hour long.
            let direct = t.direct().await;
            migration::lock::ensure_table(&direct).await.unwrap();
            direct
                .execute_unprepared(&format!(
                    "INSERT INTO {LOCK_TABLE} (name, holder, acquired_at_ms, expires_at_ms) \
                     VALUES ('{LOCK_NAME}', 'other-host:42:cafe', 0, 99999999999999)"
                ))
                .await
                .unwrap();
            direct.close().await.ok();
            None
        }
    };
    let out = run(&["--lock-timeout", "1", "up"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("waiting"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("still holds the migration lock after 1s"),
        "{}",
        stderr(&out)
    );
    assert!(!catalog::table_exists(&t.db, TABLE).await.unwrap());
    if t.backend != Backend::Sqlite {
        assert!(
            stderr(&out).contains("other-host:42:cafe"),
            "{}",
            stderr(&out)
        );
        let out = run(&["lock", "status"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("held by other-host:42:cafe"),
            "{}",
            stdout(&out)
        );
        let out = run(&["lock", "release"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("has not expired"), "{}", stderr(&out));
        let out = run(&["lock", "release", "--force"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("released the lock of other-host:42:cafe"));
        let out = run(&["lock", "status"]);
        assert!(stdout(&out).contains("free"), "{}", stdout(&out));
        let out = run(&["up"]);
        assert!(out.status.success(), "{}", stderr(&out));
        // The lease is released at the end of a run.
        assert!(stdout(&run(&["lock", "status"])).contains("free"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A migrator SIGKILLed mid-migration leaves its lease; the next `up` takes
/// over when the lease runs out, never at the lock timeout, and finishes
/// the job. On SQLite the OS releases the
/// file lock at once.
async fn killed_holder_blocks_at_most_one_lease(t: TestDb) {
    t.create_langbot_schema().await;
    let rows: Vec<(String, String)> = (0..6000)
        .map(|i| {
            (
                format!("k-{i:05}"),
                format!(r#"{{"ai": {{"runner": {{"runner": "local-agent"}}, "local-agent": {{"n": {i}}}}}}}"#),
            )
        })
        .collect();
    t.insert_pipelines(&rows).await;
    let spawn = |args: &[&str]| {
        let mut all = vec!["--lock-lease", "2", "--batch-size", "50"];
        all.extend_from_slice(args);
        Command::new(migration_bin())
            .args(["-u", t.url.as_str()])
            .args(all)
            .current_dir(std::env::temp_dir())
            .env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let direct = t.direct().await;
    let child = spawn(&["up"]);
    // Observed progress: some originals kept, so the port is under way.
    // Through the pooler the run is one transaction, so nothing shows as
    // committed: there the server session busy porting is the progress.
    let progress = || async {
        if t.topology == Topology::Pooler {
            let busy = t
                .rows_as_text(
                    "SELECT pid FROM pg_stat_activity WHERE xact_start IS NOT NULL \
                     AND query LIKE '%legacy_pipelines%' AND pid <> pg_backend_pid() \
                     AND datname = current_database()",
                )
                .await;
            busy.len() as u64
        } else {
            committed_rows(&direct, BACKUP_TABLE).await
        }
    };
    let kill = testkit::kill_when(child, 1, progress).await;
    eprintln!("killed the holder at {kill:?}");
    let sqlite = t.backend == Backend::Sqlite;
    if !sqlite {
        let status = migration(&std::env::temp_dir(), &["-u", &t.url, "lock", "status"]);
        assert!(stdout(&status).contains("held by"), "{}", stdout(&status));
    }
    let out = spawn(&["--lock-timeout", "600", "up"])
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Only an expired lease is taken over: a connection that ended proves
    // nothing about its process.
    assert_eq!(
        stderr(&out).contains("lease had expired: taking over"),
        !sqlite,
        "{}",
        stderr(&out)
    );
    assert_eq!(
        t.migration_status().await.len(),
        Migrator::migrations().len()
    );
    assert_eq!(
        committed_rows(&direct, BACKUP_TABLE).await,
        rows.len() as u64,
        "the port finished: every config ported, its original kept"
    );
    if !sqlite {
        let status = migration(&std::env::temp_dir(), &["-u", &t.url, "lock", "status"]);
        assert!(stdout(&status).contains("free"), "{}", stdout(&status));
    }
    direct.close().await.ok();
}

async fn check_reports_drift(t: TestDb) {
    let dir = temp_dir(&format!("check-{}", t.backend.name()));
    let run = |args: &[&str]| migration(&dir, &[&["-u", t.url.as_str()], args].concat());
    assert!(run(&["up"]).status.success());
    let out = run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("no drift"));

    t.exec(&match t.backend {
        Backend::MySql => {
            "DROP INDEX ix_agent_runner_state_bot_id ON agent_runner_state".to_owned()
        }
        _ => "DROP INDEX ix_agent_runner_state_bot_id".to_owned(),
    })
    .await;
    t.exec(&format!(
        "CREATE INDEX {LEGACY_SCOPE_KEY_INDEX} ON agent_runner_state (scope_key)"
    ))
    .await;
    match t.backend {
        Backend::Postgres => {
            t.exec("ALTER TABLE agent_runner_state ALTER COLUMN actor_id TYPE varchar(255) COLLATE \"default\"")
                .await
        }
        Backend::MySql => {
            t.exec("ALTER TABLE agent_runner_state MODIFY actor_id varchar(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NULL")
                .await
        }
        // SQLite cannot change a column's type in place: rebuild the column,
        // in one call, so on one of the pool's connections (SQLite parses
        // DDL against the schema the connection last read, which the other
        // connection's DDL above has made stale).
        Backend::Sqlite => {
            t.exec(
                "DROP INDEX ix_agent_runner_state_actor_id; \
                 ALTER TABLE agent_runner_state DROP COLUMN actor_id; \
                 ALTER TABLE agent_runner_state ADD COLUMN actor_id TEXT",
            )
            .await;
        }
    }
    let out = run(&["check"]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(4), "{report}");
    assert!(
        report.contains("index ix_agent_runner_state_bot_id (bot_id) is missing"),
        "{report}"
    );
    let column_problem = match t.backend {
        Backend::Postgres => "column actor_id: collation default, expected C",
        Backend::MySql => {
            "column actor_id: collation utf8mb4_general_ci, expected utf8mb4_nopad_bin"
        }
        Backend::Sqlite => "column actor_id: type text, expected varchar(255)",
    };
    assert!(report.contains(column_problem), "{report}");
    assert!(
        report.contains(&format!("note: redundant index {LEGACY_SCOPE_KEY_INDEX}")),
        "{report}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn plan_prints_what_up_would_run(t: TestDb) {
    let dir = temp_dir(&format!("plan-{}", t.backend.name()));
    let run = |args: &[&str]| migration(&dir, &[&["-u", t.url.as_str()], args].concat());
    let out = run(&["plan"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("CREATE TABLE"), "{}", stdout(&out));
    assert_eq!(
        catalog::table_names(&t.db).await.unwrap(),
        Vec::<String>::new()
    );

    // On LangBot's table missing one index: only what adoption needs.
    t.create_langbot_schema().await;
    t.exec(&match t.backend {
        Backend::MySql => "DROP INDEX ix_agent_runner_state_scope ON agent_runner_state".to_owned(),
        _ => "DROP INDEX ix_agent_runner_state_scope".to_owned(),
    })
    .await;
    let tables = catalog::table_names(&t.db).await.unwrap();
    let out = run(&["plan"]);
    let plan = stdout(&out);
    assert_eq!(out.status.code(), Some(3), "{plan}");
    assert!(plan.contains("-- adopt agent_runner_state"), "{plan}");
    assert!(!plan.contains("CREATE TABLE"), "{plan}");
    assert_eq!(plan.matches("CREATE INDEX").count(), 1, "{plan}");
    assert!(plan.contains("ix_agent_runner_state_scope"), "{plan}");
    assert_eq!(
        plan.contains("ALTER TABLE"),
        t.backend != Backend::Sqlite,
        "{plan}"
    );
    assert_eq!(
        catalog::table_names(&t.db).await.unwrap(),
        tables,
        "plan wrote"
    );

    assert!(run(&["up"]).status.success());
    let out = run(&["plan"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("nothing to do"));
    std::fs::remove_dir_all(&dir).unwrap();
}

on_every_topology!(
    eight_migrators_at_once,
    lock_wait_times_out_clearly,
    killed_holder_blocks_at_most_one_lease,
    check_reports_drift,
    plan_prints_what_up_would_run,
);

/// Asking never changes a SQLite file: not its journal mode (LangBot's files
/// use a rollback journal), not a byte of it.
#[tokio::test]
async fn read_only_commands_leave_a_sqlite_file_byte_for_byte() {
    use sea_orm::ConnectionTrait;
    let dir = temp_dir("read-only");
    let path = dir.join("langbot.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    // Plain sqlx defaults: a rollback journal, as Python's sqlite3 makes.
    let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
    for stmt in langbot_ddl(Backend::Sqlite) {
        db.execute_unprepared(&stmt).await.unwrap();
    }
    db.close().await.unwrap();
    let before = std::fs::read(&path).unwrap();
    let url = format!("sqlite://{}", path.display());
    // LangBot's SQLite table already is the migrated schema: no drift.
    for (cmd, code) in [("status", 3), ("plan", 3), ("check", 0)] {
        let out = migration(&dir, &["-u", &url, cmd]);
        assert_eq!(out.status.code(), Some(code), "{cmd}: {}", stderr(&out));
    }
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file changed");
    for suffix in ["-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        assert!(!std::path::Path::new(&p).exists(), "{suffix} created");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A deploy that starts before its database: retries with backoff, says so,
/// then fails clearly when the time is up.
#[test]
fn wait_for_db_retries_then_fails_clearly() {
    let dir = temp_dir("wait");
    let started = std::time::Instant::now();
    let out = migration(
        &dir,
        &[
            "-u",
            "postgres://nobody@127.0.0.1:1/db",
            "--wait-for-db",
            "2",
            "up",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "gave up early"
    );
    assert!(err.contains("database not reachable yet"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: cannot connect to "), "{err}");
    assert!(last.contains("Connection refused"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The TLS-only servers' base URL with its query replaced by `query`.
fn tls_url(var: &str, db: &str, query: &str) -> String {
    let base =
        std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run scripts/test-dbs.sh"));
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&format!("/{db}"));
    url.set_query(Some(query).filter(|q| !q.is_empty()));
    url.into()
}

fn tls_file(name: &str) -> String {
    let dir =
        std::env::var("TEST_TLS_DIR").expect("TEST_TLS_DIR is not set: run scripts/test-dbs.sh");
    format!("{dir}/{name}")
}

/// TLS as users give it in URLs: a plain connection to a TLS-only server
/// and a certificate that does not verify each fail with one line saying
/// so; verified TLS and client certificates work.
mod tls_urls_connect_or_say_why_not {
    use super::*;

    #[test]
    fn postgres_mysql() {
        let ca = tls_file("ca.crt");
        let other = tls_file("other-ca.crt");
        let (cert, key) = (tls_file("client.crt"), tls_file("client.key"));
        let status = |url: String| {
            let out = migration(&std::env::temp_dir(), &["-u", &url, "status"]);
            (out.status.code(), stderr(&out), stdout(&out))
        };
        let pg = "TEST_POSTGRES_TLS_URL";
        let my = "TEST_MYSQL_TLS_URL";
        // Verified TLS: status answers (every migration pending on this database).
        for url in [
            tls_url(
                pg,
                "postgres",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            tls_url(
                pg,
                "postgres",
                &format!("sslmode=verify-ca&sslrootcert={ca}"),
            ),
            tls_url(pg, "postgres", "sslmode=require"),
            tls_url(
                my,
                "mysql",
                &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
            ),
            tls_url(my, "mysql", &format!("ssl-mode=VERIFY_CA&ssl-ca={ca}")),
            tls_url(my, "mysql", "ssl-mode=REQUIRED"),
        ] {
            let (code, err, out) = status(url.clone());
            assert_eq!(code, Some(3), "{url}: {err}{out}");
        }
        // Client certificates: certuser must present one.
        let pg_cert = |q: &str| {
            let mut u = url::Url::parse(&tls_url(pg, "postgres", q)).unwrap();
            u.set_username("certuser").unwrap();
            String::from(u)
        };
        let (code, err, _) = status(pg_cert(&format!(
            "sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"
        )));
        assert_eq!(code, Some(3), "{err}");
        let (code, err, _) = status(pg_cert(&format!("sslmode=verify-full&sslrootcert={ca}")));
        assert_eq!(code, Some(1), "{err}");
        let my_cert = |q: &str| {
            let mut u = url::Url::parse(&tls_url(my, "mysql", q)).unwrap();
            u.set_username("certuser").unwrap();
            u.set_password(None).unwrap();
            String::from(u)
        };
        let (code, err, _) = status(my_cert(&format!(
            "ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}&ssl-cert={cert}&ssl-key={key}"
        )));
        assert_eq!(code, Some(3), "{err}");
        let (code, err, _) = status(my_cert(&format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}")));
        assert_eq!(code, Some(1), "{err}");

        // A plain connection to a TLS-only server: one line that says TLS is
        // required and how to ask for it.
        for url in [
            tls_url(pg, "postgres", "sslmode=disable"),
            tls_url(my, "mysql", "ssl-mode=DISABLED"),
        ] {
            let (code, err, _) = status(url.clone());
            assert_eq!(code, Some(1), "{url}: {err}");
            assert!(err.contains("the server requires TLS"), "{url}: {err}");
            assert!(err.contains("sslmode=verify-full"), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        // A certificate that does not verify: against another CA, or (verify-full)
        // for another host name.
        for url in [
            tls_url(
                pg,
                "postgres",
                &format!("sslmode=verify-full&sslrootcert={other}"),
            ),
            tls_url(
                my,
                "mysql",
                &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={other}"),
            ),
        ] {
            let (code, err, _) = status(url.clone());
            assert_eq!(code, Some(1), "{url}: {err}");
            assert!(err.contains("certificate did not verify"), "{url}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        let mut wrong_host = url::Url::parse(&tls_url(
            pg,
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ))
        .unwrap();
        wrong_host.set_host(Some("127.0.0.2")).unwrap();
        let (code, err, _) = status(wrong_host.into());
        assert_eq!(code, Some(1), "{err}");
    }
}

/// Log lines for collectors: plain text without a single escape byte when
/// stderr is not a terminal, and with `--log-format json` one JSON object per
/// line carrying the fields (migration, rows done) — the error line too.
async fn logs_are_plain_or_json(t: TestDb) {
    t.create_langbot_schema().await;
    let rows: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                format!("p-{i:02}"),
                r#"{"ai": {"runner": {"runner": "local-agent"}}}"#.to_owned(),
            )
        })
        .collect();
    t.insert_pipelines(&rows).await;
    let dir = temp_dir(&format!("logs-{}-{:?}", t.backend.name(), t.topology));
    let run = |args: &[&str]| {
        Command::new(migration_bin())
            .args(["-u", t.url.as_str()])
            .args(args)
            .current_dir(&dir)
            .env_remove("DATABASE_URL")
            .env_remove("NO_COLOR")
            .output()
            .unwrap()
    };
    let out = run(&[
        "--log-format",
        "json",
        "up",
        "--to",
        "m20261125_000002_port_legacy_runner_blocks",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut port_done = false;
    for line in stderr(&out).lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
        if v["fields"]["migration"] == "legacy runner port" {
            port_done |= v["fields"]["rows_done"] == 20;
        }
    }
    assert!(port_done, "no structured progress line: {}", stderr(&out));
    // Text, stderr a pipe: no colour.
    let out = run(&["up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !out.stderr.contains(&0x1b),
        "escape bytes in {:?}",
        stderr(&out)
    );
    // The failure line is JSON too.
    let out = Command::new(migration_bin())
        .args(["-u", "oracle://nowhere", "--log-format", "json", "status"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let last = stderr(&out);
    let v: serde_json::Value = serde_json::from_str(last.trim().lines().last().unwrap()).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(
        v["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("unsupported URL scheme"),
        "{v}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `status`, `plan` and `check` with `--format json`: one JSON document on
/// stdout, the same exit codes as their text.
async fn gates_print_json(t: TestDb) {
    let dir = temp_dir(&format!("gates-{}", t.backend.name()));
    let run = |args: &[&str]| migration(&dir, &[&["-u", t.url.as_str()], args].concat());
    let json = |out: &Output| -> serde_json::Value {
        serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
    };
    let names: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let out = run(&["status", "--format", "json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        json(&out),
        serde_json::json!({"applied": [], "pending": names, "ahead": []})
    );
    let out = run(&["plan", "--format", "json"]);
    assert_eq!(out.status.code(), Some(3));
    let plan = json(&out);
    assert_eq!(plan["pending"].as_array().unwrap().len(), names.len());
    assert_eq!(plan["pending"][0]["name"], names[0].as_str());
    assert!(
        plan["pending"][0]["statements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().contains("CREATE TABLE")),
        "{plan}"
    );
    assert!(run(&["up"]).status.success());
    let out = run(&["status", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        json(&out),
        serde_json::json!({"applied": names, "pending": [], "ahead": []})
    );
    let out = run(&["plan", "--format", "json"]);
    assert_eq!(
        (out.status.code(), json(&out)),
        (Some(0), serde_json::json!({"pending": []}))
    );
    let out = run(&["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json(&out)["drift"], serde_json::json!([]));
    t.exec(match t.backend {
        Backend::MySql => "DROP INDEX ix_agent_runner_state_runner_id ON agent_runner_state",
        _ => "DROP INDEX ix_agent_runner_state_runner_id",
    })
    .await;
    let out = run(&["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    let report = json(&out);
    assert_eq!(report["table"], TABLE);
    assert_eq!(
        report["drift"],
        serde_json::json!([{
            "kind": "missing_index",
            "object": "ix_agent_runner_state_runner_id",
            "expected": "runner_id",
            "actual": null,
            "message": "index ix_agent_runner_state_runner_id (runner_id) is missing",
        }])
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

on_every_backend!(logs_are_plain_or_json, gates_print_json);

/// On a database that holds only this workspace's tables (the lock table
/// included), `fresh`, `refresh` and `reset` need no `--force`.
async fn destructive_commands_run_on_our_own_tables(t: TestDb) {
    let dir = temp_dir(&format!("own-{}-{:?}", t.backend.name(), t.topology));
    let run = |args: &[&str]| migration(&dir, &[&["-u", t.url.as_str()], args].concat());
    assert!(run(&["up"]).status.success());
    for cmd in ["fresh", "refresh", "reset"] {
        let out = run(&[cmd]);
        assert!(out.status.success(), "{cmd}: {}", stderr(&out));
    }
    // reset removes the history table and what the migrations created.
    assert!(
        !catalog::table_exists(&t.db, "seaql_migrations")
            .await
            .unwrap()
    );
    assert!(!catalog::table_exists(&t.db, TABLE).await.unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

on_every_topology!(destructive_commands_run_on_our_own_tables);
