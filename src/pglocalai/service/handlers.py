"""What the runtime does for each request kind: one handler table.

A request kind is a ``Kind`` member in :mod:`pglocalai.protocol`, one entry in
``HANDLERS`` below and one ``Client`` method. Every handler gets the request's
:class:`Deadline` (from its ``timeout_ms``, counted from the frame's arrival) and
answers ``timeout`` once it has passed, whatever it was waiting for: a model still
loading, a queue, the tokenizer thread, another setting change, the model store.

``quick`` handlers read only memory and answer on the spot, on the event loop,
without a task of their own; the others run as a task per request.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from logging import DEBUG
from typing import TYPE_CHECKING, Any, TypeVar

from pglocalai import __version__, protocol
from pglocalai.errors import (
    BadRequest,
    InputTooLarge,
    InvalidArgument,
    ModelNotInstalled,
    RequestTimeout,
    ShuttingDown,
)
from pglocalai.protocol import Frame, Kind
from pglocalai.service import chunking
from pglocalai.service.cpu import cpu_features
from pglocalai.service.logs import get_logger

if TYPE_CHECKING:
    from pglocalai.service.state import RuntimeState

log = get_logger()
_T = TypeVar("_T")
MAX_MODEL_URI = 256


class Deadline:
    """When a request must have its answer: ``timeout_ms`` after its frame arrived."""

    def __init__(self, timeout_ms: int | None, arrived: float | None = None) -> None:
        self.timeout_ms = timeout_ms
        start = time.monotonic() if arrived is None else arrived
        self.at = None if not timeout_ms else start + timeout_ms / 1000.0

    def left(self) -> float | None:
        """Seconds left (None: no limit); RequestTimeout once none are."""
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    def left_ms(self) -> int | None:
        left = self.left()
        return None if left is None else max(1, int(left * 1000))

    def error(self, detail: str | None = None, hint: str | None = None) -> RequestTimeout:
        return RequestTimeout(f"request timed out after {self.timeout_ms} ms", detail=detail,
                              hint=hint or "raise timeout_ms, or send less per call")

    def restate(self, exc: RequestTimeout) -> RequestTimeout:
        """``exc`` naming this request's timeout_ms: the waits it passed through (a model
        load, the queue, a setting change) only knew what was left of it."""
        return exc if self.timeout_ms is None else self.error(exc.detail, exc.hint)

    async def run(self, work: Awaitable[_T], waiting_for: str) -> _T:
        """``await work``, cancelled with RequestTimeout when the deadline passes."""
        try:
            left = self.left()
        except RequestTimeout:
            if asyncio.iscoroutine(work):
                work.close()  # never started
            raise
        try:
            return await asyncio.wait_for(work, left)
        except TimeoutError:
            raise self.error(f"still waiting for {waiting_for}") from None


Handler = Callable[["RuntimeState", Frame, Deadline], Any]


@dataclass(frozen=True)
class Route:
    handle: Handler  # returns the reply Frame (quick) or a coroutine of it
    quick: bool = False


# -- handlers (one per kind) ----------------------------------------------------


async def embed(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    uri, texts = model_of(frame.header), protocol.raw_texts(frame.payload)
    if server.stopping:
        raise ShuttingDown("the runtime is shutting down", hint="retry in a moment")
    queue = await server.models.get(uri, deadline.left())
    out = await queue.embed(texts, deadline.left_ms())
    if log.isEnabledFor(DEBUG):
        log.debug("embed", model=uri, texts=len(texts), request_id=frame.request_id)
    return Frame(Kind.EMBEDDINGS, frame.request_id, {"count": len(out), "dim": queue.dim},
                 out.tobytes())


async def token_count(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    uri, texts = model_of(frame.header), protocol.raw_texts(frame.payload)
    queue = await server.models.get(uri, deadline.left())
    counts = await deadline.run(queue.count_tokens(texts), "the tokenizer")
    return Frame(Kind.RESULT, frame.request_id, {"counts": counts})


def get_settings(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    keys = frame.header.get("keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise BadRequest("keys must be a list of strings")
    return Frame(Kind.RESULT, frame.request_id, {"settings": server.models.settings.get(keys)})


async def set_setting(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    key = frame.header.get("key")
    if not isinstance(key, str):
        raise BadRequest("key must be a string")
    values = await server.models.set_setting(key, frame.header.get("value"), deadline.left())
    return Frame(Kind.RESULT, frame.request_id, {"settings": values})


async def list_models(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    # the catalog reads the model store: off the event loop, within the deadline
    models = await deadline.run(asyncio.to_thread(server.models.list_models), "the model store")
    return Frame(Kind.RESULT, frame.request_id, {"models": models})


async def model_metadata(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    uri = model_of(frame.header)
    meta = await deadline.run(asyncio.to_thread(server.models.metadata, uri), "the model store")
    return Frame(Kind.RESULT, frame.request_id, {"metadata": meta})


def stats(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    snap = server.stats.snapshot(server.models.queue_depths())
    snap["workers"] = server.config.workers
    for uri, queue in server.models.queues.items():
        model = snap["models"].get(uri)
        if model is not None:  # a model that has served no request has no statistics yet
            model["variant"] = queue.engine.variant
            model["engine"] = getattr(queue.engine, "engine_name", "")
            model["variant_chosen_by"] = getattr(queue.engine, "chosen_by", "")
            model["wide_runs"] = queue.wide
            model["solo_wide_runs"] = queue.solo_wide
            exact = getattr(queue.engine, "int8_exact", None)
            if exact is not None:
                model["int8_exact"] = exact
    snap["engine"] = {"cpu": cpu_features(),
                      "variant_asked": server.config.variant or "default"}
    return Frame(Kind.RESULT, frame.request_id, snap)


def health(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    body: dict[str, Any] = {
        "status": "stopping" if server.stopping else "ok", "version": __version__,
        "protocol": protocol.PROTOCOL_VERSION, "models_loaded": sorted(server.models.queues),
        "uptime_s": server.stats.uptime(), "pid": os.getpid(),
        "engine": getattr(server.models.catalog, "engine", "onnx")}
    if server.supervisor_pid:
        body["supervisor_pid"] = server.supervisor_pid
    return Frame(Kind.RESULT, frame.request_id, body)


def auth(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    # a connection that needs the secret is answered by Connection.authenticate;
    # here it has none to give, or has given it already
    return Frame(Kind.RESULT, frame.request_id, {"authenticated": True})


def _too_long(size: int, unit: str) -> InputTooLarge:
    return InputTooLarge(f"text too long to chunk: at most {chunking.MAX_CHUNK_CHARS} "
                         "characters",
                         detail=f"the text has {size} {unit}",
                         hint="store a long document in several rows, e.g. one per section")


async def chunk(server: RuntimeState, frame: Frame, deadline: Deadline) -> Frame:
    """The CHUNK request: ``{"model", "max_tokens", "overlap_tokens", "prefix"}`` + one text
    -> RESULT ``{"chunks": [str], "overlaps": [int]}``."""
    header = frame.header
    texts = protocol.raw_texts(frame.payload)
    if len(texts) != 1:
        raise BadRequest(f"a chunk request holds one text, not {len(texts)}")
    max_tokens, overlap, prefix = (header.get("max_tokens"), header.get("overlap_tokens", 0),
                                   header.get("prefix") or "")
    if not isinstance(max_tokens, int) or not isinstance(overlap, int) \
            or not isinstance(prefix, str):
        raise BadRequest("max_tokens and overlap_tokens must be integers, prefix a string")
    if len(texts[0]) > 4 * chunking.MAX_CHUNK_CHARS:  # bytes: over the limit at any width
        raise _too_long(len(texts[0]), "bytes")
    try:
        text = bytes(texts[0]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("input text is not valid UTF-8", detail=str(exc)) from None
    if len(text) > chunking.MAX_CHUNK_CHARS:
        raise _too_long(len(text), "characters")
    queue = await server.models.get(model_of(header), deadline.left())

    async def count(batch: list[str]) -> list[int]:
        # in the tokenizer thread, a slice in turn with every other request's work: inline,
        # the thousands of counts of one long document would keep the event loop busy
        return list(await deadline.run(queue.count_tokens(batch, inline=False),
                                       "the tokenizer"))

    chunks, overlaps = await chunking.split_text(text, max_tokens, overlap, count, prefix)
    reply: dict[str, Any] = {"chunks": chunks, "overlaps": overlaps}
    return Frame(Kind.RESULT, frame.request_id, reply)


HANDLERS: dict[Kind, Route] = {
    Kind.EMBED: Route(embed),
    Kind.TOKEN_COUNT: Route(token_count),
    Kind.GET_SETTINGS: Route(get_settings, quick=True),
    Kind.SET_SETTING: Route(set_setting),
    Kind.LIST_MODELS: Route(list_models),
    Kind.MODEL_METADATA: Route(model_metadata),
    Kind.STATS: Route(stats, quick=True),
    Kind.HEALTH: Route(health, quick=True),
    Kind.AUTH: Route(auth, quick=True),
    Kind.CHUNK: Route(chunk),
}


def model_of(header: dict[str, Any]) -> str:
    model = header.get("model")
    if not isinstance(model, str):
        raise BadRequest("model must be a model URI such as multilingual-e5-small:v1")
    if len(model) > MAX_MODEL_URI:
        # the caller's argument, not a broken frame: the SQLSTATE of an unknown model (22023);
        # an empty or malformed URI gets the same from the catalog, with the installed ones
        raise ModelNotInstalled(f'model "{model[:60]}..." is not installed',
                                detail=f"a model uri is name:version of at most "
                                       f"{MAX_MODEL_URI} characters, not {len(model)}",
                                hint="azure_local_ai.list_models() lists the installed models")
    return model
