"""The PostgreSQL side of pglocalai: what the azure_local_ai PL/Python functions call.

Standard library only: this package runs inside the server, in the server's Python.
"""
