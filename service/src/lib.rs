#![doc = include_str!("../README.md")]

pub mod admin;
pub mod connection;
pub mod error;
pub mod identity;
pub mod inline_sqlite;
pub mod legacy;
#[cfg(feature = "logging")]
pub mod logging;
pub mod policy;
pub mod rename;
pub mod retry;
pub mod run;
pub mod server_connections;
pub mod store;
pub mod value;

pub use error::{Result, StateError, error_line, error_line_until};
pub use identity::{Actor, Binding, Event, IdentityColumns, Scope, Subject};
pub use policy::StatePolicy;
pub use run::{RunRegistry, RunSession, RunStateError, StateCall};
pub use store::{KeyPage, StateContext, StateSnapshot, StateStore};
