"""The README's "Install into an existing PostgreSQL", run as written against a throwaway
cluster of the distribution's tools (pg_createcluster on a spare port).

The blocks run verbatim with bash, except the two ``export`` lines that name the server and
the cluster (they point at the throwaway cluster) and one variable added to the
environment: PGLOCALAI_INSTALL_MODELS_FROM, so the model `make model` converted is copied
rather than converted again. After the install: the runtime is not root and embeds through
the cluster; after the uninstall: every place the install writes is as it was before, and
pg_dropcluster leaves nothing of the cluster.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from install_support import (
    ROOT,
    ThrowawayCluster,
    missing,
    need_root_and_tools,
    pg_major,
    wait_for,
)

pytestmark = pytest.mark.pg

SECTION = "## Install into an existing PostgreSQL"


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end > 0 else None]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def with_cluster(block: str, major: str, spec: str) -> str:
    """The block with the server and cluster of the test; fails if the README changed them."""
    lines = block.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("export PGLOCALAI_PG_MAJOR="):
            lines[i] = f"export PGLOCALAI_PG_MAJOR={major}"
        elif line.startswith("export PGLOCALAI_INSTALL_CLUSTER="):
            lines[i] = f"export PGLOCALAI_INSTALL_CLUSTER={spec}"
    return "\n".join(lines) + "\n"


def run_block(block: str, env: dict[str, str], exports: str = "") -> str:
    """Run a block as the reader's shell would, with the exports of the blocks before it."""
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", exports + block], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"README block failed:\n{block}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def snapshot(major: str, spec: str) -> dict[str, str]:
    """Every place an install writes, as a path -> content digest map."""
    sharedir = Path(subprocess.run([f"/usr/lib/postgresql/{major}/bin/pg_config", "--sharedir"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    version, name = spec.split("/")
    state: dict[str, str] = {}
    roots = [Path("/opt/pglocalai"), Path("/usr/local/lib/pglocalai"),
             Path("/var/lib/pglocalai/models"), Path("/var/lib/pglocalai/installs"),
             Path("/var/lib/pglocalai/clusters"), Path(f"/etc/postgresql/{version}/{name}")]
    for root in roots:
        paths = [root, *root.rglob("*")] if root.exists() else []
        for path in paths:
            if "__pycache__" in path.parts or "venv" in path.parts:
                continue
            state[str(path)] = _digest(path)
    for path in sharedir.glob("extension/azure_local_ai*"):
        state[str(path)] = _digest(path)
    for path in [*Path("/run").glob("pglocalai-*"), *Path("/etc/systemd/system").glob(
            "pglocalai-*")]:
        state[str(path)] = _digest(path)
    if Path("/var/lib/pglocalai").exists():
        state["/var/lib/pglocalai/*"] = " ".join(sorted(os.listdir("/var/lib/pglocalai")))
    return state


def _digest(path: Path) -> str:
    if path.is_symlink():
        return "link:" + os.readlink(path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return "dir" if path.is_dir() else "other"


def runtime_pids(cluster_id: str, command: bytes = b"serve") -> list[int]:
    """The processes of ``pglocalai <command>`` serving the cluster (socket in their argv)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
                zombie = (proc / "stat").read_text().rpartition(")")[2].split()[0] == "Z"
            except OSError:
                continue
            if f"/run/pglocalai-{cluster_id}/".encode() in cmd and command in cmd.split(b"\0") \
                    and not zombie:
                pids.append(int(proc.name))
    return sorted(pids)


def worker_embeds(cluster: ThrowawayCluster, cluster_id: str) -> None:
    """The installed worker picks up a new vectorizer (SIGHUP: look now) and embeds a row;
    once the database has no vectorizer, its sessions leave (DROP DATABASE is not held)."""
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pglocalai worker'"
    cluster.psql("CREATE TABLE inst_readme_docs (id int PRIMARY KEY, body text, "
                 "embedding real[]); SELECT azure_local_ai.create_vectorizer("
                 "'inst_readme_docs', 'body', 'embedding'); "
                 "INSERT INTO inst_readme_docs VALUES (1, 'hello')")
    try:
        look_now(cluster_id)
        wait_for(lambda: cluster.psql("SELECT array_length(embedding, 1) FROM inst_readme_docs"
                                      ).stdout.strip() == "384",
                 timeout=90.0, what="the installed worker to embed the row")
        assert int(cluster.psql(sessions).stdout) > 0
    finally:
        cluster.psql("DROP TABLE inst_readme_docs")  # its vectorizer goes with it
    look_now(cluster_id)
    wait_for(lambda: cluster.psql(sessions).stdout.strip() == "0", timeout=60.0,
             what="the worker to leave a database without vectorizers")


def look_now(cluster_id: str) -> None:
    for pid in runtime_pids(cluster_id, b"worker"):
        os.kill(pid, signal.SIGHUP)  # a supervisor ignores it, the worker looks now


def uids(pid: int) -> list[int]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                if x.startswith("Uid:"))
    return [int(x) for x in line.split()[1:]]


def test_the_readme_install_embeds_and_the_uninstall_leaves_nothing() -> None:
    need_root_and_tools()
    store = ROOT / ".run" / "models"
    if not (store / "multilingual-e5-small@v1" / "metadata.json").is_file():
        missing(f"no converted model in {store} (make model)")
    blocks = readme_blocks()
    assert len(blocks) == 3, "the README section should have install, check and remove blocks"
    assert "pglocalai install" in blocks[0] and "pglocalai uninstall" in blocks[2]
    major = pg_major()
    cluster = ThrowawayCluster("inst_readme")
    cluster_id = f"{cluster.major}-{cluster.name}"
    # a root shell as a new user has it: none of make up's PG*/PGLOCALAI_* settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGLOCALAI_INSTALL_MODELS_FROM"] = str(store)
    try:
        before = snapshot(major, cluster.spec)
        assert not any(k.startswith(f"/run/pglocalai-{cluster_id}") for k in before)

        first = with_cluster(blocks[0], major, cluster.spec)
        exports = "".join(x + "\n" for x in first.splitlines() if x.startswith("export "))
        assert exports.count("export ") == 2
        run_block(first, env)
        conf = (cluster.configdir / "conf.d" / "pglocalai.conf").read_text()
        assert f"/run/pglocalai-{cluster_id}/pglocalai.sock" in conf
        pids = runtime_pids(cluster_id)
        assert pids, "no runtime serves the installed cluster"
        workers = runtime_pids(cluster_id, b"worker")
        assert workers, "no vectorizer worker serves the installed cluster"
        for pid in pids + workers:
            assert 0 not in uids(pid), f"the runtime or worker (pid {pid}) runs as root"

        out = run_block(blocks[1], env, exports)
        assert re.search(r"^\s*384\s*$", out, re.M), out  # array_length: 384 dimensions
        worker_embeds(cluster, cluster_id)
        # a second install changes nothing and keeps the runtime (unless the sources changed
        # meanwhile: then it installs them and restarts the runtime, as it should)
        stamp = Path("/opt/pglocalai/venv/.pglocalai-runtime.json")
        built = stamp.read_bytes()
        run_block(first, env)
        if stamp.read_bytes() == built:
            assert runtime_pids(cluster_id) == pids
            assert runtime_pids(cluster_id, b"worker") == workers

        run_block(blocks[2], env, exports)
        assert runtime_pids(cluster_id) == []
        assert runtime_pids(cluster_id, b"worker") == []
        after = snapshot(major, cluster.spec)
        assert {k: v for k, v in after.items() if after.get(k) != before.get(k)} == {}
        assert {k: v for k, v in before.items() if k not in after} == {}
    finally:
        cluster.drop()
        if Path(f"/var/lib/pglocalai/installs/{cluster_id}.json").exists():
            subprocess.run([str(ROOT / ".venv/bin/pglocalai"), "uninstall", "--force",
                            "--cluster", cluster.spec], check=False, capture_output=True)
    assert not cluster.configdir.exists() and not cluster.datadir.exists()
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True,
                            check=True).stdout
    assert cluster.name not in listed
