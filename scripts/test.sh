#!/usr/bin/env bash
# The test command: starts the test databases (installing MariaDB if needed),
# builds the binaries the tests run as processes, and runs every test on
# SQLite, PostgreSQL and MariaDB. Extra arguments go to cargo nextest.
#
# TEST_BACKENDS=sqlite (comma-separated) narrows a local run: the other
# backends' tests are filtered out and nextest reports them as skipped.
# Refused under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."

filter=()
if [ -n "${TEST_BACKENDS:-}" ]; then
    if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
        echo "test.sh: CI=true runs every backend; unset TEST_BACKENDS" >&2
        exit 2
    fi
    left_out=()
    for b in sqlite postgres mysql; do
        case ",${TEST_BACKENDS// /}," in
            *",$b,"*) ;;
            *) left_out+=("test(/::$b\$/)") ;;
        esac
    done
    if [ ${#left_out[@]} -gt 0 ]; then
        expr=$(IFS='|'; echo "${left_out[*]}")
        filter=(-E "not (${expr//|/ | })")
        echo "test.sh: TEST_BACKENDS=$TEST_BACKENDS: skipping ${left_out[*]}" >&2
    fi
fi

# Captured first: a failure inside `eval "$(...)"` would not stop the script.
urls=$(scripts/test-dbs.sh)
eval "$(printf '%s\n' "$urls" | sed "s/^\([A-Z_]*\)=\(.*\)$/export \1='\2'/")"
cargo build --workspace --bins --quiet
export TEST_BINARIES_BUILT=1
# Doctests (the crate READMEs) are not run by nextest.
cargo test --workspace --doc --quiet
exec cargo nextest run --workspace --no-fail-fast "${filter[@]}" "$@"
