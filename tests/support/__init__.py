"""The test set-up in one place: ``from support import Runtime, connect, wait_until``.

env: paths, .run/env, markers' guard (``needs``), fail-or-skip (``missing``), waiting;
runtime: ``Runtime``, a runtime of the test's own; pg: sessions and throwaway databases;
wire: raw frames; memory: process memory readings. Fixtures live in tests/conftest.py.
"""

from support.env import (
    E5,
    MARKERS,
    MINILM,
    ROOT,
    Repeating,
    cli,
    missing,
    model_store,
    models_dir,
    needs,
    pglocalai_command,
    private_dir,
    required,
    run_env,
    run_threads,
    setting,
    subprocess_env,
    wait_until,
)
from support.memory import PeakSampler, mib, private_bytes
from support.pg import (
    backend,
    connect,
    connection_params,
    create_database,
    database_name,
    drop_database,
    extension_version,
    install_package,
    throwaway_database,
)
from support.runtime import (
    FAKE_MODELS,
    FakeCatalog,
    FakeEngine,
    Runtime,
    Witness,
    fake_serve_command,
)
from support.wire import connect_as, raw_connect, raw_frame, read_frame

__all__ = [
    "E5", "FAKE_MODELS", "FakeCatalog", "FakeEngine", "MARKERS", "MINILM", "PeakSampler", "ROOT",
    "Repeating", "Runtime", "Witness", "backend", "cli", "connect", "connect_as",
    "connection_params", "create_database", "database_name", "drop_database", "extension_version",
    "fake_serve_command", "install_package", "mib", "missing", "model_store", "models_dir",
    "needs", "pglocalai_command", "private_bytes", "private_dir", "raw_connect", "raw_frame",
    "read_frame", "required", "run_env", "run_threads", "setting", "subprocess_env",
    "throwaway_database", "wait_until",
]
