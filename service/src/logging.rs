//! Log setup for this workspace's binaries (feature `logging`): one place,
//! so `migration` and `state-admin` log alike.
//!
//! * `text` (the default): for people. Colour only when stderr is a terminal
//!   and `NO_COLOR` is unset, so a log file or a collector never sees escape
//!   bytes.
//! * `json`: one JSON object per line on stderr, for log collectors:
//!   `timestamp`, `level`, `fields` (`message` and the event's own fields,
//!   such as `migration`, `rows_done`, `rows_total`, `rows_per_s`) and
//!   `target`.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: text or json")),
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).with_target(false).init();
        }
    }
}

/// Reports the error a command ended with, its causes on one line: `error:
/// ...` on stderr as text, or one `error` event as JSON.
pub fn report_failure(format: LogFormat, error: &(dyn std::error::Error + 'static)) {
    let line = crate::error_line(error);
    match format {
        LogFormat::Text => eprintln!("error: {line}"),
        LogFormat::Json => tracing::error!(error = %line, "the command failed"),
    }
}
