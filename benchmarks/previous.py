"""The previous landed version's runtime, for before/after figures from one run (issue 15).

The code of ``PREVIOUS`` (a commit) is unpacked under ``.run/bench/previous`` and run
with this checkout's virtual environment (the pinned dependencies are the same),
on its own socket and its own model store, which that version's converter builds: a
newer store may hold variants an older runtime refuses. SQL sessions reach it with
``SET azure_local_ai.runtime_socket``; the extension is the same.

    with previous_runtime() as (socket, pid):
        ...   # the same workload against `socket` and against the make-up runtime
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

from benchmarks.common import MODEL_URI, REPO, WORK_DIR, say
from benchmarks.runtime import private_runtime

# the last commit of the previous landing (stop 16), before this round's runtime changes
PREVIOUS = "3d9a25a"


def source_tree(ref: str) -> str:
    """The ``src`` folder of commit ``ref`` (``git archive``), unpacked once per commit.

    Kept by the commit's hash, so a moving ref (``HEAD``) never finds a stale tree.
    """
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    tree = WORK_DIR / "previous" / commit
    if not (tree / "src" / "pglocalai").is_dir():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "src"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return str(tree / "src")


@contextlib.contextmanager
def previous_runtime(ref: str = PREVIOUS) -> Iterator[tuple[str, int]]:
    """(socket, pid) of the previous version's runtime with the model preloaded."""
    env = {"PYTHONPATH": source_tree(ref)}
    models = WORK_DIR / "previous" / f"models-{ref}"
    if not (models / MODEL_URI.replace(":", "@") / "metadata.json").exists():
        say(f"previous version {ref}: building its model store (its own converter)")
        subprocess.run([sys.executable, "-m", "pglocalai.cli.main", "model", "install",
                        MODEL_URI, "--models-dir", str(models), "--variants", "int8"],
                       check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    # the server connects as postgres: it gets the socket (the make-up runtime runs as postgres)
    with private_runtime(f"previous-{ref}", "--models-dir", str(models), "--socket-owner",
                         "postgres", env=env) as rt:
        yield rt
