//! LangBot's own reference vectors (`../shared/vectors/`, or the folder named
//! by `LANGBOT_VECTORS_DIR`), reproduced exactly. Each check reports every
//! failing case by index, and fails when a file holds no case.

use std::collections::BTreeMap;

use serde::Deserialize;
use service::identity::{Binding, Event, IdentityColumns, Scope, binding_identity};
use testkit::read_vectors;

#[derive(Deserialize)]
struct ScopeKeyCase {
    runner_id: String,
    binding: Binding,
    event: Event,
    expected: ScopeKeyExpected,
}

#[derive(Deserialize)]
struct ScopeKeyExpected {
    binding_identity: String,
    scope_keys: BTreeMap<Scope, String>,
}

/// Fails with every collected failure, or when nothing was checked.
fn report(file: &str, checked: usize, failures: Vec<String>) {
    assert!(checked > 0, "{file} holds no case");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases of {file} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{file}: {checked} cases passed");
}

#[test]
fn scope_keys() {
    let cases: Vec<ScopeKeyCase> =
        serde_json::from_value(read_vectors("scope_keys.json")).expect("scope_keys.json cases");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let identity = binding_identity(&case.binding);
        if identity != case.expected.binding_identity {
            failures.push(format!(
                "case {i} ({:?}): binding_identity {identity:?}, expected {:?}",
                case.runner_id, case.expected.binding_identity
            ));
        }
        let keys =
            IdentityColumns::from_event(&case.runner_id, &case.binding, &case.event).scope_keys();
        if keys != case.expected.scope_keys {
            failures.push(format!(
                "case {i} ({:?}): scope keys {keys:?}, expected {:?}",
                case.runner_id, case.expected.scope_keys
            ));
        }
    }
    report("scope_keys.json", cases.len(), failures);
}

/// The copy in `tests/data/vectors` (used where `../shared` is absent) must
/// not drift from LangBot's originals: it is checked byte for byte against
/// `../shared/vectors` when that exists, and always against the SHA-256 sums
/// in `tests/data/vectors.sha256` (made from LangBot's originals), so a
/// clone without `../shared` still checks what it tests with.
#[test]
fn bundled_copy_matches_shared_vectors() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundled = root.join("tests/data/vectors");
    let sums = std::fs::read_to_string(root.join("tests/data/vectors.sha256"))
        .expect("tests/data/vectors.sha256");
    let expected: BTreeMap<String, String> = sums
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (sum, path) = l.split_once("  ").expect("`<sha256>  <path>` lines");
            (path.to_owned(), sum.to_owned())
        })
        .collect();
    let present: BTreeMap<String, String> = walk(&bundled)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&bundled).unwrap().display().to_string();
            (rel, sha256_hex(&std::fs::read(&p).unwrap()))
        })
        .collect();
    assert!(
        expected.len() >= 5,
        "vectors.sha256 lists {} files",
        expected.len()
    );
    assert_eq!(
        present, expected,
        "tests/data/vectors differs from the sums of LangBot's originals"
    );

    let shared = root.join("../shared/vectors");
    if shared.is_dir() {
        let originals: BTreeMap<String, String> = walk(&shared)
            .into_iter()
            .map(|p| {
                let rel = p.strip_prefix(&shared).unwrap().display().to_string();
                (rel, sha256_hex(&std::fs::read(&p).unwrap()))
            })
            .collect();
        assert_eq!(
            originals, expected,
            "../shared/vectors changed: refresh tests/data/vectors and vectors.sha256"
        );
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[derive(Deserialize)]
struct ConfigCase {
    input: serde_json::Value,
    migrated: serde_json::Value,
    changed: bool,
    resolved_runner_id: Option<String>,
    resolved_runner_config: Option<serde_json::Value>,
    resolved_after_migration: ResolvedAfter,
    expire_time: i64,
}

#[derive(Deserialize)]
struct ResolvedAfter {
    runner_id: Option<String>,
    runner_config: Option<serde_json::Value>,
}

#[test]
fn config_migration() {
    use service::legacy::{LEGACY_RUNNER_IDS, Ported, port_config, read_runner};
    let file = read_vectors("config_migration.json");
    let map: BTreeMap<String, String> =
        serde_json::from_value(file["legacy_runner_id_map"].clone()).expect("legacy_runner_id_map");
    let ours: BTreeMap<String, String> = LEGACY_RUNNER_IDS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(ours, map, "legacy runner id map");
    let cases: Vec<ConfigCase> =
        serde_json::from_value(file["cases"].clone()).expect("config_migration.json cases");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (migrated, changed) = match port_config(&case.input) {
            Ported::Changed(v) => (v, true),
            Ported::Unchanged | Ported::Unportable(_) => (case.input.clone(), false),
        };
        if migrated != case.migrated || changed != case.changed {
            failures.push(format!(
                "case {i}: port gave changed={changed} {migrated}, expected changed={} {}",
                case.changed, case.migrated
            ));
        }
        let before = read_runner(&case.input);
        if before.runner_id != case.resolved_runner_id
            || before.runner_config != case.resolved_runner_config
            || before.expire_time != case.expire_time
        {
            failures.push(format!(
                "case {i}: reading the input gave {before:?}, expected {:?} {:?} {}",
                case.resolved_runner_id, case.resolved_runner_config, case.expire_time
            ));
        }
        let after = read_runner(&migrated);
        if after.runner_id != case.resolved_after_migration.runner_id
            || after.runner_config != case.resolved_after_migration.runner_config
        {
            failures.push(format!(
                "case {i}: reading the port gave {after:?}, expected {:?} {:?}",
                case.resolved_after_migration.runner_id,
                case.resolved_after_migration.runner_config
            ));
        }
        // Porting is idempotent.
        if changed && port_config(&migrated) != Ported::Unchanged {
            failures.push(format!("case {i}: a second port changed the config again"));
        }
    }
    report("config_migration.json", cases.len(), failures);
}

#[derive(Deserialize)]
struct RenameFile {
    renames: BTreeMap<String, String>,
    json_documents: Vec<RenameDoc>,
    state_rows: Vec<RenameRowCase>,
}

#[derive(Deserialize)]
struct RenameDoc {
    input: serde_json::Value,
    expected: serde_json::Value,
}

#[derive(Deserialize)]
struct RenameRowCase {
    row: RenameRow,
    expected: Option<RenameExpected>,
}

#[derive(Deserialize)]
struct RenameRow {
    scope: String,
    scope_key: String,
    #[serde(flatten)]
    identity: IdentityColumns,
}

#[derive(Deserialize, Debug, PartialEq)]
struct RenameExpected {
    runner_id: String,
    binding_identity: String,
    scope_key: String,
}

fn rename_vectors() -> RenameFile {
    serde_json::from_value(read_vectors("runner_id_rename.json")).expect("runner_id_rename.json")
}

#[test]
fn runner_id_rename_documents() {
    use service::rename::{RUNNER_ID_RENAMES, Renames};
    let file = rename_vectors();
    let ours: BTreeMap<String, String> = RUNNER_ID_RENAMES
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(ours, file.renames, "the rename table");
    let renames = Renames::official();
    let mut failures = Vec::new();
    for (i, case) in file.json_documents.iter().enumerate() {
        let mut doc = case.input.clone();
        renames.apply_json(&mut doc);
        if doc != case.expected {
            failures.push(format!(
                "document {i}: got {doc}, expected {}",
                case.expected
            ));
        }
        // The inverse rename undoes it where no key collided.
        let mut back = doc.clone();
        Renames::official().inverse().apply_json(&mut back);
        let mut again = back.clone();
        renames.apply_json(&mut again);
        if again != doc {
            failures.push(format!(
                "document {i}: rename, inverse, rename is not stable"
            ));
        }
    }
    report(
        "runner_id_rename.json json_documents",
        file.json_documents.len(),
        failures,
    );
}

#[test]
fn runner_id_rename_state_rows() {
    use service::rename::{Renames, rename_row};
    let file = rename_vectors();
    let renames = Renames::official();
    let mut failures = Vec::new();
    for (i, case) in file.state_rows.iter().enumerate() {
        let got = rename_row(
            &renames,
            &case.row.scope,
            &case.row.scope_key,
            &case.row.identity,
        )
        .map(|r| RenameExpected {
            runner_id: r.runner_id,
            binding_identity: r.binding_identity,
            scope_key: r.scope_key,
        });
        if got != case.expected {
            failures.push(format!(
                "state row {i}: got {got:?}, expected {:?}",
                case.expected
            ));
        }
    }
    report(
        "runner_id_rename.json state_rows",
        file.state_rows.len(),
        failures,
    );
}
