//! Moving state between databases: `state-admin import` reads what `export`
//! writes, all or nothing, idempotent, refusing conflicts unless
//! `--overwrite`; `state-admin copy` goes SQLite → PostgreSQL → MariaDB →
//! SQLite and every column and `value_json` text comes back identical.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use migration::{Migrator, MigratorTrait};
use serde_json::{Value, json};
use testkit::{Backend, TestDb, admin_bin, on_every_topology};

fn admin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(admin_bin())
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run state-admin");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A test database of its own, migrated.
async fn migrated(backend: Backend, hint: &str) -> TestDb {
    let t = TestDb::create(backend, hint, None).await;
    Migrator::up(&t.db, None).await.unwrap();
    t
}

/// `state-admin copy` from one test database to another, which must
/// succeed; its JSON summary.
fn copied(from: &TestDb, to: &TestDb) -> Value {
    let out = admin(&["copy", "--from", &from.url, "--to", &to.url], None);
    assert!(
        out.status.success(),
        "{} -> {}: {}",
        from.backend.name(),
        to.backend.name(),
        stderr(&out)
    );
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// Export lines of rows as LangBot and this store write them: Python-style
/// texts, floats that lenient parsers change, NaN, unicode, nulls; whole
/// seconds (MariaDB's `DATETIME` keeps no more).
fn lines(n: usize) -> Vec<Value> {
    let texts = [
        r#"{"x": 0.9999999999999999, "e": 1e-07}"#,
        r#"[NaN, Infinity]"#,
        r#"{"text": "héllo 🌍 \u00e9", "n": 18446744073709551615}"#,
        r#"{"deep": [[[[1]]]], "b": true, "n": null}"#,
        "1",
    ];
    let scopes = ["conversation", "actor", "runner", "subject"];
    (0..n)
        .map(|i| {
            let scope = scopes[i % 4];
            json!({
                "id": i + 1,
                "runner_id": "plugin:langbot/local-agent/default",
                "binding_identity": format!("pipeline_{}", i % 7),
                "scope": scope,
                "scope_key": format!("conversation:v2:{:064x}", i % 13),
                "state_key": format!("k-{i:05}"),
                "value_json": if i % 11 == 10 { Value::Null } else { json!(texts[i % texts.len()]) },
                "bot_id": if i % 3 == 0 { Value::Null } else { json!("bot-1") },
                "workspace_id": null,
                "conversation_id": format!("c-{}", i % 5),
                "thread_id": null,
                "actor_type": "user",
                "actor_id": if i % 2 == 0 { json!("Bob") } else { json!("bob ") },
                "subject_type": null,
                "subject_id": null,
                "created_at": format!("2025-0{}-1{} 0{}:00:0{}", 1 + i % 9, i % 10, i % 10, i % 10),
                "updated_at": "2025-11-25 12:34:56",
            })
        })
        .collect()
}

fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

/// An export without the target's own ids, by key: what must agree.
fn exported(url: &str) -> Vec<Value> {
    let out = admin(&["-u", url, "export"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut rows: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("id");
            v
        })
        .collect();
    rows.sort_by_key(|r| (r["scope_key"].to_string(), r["state_key"].to_string()));
    rows
}

async fn import_is_exact_idempotent_and_all_or_nothing(t: TestDb) {
    Migrator::up(&t.db, None).await.unwrap();
    let url = t.url.as_str();
    let rows = lines(1200);
    let out = admin(&["-u", url, "import"], Some(&jsonl(&rows)));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        json!({"lines": 1200, "inserted": 1200, "unchanged": 0, "replaced": 0})
    );
    let after = exported(url);
    assert_eq!(after.len(), rows.len());
    let mut sorted = rows.clone();
    sorted.sort_by_key(|r| (r["scope_key"].to_string(), r["state_key"].to_string()));
    for (got, want) in after.iter().zip(&sorted) {
        for field in [
            "value_json",
            "scope_key",
            "state_key",
            "actor_id",
            "bot_id",
            "created_at",
            "updated_at",
        ] {
            assert_eq!(got[field], want[field], "{field} of {}", want["state_key"]);
        }
    }
    // Again: nothing changes.
    let out = admin(&["-u", url, "import"], Some(&jsonl(&rows)));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        json!({"lines": 1200, "inserted": 0, "unchanged": 1200, "replaced": 0})
    );
    // A changed row far down the file, and a new row before it: refused
    // whole, nothing written, the conflict named.
    let mut changed = rows.clone();
    changed[1100]["value_json"] = json!("{\"changed\": true}");
    let mut new_row = rows[0].clone();
    new_row["state_key"] = json!("new-row");
    changed.insert(5, new_row);
    let out = admin(&["-u", url, "import"], Some(&jsonl(&changed)));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exist in the target with other columns"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("k-01100"), "{}", stderr(&out));
    assert_eq!(exported(url), after, "a refused import wrote something");
    // With --overwrite: replaced, and the new row added.
    let out = admin(
        &["-u", url, "import", "--overwrite"],
        Some(&jsonl(&changed)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        json!({"lines": 1201, "inserted": 1, "unchanged": 1199, "replaced": 1})
    );
    let now = exported(url);
    assert_eq!(now.len(), 1201);
    assert!(
        now.iter()
            .any(|r| r["state_key"] == "k-01100" && r["value_json"] == "{\"changed\": true}")
    );

    // Bad lines: a typed error naming the line, nothing written.
    let before = exported(url);
    for (bad, why) in [
        (json!({"surprise": 1}), "unknown field"),
        (json!({"runner_id": "x"}), "missing field"),
        (
            {
                let mut r = rows[0].clone();
                r["state_key"] = json!("k".repeat(256));
                r
            },
            "state_key is 256 characters long",
        ),
        (
            {
                let mut r = rows[0].clone();
                r["actor_id"] = json!("a\u{0}b");
                r
            },
            "U+0000",
        ),
        (
            {
                // Under the limit in characters, over it in bytes.
                let mut r = rows[0].clone();
                r["value_json"] = json!(json!("é".repeat(131_072)).to_string());
                r
            },
            "value is 262146 bytes as JSON, over the limit of 262144 bytes",
        ),
        (
            {
                let mut r = rows[0].clone();
                r["created_at"] = json!("yesterday");
                r
            },
            "not a timestamp",
        ),
    ] {
        let mut input = jsonl(&rows[..3]);
        input.push_str("not json\n");
        let input = input.replacen("not json", &bad.to_string(), 1);
        let out = admin(&["-u", url, "import", "--overwrite"], Some(&input));
        assert_eq!(out.status.code(), Some(1), "{why}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("line 4:") && err.contains(why), "{why}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    assert_eq!(exported(url), before);
}

/// A target that `migration up` never touched: one line that says so.
async fn import_into_an_unmigrated_database_says_so(t: TestDb) {
    let out = admin(&["-u", &t.url, "import"], Some(&jsonl(&lines(2))));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not migrated: run `migration up`"),
        "{}",
        stderr(&out)
    );
}

on_every_topology!(
    import_is_exact_idempotent_and_all_or_nothing,
    import_into_an_unmigrated_database_says_so,
);

/// SQLite → PostgreSQL → MariaDB → SQLite and SQLite → MariaDB →
/// PostgreSQL → SQLite (every ordered pair of backends): every column and
/// every stored text comes back identical; a second copy changes nothing;
/// each copy ends with a verification of both sides.
mod copy_round_trip_across_backends {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_postgres_mysql() {
        let a = migrated(Backend::Sqlite, "copy_a").await;
        let b = migrated(Backend::Postgres, "copy_b").await;
        let c = migrated(Backend::MySql, "copy_c").await;
        let d = migrated(Backend::Sqlite, "copy_d").await;
        let rows = lines(700);
        let out = admin(&["-u", &a.url, "import"], Some(&jsonl(&rows)));
        assert!(out.status.success(), "{}", stderr(&out));
        for (from, to) in [(&a, &b), (&b, &c), (&c, &d)] {
            let summary = copied(from, to);
            assert_eq!(summary["rows"], 700, "{summary}");
            assert_eq!(summary["import"]["inserted"], 700, "{summary}");
        }
        assert_eq!(exported(&a.url), exported(&d.url));
        // And the other way round, so every ordered pair of backends is taken:
        // SQLite -> MariaDB -> PostgreSQL -> SQLite.
        let f = migrated(Backend::MySql, "copy_f").await;
        let g = migrated(Backend::Postgres, "copy_g").await;
        let h = migrated(Backend::Sqlite, "copy_h").await;
        for (from, to) in [(&a, &f), (&f, &g), (&g, &h)] {
            copied(from, to);
        }
        assert_eq!(exported(&a.url), exported(&h.url));
        // Again: nothing to do, and still verified.
        let out = admin(&["copy", "--from", &a.url, "--to", &b.url], None);
        assert!(out.status.success(), "{}", stderr(&out));
        let summary: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(summary["import"]["unchanged"], 700, "{summary}");
        // An unmigrated target: one line.
        let e = TestDb::create(Backend::Postgres, "copy_e", None).await;
        let out = admin(&["copy", "--from", &a.url, "--to", &e.url], None);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("not migrated"), "{}", stderr(&out));
    }
}

/// A copy SIGKILLed midway (observed: some rows committed in the target,
/// not all) keeps what it wrote; the next run resumes and verifies; a
/// conflicting target is refused before anything is written.
mod copy_resumes_after_a_kill_and_refuses_conflicts_first {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_postgres() {
        let a = migrated(Backend::Sqlite, "copy_kill_a").await;
        let b = migrated(Backend::Postgres, "copy_kill_b").await;
        let rows = lines(8_000);
        let out = admin(&["-u", &a.url, "import"], Some(&jsonl(&rows)));
        assert!(out.status.success(), "{}", stderr(&out));
        let child = Command::new(admin_bin())
            .args(["copy", "--from", &a.url, "--to", &b.url])
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let progress = || testkit::committed_rows(&b.db, "agent_runner_state");
        let kill = testkit::kill_when(child, 1_000, progress).await;
        assert!(kill.done > 0 && kill.done < 8_000, "{kill:?}");
        eprintln!("copy killed with {} of 8000 rows in the target", kill.done);
        let out = admin(&["copy", "--from", &a.url, "--to", &b.url], None);
        assert!(out.status.success(), "{}", stderr(&out));
        let summary: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(summary["rows"], 8_000, "{summary}");
        assert_eq!(summary["import"]["unchanged"], kill.done, "{summary}");
        assert_eq!(exported(&a.url), exported(&b.url));

        // A source row that differs from the target's: refused, nothing written.
        let c = TestDb::create(Backend::Sqlite, "copy_kill_c", None).await;
        Migrator::up(&c.db, None).await.unwrap();
        let mut changed = rows[..100].to_vec();
        changed[99]["value_json"] = json!("2");
        let mut extra = rows[0].clone();
        extra["state_key"] = json!("only-in-c");
        changed.insert(0, extra);
        let out = admin(&["-u", &c.url, "import"], Some(&jsonl(&changed)));
        assert!(out.status.success(), "{}", stderr(&out));
        let before = exported(&b.url);
        let out = admin(&["copy", "--from", &c.url, "--to", &b.url], None);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("k-00099"), "{}", stderr(&out));
        assert_eq!(exported(&b.url), before, "a refused copy wrote something");
    }
}

/// A source row the store would refuse (here a value over its limit,
/// written past it by raw SQL) stops a copy before it writes anything, with
/// or without `--overwrite`, even when it comes after a whole batch of good
/// rows; the error names the row.
mod copy_checks_every_source_row_before_writing {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_postgres() {
        use sea_orm::ConnectionTrait;
        let a = migrated(Backend::Sqlite, "copy_check_a").await;
        let b = migrated(Backend::Postgres, "copy_check_b").await;
        let out = admin(&["-u", &a.url, "import"], Some(&jsonl(&lines(600))));
        assert!(out.status.success(), "{}", stderr(&out));
        let oversized = format!("\"{}\"", "é".repeat(140_000));
        a.db.execute_raw(sea_orm::Statement::from_sql_and_values(
            a.db.get_database_backend(),
            "UPDATE agent_runner_state SET value_json = ? \
             WHERE id = (SELECT MAX(id) FROM agent_runner_state)",
            [oversized.into()],
        ))
        .await
        .unwrap();
        for overwrite in [false, true] {
            let mut args = vec!["copy", "--from", &a.url, "--to", &b.url];
            if overwrite {
                args.push("--overwrite");
            }
            let out = admin(&args, None);
            assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains("source row id 600") && err.contains("280002 bytes"),
                "{err}"
            );
            assert!(exported(&b.url).is_empty(), "a refused copy wrote rows");
        }
    }
}
