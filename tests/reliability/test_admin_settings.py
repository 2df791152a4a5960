"""set_setting under concurrency and privileges, on a supervised runtime of our own.

The runtime's settings apply to every database it serves, so a change must be all or
nothing, persisted before it is published, refused to plain roles, and still there after
the runtime restarts. (extension/test/sql/settings.sql covers the refusals that change
nothing; here the changes are real, concurrent, and checked on disk.)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from support import E5, Runtime, connect

pytestmark = [pytest.mark.pg, pytest.mark.runtime]

SESSIONS = 6
ROUNDS = 2


@pytest.fixture(scope="module")
def admin_runtime(model_store: Path) -> Iterator[Runtime]:
    with Runtime(model=True, store=model_store, supervise=True, preload=E5,
                 socket_owner="postgres") as rt:
        yield rt


def on_disk(rt: Runtime) -> dict[str, Any]:
    return json.loads((rt.state_dir / "settings.json").read_text())


def change_for(session: int, round_: int) -> tuple[str, str]:
    """Every session changes a different key or value each round: real rebuilds, racing."""
    step = session + round_
    if session % 3 == 0:
        return "spin_control", "true" if step % 2 else "false"
    if session % 3 == 1:
        return "intra_op_parallelism", str(1 + step % 2)
    return "inter_op_parallelism", str(1 + step % 2)


def test_concurrent_set_setting_ends_consistent_and_persisted(pg_db: dict[str, str],
                                                              admin_runtime: Runtime,
                                                              figures: dict[str, Any]) -> None:
    sessions = [connect(pg_db, admin_runtime.socket) for _ in range(SESSIONS)]
    try:
        before = sessions[0].execute("SELECT azure_local_ai.create_embeddings(%s, 'settings')",
                                     (E5,)).fetchone()[0]
        barrier = threading.Barrier(SESSIONS)
        errors: list[BaseException] = []
        replies: list[dict[str, Any]] = []

        def work(i: int) -> None:
            try:
                for round_ in range(ROUNDS):
                    barrier.wait(60)
                    key, value = change_for(i, round_)
                    reply = sessions[i].execute("SELECT azure_local_ai.set_setting(%s, %s)",
                                                (key, value)).fetchone()[0]
                    assert str(reply[key]).lower() == value
                    replies.append(reply)
                    # an embedding in between, while others reconfigure
                    sessions[i].execute("SELECT azure_local_ai.create_embeddings(%s, 'x')", (E5,))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(SESSIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        assert len(replies) == SESSIONS * ROUNDS
        # one state, seen by every session, equal to the file, and the last value written
        final = [s.execute("SELECT azure_local_ai.get_setting()").fetchone()[0] for s in sessions]
        assert all(f == final[0] for f in final)
        assert on_disk(admin_runtime) == final[0]
        for key in final[0]:
            assert final[0][key] in {r[key] for r in replies}
        after = sessions[0].execute("SELECT azure_local_ai.create_embeddings(%s, 'settings')",
                                    (E5,)).fetchone()[0]
        x, y = np.asarray(before), np.asarray(after)
        assert float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) >= 0.9999

        # the runtime dies and comes back with the persisted settings, same sessions
        killed = admin_runtime.kill_serving_process()
        admin_runtime.wait_healthy(60, not_pid=killed)
        for s in sessions:
            assert s.execute("SELECT azure_local_ai.get_setting()").fetchone()[0] == final[0]
    finally:
        for s in sessions:
            s.close()
    figures["concurrent_set_setting"] = {"sessions": SESSIONS, "calls": SESSIONS * ROUNDS,
                                         "errors": 0, "final": final[0]}


def test_a_plain_role_cannot_change_settings_and_a_superuser_can(pg_db: dict[str, str],
                                                                 admin_runtime: Runtime) -> None:
    role = f"reliability_plain_{os.getpid()}"
    with connect(pg_db, admin_runtime.socket) as admin, \
            connect(pg_db, admin_runtime.socket) as plain:
        admin.execute(f"CREATE ROLE {role}")
        try:
            current = admin.execute("SELECT azure_local_ai.get_setting()").fetchone()[0]
            wanted = "false" if current["spin_control"] else "true"
            assert admin.execute("SELECT azure_local_ai.set_setting('spin_control', %s)",
                                 (wanted,)).fetchone()[0]["spin_control"] == (wanted == "true")
            stored = (admin_runtime.state_dir / "settings.json").read_bytes()
            other = "true" if wanted == "false" else "false"
            plain.execute(f"SET ROLE {role}")
            # a plain role reads settings and embeds
            assert plain.execute("SELECT azure_local_ai.get_setting('spin_control')"
                                 ).fetchone() == (wanted,)
            # but has no EXECUTE on set_setting
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                plain.execute("SELECT azure_local_ai.set_setting('spin_control', %s)", (other,))
            # and a grant that is too wide does not let it through either
            admin.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA azure_local_ai TO {role}")
            with pytest.raises(psycopg.Error) as info:
                plain.execute("SELECT azure_local_ai.set_setting('spin_control', %s)", (other,))
            assert info.value.diag.sqlstate == "42501"
            assert info.value.diag.message_primary == (
                "permission denied to change the settings of the pglocalai runtime")
            # nor can it reach the internal function: their schema is not usable by PUBLIC
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                plain.execute("SELECT azure_local_ai_internal.set_setting('spin_control', %s)",
                              (other,))
            # nothing changed, in the runtime or on disk
            assert (admin_runtime.state_dir / "settings.json").read_bytes() == stored
            assert admin.execute("SELECT azure_local_ai.get_setting('spin_control')"
                                 ).fetchone() == (wanted,)
        finally:
            plain.execute("RESET ROLE")
            admin.execute(f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA azure_local_ai FROM {role}")
            admin.execute(f"DROP ROLE {role}")
