"""The vectorizer worker: keeps the embeddings that azure_local_ai.create_vectorizer asked for.

The SQL side (extension/sql/azure_local_ai--1.0.0--1.1.0.sql) queues the primary keys of
changed rows; ``pglocalai worker`` takes them off the queues and writes the vectors::

    plan.py       one vectorizer as the catalog describes it, and the SQL for it (pure)
    embedding.py  texts -> vector literals through the runtime; a bad text fails alone
    batch.py      one batch in one transaction: claim, read, embed, write, dequeue
    worker.py     lanes, LISTEN/NOTIFY, retries, reconnects, heartbeat, SIGTERM
    report.py     progress on a terminal, structured log lines otherwise

See docs/vectorizer.md for the guarantees and the deployment.
"""
