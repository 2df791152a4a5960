"""``python -m pglocalai.testing.serve``: a runtime process on the fake models (tests only).

It takes every option of ``pglocalai serve`` and serves ``FakeCatalog``'s weightless
models instead of the model store, plus two options of its own::

    python -m pglocalai.testing.serve --socket /tmp/t/s.sock --preload all --fake-delay-ms 50

``--fake-delay-ms``: how long each batch takes; ``--fake-load-delay-ms``: how long each
model takes to load.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pglocalai.errors import PglocalaiError


def main(argv: Sequence[str] | None = None) -> int:
    from pglocalai.cli.service import add_serve_options, cmd_serve  # noqa: PLC0415
    from pglocalai.testing.fake_engine import FakeCatalog  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m pglocalai.testing.serve",
                                     description="Run the runtime on the fake test models.")
    add_serve_options(parser)
    parser.add_argument("--fake-delay-ms", type=float, default=0.0,
                        help="time each batch takes (default 0)")
    parser.add_argument("--fake-load-delay-ms", type=float, default=0.0,
                        help="time each model takes to load (default 0)")
    args = parser.parse_args(argv)
    if args.fake_delay_ms < 0 or args.fake_load_delay_ms < 0:
        parser.error("the fake delays must not be negative")
    catalog = FakeCatalog(delay_ms=args.fake_delay_ms, load_delay_ms=args.fake_load_delay_ms)
    try:
        return cmd_serve(args, catalog=lambda _cfg: catalog)
    except PglocalaiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
