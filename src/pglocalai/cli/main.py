"""The ``pglocalai`` command: models, the runtime service, and its status.

Example::

    pglocalai model install                 # multilingual-e5-small:v1 from the bundled pack
    pglocalai serve --socket /run/pglocalai/pglocalai.sock
    pglocalai status

Errors are printed in the PostgreSQL voice (``error: …``, ``detail: …``,
``hint: …``) and mapped to the exit code of their class in
:mod:`pglocalai.errors`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pglocalai import __version__
from pglocalai.errors import PglocalaiError


def build_parser() -> argparse.ArgumentParser:
    from pglocalai.cli.install import add_install_parser  # noqa: PLC0415
    from pglocalai.cli.models import add_model_parser  # noqa: PLC0415 - keep start-up light
    from pglocalai.cli.service import add_service_parser  # noqa: PLC0415
    from pglocalai.cli.worker import add_worker_parser  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="pglocalai",
        description="In-database text embeddings for PostgreSQL: models and the runtime.",
    )
    parser.add_argument("--version", action="version", version=f"pglocalai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_model_parser(sub)
    add_service_parser(sub)
    add_install_parser(sub)
    add_worker_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except PglocalaiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.detail:
            print(f"detail: {exc.detail}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
