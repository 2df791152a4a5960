"""Engines: the model behind a queue, in three named stages tokenize -> run -> pool.

``OnnxEngine`` runs a verified graph from the model store with ONNX Runtime;
``FakeEngine`` is deterministic and weightless so that everything above the
engine (protocol, batching, deadlines, settings) is tested without a model.

Thread-safety contract, relied on by :mod:`pglocalai.service.batching`:
``tokenize`` runs in the tokenizer thread, ``run`` in the worker threads (several
at once when ``workers`` > 1), ``configure`` in yet another thread. Both engines
hold their sessions in one attribute that ``configure`` replaces in a single
assignment, so a batch that already started keeps the session it began with and
the next batch uses the new one.

>>> engine = catalog.load("multilingual-e5-small:v1", None, settings, workers=1)
>>> vectors = engine.run(engine.tokenize(["query: hello", ""]))   # float32 [2, 384]
"""

from __future__ import annotations

import ctypes
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pglocalai.errors import InferenceFailed, ModelFormatError, ModelNotInstalled
from pglocalai.service import pooling


@dataclass(frozen=True)
class ModelSpec:
    """What the runtime knows of a model without loading it."""

    uri: str
    dimensions: int
    max_tokens: int
    variants: tuple[str, ...]
    default_variant: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def pick_variant(self, wanted: str | None) -> str:
        """``wanted`` when this model has it, else the model's default."""
        return wanted if wanted in self.variants else self.default_variant


class Engine(Protocol):
    spec: ModelSpec
    variant: str

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """int64 token ids per text, special tokens included, truncated to max_tokens."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Full token count per text (special tokens included), before truncation."""
        ...

    def run(self, batch: Sequence[np.ndarray], worker: int = 0) -> np.ndarray:
        """float32 [len(batch), dimensions], L2-normalised, row i for batch[i]."""
        ...

    def configure(self, settings: dict[str, Any], workers: int) -> None:
        """Rebuild the sessions for new thread settings; in-flight runs finish on the old."""
        ...


def pad(batch: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) int64 [n, longest]: right-padded, mask 1 on real tokens."""
    lengths = np.fromiter((len(x) for x in batch), dtype=np.int64, count=len(batch))
    width = int(lengths.max()) if len(batch) else 0
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    for row, x in enumerate(batch):
        ids[row, : len(x)] = x
    mask = (np.arange(width, dtype=np.int64)[None, :] < lengths[:, None]).astype(np.int64)
    return ids, mask


def session_threads(settings: dict[str, Any], workers: int) -> int:
    """intra-op threads per concurrent run: the CPUs set aside, shared by the workers."""
    return max(1, int(settings["intra_op_parallelism"]) // max(1, workers))


# -- ONNX Runtime ---------------------------------------------------------------


class OnnxEngine:
    """A model from the store run by ONNX Runtime (graph optimisation level ALL)."""

    def __init__(self, spec: ModelSpec, variant: str,
                 open_graph: Callable[[], AbstractContextManager[str]],
                 tokenizer_json: str, settings: dict[str, Any], workers: int,
                 tokenizer_mode: str = "compact") -> None:
        self.spec = spec
        self.variant = variant
        vmeta = spec.metadata.get("variants", {}).get(variant, {})
        self.input_names = list(vmeta.get("inputs", ["input_ids", "attention_mask"]))
        self.output_name = str(vmeta.get("output", "sentence_embedding"))
        self.pooling = str(spec.metadata.get("pooling", "mean"))
        self.normalize = bool(spec.metadata.get("normalize", True))
        self._open_graph = open_graph
        from pglocalai.service.tokenizer import load_tokenizer  # noqa: PLC0415 - heavy

        self._tok = load_tokenizer(tokenizer_json, tokenizer_mode)
        self.tokenizer = self._tok.name
        self.pad_id = self._tok.pad_id
        self._sessions: list[Any] = []
        self.configure(settings, workers)

    def configure(self, settings: dict[str, Any], workers: int) -> None:
        import onnxruntime as ort  # noqa: PLC0415

        threads = session_threads(settings, workers)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        inter = int(settings["inter_op_parallelism"])
        opts.inter_op_num_threads = inter
        opts.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if inter > 1
                               else ort.ExecutionMode.ORT_SEQUENTIAL)
        spin = "1" if settings["spin_control"] else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        opts.log_severity_level = 3
        # one thread per run: concurrent runs share one session (one copy of the
        # weights); several threads per run: a session (thread pool) per worker
        count = 1 if threads == 1 else max(1, workers)
        # from a path, not bytes: InferenceSession keeps bytes it was given for life
        with self._open_graph() as path:
            try:
                sessions = [ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
                            for _ in range(count)]
            except Exception as exc:  # noqa: BLE001 - ORT raises its own types
                raise ModelFormatError(f"onnx runtime could not load model \"{self.spec.uri}\" "
                                       f"variant {self.variant}", detail=str(exc)) from None
        names = {i.name for i in sessions[0].get_inputs()}
        missing = [n for n in ("input_ids", "attention_mask") if n not in names]
        if missing:
            raise ModelFormatError(f"model \"{self.spec.uri}\" lacks inputs {missing}")
        self.input_names = [n for n in self.input_names if n in names] or sorted(names)
        self._sessions = sessions  # one assignment: runs in flight keep the old list

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        limit, keep = self.spec.max_tokens, self._tok.suffix
        out = []
        for ids in self._tok.encode_batch(texts, limit):
            if len(ids) > limit:
                ids = ids[: limit - keep] + ids[len(ids) - keep:] if keep else ids[:limit]
            out.append(np.array(ids, dtype=np.int64))
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._tok.encode_batch(texts)]

    def run(self, batch: Sequence[np.ndarray], worker: int = 0) -> np.ndarray:
        sessions = self._sessions
        session = sessions[worker % len(sessions)]
        ids, mask = pad(batch, self.pad_id)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        (out,) = session.run([self.output_name], {k: feed[k] for k in self.input_names})
        if out.ndim == 3:
            return pooling.pool(out, mask, self.pooling, self.normalize)
        return np.asarray(out, dtype=np.float32)


class StoreCatalog:
    """The models installed in a model store."""

    def __init__(self, root: Path | None = None, tokenizer_mode: str = "compact") -> None:
        from pglocalai.models.store import ModelStore, default_models_dir  # noqa: PLC0415

        self.store = ModelStore(Path(root) if root else default_models_dir())
        self.tokenizer_mode = tokenizer_mode

    def specs(self) -> list[ModelSpec]:
        return [_spec_of(info) for info in self.store.list()]

    def spec(self, uri: str) -> ModelSpec:
        return _spec_of(self.store.get(uri))

    def load(self, uri: str, variant: str | None, settings: dict[str, Any],
             workers: int) -> Engine:
        spec = self.spec(uri)
        chosen = spec.pick_variant(variant)
        vmeta = spec.metadata.get("variants", {}).get(chosen)
        if not vmeta or "file" not in vmeta:
            raise ModelFormatError(f"model \"{uri}\" has no file for variant {chosen}")
        tok_name = str(spec.metadata.get("tokenizer", "tokenizer.json"))
        tokenizer_json = self.store.read_verified(uri, tok_name).decode("utf-8")
        engine = OnnxEngine(spec, chosen, lambda: self.store.open_verified(uri, vmeta["file"]),
                            tokenizer_json, settings, workers, self.tokenizer_mode)
        del tokenizer_json
        release_free_memory()
        return engine


def release_free_memory() -> None:
    """Hand the heap that loading freed (JSON, protobuf) back to the system (glibc only)."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _spec_of(info: Any) -> ModelSpec:
    variants = info.variants
    names = tuple(variants) if not isinstance(variants, str) else (variants,)
    return ModelSpec(uri=info.uri, dimensions=int(info.dimensions),
                     max_tokens=int(info.max_tokens), variants=names,
                     default_variant=str(info.default_variant), metadata=dict(info.metadata))


# -- deterministic stand-in -------------------------------------------------------

FAIL_TEXT = "<fake-fail>"  # FakeEngine.run raises on a batch holding this text
_FAIL_ID = 1 << 40


class FakeEngine:
    """Byte tokens and pseudo-random unit vectors seeded by the tokens.

    A text's vector depends on its (truncated) tokens alone, like a real
    batch-invariant graph, so batching tests compare against unbatched runs.
    ``delay_ms`` makes every run take that long (to hold work in the queue).
    """

    def __init__(self, spec: ModelSpec, delay_ms: float = 0.0) -> None:
        self.spec = spec
        self.variant = "fake"
        self.delay_ms = delay_ms
        self.settings: dict[str, Any] = {}
        self.workers = 1
        self.runs = 0
        self._lock = threading.Lock()

    def _full_ids(self, text: str) -> np.ndarray:
        if text == FAIL_TEXT:
            return np.array([0, _FAIL_ID, 2], dtype=np.int64)
        raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 3
        return np.concatenate((np.array([0], dtype=np.int64), raw, np.array([2], np.int64)))

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        limit = self.spec.max_tokens
        out = []
        for text in texts:
            ids = self._full_ids(text)
            if len(ids) > limit:
                ids = np.concatenate((ids[: limit - 1], ids[-1:]))
            out.append(ids)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self._full_ids(t)) for t in texts]

    def run(self, batch: Sequence[np.ndarray], worker: int = 0) -> np.ndarray:
        with self._lock:
            self.runs += 1
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000.0)
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
    """Built-in fake models; counts loads so tests can check a model loads once."""

    def __init__(self, delay_ms: float = 0.0, load_delay_ms: float = 0.0,
                 models: Sequence[ModelSpec] = FAKE_MODELS) -> None:
        self.delay_ms = delay_ms
        self.load_delay_ms = load_delay_ms
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
        engine = FakeEngine(spec, self.delay_ms)
        engine.configure(settings, workers)
        self.engines[uri] = engine
        return engine
