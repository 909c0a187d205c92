#!/usr/bin/env bash
# The test command: starts the test databases (installing MariaDB if needed),
# builds the binaries the tests run as processes, and runs every test on
# SQLite, PostgreSQL and MariaDB. Extra arguments go to cargo nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Captured first: a failure inside `eval "$(...)"` would not stop the script.
urls=$(scripts/test-dbs.sh)
eval "$(printf '%s\n' "$urls" | sed 's/^/export /')"
cargo build --workspace --bins --quiet
export TEST_BINARIES_BUILT=1
# Doctests (the crate READMEs) are not run by nextest.
cargo test --workspace --doc --quiet
exec cargo nextest run --workspace --no-fail-fast "$@"
