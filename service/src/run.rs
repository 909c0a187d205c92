//! The run-scoped State API: what a runner plugin calls during a run.
//!
//! A [`RunSession`] is registered when a run starts and holds everything the
//! run may reach: its scope keys, computed from the event and binding by the
//! host. A call names a run, a scope and a key, never a scope key, so a
//! runner can only ever touch the state of its own run. Each call passes
//! seven checks, in the order of SPEC section 5, before the store is asked.
//! The host passes the store each call goes to, set up as its connection
//! needs ([`StateStore::pooled`], [`StateStore::inline_sqlite`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use serde_json::Value;

use crate::error::StateError;
use crate::identity::Scope;
use crate::policy::StatePolicy;
use crate::store::{KeyPage, StateContext, StateStore};

/// The API name that grants state access in a session's `apis`.
pub const STATE_API: &str = "state";

/// How long a session lives by default if its run never ends.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(30 * 60);

/// Everything a run may use, fixed when the run starts.
#[derive(Clone, Debug)]
pub struct RunSession {
    /// The run.
    pub run_id: String,
    /// The runner executing it.
    pub runner_id: String,
    /// `author/name` of the plugin that owns the runner; when set and not
    /// empty, every call must come from that plugin ([`RunSession::owner`]).
    pub plugin_identity: Option<String>,
    /// APIs granted to the run, e.g. `{"state": true}`.
    pub apis: BTreeMap<String, bool>,
    /// The binding's state policy.
    pub policy: StatePolicy,
    /// Scope keys and context columns, from the event and binding.
    pub context: StateContext,
}

impl RunSession {
    /// The plugin every call must come from, if any. An empty identity counts
    /// as none, as in LangBot's handler (`if session_plugin_identity:`), so a
    /// session LangBot would serve to any caller is served here too.
    pub fn owner(&self) -> Option<&str> {
        self.plugin_identity.as_deref().filter(|s| !s.is_empty())
    }
}

/// Why a run-scoped call was refused; the variants are in check order.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunStateError {
    /// Check 1: `run_id`, `scope` or `key` is missing or empty.
    #[error("{0} is required")]
    MissingField(&'static str),
    /// Check 2: no live session has this run id (never registered, ended,
    /// or expired).
    #[error("Run session {0} not found or expired")]
    SessionNotFound(String),
    /// Check 3: the session belongs to a plugin and the caller named none.
    #[error("caller_plugin_identity is required for run_id {0}")]
    CallerIdentityRequired(String),
    /// Check 3: the caller is another plugin.
    #[error("Plugin identity mismatch for run_id {0}")]
    PluginIdentityMismatch(String),
    /// Check 4: the run was not granted the state API (the operation named).
    #[error("State {0} access not authorized")]
    NotAuthorized(&'static str),
    /// Check 5: the binding's policy turned state off.
    #[error("State access is disabled by binding policy")]
    StateDisabled,
    /// Check 6: the scope is not enabled (or not a scope at all).
    #[error("Scope \"{0}\" is not enabled by binding policy")]
    ScopeNotEnabled(String),
    /// Check 7: the run's event has no identity for this scope.
    #[error("Scope key not available for scope \"{0}\"")]
    ScopeKeyUnavailable(String),
    /// The store refused the key or value, or the database failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// One run-scoped call, as a runner plugin sends it.
#[derive(Clone, Copy, Debug, Default)]
pub struct StateCall<'a> {
    /// The run.
    pub run_id: Option<&'a str>,
    /// The scope name.
    pub scope: Option<&'a str>,
    /// The state key (not used by `list`).
    pub key: Option<&'a str>,
    /// `author/name` of the calling plugin.
    pub caller_plugin_identity: Option<&'a str>,
}

/// Live run sessions, shared by every concurrent run. Sessions are removed
/// when their run ends, and count as gone once older than the TTL.
#[derive(Debug)]
pub struct RunRegistry {
    sessions: Mutex<HashMap<String, (Arc<RunSession>, Instant)>>,
    ttl: Duration,
}

impl Default for RunRegistry {
    fn default() -> Self {
        Self::new(DEFAULT_SESSION_TTL)
    }
}

impl RunRegistry {
    /// A registry whose sessions expire `ttl` after registration.
    pub fn new(ttl: Duration) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Arc<RunSession>, Instant)>> {
        // A panic elsewhere cannot leave the map half-updated: recover it.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a run's session (replacing one with the same run id), and
    /// drops expired ones.
    pub fn register(&self, session: RunSession) {
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        sessions.insert(session.run_id.clone(), (Arc::new(session), now));
    }

    /// Removes a run's session when the run ends; true if it was there.
    pub fn end(&self, run_id: &str) -> bool {
        self.lock().remove(run_id).is_some()
    }

    /// The live session of `run_id`.
    pub fn session(&self, run_id: &str) -> Option<Arc<RunSession>> {
        let mut sessions = self.lock();
        let (session, at) = sessions.get(run_id)?;
        if at.elapsed() < self.ttl {
            return Some(session.clone());
        }
        sessions.remove(run_id);
        None
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|(_, at)| now.duration_since(*at) < self.ttl)
            .count()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The seven checks of SPEC section 5, in order; the scope and its key
    /// on success.
    fn authorize(
        &self,
        call: &StateCall<'_>,
        op: &'static str,
        needs_key: bool,
    ) -> Result<(Arc<RunSession>, Scope), RunStateError> {
        let present = |v: Option<&str>| v.filter(|s| !s.is_empty()).is_some();
        let run_id = call
            .run_id
            .filter(|s| !s.is_empty())
            .ok_or(RunStateError::MissingField("run_id"))?;
        if !present(call.scope) {
            return Err(RunStateError::MissingField("scope"));
        }
        if needs_key && !present(call.key) {
            return Err(RunStateError::MissingField("key"));
        }
        let session = self
            .session(run_id)
            .ok_or_else(|| RunStateError::SessionNotFound(run_id.to_owned()))?;
        if let Some(owner) = session.owner() {
            match call.caller_plugin_identity.filter(|s| !s.is_empty()) {
                None => return Err(RunStateError::CallerIdentityRequired(run_id.to_owned())),
                Some(caller) if caller != owner => {
                    return Err(RunStateError::PluginIdentityMismatch(run_id.to_owned()));
                }
                Some(_) => {}
            }
        }
        if session.apis.get(STATE_API) != Some(&true) {
            return Err(RunStateError::NotAuthorized(op));
        }
        if !session.policy.enable_state {
            return Err(RunStateError::StateDisabled);
        }
        let scope_name = call.scope.unwrap_or_default();
        let scope = scope_name
            .parse::<Scope>()
            .ok()
            .filter(|s| session.policy.allows(*s))
            .ok_or_else(|| RunStateError::ScopeNotEnabled(scope_name.to_owned()))?;
        if session.context.scope_key(scope).is_none() {
            return Err(RunStateError::ScopeKeyUnavailable(scope_name.to_owned()));
        }
        Ok((session, scope))
    }

    /// A run's `state.get`.
    ///
    /// # Errors
    /// The first failed check, or the store's error.
    pub async fn get<C: ConnectionTrait + 'static>(
        &self,
        store: StateStore<'_, C>,
        call: StateCall<'_>,
    ) -> Result<Option<Value>, RunStateError> {
        let (session, scope) = self.authorize(&call, "get", true)?;
        let key = call.key.unwrap_or_default();
        Ok(store.get(&session.context, scope, key).await?)
    }

    /// A run's `state.set`.
    ///
    /// # Errors
    /// The first failed check, or the store's error.
    pub async fn set<C: ConnectionTrait + 'static>(
        &self,
        store: StateStore<'_, C>,
        call: StateCall<'_>,
        value: &Value,
    ) -> Result<(), RunStateError> {
        let (session, scope) = self.authorize(&call, "set", true)?;
        let key = call.key.unwrap_or_default();
        Ok(store.set(&session.context, scope, key, value).await?)
    }

    /// A run's `state.delete`.
    ///
    /// # Errors
    /// The first failed check, or the store's error.
    pub async fn delete<C: ConnectionTrait + 'static>(
        &self,
        store: StateStore<'_, C>,
        call: StateCall<'_>,
    ) -> Result<bool, RunStateError> {
        let (session, scope) = self.authorize(&call, "delete", true)?;
        let key = call.key.unwrap_or_default();
        Ok(store.delete(&session.context, scope, key).await?)
    }

    /// A run's `state.list` (the call's `key` is ignored).
    ///
    /// # Errors
    /// The first failed check, or the store's error.
    pub async fn list<C: ConnectionTrait + 'static>(
        &self,
        store: StateStore<'_, C>,
        call: StateCall<'_>,
        prefix: Option<&str>,
        limit: Option<i64>,
    ) -> Result<KeyPage, RunStateError> {
        let (session, scope) = self.authorize(&call, "list", false)?;
        Ok(store.list(&session.context, scope, prefix, limit).await?)
    }
}
