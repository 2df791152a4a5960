# shellcheck shell=bash
# Shared helpers for the set-up scripts (sourced, not run).
# Every script that sources this runs as root on Debian 12 or 13: see README "Quick start".

# The repository root, whatever the caller's working directory.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
RUN_DIR="$REPO_ROOT/.run"

log() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$1" >&2
    [[ $# -gt 1 ]] && printf 'hint: %s\n' "$2" >&2
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "this step must run as root" "run it with sudo, or as root"
}

# Debian release number (12, 13, ...) from /etc/os-release.
os_version_id() {
    # shellcheck disable=SC1091
    (. /etc/os-release && printf '%s\n' "${VERSION_ID:-unknown}")
}

# The PostgreSQL major version this project uses on this machine: the one Debian ships as its
# default (15 on Debian 12, 17 on Debian 13), or PGLOCALAI_PG_MAJOR when set. On another OS, the
# newest installed server.
pg_major() {
    if [[ -n ${PGLOCALAI_PG_MAJOR:-} ]]; then
        printf '%s\n' "$PGLOCALAI_PG_MAJOR"
        return
    fi
    case "$(os_version_id)" in
        12) echo 15 ;;
        13) echo 17 ;;
        *)
            local newest
            newest="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
                awk -F/ '{print $5}' | sort -n | tail -n 1)"
            [[ -n $newest ]] || die "no PostgreSQL server found under /usr/lib/postgresql" "run: make system"
            echo "$newest"
            ;;
    esac
}

pg_bindir() { printf '/usr/lib/postgresql/%s/bin\n' "$(pg_major)"; }

# Run a command as the server's user. PostgreSQL refuses to run as root; `cd /` first because
# the caller's folder (often under root's 0700 home) is not readable by that user.
as_postgres() {
    (cd / && runuser -u postgres -- "$@")
}
