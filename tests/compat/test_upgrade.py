"""ALTER EXTENSION azure_local_ai UPDATE from every released version keeps everything.

For each released version older than the current one: install it, fill it the way a
user would (a table with vectors, a generated column, an HNSW index, a setting of the
runtime), update, and check that the data, the index, the setting and the functions all
still work, and that the upgraded database holds the same extension objects, with the
same definitions, as a fresh install of the current version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from support import E5, connect

import pglocalai

pytestmark = [pytest.mark.pg, pytest.mark.model]

CURRENT = pglocalai.EXTENSION_VERSIONS[-1]
OLDER = pglocalai.EXTENSION_VERSIONS[:-1]

MEMBERS = """
    SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS object,
           CASE WHEN d.classid = 'pg_proc'::regclass THEN pg_get_functiondef(d.objid)
                WHEN d.classid = 'pg_class'::regclass
                THEN (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod),
                                        ', ' ORDER BY a.attnum)
                      FROM pg_attribute a WHERE a.attrelid = d.objid AND a.attnum > 0
                        AND NOT a.attisdropped)
           END AS definition,
           CASE WHEN d.classid = 'pg_proc'::regclass
                THEN (SELECT proacl::text FROM pg_proc WHERE oid = d.objid)
                WHEN d.classid = 'pg_class'::regclass
                THEN (SELECT relacl::text FROM pg_class WHERE oid = d.objid)
                WHEN d.classid = 'pg_namespace'::regclass
                THEN (SELECT nspacl::text FROM pg_namespace WHERE oid = d.objid)
           END AS acl
    FROM pg_depend d
    WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
      AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'azure_local_ai')
    ORDER BY 1
"""


def fill(conn: psycopg.Connection[Any]) -> list[Any]:
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute("""
        CREATE TABLE docs (id int PRIMARY KEY, doc text,
                           embedding vector(384),
                           generated vector(384) GENERATED ALWAYS AS
                             (azure_local_ai.create_embeddings('multilingual-e5-small:v1',
                                                               doc)::vector) STORED)""")
    conn.execute("INSERT INTO docs (id, doc) VALUES (1, 'the cat sleeps'), (2, 'le chien dort'),"
                 " (3, 'stock prices fell')")
    conn.execute("""
        WITH e AS (SELECT (azure_local_ai.create_embeddings('multilingual-e5-small:v1',
                              array_agg(doc ORDER BY id), array_agg(id ORDER BY id))).* FROM docs)
        UPDATE docs SET embedding = e.embedding::vector FROM e WHERE docs.id = e.id""")
    conn.execute("CREATE INDEX docs_hnsw ON docs USING hnsw (embedding vector_cosine_ops)")
    return conn.execute("SELECT id, doc, embedding::text, generated::text FROM docs ORDER BY id"
                        ).fetchall()


@pytest.mark.parametrize("old", OLDER)
def test_update_keeps_data_settings_and_functions(old: str, make_db: Callable[..., Any],
                                                  deployed_socket: str) -> None:
    upgraded = make_db(version=old)
    fresh = make_db()
    with connect(upgraded, deployed_socket) as conn:
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'azure_local_ai'"
                            ).fetchone() == (old,)
        rows = fill(conn)
        setting = conn.execute("SELECT azure_local_ai.get_setting('spin_control')").fetchone()
        conn.execute("ALTER EXTENSION azure_local_ai UPDATE")
        assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'azure_local_ai'"
                            ).fetchone() == (CURRENT,)
        # the data and the generated column are untouched, and the same session keeps working
        assert conn.execute("SELECT id, doc, embedding::text, generated::text FROM docs "
                            "ORDER BY id").fetchall() == rows
        assert conn.execute("SELECT azure_local_ai.get_setting('spin_control')").fetchone() \
            == setting
        conn.execute("INSERT INTO docs (id, doc) VALUES (4, 'a sleeping kitten')")
        conn.execute("SET enable_seqscan = off")
        nearest = conn.execute("""
            SELECT id FROM docs ORDER BY embedding <=> azure_local_ai.create_embeddings(
                %s, 'a cat is sleeping')::vector LIMIT 1""", (E5,)).fetchone()
        assert nearest == (1,)
        assert conn.execute("SELECT generated = azure_local_ai.create_embeddings(%s, doc)::vector"
                            " FROM docs WHERE id = 4", (E5,)).fetchone() == (True,)
        upgraded_members = conn.execute(MEMBERS).fetchall()
    with connect(fresh, deployed_socket) as conn:
        fresh_members = conn.execute(MEMBERS).fetchall()
    assert upgraded_members == fresh_members


def test_there_is_a_version_to_update_from() -> None:
    """1.0.0 is released: every later version must be reachable from it (and tested above)."""
    assert pglocalai.EXTENSION_VERSIONS[0] == "1.0.0"
    assert OLDER, "only one version exists: nothing to upgrade from yet"
