//! What the benchmark binaries share: the backend from the command line and
//! LangBot's side of a comparison (a Python harness in `bench/langbot/`).

use std::path::Path;

use testkit::Backend;

/// The backend named on the command line.
///
/// # Panics
/// When it is not sqlite, postgres or mysql.
pub fn backend_arg(name: &str) -> Backend {
    Backend::parse(name)
        .unwrap_or_else(|| panic!("unknown backend {name}: sqlite, postgres or mysql"))
}

/// Runs `bench/langbot/<script>` with `python` on LangBot's repository
/// `git` at `reference` against `url` (and `extra` arguments), and reads the
/// one JSON object it prints.
///
/// # Panics
/// When the harness cannot start, fails, or prints no JSON: its stderr is
/// in the message.
pub fn run_langbot<T: serde::de::DeserializeOwned>(
    python: &str,
    script: &str,
    git: &Path,
    reference: &str,
    url: &str,
    extra: &[&str],
) -> T {
    let path = testkit::workspace_root().join("bench/langbot").join(script);
    let out = std::process::Command::new(python)
        .arg(path)
        .arg("--git")
        .arg(git)
        .args(["--ref", reference, "--url", url])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("run {script} with {python}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script} printed no JSON: {e}"))
}
