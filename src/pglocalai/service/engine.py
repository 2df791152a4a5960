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

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pglocalai.errors import ModelFormatError
from pglocalai.models.onnx_session import (
    exact_option_needed,
    int8_sums_exact,
    session_options,
    weights_as_uint8,
)
from pglocalai.service import pooling, reading
from pglocalai.service.heap import release_free_memory

if TYPE_CHECKING:
    from pglocalai.service.reading import TextTokenizer


@dataclass(frozen=True)
class ModelSpec:
    """What the runtime knows of a model without loading it."""

    uri: str
    dimensions: int
    max_tokens: int
    variants: tuple[str, ...]
    default_variant: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)


class Engine(Protocol):
    spec: ModelSpec
    variant: str
    chosen_by: str  # why this variant (set by the catalog; runtime_stats shows it)
    text_tokenizer: TextTokenizer
    wide_threads: int  # threads of a wide run (0: the engine has none)

    def run(self, batch: Sequence[np.ndarray], worker: int = 0,
            wide: bool = False) -> np.ndarray:
        """float32 [len(batch), dimensions], L2-normalised, row i for batch[i].

        ``wide``: on the session with all intra-op threads (the queue asks for it only
        when no other run is in flight); the vectors are the same either way.
        """
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


def wide_threads(settings: dict[str, Any], workers: int) -> int:
    """Threads of a run that has the CPUs to itself; 0 when it would gain none."""
    total = int(settings["intra_op_parallelism"])
    return total if workers > 1 and total > session_threads(settings, workers) else 0


# -- ONNX Runtime ---------------------------------------------------------------


class OnnxEngine:
    """A model from the store run by ONNX Runtime (graph optimisation level ALL)."""

    def __init__(self, spec: ModelSpec, variant: str,
                 open_graph: Callable[[], AbstractContextManager[str]],
                 tokenizer_json: str, settings: dict[str, Any], workers: int,
                 tokenizer_mode: str = "compact", wide_runs: bool = True) -> None:
        import onnxruntime  # noqa: PLC0415 - heavy

        self.spec = spec
        self.variant = variant
        self.chosen_by = ""
        self.engine_name = f"onnxruntime {onnxruntime.__version__}"
        vmeta = spec.metadata.get("variants", {}).get(variant, {})
        self.input_names = list(vmeta.get("inputs", ["input_ids", "attention_mask"]))
        self.output_name = str(vmeta.get("output", "sentence_embedding"))
        self.pooling = str(spec.metadata.get("pooling", "mean"))
        self.normalize = bool(spec.metadata.get("normalize", True))
        self._open_graph = open_graph
        self.wide_runs = wide_runs
        self.wide_threads = 0
        # shared by all sessions, once there are several (see _session_graph)
        self._weights: Weights | None = None
        self._sessions: tuple[list[Any], Any] = ([], None)
        self.configure(settings, workers)
        # where the graph has integer matmuls: are their sums exact on this CPU (they are
        # unless ONNX Runtime ignores the option that makes them so; runtime_stats shows it)
        self.int8_exact = int8_sums_exact() if "int8" in variant else None
        # the tokenizer after the sessions: loading the graph peaks ~75 MB above where it
        # ends, and that peak is lower without the tokenizer's ~80 MB already resident
        from pglocalai.service.tokenizer import load_tokenizer  # noqa: PLC0415 - heavy

        self.text_tokenizer = load_tokenizer(tokenizer_json, tokenizer_mode)
        self.tokenizer = self.text_tokenizer.name
        self.pad_id = self.text_tokenizer.pad_id

    def configure(self, settings: dict[str, Any], workers: int) -> None:
        threads = session_threads(settings, workers)
        wide = wide_threads(settings, workers) if self.wide_runs else 0
        # one thread per run: concurrent runs share one session; several threads per
        # run: a session (thread pool) per worker. A wide run has a session of its own.
        count = 1 if threads == 1 else max(1, workers)
        # from a path, not bytes: InferenceSession keeps bytes it was given for life
        with self._open_graph() as store_graph:
            try:
                # once shared, always: sessions in flight use the arrays in place
                share = self._weights is not None or count + (wide > 0) > 1
                with _session_graph(store_graph, share, self._weights) as (path, weights):
                    self._weights = weights
                    shared = weights[1] if weights else {}
                    narrow = [_session(path, settings, threads, shared) for _ in range(count)]
                    extra = _session(path, settings, wide, shared) if wide else None
            except Exception as exc:  # noqa: BLE001 - ORT raises its own types
                raise ModelFormatError(f"onnx runtime could not load model \"{self.spec.uri}\" "
                                       f"variant {self.variant}", detail=str(exc)) from None
        names = {i.name for i in narrow[0].get_inputs()}
        missing = [n for n in ("input_ids", "attention_mask") if n not in names]
        if missing:
            raise ModelFormatError(f"model \"{self.spec.uri}\" lacks inputs {missing}")
        self.input_names = [n for n in self.input_names if n in names] or sorted(names)
        self._sessions = (narrow, extra)  # one assignment: runs in flight keep the old ones
        self.wide_threads = wide

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        return tokenize(self, texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self, texts)

    def run(self, batch: Sequence[np.ndarray], worker: int = 0,
            wide: bool = False) -> np.ndarray:
        narrow, extra = self._sessions
        session = extra if wide and extra is not None else narrow[worker % len(narrow)]
        ids, mask = pad(batch, self.pad_id)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        (out,) = session.run([self.output_name], {k: feed[k] for k in self.input_names})
        if out.ndim == 3:
            return pooling.pool(out, mask, self.pooling, self.normalize)
        return np.asarray(out, dtype=np.float32)


def _session(path: str, settings: dict[str, Any], threads: int,
             weights: dict[str, Any]) -> Any:
    """A CPU session with ``threads`` intra-op threads, on the shared weights if given."""
    import onnxruntime as ort  # noqa: PLC0415

    opts = session_options(threads)  # exact int8 on every CPU (pglocalai.models.onnx_session)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    inter = int(settings["inter_op_parallelism"])
    opts.inter_op_num_threads = inter
    opts.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if inter > 1
                           else ort.ExecutionMode.ORT_SEQUENTIAL)
    spin = "1" if settings["spin_control"] else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    opts.log_severity_level = 3
    for name, value in weights.items():
        opts.add_initializer(name, value)  # used in place: one copy for every session
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


_PACKING = ("MatMul", "Gemm", "Attention", "Conv")  # op types whose CPU kernels pre-pack


# a shared initializer this large stays out of the graph the sessions parse
LEAN_MIN_BYTES = 64 * 1024
# the external data file a lean graph names for them: it exists, empty, and is never read
UNREAD_DATA = "shared-initializers.unread"
Weights = tuple[dict[str, np.ndarray], dict[str, Any]]  # (arrays, OrtValues over them)


@contextmanager
def _session_graph(path: str, share: bool,
                   weights: Weights | None) -> Iterator[tuple[str, Weights | None]]:
    """(the graph to build sessions from, the weights they share) while in the block.

    One session shares nothing: the store's graph as it is. Several share every
    initializer that no kernel pre-packs, as OrtValues used in place (loaded once, kept
    by the engine). They then parse a lean copy of the graph in a private temporary
    folder, whose large shared initializers are external data in a file that is never
    read: ONNX Runtime takes an initializer added to the session "instead of
    deserializing one from the model", and only checks that the file exists. Parsing the
    whole graph cost each session ~75 MB more at its peak, the 54 MB word table included
    (docs/runtime.md, Memory).
    """
    if not share:
        yield path, None
        return
    import onnx  # noqa: PLC0415 - heavy

    model = onnx.load(path)
    if exact_option_needed():
        weights_as_uint8(model)  # what the exact-int8 option does, once instead of per session
    weights = weights or _shared_weights(model)
    with ExitStack() as cleanup:
        try:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pglocalai-graph-"))
            graph = _write_lean(model, set(weights[1]), tmp)
        except OSError:  # a full or read-only temporary folder: the store's graph, as before
            graph = path
        del model  # (no other reference into it may live on: it frees all of it or nothing)
        release_free_memory()
        yield graph, weights


def _write_lean(model: Any, shared: set[str], folder: str) -> str:
    """``model`` in ``folder`` with its large ``shared`` initializers as unread external data."""
    from onnx import TensorProto  # noqa: PLC0415

    for tensor in model.graph.initializer:
        if tensor.name in shared and len(tensor.raw_data) >= LEAN_MIN_BYTES:
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            tensor.external_data.add(key="location", value=UNREAD_DATA)
    with open(os.path.join(folder, UNREAD_DATA), "wb"):
        pass  # empty: ONNX Runtime checks that it exists and reads nothing from it
    graph = os.path.join(folder, "graph.onnx")
    with open(graph, "wb") as f:
        f.write(model.SerializeToString())
    return graph


def _shared_weights(model: Any) -> Weights:
    """The graph's initializers as OrtValues the sessions share instead of each copying."""
    import onnxruntime as ort  # noqa: PLC0415 - heavy
    from onnx import numpy_helper  # noqa: PLC0415

    # a weight that a kernel pre-packs stays each session's own: the session frees the
    # original after packing it, which it cannot do with a shared one
    packed = {name for node in model.graph.node if any(k in node.op_type for k in _PACKING)
              for name in node.input}
    arrays = {t.name: np.ascontiguousarray(numpy_helper.to_array(t))
              for t in model.graph.initializer if t.name not in packed}
    # the OrtValues point into the arrays: the engine keeps both for life
    return arrays, {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()}
