//! A binding's state policy.

use serde::{Deserialize, Serialize};

use crate::identity::Scope;

/// What state a binding allows: LangBot's `enable_state` and
/// `state_scopes`, with its defaults when a field is absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatePolicy {
    /// State at all (default true).
    pub enable_state: bool,
    /// The scopes a runner may use (default conversation and actor).
    pub state_scopes: Vec<Scope>,
}

impl Default for StatePolicy {
    fn default() -> Self {
        Self {
            enable_state: true,
            state_scopes: vec![Scope::Conversation, Scope::Actor],
        }
    }
}

impl StatePolicy {
    /// State on, every scope enabled.
    pub fn all_scopes() -> Self {
        Self {
            enable_state: true,
            state_scopes: Scope::ALL.to_vec(),
        }
    }

    /// Whether `scope` may be used (state must also be enabled).
    pub fn allows(&self, scope: Scope) -> bool {
        self.enable_state && self.state_scopes.contains(&scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_take_langbot_defaults() {
        let p: StatePolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, StatePolicy::default());
        let p: StatePolicy = serde_json::from_str(r#"{"state_scopes":["runner"]}"#).unwrap();
        assert!(p.enable_state && p.allows(Scope::Runner) && !p.allows(Scope::Actor));
    }
}
