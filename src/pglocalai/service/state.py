"""What request handlers and connections see of the runtime they serve.

:class:`pglocalai.service.server.Server` provides it. Naming this view instead of
the server keeps the imports one way: the server builds connections, connections
call the handlers, and neither needs the server's module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pglocalai.service.config import ServiceConfig
    from pglocalai.service.manager import ModelManager
    from pglocalai.service.stats import Stats


class RuntimeState(Protocol):
    config: ServiceConfig
    stats: Stats
    models: ModelManager
    connections: set[Any]  # the open Connection objects
    stopping: bool  # shutting down: new work is refused
    supervisor_pid: int | None  # the supervisor that started this process, if any
