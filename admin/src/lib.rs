//! `state-admin`: what operators of a LangBot install need without writing
//! SQL against production: what a runner stores, one user's data, one
//! conversation's memory, deleting them, and moving rows between databases.
//! The work is [`service::admin`]; [`cli`] is the command line around it.

pub mod cli;
