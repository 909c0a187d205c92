#![doc = include_str!("../README.md")]

pub mod agent_runner_state;

/// The entities of this crate under readable names.
pub mod prelude {
    pub use super::agent_runner_state::Entity as AgentRunnerState;
}
