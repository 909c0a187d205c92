#!/usr/bin/env bash
# Start the test database servers this workspace's tests run against:
# PostgreSQL 15 and MariaDB, on loopback only, with data under a directory this
# script owns (default: <repo>/.testdb). Installs MariaDB when it is missing.
# Safe to run twice: servers already running from that directory are reused.
#
# Production-like defaults on purpose, so collation bugs cannot hide:
#   PostgreSQL: default collation ICU en-US (linguistic, not code point)
#   MariaDB:    utf8mb4 / utf8mb4_general_ci (case-insensitive, PAD SPACE)
#
# Prints the URLs and writes them to <dir>/env for `source`:
#   TEST_POSTGRES_URL, TEST_MYSQL_URL
#
# Environment: TESTDB_DIR, TESTDB_PG_PORT (default 54329),
#              TESTDB_MYSQL_PORT (default 33069).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${TESTDB_DIR:-$repo/.testdb}
pg_port=${TESTDB_PG_PORT:-54329}
my_port=${TESTDB_MYSQL_PORT:-33069}
pg_bin=/usr/lib/postgresql/15/bin

log() { echo "test-dbs: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# Servers refuse to run as root; run them as their own system users.
as_user() {
    local user=$1; shift
    if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

wait_for() {
    local what=$1; shift
    for _ in $(seq 1 120); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what did not answer within 60 s"
}

# ---------------------------------------------------------------- PostgreSQL
start_postgres() {
    [ -x "$pg_bin/initdb" ] || die "PostgreSQL 15 server binaries not found in $pg_bin"
    local data=$dir/pg run=$dir/pg-run
    mkdir -p "$run"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$run"; fi
    if [ ! -s "$data/PG_VERSION" ]; then
        log "initialising PostgreSQL in $data (ICU en-US default collation)"
        mkdir -p "$data"
        if [ "$(id -u)" = 0 ]; then chown postgres: "$data"; fi
        as_user postgres "$pg_bin/initdb" -D "$data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 \
            --locale-provider=icu --icu-locale=en-US >"$dir/pg-initdb.log" 2>&1 \
            || { cat "$dir/pg-initdb.log" >&2; die "initdb failed"; }
    fi
    if as_user postgres "$pg_bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "PostgreSQL already running from $data"
    else
        if "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; then
            die "port $pg_port is taken by another PostgreSQL; set TESTDB_PG_PORT"
        fi
        log "starting PostgreSQL on 127.0.0.1:$pg_port"
        as_user postgres "$pg_bin/pg_ctl" -D "$data" -l "$run/pg.log" -w -t 60 start -o \
            "-p $pg_port -k $run -c listen_addresses=127.0.0.1 -c max_connections=600 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            >/dev/null || { tail -n 30 "$run/pg.log" >&2; die "PostgreSQL did not start"; }
    fi
    wait_for PostgreSQL "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"
}

# ------------------------------------------------------------------- MariaDB
install_mariadb() {
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] && return 0
    [ "$(id -u)" = 0 ] || die "MariaDB is not installed and this is not root: apt-get install mariadb-server"
    log "installing MariaDB (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$dir/apt.log" 2>&1 || { tail -n 20 "$dir/apt.log" >&2; die "apt-get update failed"; }
    apt-get install -y -qq mariadb-server >>"$dir/apt.log" 2>&1 \
        || { tail -n 20 "$dir/apt.log" >&2; die "apt-get install mariadb-server failed"; }
}

my_client() { mariadb --no-defaults --protocol=socket -S "$dir/mysql-run/mysqld.sock" -uroot "$@"; }

start_mariadb() {
    install_mariadb
    local mariadbd
    mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
    local data=$dir/mysql run=$dir/mysql-run
    mkdir -p "$run"
    if [ "$(id -u)" = 0 ]; then chown mysql: "$run"; fi
    if [ ! -d "$data/mysql" ]; then
        log "initialising MariaDB in $data"
        mkdir -p "$data"
        if [ "$(id -u)" = 0 ]; then chown mysql: "$data"; fi
        as_user mysql mariadb-install-db --no-defaults --datadir="$data" \
            --auth-root-authentication-method=normal --skip-test-db >"$dir/mysql-install.log" 2>&1 \
            || { cat "$dir/mysql-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    if [ -S "$run/mysqld.sock" ] && my_client -e 'SELECT 1' >/dev/null 2>&1; then
        log "MariaDB already running from $data"
    else
        if (exec 3<>"/dev/tcp/127.0.0.1/$my_port") 2>/dev/null; then
            die "port $my_port is taken by another server; set TESTDB_MYSQL_PORT"
        fi
        log "starting MariaDB on 127.0.0.1:$my_port (utf8mb4_general_ci)"
        as_user mysql "$mariadbd" --no-defaults --datadir="$data" \
            --socket="$run/mysqld.sock" --pid-file="$run/mysqld.pid" \
            --port="$my_port" --bind-address=127.0.0.1 --skip-name-resolve \
            --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
            --max-connections=1000 --innodb-flush-log-at-trx-commit=2 \
            --innodb-buffer-pool-size=256M --log-error="$run/mysql.log" \
            >/dev/null 2>&1 &
        disown || true
    fi
    wait_for MariaDB my_client -e 'SELECT 1'
    my_client -e "CREATE USER IF NOT EXISTS 'langbot'@'127.0.0.1' IDENTIFIED BY 'langbot';
                  GRANT ALL PRIVILEGES ON *.* TO 'langbot'@'127.0.0.1' WITH GRANT OPTION;
                  FLUSH PRIVILEGES;"
}

start_postgres
start_mariadb

pg_url="postgres://postgres@127.0.0.1:$pg_port"
my_url="mysql://langbot:langbot@127.0.0.1:$my_port"
cat >"$dir/env" <<EOF
export TEST_POSTGRES_URL=$pg_url
export TEST_MYSQL_URL=$my_url
EOF
log "ready"
echo "TEST_POSTGRES_URL=$pg_url"
echo "TEST_MYSQL_URL=$my_url"
