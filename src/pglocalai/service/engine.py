"""Engines: the model behind a queue, in three named stages tokenize -> run -> pool.

``OnnxEngine`` runs a verified graph from the model store with ONNX Runtime; the
test double ``pglocalai.testing.fake_engine.FakeEngine`` stands in for it where no
model is wanted. An engine holds its ``text_tokenizer``; the queue tokenises with it
in bounded windows (:mod:`pglocalai.service.reading`), then hands token ids to ``run``.

Thread-safety contract, relied on by :mod:`pglocalai.service.batching`: the
tokenizer runs in the tokenizer thread (or on the event loop for short requests),
``run`` in the worker threads (several at once when ``workers`` > 1), ``configure``
in yet another thread. An engine holds its sessions in one attribute that
``configure`` replaces in a single assignment, so a batch that already started keeps
the session it began with and the next batch uses the new one.

>>> engine = catalog.load("multilingual-e5-small:v1", None, settings, workers=1)
>>> vectors = engine.run(engine.tokenize(["query: hello", ""]))   # float32 [2, 384]
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pglocalai.errors import ModelFormatError
from pglocalai.service import pooling, reading

if TYPE_CHECKING:
    from pglocalai.service.catalog import ModelSpec
    from pglocalai.service.tokenizer import TextTokenizer


class Engine(Protocol):
    spec: ModelSpec
    variant: str
    text_tokenizer: TextTokenizer

    def run(self, batch: Sequence[np.ndarray], worker: int = 0) -> np.ndarray:
        """float32 [len(batch), dimensions], L2-normalised, row i for batch[i]."""
        ...

    def configure(self, settings: dict[str, Any], workers: int) -> None:
        """Rebuild the sessions for new thread settings; in-flight runs finish on the old."""
        ...


def tokenize(engine: Engine, texts: Sequence[str]) -> list[np.ndarray]:
    """int64 ids per text as the model keeps them (at most max_tokens), in this thread."""
    job = reading.embed_job(engine.text_tokenizer, texts, engine.spec.max_tokens)
    return reading.run_now(job)  # type: ignore[return-value]


def count_tokens(engine: Engine, texts: Sequence[str]) -> list[int]:
    """Full token count per text (specials included, before truncation), in this thread."""
    return reading.run_now(reading.count_job(engine.text_tokenizer, texts))  # type: ignore[return-value]


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

        self.text_tokenizer = load_tokenizer(tokenizer_json, tokenizer_mode)
        self.tokenizer = self.text_tokenizer.name
        self.pad_id = self.text_tokenizer.pad_id
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
        return tokenize(self, texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self, texts)

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


def release_free_memory() -> None:
    """Hand the heap that loading freed (JSON, protobuf) back to the system (glibc only)."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


