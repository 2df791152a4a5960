#!/usr/bin/env bash
# The private PostgreSQL cluster and the embedding runtime used by the demo, the tests and the
# benchmarks.
#
#   scripts/cluster.sh up       start both (idempotent: verifies what already runs), create the
#                               database pglocalai with the extensions, start a vectorizer worker
#                               for it, write .run/env
#   scripts/cluster.sh down     stop the worker, the runtime and the cluster
#   scripts/cluster.sh status   print the state of all three; exit 0 only when all run
#
# The cluster is never the machine's default one: its own data folder, port (55432, or
# PGLOCALAI_PGPORT) and socket folder, and no TCP listener at all (listen_addresses = '').
# Access control is the socket folder: it belongs to postgres with mode 0700, so only postgres
# and root can reach the server, which is why local connections may use trust.
#
# The runtime (`pglocalai serve --supervise`) runs as postgres, never as root. The checkout's
# .venv and .run/models may sit where postgres cannot read (root's home is 0700, and the .venv's
# interpreter may live there too), so the runtime gets its own, next to the cluster:
#   <cluster root>/venv      a virtual environment built with /usr/bin/python3, holding this
#                            checkout's package (non-editable) and the pins of pyproject.toml
#   <cluster root>/models    the models of .run/models (hard links where possible)
#   <cluster root>/runtime   its state (settings.json), pidfile and log: postgres's, mode 0700
# `pglocalai runtime-env` refreshes the first two when the sources or models changed (and this
# script then restarts a runtime it had started).
#
# The vectorizer worker (`pglocalai worker --supervise`, issue 13) runs as postgres from the same
# venv, for the database pglocalai; its pidfile and log are next to the runtime's. It is started
# again when the runtime's code or models, or the extension's files, changed since it started. The socket (/run/pglocalai/pglocalai.sock, or
# PGLOCALAI_SOCKET) lives in a folder owned by postgres with mode 0700, so the server's
# processes can connect and other users cannot.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PGPORT="${PGLOCALAI_PGPORT:-55432}"
RUNTIME_SOCKET="${PGLOCALAI_SOCKET:-/run/pglocalai/pglocalai.sock}"
export PGLOCALAI_HOME="${PGLOCALAI_HOME:-$RUN_DIR}"
PGLOCALAI="$REPO_ROOT/.venv/bin/pglocalai"
# where runtimes started by root kept their pidfile before the runtime ran as postgres
LEGACY_PIDFILE="$RUN_DIR/runtime.pid"
ENV_FILE="$RUN_DIR/env"
# Records where the cluster lives, so that down and status find it whatever changed since.
CLUSTER_RECORD="$RUN_DIR/cluster-root"
DATABASE=pglocalai
PG_BIN="$(pg_bindir)"

# --- where the cluster lives --------------------------------------------------------------------

# .run/pg when the postgres user can reach it (every ancestor of the repository traversable),
# else a folder of its own under /var/lib/pglocalai, named by a hash of the repository path.
# A long repository path also rules out .run/pg: a Unix socket path is limited to 107 bytes.
choose_cluster_root() {
    mkdir -p "$RUN_DIR"
    local candidate="$RUN_DIR/pg"
    if as_postgres test -x "$RUN_DIR" 2>/dev/null && [[ ${#candidate} -le 80 ]]; then
        printf '%s\n' "$candidate"
    else
        printf '/var/lib/pglocalai/%s\n' "$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-12)"
    fi
}

cluster_root() {
    if [[ -s $CLUSTER_RECORD ]]; then
        cat "$CLUSTER_RECORD"
    else
        choose_cluster_root
    fi
}

set_cluster_paths() {
    CLUSTER_ROOT="$1"
    PGDATA_DIR="$CLUSTER_ROOT/data"
    PG_SOCKET_DIR="$CLUSTER_ROOT/socket"
    PG_LOG="$PGDATA_DIR/log/postgresql.log"
    RUNTIME_VENV="$CLUSTER_ROOT/venv"
    RUNTIME_MODELS="$CLUSTER_ROOT/models"
    RUNTIME_DIR="$CLUSTER_ROOT/runtime"
    RUNTIME_PIDFILE="$RUNTIME_DIR/runtime.pid"
    RUNTIME_LOG="$RUNTIME_DIR/runtime.log"
    WORKER_PIDFILE="$RUNTIME_DIR/worker.pid"
    WORKER_LOG="$RUNTIME_DIR/worker.log"
    # what the worker started with (root's folder: postgres cannot change it)
    WORKER_STAMP="$CLUSTER_ROOT/worker.code"
}

# For down and status: the port and runtime socket that `up` wrote into pglocalai.conf, unless
# the environment sets them now.
load_recorded_settings() {
    local conf="$PGDATA_DIR/pglocalai.conf" value
    [[ -r $conf ]] || return 0
    if [[ -z ${PGLOCALAI_PGPORT:-} ]]; then
        value="$(sed -n 's/^port = //p' "$conf")"
        [[ -z $value ]] || PGPORT="$value"
    fi
    if [[ -z ${PGLOCALAI_SOCKET:-} ]]; then
        value="$(sed -n "s/^azure_local_ai.runtime_socket = '\(.*\)'\$/\1/p" "$conf")"
        [[ -z $value ]] || RUNTIME_SOCKET="$value"
    fi
}

# NOTICEs such as "extension ... already exists, skipping" are noise on a re-run.
psql_as_postgres() {
    PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h "$PG_SOCKET_DIR" -p "$PGPORT" -U postgres "$@"
}

pg_running() {
    [[ -f $PGDATA_DIR/PG_VERSION ]] &&
        as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

# --- PostgreSQL ---------------------------------------------------------------------------------

init_cluster() {
    install -d -m 0755 "$CLUSTER_ROOT"
    install -d -m 0700 -o postgres -g postgres "$PGDATA_DIR" "$PG_SOCKET_DIR"
    if [[ -f $PGDATA_DIR/PG_VERSION ]]; then
        local have
        have="$(cat "$PGDATA_DIR/PG_VERSION")"
        [[ $have == "$(pg_major)" ]] ||
            die "the cluster in $PGDATA_DIR is PostgreSQL $have, not $(pg_major)" \
                "remove it (make down && rm -rf '$CLUSTER_ROOT') to create a new one"
        return
    fi
    log "initdb: PostgreSQL $(pg_major) cluster in $PGDATA_DIR"
    as_postgres "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    install -d -m 0700 -o postgres -g postgres "$PGDATA_DIR/log"
    echo "include_if_exists = 'pglocalai.conf'" >>"$PGDATA_DIR/postgresql.conf"
}

# The settings this project needs, rewritten on every `up`; postgresql.conf includes the file.
write_conf() {
    local conf="$PGDATA_DIR/pglocalai.conf" new
    new="$(mktemp)"
    cat >"$new" <<EOF
# Written by scripts/cluster.sh on every \`make up\`: change the script, not this file.
port = $PGPORT
listen_addresses = ''
unix_socket_directories = '$PG_SOCKET_DIR'
unix_socket_permissions = 0700
azure_local_ai.runtime_socket = '$RUNTIME_SOCKET'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    if cmp -s "$new" "$conf"; then
        rm -f "$new"
        return 1
    fi
    install -m 0600 -o postgres -g postgres "$new" "$conf"
    rm -f "$new"
}

pg_up() {
    init_cluster
    local conf_changed=0
    write_conf && conf_changed=1
    if pg_running; then
        if [[ $conf_changed -eq 1 ]]; then
            # a new port needs a restart, not a reload
            log "pglocalai.conf changed: restarting PostgreSQL"
            as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -m fast -w -t 60 restart >/dev/null
        else
            log "PostgreSQL already running: $PG_SOCKET_DIR port $PGPORT"
        fi
    else
        log "starting PostgreSQL $(pg_major): socket $PG_SOCKET_DIR port $PGPORT, log $PG_LOG"
        if ! as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 start >/dev/null; then
            tail -n 20 "$PG_LOG" >&2 || true
            die "PostgreSQL did not start" "see $PG_LOG"
        fi
    fi
    "$PG_BIN/pg_isready" -q -h "$PG_SOCKET_DIR" -p "$PGPORT" -t 30 ||
        die "PostgreSQL does not accept connections on $PG_SOCKET_DIR port $PGPORT" "see $PG_LOG"
}

pg_down() {
    if pg_running; then
        log "stopping PostgreSQL ($PGDATA_DIR)"
        as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null
    else
        log "PostgreSQL not running"
    fi
}

# --- the runtime --------------------------------------------------------------------------------

# A folder handed to postgres with mode 0700. Root changes it by path, so its parent must be a
# folder only root can write (nobody can swap the name for a link), and it must not be a link.
private_dir() {
    local dir="$1" parent
    parent="$(dirname "$dir")"
    [[ -d $parent && ! -L $parent ]] || install -d -m 0755 "$parent"
    [[ $(stat -c '%u' "$parent") == 0 && $(( 8#$(stat -c '%a' "$parent") & 8#022 )) == 0 ]] ||
        die "refusing to hand $dir to postgres: $parent is not a folder only root can write"
    [[ ! -L $dir ]] || die "$dir is a symbolic link" "remove it"
    install -d -m 0700 -o postgres -g postgres "$dir"
    # install -d leaves an existing folder's mode alone: enforce it
    chown -h postgres:postgres "$dir"
    chmod 0700 "$dir"
}

# The socket's folder is handed to postgres with mode 0700, so it must be one of our own.
prepare_runtime_dir() {
    local dir
    dir="$(dirname "$RUNTIME_SOCKET")"
    case "$dir" in
        / | /run | /var/run | /tmp | /var/tmp | /var/lib | /usr/* | /etc | /etc/*)
            die "the runtime socket needs a folder of its own, not $dir" \
                "set PGLOCALAI_SOCKET to a path such as /run/pglocalai/pglocalai.sock"
            ;;
    esac
    private_dir "$dir"
    private_dir "$RUNTIME_DIR"
}

# The runtime's own environment and model store (see the top of this file). Prints "changed"
# when something was installed, so that a running runtime of ours is restarted.
runtime_env() {
    local before after
    before="$(runtime_fingerprint)"
    "$PGLOCALAI" runtime-env --venv "$RUNTIME_VENV" --models-dir "$RUNTIME_MODELS" \
        --models-from "$PGLOCALAI_HOME/models" --link >&2
    after="$(runtime_fingerprint)"
    [[ $before == "$after" ]] || echo changed
}

runtime_fingerprint() {
    cat "$RUNTIME_VENV/.pglocalai-runtime.json" "$RUNTIME_MODELS"/*/metadata.json 2>/dev/null |
        sha256sum
}

runtime_answers() {
    [[ -x $PGLOCALAI ]] && "$PGLOCALAI" status --socket "$RUNTIME_SOCKET" >/dev/null 2>&1
}

# The pid in the pidfile, if that process is alive and is a pglocalai process (not a reused pid).
# The pidfile sits in postgres's folder: a link there is not followed.
runtime_pid() {
    local file pid
    for file in "$RUNTIME_PIDFILE" "$LEGACY_PIDFILE"; do
        [[ -s $file && ! -L $file ]] || continue
        pid="$(tr -dc '0-9' <"$file")"
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q pglocalai; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# Check, don't assume: the server's processes run as postgres and must be able to connect.
check_postgres_can_connect() {
    as_postgres /usr/bin/python3 -I -S -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])' "$RUNTIME_SOCKET" 2>/dev/null ||
        die "the postgres user cannot connect to the runtime socket $RUNTIME_SOCKET" \
            "the runtime must make its socket connectable by postgres (the folder keeps others out)"
}

# The supervisor pid of the runtime answering on the socket (empty when it has none).
answering_supervisor() {
    "$PGLOCALAI" status --socket "$RUNTIME_SOCKET" --json 2>/dev/null |
        "$REPO_ROOT/.venv/bin/python" -c 'import json, sys
print(json.load(sys.stdin)["health"].get("supervisor_pid") or "")'
}

runtime_up() {
    prepare_runtime_dir
    local changed pid
    changed="$(runtime_env)"
    if pid="$(runtime_pid)"; then
        if [[ -n $changed ]]; then
            log "the runtime's code or models changed: restarting it"
            runtime_down
        elif ! runtime_answers; then
            log "the runtime this checkout started (pid $pid) does not answer: restarting it"
            runtime_down
        fi
    fi
    if runtime_answers; then
        # One runtime per host: one started from another checkout (other code, other model
        # store) must not silently serve this one's cluster and tests.
        local ours theirs
        ours="$(runtime_pid || true)"
        theirs="$(answering_supervisor || true)"
        if [[ -z $ours || $ours != "$theirs" ]]; then
            die "a runtime not started by this checkout answers on $RUNTIME_SOCKET" \
                "stop it (make down in its checkout, or: pglocalai stop --socket $RUNTIME_SOCKET), or give this checkout its own: PGLOCALAI_SOCKET=/run/pglocalai-2/pglocalai.sock make up"
        fi
        log "runtime already answering on $RUNTIME_SOCKET"
    else
        [[ -x $PGLOCALAI ]] || die "$PGLOCALAI not found" "run: make venv"
        log "starting the runtime as postgres on $RUNTIME_SOCKET (log $RUNTIME_LOG, models $RUNTIME_MODELS)"
        as_postgres "$RUNTIME_VENV/bin/pglocalai" serve --daemon --supervise \
            --socket "$RUNTIME_SOCKET" --state-dir "$RUNTIME_DIR" --models-dir "$RUNTIME_MODELS" \
            --pidfile "$RUNTIME_PIDFILE" --log-file "$RUNTIME_LOG"
        local waited=0
        until runtime_answers; do
            if [[ $waited -ge 900 ]]; then # tenths of a second
                tail -n 20 "$RUNTIME_LOG" >&2 || true
                die "the runtime did not answer on $RUNTIME_SOCKET within 90 s" "see $RUNTIME_LOG"
            fi
            sleep 0.2
            waited=$((waited + 2))
        done
    fi
    check_postgres_can_connect
}

# --- the vectorizer worker ----------------------------------------------------------------------

# The pid in the worker's pidfile (its supervisor), if that process is alive, is a pglocalai
# worker and runs as postgres. The pidfile sits in postgres's folder: a link there is not followed.
worker_pid() {
    local pid=""
    if [[ -s $WORKER_PIDFILE && ! -L $WORKER_PIDFILE ]]; then
        pid="$(tr -dc '0-9' <"$WORKER_PIDFILE")"
    else
        # the pidfile went missing while the worker runs: find its supervisor by the
        # pidfile it was started with (the oldest such process of postgres)
        pid="$(pgrep -o -u postgres -f -- "pglocalai worker .*--pidfile $WORKER_PIDFILE" || true)"
    fi
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'pglocalai worker ' || return 1
    [[ $(stat -c '%U' "/proc/$pid") == postgres ]] || return 1
    echo "$pid"
}

# Restarted when this changes: the runtime's code and models, and the extension's files.
worker_fingerprint() {
    { runtime_fingerprint; cat "$CLUSTER_ROOT/azure_local_ai.sha256" 2>/dev/null; } | sha256sum
}

worker_up() {
    local pid code
    code="$(worker_fingerprint)"
    if pid="$(worker_pid)"; then
        if [[ $(cat "$WORKER_STAMP" 2>/dev/null) == "$code" ]]; then
            log "vectorizer worker already running (pid $pid) for database $DATABASE"
            return
        fi
        log "the worker's code, models or extension changed: restarting it"
        worker_down
    fi
    log "starting the vectorizer worker as postgres for database $DATABASE (log $WORKER_LOG)"
    # only the settings below: none of the caller's PG* variables leak into it
    as_postgres env -i PATH=/usr/bin:/bin LANG=C.UTF-8 \
        PGHOST="$PG_SOCKET_DIR" PGPORT="$PGPORT" PGUSER=postgres PGDATABASE="$DATABASE" \
        PGLOCALAI_SOCKET="$RUNTIME_SOCKET" \
        "$RUNTIME_VENV/bin/pglocalai" worker --daemon --supervise \
        --pidfile "$WORKER_PIDFILE" --log-file "$WORKER_LOG" ||
        die "the vectorizer worker did not start" "see $WORKER_LOG"
    printf '%s\n' "$code" >"$WORKER_STAMP"
}

# SIGTERM (the worker finishes the batch in hand), up to 30 s, then SIGKILL to its process group:
# the supervisor and the worker it forked (an unfinished batch is rolled back, its rows stay
# queued).
worker_down() {
    local pid group waited=0
    if ! pid="$(worker_pid)"; then
        log "vectorizer worker not running (no live pid in $WORKER_PIDFILE)"
        return 0
    fi
    log "stopping the vectorizer worker (pid $pid)"
    group="$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f3)"
    kill -TERM "$pid"
    # alive and not a zombie (an exited daemon waits for init to reap it)
    while [[ $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1) =~ ^[^Z]$ ]]; do
        if [[ $waited -ge 300 ]]; then # tenths of a second
            warn "the vectorizer worker did not stop within 30 s: killing it"
            if [[ $group -gt 1 && $group != "$(ps -o pgid= $$ | tr -d ' ')" ]]; then
                kill -KILL -- "-$group" 2>/dev/null || true
            fi
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$WORKER_PIDFILE"
}

runtime_down() {
    local pid
    if pid="$(runtime_pid)"; then
        log "stopping the runtime (pid $pid)"
        kill -TERM "$pid"
        local waited=0
        while kill -0 "$pid" 2>/dev/null; do
            if [[ $waited -ge 150 ]]; then
                warn "the runtime did not stop within 15 s: killing it"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
        rm -f "$RUNTIME_PIDFILE" "$LEGACY_PIDFILE"
    else
        log "runtime not running (no live pid in $RUNTIME_PIDFILE)"
    fi
    if runtime_answers; then
        warn "a runtime started elsewhere still answers on $RUNTIME_SOCKET: left running"
    fi
}

# --- the database -------------------------------------------------------------------------------

# During development the install script of a version changes without a new version number, and
# CREATE EXTENSION IF NOT EXISTS would keep the old functions. When the installed extension files
# changed since the last `up`, re-create the extension; without CASCADE, so nothing of the
# user's is dropped (if something depends on it, say so and keep it).
refresh_extension() {
    local sharedir stamp hash installed version
    sharedir="$("$PG_BIN/pg_config" --sharedir)"
    stamp="$CLUSTER_ROOT/azure_local_ai.sha256"
    hash="$(cat "$sharedir"/extension/azure_local_ai[.-]* | sha256sum | cut -c1-64)"
    installed="$(psql_as_postgres -d "$DATABASE" -Atc \
        "SELECT count(*) FROM pg_extension WHERE extname = 'azure_local_ai'")"
    if [[ $installed == 1 && $(cat "$stamp" 2>/dev/null) != "$hash" ]]; then
        log "the extension's installed files changed: re-creating azure_local_ai in $DATABASE"
        if ! psql_as_postgres -d "$DATABASE" -c "DROP EXTENSION azure_local_ai" 2>/dev/null; then
            # no stamp: the next `up` tries again
            # a newer released version is still reached through its upgrade scripts
            psql_as_postgres -d "$DATABASE" -qc "ALTER EXTENSION azure_local_ai UPDATE" \
                >/dev/null 2>&1 || true
            version="$(psql_as_postgres -d "$DATABASE" -Atc \
                "SELECT extversion FROM pg_extension WHERE extname = 'azure_local_ai'")"
            warn "objects depend on azure_local_ai: updated it in place to version $version" \
                "instead of re-creating it; a version's own definitions are kept" \
                "(DROP EXTENSION azure_local_ai CASCADE renews them)"
            return
        fi
    fi
    psql_as_postgres -d "$DATABASE" -c "CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE"
    printf '%s\n' "$hash" >"$stamp"
}

database_up() {
    local exists
    exists="$(psql_as_postgres -d postgres -Atc \
        "SELECT count(*) FROM pg_database WHERE datname = '$DATABASE'")"
    if [[ $exists != 1 ]]; then
        log "creating database $DATABASE"
        psql_as_postgres -d postgres -c "CREATE DATABASE $DATABASE"
    fi
    if [[ -f $("$PG_BIN/pg_config" --sharedir)/extension/azure_local_ai.control ]]; then
        refresh_extension
    else
        warn "extension azure_local_ai is not installed in the server (make install-ext):" \
            "created plpython3u and vector only"
        psql_as_postgres -d "$DATABASE" -c "CREATE EXTENSION IF NOT EXISTS plpython3u"
    fi
    psql_as_postgres -d "$DATABASE" -c "CREATE EXTENSION IF NOT EXISTS vector"
    log "database $DATABASE: $(psql_as_postgres -d "$DATABASE" -Atc \
        "SELECT string_agg(extname || ' ' || extversion, ', ' ORDER BY extname) FROM pg_extension")"
}

write_env() {
    local tmp="$ENV_FILE.tmp"
    cat >"$tmp" <<EOF
# Written by \`make up\` (scripts/cluster.sh). Use: . .run/env && psql
export PGHOST='$PG_SOCKET_DIR'
export PGPORT='$PGPORT'
export PGUSER='postgres'
export PGDATABASE='$DATABASE'
export PGLOCALAI_SOCKET='$RUNTIME_SOCKET'
export PGLOCALAI_HOME='$PGLOCALAI_HOME'
export PGLOCALAI_RUNTIME_PIDFILE='$RUNTIME_PIDFILE'
export PGLOCALAI_RUNTIME_LOG='$RUNTIME_LOG'
# not PGLOCALAI_WORKER_PIDFILE: \`pglocalai worker\` reads that as its --pidfile, and a worker
# run by hand in this shell would take the pidfile of the one make up started
export PGLOCALAI_UP_WORKER_PIDFILE='$WORKER_PIDFILE'
export PGLOCALAI_WORKER_LOG='$WORKER_LOG'
export PGLOCALAI_PGLOG='$PG_LOG'
EOF
    mv "$tmp" "$ENV_FILE"
}

# --- commands -----------------------------------------------------------------------------------

cmd_up() {
    require_root
    set_cluster_paths "$(cluster_root)"
    printf '%s\n' "$CLUSTER_ROOT" >"$CLUSTER_RECORD"
    pg_up
    runtime_up
    database_up
    worker_up
    write_env
    log "ready: . .run/env && psql"
}

cmd_down() {
    require_root
    set_cluster_paths "$(cluster_root)"
    load_recorded_settings
    worker_down
    runtime_down
    pg_down
}

cmd_status() {
    set_cluster_paths "$(cluster_root)"
    load_recorded_settings
    local ok=0 pid
    if pg_running; then
        echo "PostgreSQL $(pg_major): running, socket $PG_SOCKET_DIR port $PGPORT, data $PGDATA_DIR"
    else
        echo "PostgreSQL $(pg_major): stopped (data $PGDATA_DIR)"
        ok=3
    fi
    if runtime_answers; then
        pid="$(runtime_pid || echo "not started by this checkout")"
        echo "runtime: running on $RUNTIME_SOCKET (supervisor pid $pid)"
        "$PGLOCALAI" status --socket "$RUNTIME_SOCKET" 2>&1 | sed 's/^/  /' || true
    else
        echo "runtime: not answering on $RUNTIME_SOCKET"
        ok=3
    fi
    if pid="$(worker_pid)"; then
        echo "vectorizer worker: running for database $DATABASE (supervisor pid $pid, log $WORKER_LOG)"
        if [[ $(id -u) -eq 0 ]] && pg_running; then
            local q="SELECT format('  %s vectorizers: %s rows pending, %s failed', count(*),"
            q+=" coalesce(sum(pending), 0), coalesce(sum(failed), 0))"
            psql_as_postgres -d "$DATABASE" -Atc "$q FROM azure_local_ai.vectorizer_status" \
                2>/dev/null || true
        fi
    else
        echo "vectorizer worker: not running (no live pid in $WORKER_PIDFILE)"
        ok=3
    fi
    return "$ok"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up|down|status" >&2
        exit 2
        ;;
esac
