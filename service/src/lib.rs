#![doc = include_str!("../README.md")]

pub mod connection;
pub mod identity;
