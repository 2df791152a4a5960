"""``make bench``: pglocalai against what users would pick instead, measured side by side.

Entry point ``python -m benchmarks.run`` (see its docstring). Modules: ``data`` (the
corpus), ``sql``/``sql_suite``/``pgbench`` (the SQL paths), ``runtime`` (the runtime
alone), ``worker``/``peers``/``st_peer`` (in-process peers, each in its own process),
``machine`` (machine, versions, arithmetic, peaks), ``report``/``readme``/``plots``
(the outputs in docs/benchmarks/). ``runtime_bench`` is the runtime's own quick check.
"""
