"""The test set-up itself (tests/support): what it reads, and the markers' guard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import connect, extension_version, needs, run_env
from support.runtime import flags


def test_run_env_reads_the_exports_make_up_writes(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text("# Written by `make up`\nexport PGHOST='/x/socket'\nexport PGPORT='55432'\n"
                   "  export PGLOCALAI_SOCKET='/run/p l/s.sock'  \nPGUSER=nobody\n")
    assert run_env(env) == {"PGHOST": "/x/socket", "PGPORT": "55432",
                            "PGLOCALAI_SOCKET": "/run/p l/s.sock"}
    assert run_env(tmp_path / "missing") == {}


def test_an_unmarked_test_may_not_reach_the_cluster_a_runtime_or_a_model() -> None:
    for marker in ("pg", "runtime", "model"):
        with pytest.raises(AssertionError, match=f"not marked {marker}"):
            needs(marker)


@pytest.mark.runtime
def test_a_marked_test_may() -> None:
    needs("runtime")


def test_options_become_serve_flags() -> None:
    assert flags({"max_batch_size": 1, "supervise": True, "daemon": False, "tcp": None,
                  "preload": "all"}) == ["--max-batch-size", "1", "--supervise",
                                         "--preload", "all"]


def test_make_db_gives_databases_of_their_own(make_db: Callable[..., dict[str, str]],
                                              pg_conn: psycopg.Connection[Any]) -> None:
    old, bare = make_db(version="1.0.0"), make_db(extension=False)
    assert old["dbname"] != bare["dbname"] != pg_conn.info.dbname
    with connect(old) as conn:
        assert extension_version(conn) == "1.0.0"
    with connect(bare) as conn:
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'azure_local_ai'"
                            ).fetchone() == (0,)
    assert extension_version(pg_conn) == pg_conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'azure_local_ai'"
    ).fetchone()[0]
