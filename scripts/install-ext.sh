#!/usr/bin/env bash
# Install the azure_local_ai extension into the PostgreSQL server of this machine:
#   1. the SQL files and control file, with PGXS (extension/Makefile);
#   2. the standard-library-only part of the pglocalai package that PL/Python imports, into
#      /usr/local/lib/pglocalai/<version>/pglocalai/ (the default of the GUC
#      azure_local_ai.python_lib_dir is /usr/local/lib/pglocalai).
#
# Why a copy and not the repository: PL/Python runs inside the server as the postgres user with
# Debian's python3, and the repository may sit where that user cannot read (root's home is 0700).
# One folder per version, so a server running an older extension version keeps its own code.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON_LIB_ROOT="${PGLOCALAI_PYTHON_LIB_ROOT:-/usr/local/lib/pglocalai}"
# The modules PL/Python may import: they import nothing outside the standard library.
SERVER_MODULES=(__init__.py errors.py protocol.py client.py)

install_sql() {
    local pg_config="$1"
    if [[ ! -f $REPO_ROOT/extension/azure_local_ai.control ]]; then
        warn "extension/azure_local_ai.control does not exist yet: the SQL part is not installed"
        return
    fi
    log "installing the extension SQL with PGXS ($pg_config)"
    make -s -C "$REPO_ROOT/extension" install PG_CONFIG="$pg_config" >/dev/null
}

package_version() {
    sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$REPO_ROOT/src/pglocalai/__init__.py"
}

# Copy into a fresh folder next to the target, then swap it in, so that a backend starting
# meanwhile sees either the old or the new files, never a mix, and removed files go away.
install_python() {
    local version src target staging old module
    version="$(package_version)"
    [[ -n $version ]] || die "no __version__ in src/pglocalai/__init__.py"
    src="$REPO_ROOT/src/pglocalai"
    target="$PYTHON_LIB_ROOT/$version"
    staging="$target.new.$$"
    old="$target.old.$$"

    umask 022
    rm -rf "$staging"
    mkdir -p "$staging/pglocalai"
    for module in "${SERVER_MODULES[@]}"; do
        [[ ! -f $src/$module ]] || install -m 0644 "$src/$module" "$staging/pglocalai/$module"
    done
    if [[ -d $src/pg ]]; then
        (cd "$src" && find pg -name '*.py' -print0) | while IFS= read -r -d '' module; do
            install -D -m 0644 "$src/$module" "$staging/pglocalai/$module"
        done
    fi
    # Byte-compile with the server's Python: the postgres user cannot write __pycache__ here.
    /usr/bin/python3 -m compileall -q "$staging" >/dev/null

    if [[ -d $target ]]; then mv "$target" "$old"; fi
    mv "$staging" "$target"
    rm -rf "$old"
    log "installed the server-side Python modules in $target"
    check_python_import "$version"
}

# Check, don't assume: import the package the way PL/Python will, as the postgres user with the
# server's Python and no site packages, so a non-stdlib import or an unreadable folder shows here.
check_python_import() {
    local version="$1" probe=pglocalai.errors
    [[ -f $PYTHON_LIB_ROOT/$version/pglocalai/client.py ]] && probe=pglocalai.client
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
