"""Install pglocalai into a PostgreSQL server the machine already runs, and remove it again.

``pglocalai install`` (see :mod:`pglocalai.cli.install`) puts, for one cluster:

* the extension's control and SQL files where that server's ``pg_config --sharedir`` says;
* the server-side Python package into ``<lib_dir>/<v>/pglocalai`` for every extension
  version ``v`` the package serves (the session loads ``<lib_dir>/<extversion>``);
* the runtime's own virtual environment (built with the system interpreter, so the
  server's user can run it) and the default model in a system model store;
* ``azure_local_ai.runtime_socket`` in the cluster's configuration, and the runtime running
  as the cluster's owner: a systemd unit where systemd runs, else the project's supervisor.

Everything written is listed in a manifest, so ``pglocalai uninstall`` removes exactly that.

Standard library only: ``scripts/install-ext.sh`` runs :mod:`pglocalai.install.serverlib`
with the system interpreter before any virtual environment exists.
"""

from __future__ import annotations

from pglocalai.errors import PglocalaiError

DEFAULT_PREFIX = "/opt/pglocalai"  # <prefix>/venv: the runtime's virtual environment
DEFAULT_LIB_DIR = "/usr/local/lib/pglocalai"  # the default of azure_local_ai.python_lib_dir
STATE_ROOT = "/var/lib/pglocalai"
DEFAULT_MODELS_DIR = f"{STATE_ROOT}/models"
MANIFEST_DIR = f"{STATE_ROOT}/installs"
SYSTEM_PYTHON = "/usr/bin/python3"


class InstallError(PglocalaiError):
    """An install or uninstall step failed; the message says which, the hint what to do."""

    code = "install_failed"
    exit_code = 5


def extension_versions() -> tuple[str, ...]:
    """The extension versions this package serves (``pglocalai.EXTENSION_VERSIONS``)."""
    import pglocalai  # noqa: PLC0415

    versions = getattr(pglocalai, "EXTENSION_VERSIONS", None)
    return tuple(versions) if versions else (pglocalai.__version__,)
