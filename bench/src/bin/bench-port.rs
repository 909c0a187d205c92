//! Benchmark of the legacy runner port, as a deploy runs it: the release
//! `migration` binary against a `legacy_pipelines` table made from LangBot's
//! DDL and filled with realistic legacy configs (~1.5 KB each, seven legacy
//! runner names round-robin, the other runners' blocks present).
//!
//! Measures the first pass, a no-op rerun over the ported table, the
//! binary's peak RSS (sampled from /proc) and CPU time (what the client
//! spent; the rest of the wall time is the server and the wire), and, in
//! the same run on a copy of the same rows, the SQL-only floor: the server
//! alone copying every original into a backup table and rewriting every
//! config in one statement. Prints one JSON object.
//!
//! ```sh
//! cargo run --release -p bench --bin bench-port -- --backend sqlite --rows 100000
//! cargo run --release -p bench --bin bench-port -- --backend postgres --url "$TEST_POSTGRES_URL"
//! # against a build of an earlier commit, in the same run:
//! cargo run --release -p bench --bin bench-port -- --backend postgres --baseline /tmp/old/migration
//! ```

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::json;
use testkit::{Backend, TestDb, langbot_ddl};

#[derive(Parser)]
struct Args {
    /// sqlite, postgres or mysql.
    #[arg(long)]
    backend: String,
    /// Server URL (postgres/mysql); a database is created on it and dropped.
    /// Defaults to TEST_POSTGRES_URL / TEST_MYSQL_URL.
    #[arg(long)]
    url: Option<String>,
    /// Pipelines to port.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: u64,
    /// LangBot's git directory: runs LangBot's own port
    /// (`bench/langbot/langbot_port.py`) on the same rows in the same run.
    #[arg(long)]
    langbot: Option<PathBuf>,
    /// The LangBot ref whose port runs (the last one that has it).
    #[arg(long, default_value = "9aa71d54e^")]
    langbot_ref: String,
    /// The Python that runs it (with bench/langbot/requirements.txt).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Another `migration` binary (a build of an earlier commit): its first
    /// pass runs on a copy of the same rows in the same run, before ours,
    /// to measure what a change cost.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

/// LangBot's own port of the same rows, in the same run: the rows are kept
/// aside, LangBot's alembic migration rewrites them, and they are put back
/// as seeded. Its seconds and peak RSS in MiB.
async fn langbot_port(
    db: &DatabaseConnection,
    args: &Args,
    git: &std::path::Path,
    url: &str,
) -> (f64, f64) {
    exec(db, "DROP TABLE IF EXISTS bench_pristine").await;
    exec(
        db,
        "CREATE TABLE bench_pristine AS SELECT * FROM legacy_pipelines",
    )
    .await;
    let figures: serde_json::Value = bench::run_langbot(
        &args.python,
        "langbot_port.py",
        git,
        &args.langbot_ref,
        url,
        &[],
    );
    exec(db, "DELETE FROM legacy_pipelines").await;
    exec(
        db,
        "INSERT INTO legacy_pipelines SELECT * FROM bench_pristine",
    )
    .await;
    exec(db, "DROP TABLE bench_pristine").await;
    (
        figures["seconds"].as_f64().unwrap_or(f64::NAN),
        figures["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
    )
}

const LEGACY: [&str; 7] = [
    "local-agent",
    "dify-service-api",
    "n8n-service-api",
    "coze-api",
    "dashscope-app-api",
    "langflow-api",
    "weknora-api",
];

/// A legacy config of about 1.5 KB.
fn legacy_config(i: usize) -> String {
    let runner = LEGACY[i % LEGACY.len()];
    json!({
        "trigger": {
            "group-respond-rules": {"at": true, "prefix": ["ai"], "regexp": [], "random": 0.0},
            "access-control": {"mode": "blacklist", "blacklist": [], "whitelist": []}
        },
        "safety": {"content-filter": {"scope": "all", "check-sensitive-words": true}},
        "ai": {
            "runner": {"runner": runner, "expire-time": 0},
            "local-agent": {"model": format!("model-{i}"), "max-round": 10, "knowledge-base": "__none__",
                "prompt": [{"role": "system", "content": "You are a helpful assistant."}]},
            "dify-service-api": {"base-url": "https://api.dify.ai/v1", "app-type": "chat",
                "api-key": format!("app-{i}"), "thinking-convert": "plain", "timeout": 30,
                "base-prompt": "当前时间:{{time}}"},
            "n8n-service-api": {"webhook-url": "http://n8n.local/webhook/x", "auth-type": "none",
                "basic-username": "", "basic-password": "", "timeout": 120, "output-key": "response"},
            "coze-api": {"api-key": "pat_x", "bot-id": "7390", "api-base": "https://api.coze.cn",
                "auto-save-history": true, "timeout": 120},
            "dashscope-app-api": {"app-type": "agent", "api-key": "sk-x", "app-id": "app-1",
                "references-quote": "参考资料来自:"},
            "langflow-api": {"base-url": "http://localhost:7860", "api-key": "k", "flow-id": "f",
                "input-type": "chat", "output-type": "chat", "tweaks": "{}"},
            "weknora-api": {"base-url": "http://weknora:8080/api/v1", "api-key": "wk",
                "agent-id": "builtin-smart-reasoning"}
        },
        "output": {"long-text-processing": {"threshold": 1000, "strategy": "forward"},
            "force-delay": {"min": 0, "max": 0}, "misc": {"at-sender": true, "quote-origin": true}}
    })
    .to_string()
}

async fn exec(db: &DatabaseConnection, sql: &str) {
    db.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", &sql[..sql.len().min(200)]));
}

async fn seed(db: &DatabaseConnection, backend: Backend, rows: usize) {
    for stmt in langbot_ddl(backend) {
        exec(db, &stmt).await;
    }
    let started = Instant::now();
    for start in (0..rows).step_by(500) {
        let values: Vec<String> = (start..(start + 500).min(rows))
            .map(|i| {
                let config = legacy_config(i).replace('\'', "''");
                let config = match backend {
                    Backend::Postgres => format!("'{config}'::json"),
                    _ => format!("'{config}'"),
                };
                format!("('{i:08}', 'p', 'd', 'v4', false, '[]', {config}, '{{}}')")
            })
            .collect();
        exec(
            db,
            &format!(
                "INSERT INTO legacy_pipelines (uuid, name, description, for_version, is_default, \
                 stages, config, extensions_preferences) VALUES {}",
                values.join(", ")
            ),
        )
        .await;
    }
    eprintln!(
        "seeded {rows} rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// CPU seconds used by this process's waited-for children (the
/// migration binary), from /proc/self/stat.
fn children_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which ends with ')': cutime and cstime
    // are fields 16 and 17 of the line, 14 and 15 after it.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // Clock ticks of 1/100 s, as Linux reports them to user space.
    (fields.get(13).copied().unwrap_or(0.0) + fields.get(14).copied().unwrap_or(0.0)) / 100.0
}

/// The same rows rewritten by the server alone, timed: every original
/// copied into a backup table, then every config's runner block rewritten
/// in one statement; on a copy of `legacy_pipelines`, dropped afterwards.
async fn sql_only_floor(db: &DatabaseConnection, backend: Backend) -> f64 {
    exec(db, "DROP TABLE IF EXISTS floor_backup").await;
    exec(db, "DROP TABLE IF EXISTS floor_pipelines").await;
    exec(
        db,
        "CREATE TABLE floor_pipelines AS SELECT * FROM legacy_pipelines",
    )
    .await;
    let rewrite = match backend {
        Backend::Sqlite => {
            "UPDATE floor_pipelines SET config = \
             json_set(config, '$.ai.runner.id', 'plugin:langbot/local-agent/default')"
        }
        Backend::Postgres => {
            "UPDATE floor_pipelines SET config = CAST(jsonb_set(CAST(config AS jsonb), \
             '{ai,runner,id}', '\"plugin:langbot/local-agent/default\"') AS json)"
        }
        Backend::MySql => {
            "UPDATE floor_pipelines SET config = \
             JSON_SET(config, '$.ai.runner.id', 'plugin:langbot/local-agent/default')"
        }
    };
    let started = Instant::now();
    exec(
        db,
        "CREATE TABLE floor_backup AS SELECT uuid, config AS original_config FROM floor_pipelines",
    )
    .await;
    exec(db, rewrite).await;
    let took = started.elapsed().as_secs_f64();
    exec(db, "DROP TABLE floor_backup").await;
    exec(db, "DROP TABLE floor_pipelines").await;
    took
}

/// Runs the migration binary to completion: wall time and peak RSS in MiB.
fn run_migration(bin: &PathBuf, url: &str, args: &[&str]) -> (f64, f64) {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args([&["-u", url], args].concat())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("run migration");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "migration {args:?} failed");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (started.elapsed().as_secs_f64(), peak_kib as f64 / 1024.0)
}

fn release_migration_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "migration",
            "--bin",
            "migration",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build");
    assert!(status.success());
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/migration")
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backend = bench::backend_arg(&args.backend);
    let bin = release_migration_binary();
    // A database of its own, dropped at the end (the test harness's).
    let t = TestDb::create(backend, "bench_port", args.url.as_deref()).await;
    let (db, url) = (&t.db, t.url.clone());
    seed(db, backend, args.rows).await;
    let batch = args.batch_size.to_string();

    let floor_s = sql_only_floor(db, backend).await;
    let langbot = match &args.langbot {
        Some(git) => Some(langbot_port(db, &args, git, &url).await),
        None => None,
    };
    let baseline_s = match &args.baseline {
        Some(baseline) => {
            let copy = TestDb::create(backend, "bench_port_baseline", args.url.as_deref()).await;
            seed(&copy.db, backend, args.rows).await;
            let (s, _) = run_migration(
                baseline,
                &copy.url,
                &["--batch-size", &batch, "up", "-n", "2"],
            );
            Some(s)
        }
        None => None,
    };
    // The schema migration and the port (not the rename after it).
    let cpu_before = children_cpu_s();
    let (first_s, first_rss) =
        run_migration(&bin, &url, &["--batch-size", &batch, "up", "-n", "2"]);
    let first_cpu_s = children_cpu_s() - cpu_before;
    // A rerun of the port over the ported table: forget that it ran.
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        "DELETE FROM seaql_migrations WHERE version = 'm20261125_000002_port_legacy_runner_blocks'",
    ))
    .await
    .expect("forget the port");
    let (rerun_s, rerun_rss) =
        run_migration(&bin, &url, &["--batch-size", &batch, "up", "-n", "1"]);

    println!(
        "{}",
        json!({
            "backend": backend.name(),
            "rows": args.rows,
            "batch_size": args.batch_size,
            "first_pass_s": (first_s * 100.0).round() / 100.0,
            "first_pass_rows_per_s": (args.rows as f64 / first_s).round(),
            "first_pass_client_cpu_s": (first_cpu_s * 100.0).round() / 100.0,
            "sql_only_floor_s": (floor_s * 100.0).round() / 100.0,
            "ratio_to_sql_only_floor": (floor_s / first_s * 100.0).round() / 100.0,
            "langbot_ref": langbot.map(|_| &args.langbot_ref),
            "langbot_s": langbot.map(|(s, _)| s),
            "langbot_peak_rss_mib": langbot.map(|(_, rss)| rss),
            "speedup_over_langbot": langbot.map(|(s, _)| (s / first_s * 10.0).round() / 10.0),
            "baseline_first_pass_s": baseline_s.map(|s| (s * 100.0).round() / 100.0),
            "ratio_to_baseline": baseline_s.map(|s| (first_s / s * 100.0).round() / 100.0),
            "noop_rerun_s": (rerun_s * 100.0).round() / 100.0,
            "peak_rss_mib": ((first_rss.max(rerun_rss)) * 10.0).round() / 10.0,
        })
    );
}
