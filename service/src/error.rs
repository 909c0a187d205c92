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

/// An error and its causes on one line, for the top of a binary: each
/// source is appended (`: cause`) unless the text so far already says it,
/// up to the driver's own error, and line breaks become spaces.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    error_line_until(e, |_| false)
}

/// [`error_line`], also stopping at the first cause for which `said` is
/// true: one the line above it already put in words of its own.
pub fn error_line_until(
    e: &(dyn std::error::Error + 'static),
    said: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        // The driver's own formatting: the line above it already said what
        // it means.
        if cause.is::<sea_orm::sqlx::Error>() || said(cause) {
            break;
        }
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_chain_fits_on_one_line() {
        let io = std::io::Error::other("disk on fire\nreally");
        let err = StateError::InvalidValue(crate::value::ValueError::TooDeep { depth: 2, max: 1 });
        assert_eq!(
            error_line(&err),
            "value is nested 2 deep, over the limit of 1"
        );
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open the lock file")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(
            error_line(&Outer(io)),
            "cannot open the lock file: disk on fire really"
        );
    }
}
