//! Binding identity and scope keys, byte for byte as LangBot computes them
//! (SPEC section 4): a row written by LangBot is found here and vice versa.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The four state scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One conversation (and thread) of a bot.
    Conversation,
    /// One actor (a user, usually) across conversations.
    Actor,
    /// One subject the event is about.
    Subject,
    /// The runner within its binding.
    Runner,
}

impl Scope {
    /// All scopes, in LangBot's order.
    pub const ALL: [Scope; 4] = [Self::Conversation, Self::Actor, Self::Subject, Self::Runner];

    /// The name stored in the `scope` column and used in key payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conversation => "conversation",
            Self::Actor => "actor",
            Self::Subject => "subject",
            Self::Runner => "runner",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of the four.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {0:?}: expected conversation, actor, subject or runner")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    /// Exact, case-sensitive names, as LangBot accepts them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// What a runner is bound to: an agent, a pipeline...
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The binding's own id, when it has one.
    pub binding_id: Option<String>,
    /// Kind of the thing bound to (`agent`, `workspace`...).
    pub scope_type: Option<String>,
    /// Id of the thing bound to.
    pub scope_id: Option<String>,
}

/// Who acts in an event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `user` when empty or absent.
    pub actor_type: Option<String>,
    /// Required for the actor scope.
    pub actor_id: Option<String>,
}

/// What an event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// `unknown` when empty or absent.
    pub subject_type: Option<String>,
    /// Required for the subject scope.
    pub subject_id: Option<String>,
}

/// The identity fields of an event that reach a runner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The bot that received the event.
    pub bot_id: Option<String>,
    /// The workspace it belongs to.
    pub workspace_id: Option<String>,
    /// Required for the conversation scope.
    pub conversation_id: Option<String>,
    /// Thread within the conversation.
    pub thread_id: Option<String>,
    /// Who acts.
    pub actor: Option<Actor>,
    /// What it is about.
    pub subject: Option<Subject>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// The binding's id if non-empty; else `scope_type:scope_id` if both are
/// non-empty; else `unknown_binding`.
pub fn binding_identity(binding: &Binding) -> String {
    if let Some(id) = non_empty(&binding.binding_id) {
        return id.to_owned();
    }
    match (non_empty(&binding.scope_type), non_empty(&binding.scope_id)) {
        (Some(t), Some(id)) => format!("{t}:{id}"),
        _ => "unknown_binding".to_owned(),
    }
}

/// Everything a scope key is computed from, flattened as the table's columns
/// hold it. Built from an event ([`IdentityColumns::from_event`]) or read
/// back from a stored row, so that both give the same keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityColumns {
    /// `plugin:author/name/runner`.
    pub runner_id: String,
    /// See [`binding_identity`].
    pub binding_identity: String,
    /// Event context columns.
    pub bot_id: Option<String>,
    #[allow(missing_docs)]
    pub workspace_id: Option<String>,
    #[allow(missing_docs)]
    pub conversation_id: Option<String>,
    #[allow(missing_docs)]
    pub thread_id: Option<String>,
    #[allow(missing_docs)]
    pub actor_type: Option<String>,
    #[allow(missing_docs)]
    pub actor_id: Option<String>,
    #[allow(missing_docs)]
    pub subject_type: Option<String>,
    #[allow(missing_docs)]
    pub subject_id: Option<String>,
}

impl IdentityColumns {
    /// The columns for `runner_id` handling `event` under `binding`.
    pub fn from_event(runner_id: &str, binding: &Binding, event: &Event) -> Self {
        let actor = event.actor.as_ref();
        let subject = event.subject.as_ref();
        Self {
            runner_id: runner_id.to_owned(),
            binding_identity: binding_identity(binding),
            bot_id: event.bot_id.clone(),
            workspace_id: event.workspace_id.clone(),
            conversation_id: event.conversation_id.clone(),
            thread_id: event.thread_id.clone(),
            actor_type: actor.and_then(|a| a.actor_type.clone()),
            actor_id: actor.and_then(|a| a.actor_id.clone()),
            subject_type: subject.and_then(|s| s.subject_type.clone()),
            subject_id: subject.and_then(|s| s.subject_id.clone()),
        }
    }

    /// The key of `scope`, or `None` when the identity it needs is missing.
    pub fn scope_key(&self, scope: Scope) -> Option<String> {
        let required = match scope {
            Scope::Conversation => &self.conversation_id,
            Scope::Actor => &self.actor_id,
            Scope::Subject => &self.subject_id,
            Scope::Runner => return Some(self.stored_row_scope_key(scope)),
        };
        non_empty(required)?;
        Some(self.stored_row_scope_key(scope))
    }

    /// The key of `scope` from these columns as they are, without checking
    /// that the scope's identity is present: how LangBot recomputes the key
    /// of a stored row (a rename does), where an empty or missing id is
    /// hashed as it is.
    pub fn stored_row_scope_key(&self, scope: Scope) -> String {
        let text = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
        let mut payload = Map::new();
        payload.insert("version".into(), Value::from(2));
        payload.insert("scope".into(), scope.as_str().into());
        payload.insert("runner_id".into(), self.runner_id.clone().into());
        payload.insert(
            "binding_identity".into(),
            self.binding_identity.clone().into(),
        );
        payload.insert("bot_id".into(), text(&self.bot_id));
        payload.insert("workspace_id".into(), text(&self.workspace_id));
        match scope {
            Scope::Conversation => {
                payload.insert("conversation_id".into(), text(&self.conversation_id));
                payload.insert("thread_id".into(), text(&self.thread_id));
            }
            Scope::Actor => {
                let kind = non_empty(&self.actor_type).unwrap_or("user");
                payload.insert("actor_type".into(), kind.into());
                payload.insert("actor_id".into(), text(&self.actor_id));
            }
            Scope::Subject => {
                let kind = non_empty(&self.subject_type).unwrap_or("unknown");
                payload.insert("subject_type".into(), kind.into());
                payload.insert("subject_id".into(), text(&self.subject_id));
            }
            Scope::Runner => {}
        }
        format!(
            "{scope}:v2:{}",
            sha256_hex(canonical_json(&Value::Object(payload)).as_bytes())
        )
    }

    /// The key of every scope that has its identity.
    pub fn scope_keys(&self) -> BTreeMap<Scope, String> {
        Scope::ALL
            .into_iter()
            .filter_map(|scope| Some((scope, self.scope_key(scope)?)))
            .collect()
    }
}

/// Python's `json.dumps(v, sort_keys=True, separators=(',', ':'),
/// ensure_ascii=False)`. serde_json matches it byte for byte: its maps are
/// sorted by key (no `preserve_order` feature anywhere in this workspace;
/// see the test below), it writes non-ASCII raw, escapes only `"`, `\` and
/// control characters (`\b \f \n \r \t`, else `\u00XX` in lowercase hex)
/// and never `/`.
pub fn canonical_json(value: &Value) -> String {
    value.to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_matches_python_escapes() {
        let mut m = Map::new();
        m.insert(
            "z".into(),
            "\u{0}\u{1f}\u{7f}\u{8}\u{c}\n\r\t\"\\/é🌍\u{2028}".into(),
        );
        m.insert("a".into(), Value::Null);
        assert_eq!(
            canonical_json(&Value::Object(m)),
            "{\"a\":null,\"z\":\"\\u0000\\u001f\u{7f}\\b\\f\\n\\r\\t\\\"\\\\/é🌍\u{2028}\"}"
        );
    }

    #[test]
    fn scope_names_are_exact() {
        assert_eq!("actor".parse::<Scope>(), Ok(Scope::Actor));
        assert!("Actor".parse::<Scope>().is_err());
        assert!("actor ".parse::<Scope>().is_err());
    }

    #[test]
    fn binding_identity_rules() {
        let b = |id: Option<&str>, t: Option<&str>, s: Option<&str>| Binding {
            binding_id: id.map(Into::into),
            scope_type: t.map(Into::into),
            scope_id: s.map(Into::into),
        };
        assert_eq!(binding_identity(&b(Some("x"), Some("a"), Some("b"))), "x");
        assert_eq!(binding_identity(&b(Some(""), Some("a"), Some("b"))), "a:b");
        assert_eq!(
            binding_identity(&b(None, Some("a"), Some(""))),
            "unknown_binding"
        );
    }
}
