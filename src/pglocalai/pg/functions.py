"""What the azure_local_ai functions do, kept out of SQL so that it can be tested.

Runs inside the PostgreSQL server, in the server's Python: standard library only.

How the SQL side (``extension/sql/azure_local_ai--<version>.sql``) uses this module:

* The public functions (schema ``azure_local_ai``) are one-statement SQL
  functions over PL/pgSQL internals (schema ``azure_local_ai_internal``),
  which read the settings (``azure_local_ai.runtime_socket``), load this
  package once per session and call one thin PL/Python function (``py_*``).
* Nothing here calls SPI (``plpy.execute``). PL/Python runs every SPI call in a
  subtransaction, and PostgreSQL 15 refuses those inside a parallel query
  ("cannot start subtransactions during a parallel operation"), while the
  embedding functions are PARALLEL SAFE.
* Nothing here raises to PL/Python either: PL/Python would prefix the message
  with "plpy.Error:", add a Python traceback, and inside a set-returning
  function replace the message with "error fetching next item from iterator".
  An error is stored in ``GD[ERROR_KEY]`` instead and NULL (or a row with a NULL
  ordinal) is returned; the public function then calls
  ``azure_local_ai_internal.raise_pending()``, which raises it with its
  SQLSTATE, message, detail and hint.
* Vectors go back as the text of a real[] literal that the wrapper casts.
  Formatting with "%.9g" (exact for float32) plus array_in costs about half of
  PL/Python's own conversion of a list of floats, which is the hot path's floor.
* Query cancel and statement_timeout: PostgreSQL acts on them only when control
  is back in the server. While a reply is awaited the client calls
  ``check_interrupt`` every 50 ms; it reads the server's QueryCancelPending and
  ProcDiePending flags (ctypes, no SPI) and stops the wait when one is set; the
  wrapper returns and PostgreSQL raises its own error at its next check.

Loading: every new session that embeds imports this package once (``py_load``), after
PL/Python's own start. The package imports what it runs on and nothing for annotations:
no ``typing`` (its ``TYPE_CHECKING`` is a local ``False``), no ``dataclasses`` (which
imports ``inspect``), ``ctypes`` only once a reply takes longer than ``POLL_INTERVAL``.
That cut ``azure_local_ai_internal.load()`` from 50–65 to 20–32 ms on the project's VM,
time every connection that embeds pays once.

Example (what the PL/Python body of ``azure_local_ai_internal.py_embed`` runs)::

    >>> GD["azure_local_ai"].embed_text(GD, "multilingual-e5-small:v1", "hello", 3600000, None)
    '{0.0316441283,-0.0107186306,...}'
"""

from __future__ import annotations

import functools
import json
import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from pglocalai import __version__, errors, protocol
from pglocalai.client import DEFAULT_SOCKET, Client
from pglocalai.pg import trust

TYPE_CHECKING = False  # not typing's: see "Loading" above
if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from typing import Any, TypeVar

    _T = TypeVar("_T")
    GlobalDict = MutableMapping[str, Any]

# GD keys. The SQL script uses the first two literally: changing them breaks installed versions.
MODULE_KEY = "azure_local_ai"  # this module, stored by azure_local_ai_internal.py_load()
ERROR_KEY = "azure_local_ai.error"  # the pending error, taken by ..._internal.take_error()
CLIENTS_KEY = "azure_local_ai.clients"  # one Client per runtime address

POLL_INTERVAL = 0.05  # seconds between interrupt checks while a reply is awaited
MAX_CLIENTS = 4  # a session that keeps changing the socket setting keeps this many open

Row = tuple[int | None, str | None]
_FAILED: Row = (None, None)  # the row that tells the wrapper to raise the pending error


class Interrupted(Exception):
    """PostgreSQL flagged a query cancel or a shutdown while a reply was awaited."""


def _interrupt_reader() -> Callable[[], bool] | None:
    """A reader of the server's cancel/die flags, or None outside a PostgreSQL backend."""
    try:
        import ctypes  # noqa: PLC0415 - only needed inside the server

        server = ctypes.CDLL(None)
        flags = [ctypes.c_int.in_dll(server, name)  # volatile sig_atomic_t in miscadmin.h
                 for name in ("QueryCancelPending", "ProcDiePending")]
    except (ImportError, OSError, ValueError):
        return None
    return lambda: any(flag.value for flag in flags)


_UNREAD = object()
_interrupt_pending: Callable[[], bool] | None | object = _UNREAD  # found at the first wait


def check_interrupt() -> None:
    """Raise Interrupted when PostgreSQL wants the current statement to stop."""
    global _interrupt_pending  # noqa: PLW0603 - found once per session, on first use
    if _interrupt_pending is _UNREAD:
        _interrupt_pending = _interrupt_reader()
    if callable(_interrupt_pending) and _interrupt_pending():
        raise Interrupted()


# -- errors ---------------------------------------------------------------------------------------


def _fail(gd: GlobalDict, exc: errors.PglocalaiError) -> None:
    """Store ``exc`` for azure_local_ai._raise_pending() (see the module docstring)."""
    hint = exc.hint
    if isinstance(exc, errors.RuntimeUnavailable):
        hint = (f"{hint}; the server finds the runtime through the setting "
                "azure_local_ai.runtime_socket")
    elif isinstance(exc, errors.RequestTimeout) and not hint:
        hint = "raise timeout_ms, or pass 0 for no limit"
    gd[ERROR_KEY] = (exc.sqlstate, exc.message, exc.detail, hint)


def _interrupted(gd: GlobalDict) -> None:
    # PostgreSQL normally raises its own cancel error before this one is used
    gd[ERROR_KEY] = ("57014", "canceling statement due to user request", None, None)


def _guarded(fn: Callable[..., _T]) -> Callable[..., _T | None]:
    """Turn the errors of a scalar call into (None + pending error)."""

    @functools.wraps(fn)
    def call(gd: GlobalDict, *args: Any) -> _T | None:
        try:
            return fn(gd, *args)
        except errors.PglocalaiError as exc:
            _fail(gd, exc)
        except Interrupted:
            _interrupted(gd)
        return None

    return call


# -- arguments and the connection -----------------------------------------------------------------


def timeout_of(timeout_ms: int) -> int | None:
    """The runtime-side limit: 0 means none (PostgreSQL's convention), negative is refused."""
    if timeout_ms < 0:
        raise errors.InvalidArgument(
            "timeout_ms must not be negative", detail=f"timeout_ms is {timeout_ms}",
            hint="pass 0 for no limit (statement_timeout still applies)")
    return timeout_ms or None


def client(gd: GlobalDict, socket: str | None) -> Client:
    """The session's connection to the runtime at ``socket`` (the GUC value; empty: default)."""
    address = socket or DEFAULT_SOCKET
    clients: dict[str, Client] = gd.setdefault(CLIENTS_KEY, {})
    conn = clients.get(address)
    if conn is not None:
        return conn
    if not address.startswith("/"):
        raise errors.InvalidArgument(
            "azure_local_ai.runtime_socket must be an absolute path",
            detail=f'azure_local_ai.runtime_socket is "{address}"',
            hint=f"set it to the runtime's Unix socket, such as {DEFAULT_SOCKET}")
    if len(clients) >= MAX_CLIENTS:
        for old in clients.values():
            old.close()
        clients.clear()
    # Any role may SET the socket: every connect checks who could swap it and who listens there
    conn = clients[address] = Client(address, check_interrupt=check_interrupt,
                                     poll_interval=POLL_INTERVAL,
                                     open_unix=trust.connect_trusted)
    return conn


# -- vectors --------------------------------------------------------------------------------------

_FORMATS: dict[int, str] = {}


def literals(dim: int, raw: bytes) -> list[str]:
    """real[] literals of the float32 vectors in ``raw``; "%.9g" round-trips float32 exactly."""
    if dim < 1:
        raise errors.ProtocolMismatch(f"the runtime sent vectors of {dim} dimensions")
    fmt = _FORMATS.get(dim)
    if fmt is None:
        fmt = _FORMATS[dim] = "{" + ",".join(["%.9g"] * dim) + "}"
    values = array("f", raw)
    if sys.byteorder != "little":
        values.byteswap()
    return [fmt % tuple(values[i : i + dim]) for i in range(0, len(values), dim)]


@_guarded
def embed_text(gd: GlobalDict, model_uri: str, text: str, timeout_ms: int,
               socket: str | None) -> str:
    """create_embeddings(model_uri, input, timeout_ms): one real[] literal."""
    timeout = timeout_of(timeout_ms)
    dim, raw = client(gd, socket).embed_raw(model_uri, (text,), timeout)
    return literals(dim, raw)[0]


def embed_many(gd: GlobalDict, model_uri: str, inputs: Sequence[str | None],
               ids_count: int | None, batch_size: int, timeout_ms: int,
               socket: str | None) -> Iterator[Row]:
    """The array overloads: ``(ordinal, literal)`` rows in input order, NULL for NULL.

    Sends ``batch_size`` inputs per request, the next one queued while the
    current one is read (``Client.embed_stream``), so memory stays bounded by
    two batches. On an error, stores it and yields one ``(None, None)`` row.
    """
    try:
        yield from _stream(gd, model_uri, inputs, ids_count, batch_size, timeout_ms, socket)
    except errors.PglocalaiError as exc:
        _fail(gd, exc)
        yield _FAILED
    except Interrupted:
        _interrupted(gd)
        yield _FAILED


def _stream(gd: GlobalDict, model_uri: str, inputs: Sequence[str | None],
            ids_count: int | None, batch_size: int, timeout_ms: int,
            socket: str | None) -> Iterator[Row]:
    timeout = timeout_of(timeout_ms)
    if batch_size < 1:
        raise errors.InvalidArgument("batch_size must be at least 1",
                                     detail=f"batch_size is {batch_size}")
    n = len(inputs)
    if ids_count is not None and ids_count != n:
        raise errors.InvalidArgument(
            "inputs and ids must have the same length",
            detail=f"inputs has {n} element{'' if n == 1 else 's'}, ids has {ids_count}",
            hint="pass one id per input, in the same order")
    texts = 0
    for text in inputs:
        if text is not None:
            if not isinstance(text, str):  # PL/Python passes a text[][] as nested lists
                raise errors.InvalidArgument("inputs must be a one-dimensional array")
            texts += 1
    if texts == 0:
        for i in range(n):
            yield (i + 1, None)
        return
    conn = client(gd, socket)
    # A stream is not retried once rows went out, so it must not start on a connection that
    # the runtime may have closed while it sat idle (a restart): connect afresh.
    conn.close()
    sent: deque[tuple[int, int]] = deque()  # input ranges of the requests in flight

    def batches() -> Iterator[list[str]]:
        """Requests of ``batch_size`` inputs, cut earlier where a request would pass the
        protocol's limits (texts and bytes per request): a legal call never gets 54000
        because of its batch_size, only a single text over the limit does."""
        most = min(batch_size, protocol.MAX_TEXTS_PER_REQUEST)
        lo = 0
        while lo < n:
            hi, size, batch = lo, 0, []
            while hi < n and hi - lo < most:
                text = inputs[hi]
                if text is not None:
                    # 4 bytes a character at most: exact only when that bound is near the limit
                    length = 4 * len(text)
                    if size + length > protocol.MAX_TEXT_BYTES:
                        length = len(text.encode("utf-8", "surrogatepass"))
                    if batch and size + length > protocol.MAX_TEXT_BYTES:
                        break
                    size += length
                    batch.append(text)
                hi += 1
            if batch:
                sent.append((lo, hi))
                yield batch
            lo = hi

    done = 0
    for dim, raw in conn.embed_stream(model_uri, batches(), timeout):
        lo, hi = sent.popleft()
        for i in range(done, lo):
            yield (i + 1, None)
        vectors = iter(literals(dim, raw))
        for i in range(lo, hi):
            yield (i + 1, None if inputs[i] is None else next(vectors))
        done = hi
    for i in range(done, n):
        yield (i + 1, None)


# -- settings, models, statistics -----------------------------------------------------------------


@_guarded
def set_setting(gd: GlobalDict, key: str | None, value: str | None, socket: str | None,
                is_admin: bool) -> str:
    """set_setting(key, value): all settings after the change, as JSON.

    ``is_admin`` is computed by the PL/Python body itself (not passed in by a
    caller), so calling the internal function directly does not bypass it.
    """
    if not is_admin:
        raise errors.InsufficientPrivilege(
            "permission denied to change the settings of the pglocalai runtime",
            detail='only superusers and roles that a superuser granted "azure_local_ai_admin" '
                   "may change them: they apply to every database served by the runtime",
            hint='ask a superuser to run it, or to grant you the role "azure_local_ai_admin"')
    if key is None or value is None:
        raise errors.InvalidArgument("key and value must not be null")
    return json.dumps(client(gd, socket).set_setting(key, value))


def _model_row(model: dict[str, Any]) -> dict[str, Any]:
    """The runtime's list_models entry in the columns of azure_local_ai.list_models()."""
    return {"model_uri": model["uri"], "dimensions": model["dimensions"],
            "max_tokens": model["max_tokens"], "variant": model["variant"],
            "variants": sorted(model["variants"]), "loaded": model["loaded"]}


def _version(conn: Client, args: dict[str, Any], timeout: int | None) -> str:
    try:
        health = conn.health(timeout)
    except errors.PglocalaiError as exc:
        return f"azure_local_ai {__version__}, runtime not reachable at {conn.address} ({exc})"
    runtime = health.get("version") or "of unknown version"
    return f"azure_local_ai {__version__}, runtime {runtime} at {conn.address}"


# operation name (as the SQL passes it) -> the call; every call passes the caller's timeout_ms
_OPERATIONS: dict[str, Callable[[Client, dict[str, Any], int | None], Any]] = {
    "get_settings": lambda c, a, t: c.get_settings([str(k) for k in a.get("keys") or ()], t),
    "list_models": lambda c, a, t: [_model_row(m) for m in c.list_models(t)],
    "model_metadata": lambda c, a, t: c.model_metadata(str(a["model"]), t),
    "token_count": lambda c, a, t: c.token_count(str(a["model"]), [str(a["input"])], t)[0],
    "chunk_text": lambda c, a, t: c.chunk(str(a["model"]), str(a["input"]), int(a["max_tokens"]),
                                          int(a["overlap_tokens"]), "", t),
    "runtime_stats": lambda c, a, t: c.stats(t),
    "version": _version,
}


@_guarded
def request(gd: GlobalDict, operation: str, arguments: str | None, timeout_ms: int,
            socket: str | None) -> str:
    """The read-only calls (get_setting, list_models, ...): their result as JSON text."""
    run = _OPERATIONS.get(operation)
    if run is None:
        raise errors.InvalidArgument(f'unknown operation "{operation}"')
    args = json.loads(arguments) if arguments else {}
    timeout = timeout_of(timeout_ms)
    return json.dumps(run(client(gd, socket), args, timeout))
