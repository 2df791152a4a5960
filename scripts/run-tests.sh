#!/usr/bin/env bash
# Run every test against the private cluster and runtime that `make up` started:
#   ruff, pytest over tests/, and the SQL regression tests (pg_regress, extension/test).
# All three run even when one fails, so a single run shows everything; the exit status is
# non-zero when any failed, and also when pytest or pg_regress found no test at all.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV_BIN="$REPO_ROOT/.venv/bin"
PYTEST_LOG="$RUN_DIR/log/pytest.log"
REGRESS_DIR="$RUN_DIR/regress"
FAILED=()
PYTEST_SUMMARY="(did not run)"
REGRESS_SUMMARY="(did not run)"

run_ruff() {
    log "ruff check"
    "$VENV_BIN/ruff" check . || FAILED+=(ruff)
}

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
run_pytest() {
    log "pytest"
    mkdir -p "$(dirname "$PYTEST_LOG")"
    local rc=0
    "$VENV_BIN/pytest" -q --durations=15 2>&1 | tee "$PYTEST_LOG" || rc=${PIPESTATUS[0]}
    PYTEST_SUMMARY="$(grep -v '^\s*$' "$PYTEST_LOG" | tail -n 1)"
    case "$rc" in
        0) ;;
        5)
            PYTEST_SUMMARY="no tests collected"
            FAILED+=(pytest)
            ;;
        *) FAILED+=(pytest) ;;
    esac
}

run_regress() {
    log "SQL regression tests (pg_regress)"
    local tests
    tests="$(find "$REPO_ROOT/extension/test/sql" -name '*.sql' 2>/dev/null | wc -l)"
    if [[ $tests -eq 0 ]]; then
        REGRESS_SUMMARY="no tests in extension/test/sql"
        FAILED+=(pg_regress)
        return
    fi
    rm -f "$REGRESS_DIR/regression.diffs"
    if make -s -C "$REPO_ROOT/extension" installcheck PG_CONFIG="$(pg_bindir)/pg_config" \
        REGRESS_OUTPUTDIR="$REGRESS_DIR"; then
        REGRESS_SUMMARY="$tests tests passed"
    else
        REGRESS_SUMMARY="failed, see $REGRESS_DIR/regression.diffs"
        if [[ -f $REGRESS_DIR/regression.diffs ]]; then
            head -n 80 "$REGRESS_DIR/regression.diffs"
        fi
        FAILED+=(pg_regress)
    fi
}

main() {
    [[ -f $RUN_DIR/env ]] || die "$RUN_DIR/env not found" "run: make up"
    # shellcheck disable=SC1091
    source "$RUN_DIR/env"
    # The set-up above installed everything: a test that finds the server or a model missing
    # must fail, not skip (a skipped test is not a passing one).
    export PGLOCALAI_REQUIRE_PG=1
    cd "$REPO_ROOT"
    run_ruff
    run_pytest
    run_regress
    echo
    echo "pytest: $PYTEST_SUMMARY"
    echo "SQL regression: $REGRESS_SUMMARY"
    if [[ ${#FAILED[@]} -gt 0 ]]; then
        die "failed: ${FAILED[*]}"
    fi
    echo "all tests passed"
}

main "$@"
