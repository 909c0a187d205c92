//! The deploy binary: parses the command line and runs it
//! ([`migration::cli`]).

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    migration::cli::main(migration::cli::Cli::parse()).await
}
