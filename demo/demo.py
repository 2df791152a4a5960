"""The pglocalai demo: embed a multilingual document set inside PostgreSQL, then search it.

`make demo` sets everything up, then runs this with the connection settings of `.run/env`
(PGHOST, PGPORT, PGUSER, PGDATABASE). The embeddings are made by the extension in SQL, with the
statements of Azure's documentation; this script only sends SQL and prints the results. Then a
vectorizer fills a second table while its rows keep arriving (demo/vectorizer_demo.py), embedded
in the background by the worker `make up` started.

Usage::

    . .run/env && .venv/bin/python demo/demo.py [--reembed]

The e5 models are trained with a ``passage: `` prefix on documents and ``query: `` on queries.
The extension embeds text exactly as given, so the prefixes are added here.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
import unicodedata
from pathlib import Path

import psycopg
import vectorizer_demo
from psycopg import sql

MODEL = "multilingual-e5-small:v1"
DOCUMENTS = Path(__file__).with_name("documents.tsv")
TOP_K = 3

# (language, query): each finds its answers among documents in other languages too.
QUERIES = [
    ("en", "how can I make a slow SQL query faster?"),
    ("de", "Wie koche ich ein einfaches Gericht mit Reis?"),
    ("ja", "ヨーロッパを電車で旅行したい"),
    ("es", "¿cómo encuentro documentos parecidos por su significado?"),
    ("ar", "كم ساعة من النوم يحتاجها الإنسان؟"),
    ("ru", "как подготовиться к марафону?"),
]

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS demo_documents (
    id integer PRIMARY KEY,
    lang text NOT NULL,
    text text NOT NULL,
    embedding vector(384)
)"""

# A changed text loses its embedding, so that only new or changed rows are embedded again.
UPSERT = """
INSERT INTO demo_documents (id, lang, text) VALUES (%s, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    lang = excluded.lang,
    text = excluded.text,
    embedding = CASE WHEN demo_documents.text = excluded.text THEN demo_documents.embedding END"""

# Azure's batch example, verbatim but for the prefix and the WHERE clause.
EMBED = sql.SQL("""
WITH docs_with_ids AS (
    SELECT (azure_local_ai.create_embeddings({model},
                array_agg('passage: ' || text ORDER BY id), array_agg(id ORDER BY id))).*
    FROM demo_documents WHERE embedding IS NULL)
UPDATE demo_documents SET embedding = docs_with_ids.embedding
FROM docs_with_ids WHERE demo_documents.id = docs_with_ids.id""")

# The query is embedded once, in the CTE, and compared with every document (cosine distance).
SEARCH = sql.SQL("""
WITH q AS (SELECT azure_local_ai.create_embeddings({model}, %s)::vector AS v)
SELECT d.lang, d.text, 1 - (d.embedding <=> q.v) AS similarity
FROM demo_documents d, q
ORDER BY d.embedding <=> q.v
LIMIT {k}""")


def read_documents(path: Path) -> list[tuple[int, str, str]]:
    """The rows of the TSV file (id, lang, text), header skipped."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(int(row["id"]), row["lang"], row["text"]) for row in reader]


def display_width(text: str) -> int:
    """Terminal columns: CJK and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def clip(text: str, width: int) -> str:
    """Cut text to at most width terminal columns, marking the cut with an ellipsis."""
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


class Style:
    """Bold and dim on a terminal; plain text when piped or when NO_COLOR is set."""

    def __init__(self) -> None:
        self.on = sys.stdout.isatty() and "NO_COLOR" not in os.environ

    def bold(self, s: str) -> str:
        return f"\033[1m{s}\033[0m" if self.on else s

    def dim(self, s: str) -> str:
        return f"\033[2m{s}\033[0m" if self.on else s


def load_and_embed(conn: psycopg.Connection, docs: list[tuple[int, str, str]],
                   reembed: bool) -> None:
    """Load the documents and embed the rows that have no embedding yet, in one statement."""
    model = sql.Literal(MODEL)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(CREATE_TABLE)
        cur.executemany(UPSERT, docs)
        cur.execute("DELETE FROM demo_documents WHERE id <> ALL(%s)", ([d[0] for d in docs],))
        if reembed:
            cur.execute("UPDATE demo_documents SET embedding = NULL")
        cur.execute("SELECT count(*) FROM demo_documents WHERE embedding IS NULL")
        pending = cur.fetchone()[0]
        if pending == 0:
            print(f"all {len(docs)} documents already embedded (--reembed to embed them again)")
            return
        start = time.perf_counter()
        cur.execute(EMBED.format(model=model))
        elapsed = time.perf_counter() - start
        embedded = cur.rowcount
    print(f"embedded {embedded} documents in {elapsed:.2f} s "
          f"({embedded / elapsed:.0f} documents/s), in one UPDATE with "
          "azure_local_ai.create_embeddings(model, array_agg(text), array_agg(id))")


def search(conn: psycopg.Connection, style: Style) -> None:
    """Run each query and print its best matches with their cosine similarity."""
    width = shutil.get_terminal_size((100, 24)).columns
    query = SEARCH.format(model=sql.Literal(MODEL), k=sql.Literal(TOP_K))
    for lang, text in QUERIES:
        start = time.perf_counter()
        rows = conn.execute(query, (f"query: {text}",)).fetchall()
        elapsed_ms = (time.perf_counter() - start) * 1000
        print()
        print(f"{style.bold(f'[{lang}] {text}')}  {style.dim(f'{elapsed_ms:.1f} ms')}")
        for rank, (doc_lang, doc_text, similarity) in enumerate(rows, 1):
            prefix = f"  {rank}. {similarity:.3f}  {doc_lang}  "
            print(prefix + clip(doc_text, max(20, width - len(prefix) - 1)))


def live(conn: psycopg.Connection, docs: list[tuple[int, str, str]], style: Style) -> None:
    """Part two: the same documents arrive in waves; a vectorizer embeds them meanwhile."""
    width = shutil.get_terminal_size((100, 24)).columns
    print()
    print(style.bold("A vectorizer: embeddings that keep themselves current, writes that never "
                     "wait for the model"))

    def show(title: str, rows: list[tuple[str, float, str]]) -> None:
        print()
        print(style.bold(title))
        for rank, (doc_lang, similarity, doc_text) in enumerate(rows, 1):
            prefix = f"  {rank}. {similarity:.3f}  {doc_lang}  "
            print(prefix + clip(doc_text, max(20, width - len(prefix) - 1)))

    vectorizer_demo.run(conn, docs, MODEL, lambda line: print(style.dim("  " + line)), show)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reembed", action="store_true",
                        help="embed every document again, not only new or changed ones")
    args = parser.parse_args()
    style = Style()
    docs = read_documents(DOCUMENTS)
    languages = sorted({lang for _, lang, _ in docs})
    print(style.bold(f"pglocalai demo: {len(docs)} documents in {len(languages)} languages "
                     f"({', '.join(languages)}), model {MODEL}"))
    try:
        with psycopg.connect(autocommit=True) as conn:
            start = time.perf_counter()
            load_and_embed(conn, docs, args.reembed)
            search(conn, style)
            live(conn, docs, style)
            print(f"\ndone in {time.perf_counter() - start:.2f} s")
    except vectorizer_demo.DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        diag = exc.diag
        print(f"error: {diag.message_primary or exc}", file=sys.stderr)
        for label, value in (("detail", diag.message_detail), ("hint", diag.message_hint)):
            if value:
                print(f"{label}: {value}", file=sys.stderr)
        if diag.sqlstate in ("3F000", "42883"):  # no schema azure_local_ai / no such function
            print("hint: install the extension and start the runtime: make up", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
