#!/usr/bin/env bash
# nextest setup script (.config/nextest.toml): builds the workspace binaries
# the tests run as processes, once per run, and tells the tests so through
# $NEXTEST_ENV. Cargo makes it a no-op when they are up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
"${CARGO:-cargo}" build --workspace --bins --quiet
if [ -n "${NEXTEST_ENV:-}" ]; then
    echo "TEST_BINARIES_BUILT=1" >>"$NEXTEST_ENV"
fi
