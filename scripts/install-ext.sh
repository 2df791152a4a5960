#!/usr/bin/env bash
# Install the azure_local_ai extension into the PostgreSQL server of this machine:
#   1. the SQL files and control file, with PGXS (extension/Makefile);
#   2. the standard-library-only part of the pglocalai package that PL/Python imports, into
#      /usr/local/lib/pglocalai/<v>/pglocalai/ for every extension version v the package serves
#      (the default of the GUC azure_local_ai.python_lib_dir is /usr/local/lib/pglocalai).
#
# Why a copy and not the repository: PL/Python runs inside the server as the postgres user with
# Debian's python3, and the repository may sit where that user cannot read (root's home is 0700).
# One folder per version, so a server running an older extension version keeps its own code.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON_LIB_ROOT="${PGLOCALAI_PYTHON_LIB_ROOT:-/usr/local/lib/pglocalai}"

install_sql() {
    local pg_config="$1"
    if [[ ! -f $REPO_ROOT/extension/azure_local_ai.control ]]; then
        warn "extension/azure_local_ai.control does not exist yet: the SQL part is not installed"
        return
    fi
    log "installing the extension SQL with PGXS ($pg_config)"
    make -s -C "$REPO_ROOT/extension" install PG_CONFIG="$pg_config" >/dev/null
}

# The same code as `pglocalai install` (src/pglocalai/install/serverlib.py), run with the server's
# interpreter: it copies the modules into a fresh folder per extension version
# (pglocalai.EXTENSION_VERSIONS), byte-compiles them and swaps each folder in whole, so a backend
# starting meanwhile sees the old files or the new ones, never a mix. Prints the folders.
install_python() {
    local dirs=() dir
    mapfile -t dirs < <(umask 022 && /usr/bin/python3 -I "$REPO_ROOT/src/pglocalai/install/serverlib.py" \
        "$PYTHON_LIB_ROOT")
    [[ ${#dirs[@]} -gt 0 ]] || die "the server-side Python package was not installed"
    for dir in "${dirs[@]}"; do
        log "installed the server-side Python modules in $dir"
        check_python_import "$(basename "$dir")"
    done
}

# Check, don't assume: import what azure_local_ai_internal.py_load imports, as the postgres user
# with the server's Python and no site packages, so a non-stdlib import or an unreadable folder
# shows here.
check_python_import() {
    local version="$1" probe=pglocalai.pg.functions
    if ! as_postgres /usr/bin/python3 -I -S -c \
        'import importlib, sys; sys.path.insert(0, sys.argv[1]); importlib.import_module(sys.argv[2])' \
        "$PYTHON_LIB_ROOT/$version" "$probe"; then
        die "the postgres user cannot import $probe from $PYTHON_LIB_ROOT/$version" \
            "it must be readable by postgres and import only the standard library"
    fi
}

main() {
    require_root
    local pg_config
    pg_config="$(pg_bindir)/pg_config"
    [[ -x $pg_config ]] || die "$pg_config not found" "run: make system"
    install_sql "$pg_config"
    install_python
}

main "$@"
