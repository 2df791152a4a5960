"""Deterministic, weightless stand-ins for the models (tests only).

``FakeEngine`` gives byte tokens and pseudo-random unit vectors seeded by the
tokens, so that everything above the engine (protocol, batching, deadlines,
settings) is tested without a model. A text's vector depends on its (truncated)
tokens alone, like a real batch-invariant graph, so batching tests compare against
unbatched runs.

>>> with BackgroundServer(config, FakeCatalog(), Settings(None, defaults())) as bg:
...     Client(config.socket).embed("fake-tiny:v1", ["hello"])
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from pglocalai.errors import InferenceFailed, ModelNotInstalled
from pglocalai.service import engine as engines
from pglocalai.service import pooling
from pglocalai.service.engine import Engine, ModelSpec
from pglocalai.service.reading import Cuts

FAIL_TEXT = "<fake-fail>"  # FakeEngine.run raises on a batch holding this text
_FAIL_ID = 1 << 40


class FakeTokenizer:
    """One token per UTF-8 byte (id = byte + 3) between ``<s>`` (0) and ``</s>`` (2)."""

    name = "fake"
    pad_id = 1
    prefix_ids = [0]
    suffix_ids = [2]
    suffix = 1
    normalize = None
    windowed = True  # a byte is a token: any cut is exact

    def __init__(self) -> None:
        self.cuts = Cuts(None)

    def encode_window(self, text: str, stop: int | None = None) -> list[int]:
        if text == FAIL_TEXT:
            return [_FAIL_ID]
        return [b + 3 for b in text.encode("utf-8")]

    def encode_batch(self, texts: Sequence[str], limit: int | None = None) -> list[list[int]]:
        return [[0, *self.encode_window(t), 2] for t in texts]


class FakeEngine:
    """Byte tokens and pseudo-random unit vectors seeded by the tokens.

    ``delay_ms`` makes every run take that long (to hold work in the queue).
    """

    def __init__(self, spec: ModelSpec, delay_ms: float = 0.0) -> None:
        self.spec = spec
        self.variant = "fake"
        self.chosen_by = "the fake catalog"
        self.engine_name = "fake"
        self.tokenizer = "fake"
        self.text_tokenizer = FakeTokenizer()
        self.delay_ms = delay_ms
        self.settings: dict[str, Any] = {}
        self.workers = 1
        self.runs = 0
        self.wide_threads = 0  # > 0: the queue may ask for wide runs (counted in wide)
        self.wide = 0
        self.overlaps = 0  # runs started alongside a wide run (the queue must prevent it)
        self.most_in_flight = 0
        self.run_threads: list[int] = []  # the thread each run ran on, in order
        self._flight: list[bool] = []  # wide flag of each run in flight
        self._lock = threading.Lock()

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        return engines.tokenize(self, texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return engines.count_tokens(self, texts)

    def run(self, batch: Sequence[np.ndarray], worker: int = 0,
            wide: bool = False) -> np.ndarray:
        with self._lock:
            self.runs += 1
            self.run_threads.append(threading.get_ident())
            self.wide += wide
            self.overlaps += bool(self._flight) and (wide or any(self._flight))
            self._flight.append(wide)
            self.most_in_flight = max(self.most_in_flight, len(self._flight))
        try:
            if self.delay_ms:
                time.sleep(self.delay_ms / 1000.0)
        finally:
            with self._lock:
                self._flight.remove(wide)
        if any(int(ids.max()) == _FAIL_ID for ids in batch):
            raise InferenceFailed("fake engine failure requested by the input")
        out = np.empty((len(batch), self.spec.dimensions), dtype=np.float32)
        for row, ids in enumerate(batch):
            rng = np.random.default_rng(zlib.crc32(ids.tobytes()))
            out[row] = rng.standard_normal(self.spec.dimensions, dtype=np.float32)
        return pooling.l2_normalize(out)

    def configure(self, settings: dict[str, Any], workers: int) -> None:
        self.settings = dict(settings)
        self.workers = workers


FAKE_MODELS = (
    ModelSpec("multilingual-e5-small:v1", 384, 512, ("fake",), "fake",
              {"format": 1, "uri": "multilingual-e5-small:v1", "source": "fake engine",
               "dimensions": 384, "max_tokens": 512, "pooling": "mean", "normalize": True}),
    ModelSpec("fake-tiny:v1", 8, 16, ("fake",), "fake",
              {"format": 1, "uri": "fake-tiny:v1", "source": "fake engine", "dimensions": 8,
               "max_tokens": 16, "pooling": "mean", "normalize": True}),
)


class FakeCatalog:
    """Built-in fake models; counts loads so tests can check a model loads once.

    ``fail_loads`` maps a URI to the exception its load raises (a broken model).
    """

    engine = "fake"

    def __init__(self, delay_ms: float = 0.0, load_delay_ms: float = 0.0,
                 models: Sequence[ModelSpec] = FAKE_MODELS,
                 fail_loads: dict[str, BaseException] | None = None) -> None:
        self.delay_ms = delay_ms
        self.load_delay_ms = load_delay_ms
        self.fail_loads = dict(fail_loads or {})
        self._models = {m.uri: m for m in models}
        self.loads: dict[str, int] = {}
        self.engines: dict[str, FakeEngine] = {}

    def specs(self) -> list[ModelSpec]:
        return list(self._models.values())

    def spec(self, uri: str) -> ModelSpec:
        if uri not in self._models:
            raise ModelNotInstalled(f"model \"{uri}\" is not installed",
                                    hint="installed models: " + ", ".join(self._models))
        return self._models[uri]

    def load(self, uri: str, variant: str | None, settings: dict[str, Any],
             workers: int) -> Engine:
        spec = self.spec(uri)
        if self.load_delay_ms:
            time.sleep(self.load_delay_ms / 1000.0)
        self.loads[uri] = self.loads.get(uri, 0) + 1
        if uri in self.fail_loads:
            raise self.fail_loads[uri]
        engine = FakeEngine(spec, self.delay_ms)
        engine.configure(settings, workers)
        self.engines[uri] = engine
        return engine
