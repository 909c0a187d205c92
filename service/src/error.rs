//! The one error type of the state store.

use sea_orm::DbErr;

use crate::identity::{Scope, UnknownScope};
use crate::value::ValueError;

/// Why a state operation was refused or failed. Every refusal happens before
/// any SQL runs, so nothing is half-written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The binding's policy turned state off.
    #[error("State is disabled by binding policy")]
    StateDisabled,
    /// The scope name is not one of the four.
    #[error(transparent)]
    InvalidScope(#[from] UnknownScope),
    /// The binding's policy does not enable this scope.
    #[error("Scope \"{0}\" not enabled by binding policy")]
    ScopeNotEnabled(Scope),
    /// The event lacks the identity this scope is keyed by (an actor id for
    /// the actor scope...).
    #[error("Missing identity for scope \"{0}\"")]
    MissingIdentity(Scope),
    /// A text is longer than its column holds, counted in characters.
    #[error("{field} is {chars} characters long, over its limit of {max}")]
    TooLong {
        /// Which input (`state_key`, `actor_id`...).
        field: &'static str,
        /// Its length in characters.
        chars: usize,
        /// The column's length.
        max: usize,
    },
    /// A text contains U+0000, which PostgreSQL cannot store in text.
    #[error("{field} contains the character U+0000")]
    NulCharacter {
        /// Which input.
        field: &'static str,
    },
    /// The value's JSON serialisation is over the size limit.
    #[error("value is {size} bytes as JSON, over the limit of {limit} bytes")]
    ValueTooLarge {
        /// Size of the serialised value in bytes of UTF-8.
        size: usize,
        /// The limit, 262,144 bytes.
        limit: usize,
    },
    /// A value to set cannot be stored so that it reads back (nested deeper
    /// than [`MAX_VALUE_DEPTH`](crate::value::MAX_VALUE_DEPTH)).
    #[error("value {0}")]
    InvalidValue(#[source] ValueError),
    /// A stored value cannot be read as it was meant: not JSON, or holding
    /// what a JSON value cannot represent (`NaN`, an integer beyond 64 bits).
    #[error("stored value of {state_key:?} in {scope_key} {source}")]
    UnreadableValue {
        /// Where it is stored.
        scope_key: String,
        /// Its key.
        state_key: String,
        /// What it holds.
        #[source]
        source: ValueError,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// `Result` with [`StateError`].
pub type Result<T, E = StateError> = std::result::Result<T, E>;
