"""``make bench``: pglocalai against what users would pick instead, measured side by side.

Entry point ``python -m benchmarks.run`` (see its docstring). One module per measured
path: ``runtime`` (the runtime alone; ``python -m benchmarks.runtime`` is its own quick
check), ``sql`` (the SQL paths), ``pgbench`` (concurrent sessions), ``peers`` with
``worker``/``st_peer`` (in-process peers, each in its own process). ``data`` is the
corpus, ``machine`` the machine, versions, arithmetic and peaks, ``common`` what they
share. ``report`` owns the labels and the derived numbers; ``readme`` and ``plots``
render them into docs/benchmarks/.
"""
