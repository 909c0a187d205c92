//! Renaming runner ids (SPEC section 7): official runners moved to
//! marketplace ids. Pure functions on JSON documents and on state rows; the
//! data migration applies them in batches.

use serde_json::{Map, Value};

use crate::identity::{IdentityColumns, Scope};

/// The eleven renames, old id to new id.
pub const RUNNER_ID_RENAMES: &[(&str, &str)] = &[
    (
        "plugin:langbot/acp-agent-runner/default",
        "plugin:langbot-team/ACPAgentRunner/default",
    ),
    (
        "plugin:langbot/claude-code-agent/default",
        "plugin:langbot-team/ClaudeCodeAgent/default",
    ),
    (
        "plugin:langbot/codex-agent/default",
        "plugin:langbot-team/CodexAgent/default",
    ),
    (
        "plugin:langbot/coze-agent/default",
        "plugin:langbot-team/CozeAgent/default",
    ),
    (
        "plugin:langbot/dashscope-agent/default",
        "plugin:langbot-team/DashScopeAgent/default",
    ),
    (
        "plugin:langbot/deerflow-agent/default",
        "plugin:langbot-team/DeerFlowAgent/default",
    ),
    (
        "plugin:langbot/dify-agent/default",
        "plugin:langbot-team/DifyAgent/default",
    ),
    (
        "plugin:langbot/langflow-agent/default",
        "plugin:langbot-team/LangflowAgent/default",
    ),
    (
        "plugin:langbot/n8n-agent/default",
        "plugin:langbot-team/N8nAgent/default",
    ),
    (
        "plugin:langbot/tbox-agent/default",
        "plugin:langbot-team/TboxAgent/default",
    ),
    (
        "plugin:langbot/weknora-agent/default",
        "plugin:langbot-team/WeKnoraAgent/default",
    ),
];

/// A set of id renames, applied as substring replacements in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renames(Vec<(String, String)>);

impl Renames {
    /// The official renames.
    pub fn official() -> Self {
        Self::new(RUNNER_ID_RENAMES.iter().copied())
    }

    /// Renames from `(old, new)` pairs.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(old, new)| (old.to_owned(), new.to_owned()))
                .collect(),
        )
    }

    /// new → old: what undoes these renames.
    pub fn inverse(&self) -> Self {
        Self(self.0.iter().map(|(o, n)| (n.clone(), o.clone())).collect())
    }

    /// `text` with every old id replaced; `None` when it holds none.
    pub fn apply(&self, text: &str) -> Option<String> {
        if !self.0.iter().any(|(old, _)| text.contains(old.as_str())) {
            return None;
        }
        let mut out = text.to_owned();
        for (old, new) in &self.0 {
            if out.contains(old.as_str()) {
                out = out.replace(old.as_str(), new);
            }
        }
        Some(out)
    }

    /// Renames inside a JSON document, in place: object keys and string
    /// values at any depth. Where a renamed key meets a key that already
    /// exists in its object, the existing key and its value win and the
    /// renamed one is dropped. True if anything changed.
    pub fn apply_json(&self, value: &mut Value) -> bool {
        match value {
            Value::String(s) => match self.apply(s) {
                Some(renamed) => {
                    *s = renamed;
                    true
                }
                None => false,
            },
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, item| self.apply_json(item) | changed),
            Value::Object(map) => {
                let mut changed = false;
                for item in map.values_mut() {
                    changed |= self.apply_json(item);
                }
                let renamed: Vec<(String, String)> = map
                    .keys()
                    .filter_map(|k| Some((k.clone(), self.apply(k)?)))
                    .collect();
                if renamed.is_empty() {
                    return changed;
                }
                let mut moved = Map::new();
                for (old, new) in renamed {
                    if let Some(v) = map.remove(&old) {
                        moved.insert(new, v);
                    }
                }
                for (key, v) in moved {
                    // An existing key wins over a renamed one.
                    map.entry(key).or_insert(v);
                }
                true
            }
            _ => false,
        }
    }
}

/// A state row's new identity after a rename.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenamedRow {
    /// The renamed runner id.
    pub runner_id: String,
    /// The renamed binding identity.
    pub binding_identity: String,
    /// The key recomputed from the row's own columns with the new ids, as
    /// they are (see [`IdentityColumns::stored_row_scope_key`]); the old key
    /// when the scope is not one of the four.
    pub scope_key: String,
}

/// Renames one state row: `None` when neither its runner id nor its binding
/// identity holds an old id.
pub fn rename_row(
    renames: &Renames,
    scope: &str,
    scope_key: &str,
    row: &IdentityColumns,
) -> Option<RenamedRow> {
    let runner_id = renames.apply(&row.runner_id);
    let binding_identity = renames.apply(&row.binding_identity);
    if runner_id.is_none() && binding_identity.is_none() {
        return None;
    }
    let renamed = IdentityColumns {
        runner_id: runner_id.unwrap_or_else(|| row.runner_id.clone()),
        binding_identity: binding_identity.unwrap_or_else(|| row.binding_identity.clone()),
        ..row.clone()
    };
    let scope_key = scope
        .parse::<Scope>()
        .map(|s| renamed.stored_row_scope_key(s))
        .unwrap_or_else(|_| scope_key.to_owned());
    Some(RenamedRow {
        runner_id: renamed.runner_id,
        binding_identity: renamed.binding_identity,
        scope_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn existing_keys_win_over_renamed_ones() {
        let renames = Renames::new([("old", "new")]);
        let mut doc = json!({"old": 1, "new": 2, "x-old": "old and old"});
        assert!(renames.apply_json(&mut doc));
        assert_eq!(doc, json!({"new": 2, "x-new": "new and new"}));
        let mut untouched = json!({"a": ["b", 1, null]});
        assert!(!renames.apply_json(&mut untouched));
    }
}
