//! The operator binary: parses the command line and runs it
//! ([`admin::cli`]).

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    admin::cli::main(admin::cli::Cli::parse()).await
}
