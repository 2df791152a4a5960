"""A hot standby serves query-time embeddings and HNSW searches through its own runtime.

A throwaway primary (pg_createcluster) gets pglocalai, a table with embeddings and an HNSW
index; a standby is made from it with pg_basebackup over loopback (streaming, -R) and gets
pglocalai too, so it has a runtime of its own on its own socket. On the standby: embeddings
and an index search work; a write fails with PostgreSQL's read-only error. This is how
search load scales past one machine (docs/deployment.md).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
from install_support import (
    E5,
    ROOT,
    ThrowawayCluster,
    missing,
    need_root_and_tools,
    wait_for,
)

pytestmark = pytest.mark.pg

PGLOCALAI = str(ROOT / ".venv" / "bin" / "pglocalai")
DOCS = [(1, "passage: PostgreSQL stores embeddings in a vector column"),
        (2, "passage: Ein gutes Risotto braucht Geduld und warme Brühe"),
        (3, "passage: 東京から京都までは新幹線で約二時間です")]


def pglocalai(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGLOCALAI_")}
    done = subprocess.run([PGLOCALAI, *args], capture_output=True, text=True, env=env,
                          check=False, cwd="/")
    assert done.returncode == 0, f"pglocalai {' '.join(args)}:\n{done.stdout}{done.stderr}"


def install(cluster: ThrowawayCluster) -> None:
    pglocalai("install", "--pg-config", f"/usr/lib/postgresql/{cluster.major}/bin/pg_config",
              "--cluster", cluster.spec, "--models-from", str(ROOT / ".run" / "models"))


def test_a_streaming_standby_embeds_and_searches_and_refuses_writes() -> None:
    need_root_and_tools()
    if not (ROOT / ".run" / "models" / "multilingual-e5-small@v1").is_dir():
        missing("no converted model in .run/models (make model)")
    primary = ThrowawayCluster("inst_primary")
    standby: ThrowawayCluster | None = None
    password = secrets.token_hex(16)
    try:
        install(primary)
        primary.psql(f"CREATE ROLE inst_repl REPLICATION LOGIN PASSWORD '{password}'")
        primary.psql("CREATE EXTENSION azure_local_ai CASCADE; CREATE EXTENSION vector")
        values = ", ".join(f"({i}, '{doc}')" for i, doc in DOCS)
        primary.psql(
            "CREATE TABLE docs (id int PRIMARY KEY, doc text, embedding vector(384));"
            f"INSERT INTO docs (id, doc) VALUES {values};"
            f"UPDATE docs SET embedding = azure_local_ai.create_embeddings('{E5}', doc)::vector;"
            "CREATE INDEX docs_hnsw ON docs USING hnsw (embedding vector_cosine_ops);"
            "CHECKPOINT")

        standby = ThrowawayCluster("inst_standby", start=False)
        shutil.rmtree(standby.datadir)
        backup = subprocess.run(
            ["runuser", "-u", "postgres", "--", "pg_basebackup", "-h", "127.0.0.1",
             "-p", str(primary.port), "-U", "inst_repl", "-D", str(standby.datadir), "-R",
             "-X", "stream", "-c", "fast"],
            env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True,
            check=False, cwd="/")
        assert backup.returncode == 0, backup.stderr
        subprocess.run(["pg_ctlcluster", standby.major, standby.name, "start"], check=True,
                       capture_output=True)
        install(standby)
        assert standby.psql("SELECT pg_is_in_recovery()").stdout.strip() == "t"
        lsn = primary.psql("SELECT pg_current_wal_lsn()").stdout.strip()
        wait_for(lambda: standby.psql(
            f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn").stdout.strip() == "t",
            what="the standby to replay the primary's WAL")

        # its own runtime, on its own socket
        socket = standby.psql("SHOW azure_local_ai.runtime_socket").stdout.strip()
        assert socket == f"/run/pglocalai-{standby.major}-{standby.name}/pglocalai.sock"
        assert Path(socket).is_socket()
        dims = standby.psql(f"SELECT array_length(azure_local_ai.create_embeddings('{E5}', "
                            "'query: hello'), 1)").stdout.strip()
        assert dims == "384"
        search = (f"SELECT id FROM docs ORDER BY embedding <=> azure_local_ai.create_embeddings("
                  f"'{E5}', 'query: wie koche ich Risotto?')::vector LIMIT 1")
        plan = standby.psql(f"SET enable_seqscan = off; EXPLAIN (COSTS OFF) {search}").stdout
        assert "docs_hnsw" in plan, plan
        assert standby.psql(f"SET enable_seqscan = off; {search}").stdout.split()[-1] == "2"

        write = standby.psql("INSERT INTO docs (id, doc) VALUES (4, 'x')", check=False)
        assert write.returncode != 0
        assert "cannot execute INSERT in a read-only transaction" in write.stderr
    finally:
        if standby is not None:
            standby.drop()  # the uninstall of a dropped cluster removes the rest
            pglocalai("uninstall", "--cluster", standby.spec)
        primary.psql("DROP EXTENSION IF EXISTS azure_local_ai", check=False)
        subprocess.run([PGLOCALAI, "uninstall", "--force", "--cluster", primary.spec],
                       check=False, capture_output=True)
        primary.drop()
    assert not Path(f"/run/pglocalai-{primary.major}-{primary.name}").exists()
