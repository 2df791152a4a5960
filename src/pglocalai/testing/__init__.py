"""Test doubles for the runtime: never imported by production code.

``fake_engine`` holds deterministic, weightless stand-ins for the models;
``python -m pglocalai.testing.serve`` runs a runtime process on them.
"""
