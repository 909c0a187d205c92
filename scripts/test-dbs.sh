#!/usr/bin/env bash
# Start the test database servers this workspace's tests run against, on
# loopback only, installing what is missing (MariaDB, PgBouncer, galera-4):
#
#   postgres      PostgreSQL 15, plain                         127.0.0.1:54329
#   postgres-tls  PostgreSQL 15, TLS only (hostnossl reject)   localhost:54330
#   pgbouncer     PgBouncer, pool_mode = transaction, in front of `postgres`
#                                                              127.0.0.1:64329
#   mariadb       MariaDB, plain                               127.0.0.1:33069
#   mariadb-tls   MariaDB, require_secure_transport=ON         localhost:33070
#   galera        3-node MariaDB Galera cluster (TESTDB_GALERA=1, or CI=true)
#                                                   127.0.0.1:23071,23072,23073
#   postgres-restart, mariadb-restart: one more of each, plain, that only
#                 the server-restart tests use and restart (`restart NAME`)
#                                         127.0.0.1:25431, 127.0.0.1:23074
#   postgres-primary, postgres-standby: a streaming-replication pair that
#                 only the failover test makes (`failover-pair`) and removes
#                                         127.0.0.1:25432, 127.0.0.1:25433
#
# Production-like defaults on purpose, so collation bugs cannot hide:
#   PostgreSQL: default collation ICU en-US (linguistic, not code point)
#   MariaDB:    utf8mb4 / utf8mb4_general_ci (case-insensitive, PAD SPACE)
# The TLS servers use certificates from a CA this script makes (tls/ca.crt),
# valid for localhost and 127.0.0.1; tls/client.{crt,key} is a client
# certificate for the user `certuser`, which both TLS servers require to
# present one; tls/other-ca.crt is a CA that signed none of them.
#
#   scripts/test-dbs.sh [start]   start what is not running; print the URLs
#   scripts/test-dbs.sh status    say which servers run (exit 1 if any is down)
#   scripts/test-dbs.sh stop      stop exactly the servers this script started
#                                 from this state directory
#   scripts/test-dbs.sh restart postgres-restart|mariadb-restart
#                                 shut that server down (as an operator's
#                                 restart does) and start it again; returns
#                                 once it answers
#   scripts/test-dbs.sh down|up postgres-restart|mariadb-restart
#                                 the two halves of restart: shut it down
#                                 (returns once it is gone), start it again
#   scripts/test-dbs.sh failover-pair | failover-promote | failover-stop
#                                 make a fresh primary and standby (prints
#                                 their URLs), promote the standby, remove both
#   scripts/test-dbs.sh crash postgres-restart|mariadb-restart|galera3|postgres-primary
#                                 SIGKILL that server and all its processes,
#                                 as a host crash does (returns once they are
#                                 gone); `up` starts it again, with recovery
#                                 (galera3: rejoins the cluster and syncs)
#
# Safe to run twice: servers already running from the state directory are
# reused; a half-made data directory (a run killed during initdb) is made
# again; servers killed without a shutdown start again.
#
# State (data, sockets, logs, certificates, the env file) lives outside the
# clone, where the server users (postgres, mysql) can reach it even when the
# clone sits in a root-only folder: $TESTDB_DIR, default
#   ${TMPDIR:-/tmp}/agent-runner-state-testdb/<hash of the clone's path>
# The URLs are printed and written to <state>/env for `source`.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
command=${1:-start}
case $command in start|stop|status) ;;
    restart|down) case ${2:-} in postgres-restart|mariadb-restart) ;; *)
        echo "usage: $0 $command postgres-restart|mariadb-restart" >&2; exit 2 ;; esac ;;
    up|crash) case ${2:-} in postgres-restart|mariadb-restart|galera3|postgres-primary) ;; *)
        echo "usage: $0 $command postgres-restart|mariadb-restart|galera3|postgres-primary" >&2; exit 2 ;; esac ;;
    failover-pair|failover-promote|failover-stop) ;;
    *) echo "usage: $0 [start|status|stop|restart|down|up|crash NAME|failover-pair|failover-promote|failover-stop]" >&2; exit 2 ;;
esac
repo_hash=$(printf '%s' "$repo" | sha256sum | cut -c1-12)
dir=${TESTDB_DIR:-${TMPDIR:-/tmp}/agent-runner-state-testdb/$repo_hash}
pg_port=${TESTDB_PG_PORT:-54329}
pg_tls_port=${TESTDB_PG_TLS_PORT:-54330}
pgbouncer_port=${TESTDB_PGBOUNCER_PORT:-64329}
my_port=${TESTDB_MYSQL_PORT:-33069}
my_tls_port=${TESTDB_MYSQL_TLS_PORT:-33070}
# Servers that tests stop, crash or make while other tests run listen below
# Linux's ephemeral range (32768-60999): a client connection's source port
# can take a port in that range, and a server started then could not bind it.
pg_restart_port=${TESTDB_PG_RESTART_PORT:-25431}
pg_primary_port=${TESTDB_PG_PRIMARY_PORT:-25432}
pg_standby_port=${TESTDB_PG_STANDBY_PORT:-25433}
my_restart_port=${TESTDB_MYSQL_RESTART_PORT:-23074}
galera_base_port=${TESTDB_GALERA_PORT:-23071}
pg_bin=/usr/lib/postgresql/15/bin
galera=${TESTDB_GALERA:-}
if [ -z "$galera" ] && { [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; }; then galera=1; fi

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
own() { if [ "$(id -u)" = 0 ]; then chown "$1" "${@:2}"; fi; }

# Waits until "$@" succeeds: what it waits for is the server answering.
wait_for() {
    local what=$1; shift
    for _ in $(seq 1 240); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what did not answer within 120 s"
}

# Whether process $1 runs (a zombie left by a killed server does not: where
# nothing reaps orphans, a SIGKILLed server stays a zombie and `kill -0` and
# pg_ctl still see it).
alive() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null \
        && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
    [ "$(id -u)" = 0 ] || die "$* not installed and this is not root: apt-get install $*"
    log "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if [ ! -f "$dir/.apt-updated" ]; then
        apt-get update -qq >"$dir/apt.log" 2>&1 || { tail -n 20 "$dir/apt.log" >&2; die "apt-get update failed"; }
        touch "$dir/.apt-updated"
    fi
    apt-get install -y -qq "$@" >>"$dir/apt.log" 2>&1 \
        || { tail -n 20 "$dir/apt.log" >&2; die "apt-get install $* failed"; }
}

# ------------------------------------------------------------- certificates
make_certs() {
    # The server keys are handed to each server's user: MariaDB's comes
    # with its package, which a fresh machine does not have yet.
    install_mariadb
    local tls=$dir/tls
    [ -s "$tls/done" ] && return 0
    log "making a test CA and certificates in $tls"
    rm -rf "$tls.new"; mkdir -p "$tls.new"
    (
        cd "$tls.new"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -subj "/CN=agent-runner-state test CA" -keyout ca.key -out ca.crt
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
            -subj "/CN=some other CA" -keyout other-ca.key -out other-ca.crt
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=localhost" -keyout server.key -out server.csr
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt
        printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' >client.ext
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -subj "/CN=certuser" -keyout client.key.sec1 -out client.csr
        openssl pkcs8 -topk8 -nocrypt -in client.key.sec1 -out client.key
        openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile client.ext -out client.crt
        # Each server gets its own copy of the key, owned by its user.
        mkdir pg mysql
        cp server.crt server.key ca.crt pg/; cp server.crt server.key ca.crt mysql/
        chmod 600 pg/server.key mysql/server.key
    ) >"$dir/certs.log" 2>&1 || { cat "$dir/certs.log" >&2; die "making certificates failed"; }
    own postgres: -R "$tls.new/pg"
    own mysql: -R "$tls.new/mysql"
    chmod 644 "$tls.new"/*.crt; chmod 600 "$tls.new/client.key"
    echo ok >"$tls.new/done"
    rm -rf "$tls"; mv "$tls.new" "$tls"
}

# --------------------------------------------------------------- PostgreSQL
# The postmaster started from $dir/$1, if it runs.
pg_pid() {
    local pid
    pid=$(head -n 1 "$dir/$1/postmaster.pid" 2>/dev/null) || return 1
    alive "$pid" && echo "$pid"
}

# start_pg NAME PORT HOST [postgres -c options...]
# A server already running with other options (started by an older copy of
# this script, say without durable commits) is restarted with these.
start_pg() {
    local name=$1 port=$2 host=$3; shift 3
    [ -x "$pg_bin/initdb" ] || die "PostgreSQL 15 server binaries not found in $pg_bin"
    local data=$dir/$name run=$dir/$name-run
    mkdir -p "$run"; own postgres: "$run"
    if [ ! -s "$data/PG_VERSION" ]; then
        # Made aside and renamed when whole: a killed initdb leaves no
        # half-made data directory behind.
        log "initialising $name in $data (ICU en-US default collation)"
        rm -rf "$data.new" "$data"
        mkdir -p "$data.new"; own postgres: "$data.new"
        as_user postgres "$pg_bin/initdb" -D "$data.new" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 \
            --locale-provider=icu --icu-locale=en-US >"$dir/$name-initdb.log" 2>&1 \
            || { cat "$dir/$name-initdb.log" >&2; die "initdb failed"; }
        mv "$data.new" "$data"
    fi
    local opts="-p $port -k $run -c listen_addresses=127.0.0.1 -c max_connections=600 $*"
    if pg_pid "$name" >/dev/null && [ "$(cat "$run/options" 2>/dev/null)" != "$opts" ]; then
        log "$name runs with other options than these: restarting it"
        stop_pg "$name"
    fi
    if pg_pid "$name" >/dev/null; then
        log "$name already running from $data"
    else
        # A server killed without shutdown leaves its lock files: drop them,
        # the postmaster they name is gone.
        rm -f "$data/postmaster.pid" "$run"/.s.PGSQL.*.lock
        port_taken "$port" && die "port $port is taken by another server; set its TESTDB_*_PORT"
        log "starting $name on $host:$port"
        as_user postgres "$pg_bin/pg_ctl" -D "$data" -l "$run/pg.log" -w -t 60 start -o "$opts" \
            >/dev/null || { tail -n 30 "$run/pg.log" >&2; die "$name did not start"; }
        printf '%s' "$opts" >"$run/options"
    fi
}

start_postgres() {
    start_pg postgres "$pg_port" 127.0.0.1
    wait_for PostgreSQL "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"
}

start_postgres_restart() {
    start_pg postgres-restart "$pg_restart_port" 127.0.0.1
    wait_for "PostgreSQL (restart)" "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_restart_port"
}

start_postgres_tls() {
    make_certs
    local hba=$dir/postgres-tls-hba.conf tls=$dir/tls/pg
    cat >"$hba" <<EOF
# TLS only: plain connections are refused; certuser must show a certificate.
local      all  all                     trust
hostnossl  all  all       0.0.0.0/0     reject
hostssl    all  certuser  127.0.0.1/32  cert
hostssl    all  all       127.0.0.1/32  trust
EOF
    chmod 644 "$hba"
    start_pg postgres-tls "$pg_tls_port" localhost -c ssl=on -c "ssl_cert_file=$tls/server.crt" \
        -c "ssl_key_file=$tls/server.key" -c "ssl_ca_file=$tls/ca.crt" -c "hba_file=$hba"
    wait_for "PostgreSQL (TLS)" "$pg_bin/pg_isready" -q -h "$dir/postgres-tls-run" -p "$pg_tls_port"
    as_user postgres "$pg_bin/psql" -q -h "$dir/postgres-tls-run" -p "$pg_tls_port" -U postgres -c \
        "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'certuser') THEN CREATE ROLE certuser LOGIN SUPERUSER; END IF; END \$\$;" >/dev/null
}

# ---------------------------------------------------------------- PgBouncer
pgbouncer_pid() {
    local pid
    pid=$(cat "$dir/pgbouncer-run/pgbouncer.pid" 2>/dev/null) || return 1
    alive "$pid" && echo "$pid"
}

start_pgbouncer() {
    command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || apt_install pgbouncer
    local bin run=$dir/pgbouncer-run
    bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
    mkdir -p "$run"; own postgres: "$run"
    if pgbouncer_pid >/dev/null; then
        log "PgBouncer already running from $run"
    else
        rm -f "$run/pgbouncer.pid"
        port_taken "$pgbouncer_port" && die "port $pgbouncer_port is taken; set TESTDB_PGBOUNCER_PORT"
        echo '"postgres" ""' >"$run/userlist.txt"
        cat >"$run/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $pgbouncer_port
unix_socket_dir = $run
auth_type = trust
auth_file = $run/userlist.txt
pool_mode = transaction
; few server connections per database, so clients really share them
default_pool_size = 4
max_client_conn = 2000
max_db_connections = 8
; sqlx sends extra_float_digits at startup; PgBouncer 1.18 must be told
ignore_startup_parameters = extra_float_digits
pidfile = $run/pgbouncer.pid
logfile = $run/pgbouncer.log
admin_users = postgres
EOF
        own postgres: "$run"/*
        log "starting PgBouncer (transaction pooling) on 127.0.0.1:$pgbouncer_port"
        as_user postgres "$bin" -d "$run/pgbouncer.ini" >/dev/null 2>&1 \
            || { tail -n 20 "$run/pgbouncer.log" >&2; die "PgBouncer did not start"; }
    fi
    wait_for PgBouncer "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pgbouncer_port"
}

# ------------------------------------------------------------------ MariaDB
install_mariadb() {
    { command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } && return 0
    apt_install mariadb-server
}

my_client() { local sock=$1; shift; mariadb --no-defaults --protocol=socket -S "$sock" -uroot "$@"; }

# The pid of the MariaDB started from $dir/$1, if it runs.
mariadb_pid() {
    local pid
    pid=$(cat "$dir/$1-run/mysqld.pid" 2>/dev/null) || return 1
    alive "$pid" \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--datadir=$dir/$1 " \
        && echo "$pid"
}

# start_mariadb_instance NAME PORT [mariadbd options...]
start_mariadb_instance() {
    local name=$1 port=$2; shift 2
    install_mariadb
    local mariadbd data=$dir/$name run=$dir/$name-run
    mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
    mkdir -p "$run"; own mysql: "$run"
    if [ ! -d "$data/mysql" ]; then
        log "initialising $name in $data"
        rm -rf "$data.new" "$data"
        mkdir -p "$data.new"; own mysql: "$data.new"
        as_user mysql mariadb-install-db --no-defaults --datadir="$data.new" \
            --auth-root-authentication-method=normal --skip-test-db >"$dir/$name-install.log" 2>&1 \
            || { cat "$dir/$name-install.log" >&2; die "mariadb-install-db failed"; }
        mv "$data.new" "$data"
    fi
    local args=(--no-defaults --datadir="$data"
        --socket="$run/mysqld.sock" --pid-file="$run/mysqld.pid"
        --port="$port" --bind-address=127.0.0.1 --skip-name-resolve
        --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci
        --max-connections=1000 --log-error="$run/mysql.log" "$@")
    # A server started with other options (by an older copy of this script)
    # starts again with these; not a Galera node, whose options differ
    # between bootstrapping and joining.
    if [ "${name#galera}" = "$name" ] && mariadb_pid "$name" >/dev/null \
        && [ "$(cat "$run/options" 2>/dev/null)" != "${args[*]}" ]; then
        log "$name runs with other options than these: restarting it"
        stop_mariadb "$name"
    fi
    if mariadb_pid "$name" >/dev/null; then
        log "$name already running from $data"
    else
        port_taken "$port" && die "port $port is taken by another server; set its TESTDB_*_PORT"
        log "starting $name on 127.0.0.1:$port (utf8mb4_general_ci)"
        as_user mysql "$mariadbd" "${args[@]}" >/dev/null 2>&1 &
        disown || true
        printf '%s' "${args[*]}" >"$run/options"
    fi
    wait_for "$name" my_client "$run/mysqld.sock" -e 'SELECT 1'
}

create_mariadb_users() {
    my_client "$1" -e "CREATE USER IF NOT EXISTS 'langbot'@'127.0.0.1' IDENTIFIED BY 'langbot';
                  GRANT ALL PRIVILEGES ON *.* TO 'langbot'@'127.0.0.1' WITH GRANT OPTION;
                  $2
                  FLUSH PRIVILEGES;"
}

start_mariadb() {
    start_mariadb_instance mariadb "$my_port" --innodb-buffer-pool-size=256M
    create_mariadb_users "$dir/mariadb-run/mysqld.sock" ""
}

start_mariadb_restart() {
    start_mariadb_instance mariadb-restart "$my_restart_port" --innodb-buffer-pool-size=32M
    create_mariadb_users "$dir/mariadb-restart-run/mysqld.sock" ""
}

start_mariadb_tls() {
    make_certs
    local tls=$dir/tls/mysql
    start_mariadb_instance mariadb-tls "$my_tls_port" --innodb-buffer-pool-size=64M \
        --require-secure-transport=ON --ssl-ca="$tls/ca.crt" --ssl-cert="$tls/server.crt" \
        --ssl-key="$tls/server.key"
    create_mariadb_users "$dir/mariadb-tls-run/mysqld.sock" \
        "CREATE USER IF NOT EXISTS 'certuser'@'127.0.0.1' REQUIRE X509;
         GRANT ALL PRIVILEGES ON *.* TO 'certuser'@'127.0.0.1' WITH GRANT OPTION;"
}

# ------------------------------------------------------------------- Galera
galera_lib() {
    for lib in /usr/lib/galera/libgalera_smm.so /usr/lib/libgalera_smm.so /usr/lib/galera-4/libgalera_smm.so; do
        [ -f "$lib" ] && { echo "$lib"; return 0; }
    done
    return 1
}

# galera_node N: options of node N (1-3) of the cluster.
galera_node_opts() {
    local n=$1 lib
    lib=$(galera_lib)
    local base=$((galera_base_port + 100))
    local peers="gcomm://127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
    # Galera's usual setting: a commit is durable on the cluster, each node
    # flushes its log about once a second.
    echo --innodb-buffer-pool-size=32M --innodb-log-file-size=16M --innodb-flush-log-at-trx-commit=2 \
        --binlog-format=ROW --default-storage-engine=InnoDB --innodb-autoinc-lock-mode=2 \
        --wsrep-on=ON --wsrep-provider="$lib" --wsrep-cluster-name=ars_test \
        --wsrep-node-name="node$n" --wsrep-node-address=127.0.0.1 \
        --wsrep-sst-method=rsync \
        "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:$((base + n));ist.recv_addr=127.0.0.1:$((base + 10 + n));gcache.size=32M;gcs.fc_limit=64" \
        --wsrep-sst-receive-address="127.0.0.1:$((base + 20 + n))" \
        --wsrep-cluster-address="$peers"
}

galera_size() {
    my_client "$dir/galera1-run/mysqld.sock" -N -e "SHOW STATUS LIKE 'wsrep_cluster_size'" 2>/dev/null | awk '{print $2}'
}

galera_synced() {
    local n=$1
    [ "$(my_client "$dir/galera$n-run/mysqld.sock" -N -e "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | awk '{print $2}')" = Synced ]
}

start_galera() {
    galera_lib >/dev/null || apt_install galera-4 rsync
    command -v rsync >/dev/null || apt_install rsync
    local running=0 n
    for n in 1 2 3; do mariadb_pid "galera$n" >/dev/null && running=$((running + 1)); done
    for n in 1 2 3; do
        if mariadb_pid "galera$n" >/dev/null; then continue; fi
        local extra=()
        # With no node running, the first one bootstraps a new cluster (the
        # others join it). A node that was the last to stop may bootstrap
        # safely; mark it so after a crash.
        if [ "$running" = 0 ] && [ "$n" = 1 ]; then
            extra=(--wsrep-new-cluster)
            [ -f "$dir/galera1/grastate.dat" ] && sed -i 's/^safe_to_bootstrap: 0/safe_to_bootstrap: 1/' "$dir/galera1/grastate.dat"
        fi
        # shellcheck disable=SC2046
        start_mariadb_instance "galera$n" $((galera_base_port + n - 1)) $(galera_node_opts "$n") "${extra[@]}"
        running=$((running + 1))
        wait_for "galera node $n to sync" galera_synced "$n"
    done
    create_mariadb_users "$dir/galera1-run/mysqld.sock" ""
    [ "$(galera_size)" = 3 ] || die "the Galera cluster has $(galera_size) nodes, not 3"
}

# ---------------------------------------------------------- status and stop
status() {
    local down=0 pid
    if pid=$(pg_pid postgres); then echo "postgres: running on 127.0.0.1:$pg_port (pid $pid)"; else echo "postgres: not running"; down=1; fi
    if pid=$(pg_pid postgres-tls); then echo "postgres-tls: running on localhost:$pg_tls_port (pid $pid)"; else echo "postgres-tls: not running"; down=1; fi
    if pid=$(pg_pid postgres-restart); then echo "postgres-restart: running on 127.0.0.1:$pg_restart_port (pid $pid)"; else echo "postgres-restart: not running"; down=1; fi
    if pid=$(pgbouncer_pid); then echo "pgbouncer: running on 127.0.0.1:$pgbouncer_port (pid $pid)"; else echo "pgbouncer: not running"; down=1; fi
    for name in mariadb mariadb-tls mariadb-restart galera1 galera2 galera3; do
        if pid=$(mariadb_pid "$name"); then echo "$name: running (pid $pid, data $dir/$name)"
        elif [ "${name#galera}" = "$name" ] || [ -n "$galera" ]; then echo "$name: not running"; down=1
        fi
    done
    echo "state: $dir"
    return $down
}

stop() {
    local pid name
    if pid=$(pgbouncer_pid); then
        log "stopping PgBouncer (pid $pid)"; kill "$pid"
        while alive "$pid"; do sleep 0.1; done
    fi
    for name in postgres postgres-tls postgres-restart; do stop_pg "$name"; done
    failover_stop
    # Galera nodes one at a time, node 1 last: it can then bootstrap again.
    for name in galera3 galera2 galera1 mariadb mariadb-tls mariadb-restart; do
        stop_mariadb "$name"
    done
    log "stopped"
}

stop_pg() {
    if pg_pid "$1" >/dev/null; then
        log "stopping $1"
        as_user postgres "$pg_bin/pg_ctl" -D "$dir/$1" -m fast -w -t 60 stop >/dev/null
    fi
}

stop_mariadb() {
    local pid
    if pid=$(mariadb_pid "$1"); then
        log "stopping $1 (pid $pid)"
        kill "$pid"
        # Until the process is gone, which is what stop promises.
        while alive "$pid"; do sleep 0.2; done
    fi
}

down() {
    case $1 in
        postgres-restart) stop_pg postgres-restart ;;
        mariadb-restart) stop_mariadb mariadb-restart ;;
    esac
}

# ------------------------------------------------------- failover pair
# postgres-primary and postgres-standby: a streaming-replication pair for
# the failover test, made anew by `failover-pair` (an earlier pair, promoted
# or not, is discarded); `failover-promote` promotes the standby;
# `failover-stop` stops both and removes them.
failover_stop() {
    local name
    for name in postgres-standby postgres-primary; do
        if pg_pid "$name" >/dev/null; then
            as_user postgres "$pg_bin/pg_ctl" -D "$dir/$name" -m immediate -w -t 60 stop >/dev/null || true
        fi
        rm -rf "${dir:?}/$name" "${dir:?}/$name-run"
    done
}

failover_pair() {
    failover_stop
    start_pg postgres-primary "$pg_primary_port" 127.0.0.1
    wait_for "PostgreSQL (primary)" "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_primary_port"
    log "making postgres-standby with pg_basebackup"
    mkdir -p "$dir/postgres-standby"; own postgres: "$dir/postgres-standby"
    chmod 700 "$dir/postgres-standby"
    as_user postgres "$pg_bin/pg_basebackup" -h 127.0.0.1 -p "$pg_primary_port" -U postgres \
        -D "$dir/postgres-standby" -R -X stream >"$dir/basebackup.log" 2>&1 \
        || { cat "$dir/basebackup.log" >&2; die "pg_basebackup failed"; }
    start_pg postgres-standby "$pg_standby_port" 127.0.0.1
    wait_for "PostgreSQL (standby)" "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_standby_port"
    echo "TEST_POSTGRES_PRIMARY_URL=postgres://postgres@127.0.0.1:$pg_primary_port"
    echo "TEST_POSTGRES_STANDBY_URL=postgres://postgres@127.0.0.1:$pg_standby_port"
}

failover_promote() {
    as_user postgres "$pg_bin/pg_ctl" -D "$dir/postgres-standby" -w -t 60 promote >/dev/null \
        || die "promoting postgres-standby failed"
}

# SIGKILL of a server and its children: no shutdown, no checkpoint.
crash() {
    local pid
    case $1 in
        postgres-restart) pid=$(pg_pid postgres-restart) || die "postgres-restart is not running" ;;
        postgres-primary) pid=$(pg_pid postgres-primary) || die "postgres-primary is not running" ;;
        mariadb-restart|galera3) pid=$(mariadb_pid "$1") || die "$1 is not running" ;;
        *) die "crash: postgres-restart, mariadb-restart, galera3 or postgres-primary, not $1" ;;
    esac
    log "crashing $1 (SIGKILL of pid $pid and its children)"
    local children
    children=$(pgrep -P "$pid" || true)
    kill -9 "$pid" $children 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
    for child in $children; do while alive "$child"; do sleep 0.1; done; done
}

up() {
    case $1 in
        postgres-restart) start_postgres_restart ;;
        mariadb-restart) start_mariadb_restart ;;
        # Rejoins the running cluster (state transfer), and waits for sync.
        galera3) start_galera ;;
    esac
}

restart() {
    down "$1"
    up "$1"
    log "$1 restarted"
}

case $command in
    status) status; exit ;;
    stop) stop; exit ;;
    restart) restart "$2"; exit ;;
    down) down "$2"; log "$2 is down"; exit ;;
    crash) crash "$2"; log "$2 crashed"; exit ;;
    failover-pair) failover_pair; exit ;;
    failover-promote) failover_promote; log "postgres-standby promoted"; exit ;;
    failover-stop) failover_stop; log "failover pair removed"; exit ;;
    up) up "$2"; log "$2 is up"; exit ;;
esac

start_postgres
start_postgres_tls
start_postgres_restart
start_pgbouncer
start_mariadb
start_mariadb_tls
start_mariadb_restart
if [ -n "$galera" ]; then start_galera; fi

tls=$dir/tls
{
    echo "TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$pg_port"
    echo "TEST_POSTGRES_TLS_URL=postgres://postgres@localhost:$pg_tls_port?sslmode=verify-full&sslrootcert=$tls/ca.crt"
    echo "TEST_PGBOUNCER_URL=postgres://postgres@127.0.0.1:$pgbouncer_port?pooler=transaction"
    echo "TEST_MYSQL_URL=mysql://langbot:langbot@127.0.0.1:$my_port"
    echo "TEST_MYSQL_TLS_URL=mysql://langbot:langbot@localhost:$my_tls_port?ssl-mode=VERIFY_IDENTITY&ssl-ca=$tls/ca.crt"
    echo "TEST_TLS_DIR=$tls"
    echo "TEST_POSTGRES_RESTART_URL=postgres://postgres@127.0.0.1:$pg_restart_port"
    echo "TEST_MYSQL_RESTART_URL=mysql://langbot:langbot@127.0.0.1:$my_restart_port"
    if [ -n "$galera" ]; then
        echo "TEST_GALERA_URLS=mysql://langbot:langbot@127.0.0.1:$galera_base_port,mysql://langbot:langbot@127.0.0.1:$((galera_base_port + 1)),mysql://langbot:langbot@127.0.0.1:$((galera_base_port + 2))"
    fi
} >"$dir/urls"
sed "s/^\([A-Z_]*\)=\(.*\)$/export \1='\2'/" "$dir/urls" >"$dir/env"
log "ready (state in $dir)"
cat "$dir/urls"
