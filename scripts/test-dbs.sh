#!/usr/bin/env bash
# Start the test database servers this workspace's tests run against:
# PostgreSQL 15 and MariaDB, on loopback only. Installs MariaDB when it is
# missing. Safe to run twice: servers already running from the state
# directory are reused; a half-made data directory (a run killed during
# initdb) is made again; servers killed without a shutdown start again.
#
#   scripts/test-dbs.sh [start]   start what is not running; print the URLs
#   scripts/test-dbs.sh status    say which servers run (exit 1 if any is down)
#   scripts/test-dbs.sh stop      stop exactly the servers this script started
#                                 from this state directory
#
# State (data, sockets, logs, the env file) lives outside the clone, where the
# server users (postgres, mysql) can reach it even when the clone sits in a
# root-only folder: $TESTDB_DIR, default
#   ${TMPDIR:-/tmp}/agent-runner-state-testdb/<hash of the clone's path>
# so each clone has its own servers' data.
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
command=${1:-start}
case $command in start|stop|status) ;; *)
    echo "usage: $0 [start|status|stop]" >&2; exit 2 ;;
esac
repo_hash=$(printf '%s' "$repo" | sha256sum | cut -c1-12)
dir=${TESTDB_DIR:-${TMPDIR:-/tmp}/agent-runner-state-testdb/$repo_hash}
pg_port=${TESTDB_PG_PORT:-54329}
my_port=${TESTDB_MYSQL_PORT:-33069}
pg_bin=/usr/lib/postgresql/15/bin

log() { echo "test-dbs: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# The server users must be able to walk to their data.
chmod 755 "$dir"

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

# Whether process $1 runs (a zombie left by a killed server does not: where
# nothing reaps orphans, a SIGKILLed server stays a zombie and `kill -0` and
# pg_ctl still see it).
alive() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null \
        && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# The PostgreSQL postmaster started from $dir, if it runs.
pg_pid() {
    local pid
    pid=$(head -n 1 "$dir/pg/postmaster.pid" 2>/dev/null) || return 1
    alive "$pid" && echo "$pid"
}

# ---------------------------------------------------------------- PostgreSQL
start_postgres() {
    [ -x "$pg_bin/initdb" ] || die "PostgreSQL 15 server binaries not found in $pg_bin"
    local data=$dir/pg run=$dir/pg-run
    mkdir -p "$run"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$run"; fi
    if [ ! -s "$data/PG_VERSION" ]; then
        # Made aside and renamed when whole: a killed initdb leaves no
        # half-made data directory behind.
        log "initialising PostgreSQL in $data (ICU en-US default collation)"
        rm -rf "$data.new" "$data"
        mkdir -p "$data.new"
        if [ "$(id -u)" = 0 ]; then chown postgres: "$data.new"; fi
        as_user postgres "$pg_bin/initdb" -D "$data.new" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 \
            --locale-provider=icu --icu-locale=en-US >"$dir/pg-initdb.log" 2>&1 \
            || { cat "$dir/pg-initdb.log" >&2; die "initdb failed"; }
        mv "$data.new" "$data"
    fi
    if pg_pid >/dev/null; then
        log "PostgreSQL already running from $data"
    else
        # A server killed without shutdown leaves its lock file: drop it, the
        # postmaster it names is gone.
        rm -f "$data/postmaster.pid" "$run"/.s.PGSQL.*.lock
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
        rm -rf "$data.new" "$data"
        mkdir -p "$data.new"
        if [ "$(id -u)" = 0 ]; then chown mysql: "$data.new"; fi
        as_user mysql mariadb-install-db --no-defaults --datadir="$data.new" \
            --auth-root-authentication-method=normal --skip-test-db >"$dir/mysql-install.log" 2>&1 \
            || { cat "$dir/mysql-install.log" >&2; die "mariadb-install-db failed"; }
        mv "$data.new" "$data"
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

# ---------------------------------------------------------- status and stop

# The pid of the MariaDB this script started, if it still runs from $dir.
mariadb_pid() {
    local pid
    pid=$(cat "$dir/mysql-run/mysqld.pid" 2>/dev/null) || return 1
    alive "$pid" \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--datadir=$dir/mysql " \
        && echo "$pid"
}

status() {
    local down=0
    if pid=$(pg_pid); then echo "postgres: running on 127.0.0.1:$pg_port (pid $pid, data $dir/pg)"
    else echo "postgres: not running"; down=1; fi
    if pid=$(mariadb_pid); then echo "mariadb: running on 127.0.0.1:$my_port (pid $pid, data $dir/mysql)"
    else echo "mariadb: not running"; down=1; fi
    return $down
}

stop() {
    local pid
    if pg_pid >/dev/null; then
        log "stopping PostgreSQL ($dir/pg)"
        as_user postgres "$pg_bin/pg_ctl" -D "$dir/pg" -m fast -w -t 60 stop >/dev/null
    fi
    if pid=$(mariadb_pid); then
        log "stopping MariaDB (pid $pid)"
        kill "$pid"
        # Until the process is gone, which is what stop promises.
        while alive "$pid"; do sleep 0.2; done
    fi
    log "stopped"
}

case $command in
    status) status; exit ;;
    stop) stop; exit ;;
esac

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
