"""``pglocalai install | uninstall``: put pglocalai into a PostgreSQL cluster the machine
already runs, and take it out again; ``pglocalai runtime-env``: the runtime's environment
and model store for ``make up``.

Examples (as root, from a clone)::

    pglocalai install --pg-config /usr/lib/postgresql/17/bin/pg_config
    pglocalai install --cluster 15/main --models-from .run/models
    pglocalai uninstall --cluster 15/main

Every option also reads ``PGLOCALAI_INSTALL_<NAME>`` from the environment (a flag wins).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pglocalai.install import DEFAULT_LIB_DIR, DEFAULT_MODELS_DIR, DEFAULT_PREFIX

ENV = "PGLOCALAI_INSTALL_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV + name.upper()) or default


def add_install_parser(subparsers: Any) -> None:
    """Register install, uninstall and runtime-env on the top-level subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pg-config", default=_env("pg_config"), metavar="PATH",
                        help="pg_config of the server (default: the only one under "
                             "/usr/lib/postgresql) [PGLOCALAI_INSTALL_PG_CONFIG]")
    common.add_argument("--cluster", default=_env("cluster"), metavar="VERSION/NAME",
                        help="the cluster, as pg_lsclusters names it (default: "
                             "<major>/main) [PGLOCALAI_INSTALL_CLUSTER]")

    p = subparsers.add_parser(
        "install", parents=[common], help="install pglocalai into a PostgreSQL cluster",
        description="Install the extension, the server-side package, the runtime (its own "
                    "virtual environment), the default model and the runtime's service into "
                    "one cluster. Idempotent; run as root from a clone.")
    p.add_argument("--prefix", default=_env("prefix", DEFAULT_PREFIX), type=Path,
                   help=f"the runtime's virtual environment goes to PREFIX/venv (default "
                        f"{DEFAULT_PREFIX}) [PGLOCALAI_INSTALL_PREFIX]")
    p.add_argument("--lib-dir", default=_env("lib_dir", DEFAULT_LIB_DIR), type=Path,
                   help=f"azure_local_ai.python_lib_dir (default {DEFAULT_LIB_DIR}) "
                        "[PGLOCALAI_INSTALL_LIB_DIR]")
    p.add_argument("--models-dir", default=_env("models_dir", DEFAULT_MODELS_DIR), type=Path,
                   help=f"the system model store (default {DEFAULT_MODELS_DIR}) "
                        "[PGLOCALAI_INSTALL_MODELS_DIR]")
    p.add_argument("--models-from", default=_env("models_from"), type=Path, metavar="DIR",
                   help="copy the models from this store instead of building them "
                        "(e.g. .run/models after make model) [PGLOCALAI_INSTALL_MODELS_FROM]")
    p.add_argument("--service", default=_env("service", "auto"),
                   choices=("auto", "systemd", "supervisor", "none"),
                   help="how the runtime runs: auto = systemd where it is PID 1, else the "
                        "supervisor (default auto) [PGLOCALAI_INSTALL_SERVICE]")
    p.set_defaults(func=cmd_install)

    p = subparsers.add_parser(
        "uninstall", parents=[common], help="remove what pglocalai install put into a cluster",
        description="Stop the cluster's runtime and remove every file the install recorded "
                    "in its manifest; files that were there before are kept or put back.")
    p.add_argument("--force", action="store_true",
                   help="also when databases of the cluster still have the extension")
    p.set_defaults(func=cmd_uninstall)

    p = subparsers.add_parser(
        "runtime-env", help="build the runtime's virtual environment and model store",
        description="Create or refresh a virtual environment built with the system "
                    "interpreter, holding this checkout's package (non-editable) and its pinned "
                    "dependencies, and copy models into a store; skipped when up to date. "
                    "make up runs it so that the runtime can run as the server's user.")
    p.add_argument("--venv", required=True, type=Path, help="the virtual environment")
    p.add_argument("--models-dir", required=True, type=Path, help="the store to fill")
    p.add_argument("--models-from", required=True, type=Path, help="the store to copy from")
    p.add_argument("--model", action="append", dest="models", metavar="URI",
                   help="a model to copy (repeatable; default: all in --models-from)")
    p.add_argument("--link", action="store_true", help="hard-link model files when possible")
    p.set_defaults(func=cmd_runtime_env)


def _options(args: argparse.Namespace) -> Any:
    from pglocalai.install.installer import Options  # noqa: PLC0415

    opts = Options(pg_config=args.pg_config, cluster=args.cluster)
    for name in ("prefix", "lib_dir", "models_dir", "models_from", "service"):
        if getattr(args, name, None) is not None:
            setattr(opts, name, getattr(args, name))
    if isinstance(opts.models_from, str):
        opts.models_from = Path(opts.models_from)
    return opts


def cmd_install(args: argparse.Namespace) -> int:
    from pglocalai.install.installer import install  # noqa: PLC0415

    install(_options(args), say=_say)
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from pglocalai.install.installer import uninstall  # noqa: PLC0415

    uninstall(_options(args), force=args.force, say=_say)
    return 0


def cmd_runtime_env(args: argparse.Namespace) -> int:
    from pglocalai.install import runtime_env  # noqa: PLC0415

    os.umask(0o022)  # the server's user reads all of it
    source = runtime_env.checkout_root()
    runtime_env.ensure_venv(args.venv, source, say=_say)
    from pglocalai.models.store import ModelStore  # noqa: PLC0415

    uris = args.models or ModelStore(args.models_from).uris()
    runtime_env.ensure_models(args.models_dir, uris, args.models_from, link=args.link, say=_say)
    return 0


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)
