"""A runtime in a thread of the calling process, for tests and benchmarks.

Production runs ``pglocalai serve`` (a process of its own); this runs the same
:class:`~pglocalai.service.server.Server` on an event loop in a background
thread, so a test can reach into it (``bg.server``) while clients talk to it
over its real socket.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pglocalai.service.catalog import Catalog
from pglocalai.service.config import ServiceConfig
from pglocalai.service.server import Server, serve
from pglocalai.service.settings import Settings


class BackgroundServer:
    """A runtime in a thread of this process (tests and benchmarks).

    >>> with BackgroundServer(config, StoreCatalog(), Settings(None, defaults())) as bg:
    ...     Client(config.socket).health()
    """

    def __init__(self, config: ServiceConfig, catalog: Catalog, settings: Settings) -> None:
        self.config = config
        self._catalog = catalog
        self._settings = settings
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="pglocalai-server", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.server = Server(self.config, self._catalog, self._settings)
            await serve(self.server, self._ready.set, install_signals=False)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"runtime did not start: {self._error!r}")
        return self

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop (a coroutine function or a plain one)."""
        assert self.loop is not None

        async def wrapper() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(60)

    def stop(self) -> None:
        if self.server is not None and self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.request_stop)
        self._thread.join(60)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
