#!/usr/bin/env bash
# The test command: starts the test databases (installing what is missing),
# and runs every test (nextest's setup script builds the binaries first) on
# SQLite, PostgreSQL and MariaDB, directly and on the production topologies
# (TLS-only servers, PgBouncer in transaction mode, a 3-node Galera cluster).
# Extra arguments go to cargo nextest.
#
# TEST_BACKENDS=sqlite (comma-separated) narrows a local run: the other
# backends' tests are filtered out and nextest reports them as skipped.
# The Galera cluster starts under CI=true or TESTDB_GALERA=1; a local run
# without it skips the *_galera tests and says so. Under CI=true nothing is
# skipped: TEST_BACKENDS is refused and every topology must answer.
set -euo pipefail
cd "$(dirname "$0")/.."

ci=false
if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then ci=true; fi
excluded=()
if [ -n "${TEST_BACKENDS:-}" ]; then
    if $ci; then
        echo "test.sh: CI=true runs every backend; unset TEST_BACKENDS" >&2
        exit 2
    fi
    for b in sqlite postgres mysql; do
        case ",${TEST_BACKENDS// /}," in
            *",$b,"*) ;;
            # A test's last name part lists the backends it needs
            # (`::postgres`, `::mysql_tls`, `::sqlite_postgres_mysql`).
            *) excluded+=("test(/::([a-z]+_)*$b(_[a-z]+)*\$/)") ;;
        esac
    done
fi

# Captured first: a failure inside `eval "$(...)"` would not stop the script.
urls=$(scripts/test-dbs.sh)
eval "$(printf '%s\n' "$urls" | sed "s/^\([A-Z_]*\)=\(.*\)$/export \1='\2'/")"
if [ -z "${TEST_GALERA_URLS:-}" ]; then
    if $ci; then
        echo "test.sh: CI=true but no Galera cluster was started" >&2
        exit 1
    fi
    excluded+=("test(/_galera\$/)")
fi

filter=()
if [ ${#excluded[@]} -gt 0 ]; then
    expr=$(IFS='|'; echo "${excluded[*]}")
    filter=(-E "not (${expr//|/ | })")
    echo "test.sh: skipping ${excluded[*]} (nextest counts them as skipped)" >&2
fi

# Doctests (the crate READMEs) are not run by nextest.
cargo test --workspace --doc --quiet
exec cargo nextest run --workspace --no-fail-fast "${filter[@]}" "$@"
