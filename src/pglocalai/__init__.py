"""pglocalai: in-database text embeddings for PostgreSQL (the azure_local_ai extension)."""

__version__ = "1.2.0"
# The azure_local_ai extension versions whose SQL this package serves: it is installed into
# <azure_local_ai.python_lib_dir>/<v>/ for each of them, and a session loads <extversion>.
EXTENSION_VERSIONS = ("1.0.0", "1.1.0", "1.1.1", "1.2.0")
