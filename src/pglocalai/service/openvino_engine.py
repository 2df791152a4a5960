"""The bf16 engine: OpenVINO's CPU plugin running the fp32 encoder at bf16 precision.

Truer than the int8 graph (cosine to fp32 0.99998 against 0.9992). On a CPU with
AVX512-BF16 but no AMX it measured 0.95x int8 on short passages and 1.18x on 512-token
texts, but the runtime holds ~450 MiB instead of ~300 (docs/models.md), so it runs only
when asked for (``pglocalai serve --variant bf16``).

Three choices keep the runtime's promises:

* **Batch invariance.** bf16 rounds every activation, so a 1e-7 change anywhere (a
  reduction over more padding) can flip a rounding and move the vector by 1e-3. A
  batch therefore runs as one run per token length, never padded; with equal lengths
  a text's numbers do not depend on the other rows or on the thread count. The
  engine checks this on every load (:func:`self_check`) and refuses to serve if not.
* **Memory.** The graph takes the rows of the word-embedding table as input
  (``bert_onnx.WORD_INPUT``): the 250k-row table stays as the pack's 4-bit blocks
  (54 MB) and only the gathered rows are widened, here in numpy and in fp32 (OpenVINO
  would compute the widening itself in bf16 and lose the blocks' f16 scales).
  The encoder's weights are stored fp16 (43 MB) and repacked once by the plugin.
* **Threads.** One compiled model with all ``intra_op_parallelism`` threads and one
  infer request: runs take turns on it. A request per worker (and one for wide runs)
  would each keep their own scratch memory, about 50 MB for a 512-token text.
  ``spin_control`` and ``inter_op_parallelism`` have no OpenVINO counterpart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pglocalai.errors import ModelFormatError
from pglocalai.models.bert_onnx import WORD_INPUT
from pglocalai.models.word_table import WordTable
from pglocalai.service import engine as base
from pglocalai.service.heap import release_free_memory

# token lengths of the self-check: one token, short, past 16 (where the NaN of the
# attention snippets began), long; its texts are random tokens, which found that NaN
CHECK_LENGTHS = (1, 7, 17, 64, 130)


def available() -> str | None:
    """None when OpenVINO can be used here, else why not (for the runtime's report)."""
    try:
        import openvino  # noqa: F401, PLC0415 - the check is the import
    except Exception as exc:  # noqa: BLE001 - any import failure means not available
        return f"openvino cannot be imported ({type(exc).__name__}: {exc})"
    return None


class OpenVinoEngine:
    """A model's bf16 variant: OpenVINO IR (fp16 weights) plus its 4-bit word table."""

    def __init__(self, spec: base.ModelSpec, variant: str,
                 read_file: Callable[[str], bytes], tokenizer_json: str,
                 settings: dict[str, Any], workers: int, tokenizer_mode: str = "compact",
                 wide_runs: bool = True) -> None:
        import openvino as ov  # noqa: PLC0415 - heavy, and only where this engine runs

        self.spec = spec
        self.variant = variant
        self.chosen_by = ""
        from pglocalai.service.tokenizer import load_tokenizer  # noqa: PLC0415 - heavy

        self.text_tokenizer = load_tokenizer(tokenizer_json, tokenizer_mode)
        self.tokenizer = self.text_tokenizer.name
        self.pad_id = self.text_tokenizer.pad_id
        self.engine_name = f"openvino {ov.__version__}"
        del wide_runs  # every run has all the threads (see configure)
        self.wide_threads = 0
        self._read = read_file  # "file", "weights" or "word_table" -> its verified bytes
        self._core = ov.Core()
        try:
            self.table = WordTable(read_file("word_table"))
        except Exception as exc:  # noqa: BLE001 - numpy raises its own types
            raise ModelFormatError(f"the word table of model \"{spec.uri}\" is unreadable",
                                   detail=str(exc)) from None
        self._run: tuple[Any, threading.Lock] = (None, threading.Lock())
        self.configure(settings, workers)

    def configure(self, settings: dict[str, Any], workers: int) -> None:
        import openvino as ov  # noqa: PLC0415

        threads = int(settings["intra_op_parallelism"])
        # the model is read again for each change (rare) rather than kept: the compiled
        # model holds its own repacked weights, a kept model would be another 90 MB
        xml, weights = self._read("file"), self._read("weights")
        try:
            model = self._core.read_model(model=xml.decode("utf-8"), weights=ov.Tensor(
                np.frombuffer(weights, dtype=np.uint8).copy()))
            del xml, weights
            # SNIPPETS_MODE=DISABLE: the generated attention kernels (the attention as a
            # snippet) return NaN for some texts of 17 or more tokens at bf16 on an
            # AVX512-BF16 CPU (OpenVINO 2026.4.1); the plain kernels are slower, never NaN
            compiled = self._core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads,
                "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                "SNIPPETS_MODE": "DISABLE"})
            request = compiled.create_infer_request()
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own types
            raise ModelFormatError(f"openvino could not load model \"{self.spec.uri}\" "
                                   f"variant {self.variant}", detail=str(exc)) from None
        del model
        self._run = (request, threading.Lock())  # one assignment: a run in flight keeps its own
        release_free_memory()

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        return base.tokenize(self, texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return base.count_tokens(self, texts)

    def run(self, batch: Sequence[np.ndarray], worker: int = 0,
            wide: bool = False) -> np.ndarray:
        request, lock = self._run

        def infer(ids: np.ndarray) -> np.ndarray:
            words = self.table.rows(ids)
            with lock:
                result = request.infer({WORD_INPUT: words,
                                        "attention_mask": np.ones(ids.shape, np.int64)})
                return np.array(next(iter(result.values())))  # a copy: the request reuses it
        return run_by_length(batch, self.spec.dimensions, infer)


def run_by_length(batch: Sequence[np.ndarray], dimensions: int,
                  infer: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """float32 [len(batch), dimensions]: ``infer`` once per token length, on the texts of
    that length stacked (no padding, so bf16 roundings cannot depend on the other texts)."""
    out = np.empty((len(batch), dimensions), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for row, ids in enumerate(batch):
        by_length.setdefault(len(ids), []).append(row)
    for rows in by_length.values():
        out[rows] = infer(np.stack([batch[r] for r in rows]))
    return out


def random_texts(lengths: Sequence[int], vocab: int, seed: int) -> list[np.ndarray]:
    """Token ids drawn at random, <s> first and </s> last: texts no tokenizer gives, which
    found the attention snippets' NaN."""
    rng = np.random.default_rng(seed)
    return [np.concatenate([[0], rng.integers(5, vocab, max(0, n - 2)), [2]])[:n]
            .astype(np.int64) for n in lengths]


def self_check(engine: OpenVinoEngine) -> None:
    """Refuse to serve unless every vector is finite and a text alone equals the same
    text in a batch.

    Runs at every load, so a CPU whose kernels break either is caught there, not in a
    user's IMMUTABLE function.
    """
    texts = random_texts([n for n in CHECK_LENGTHS for _ in range(2)],
                         engine.table.nibbles.shape[0], seed=15)
    together = engine.run(texts)
    worst = max(float(np.abs(engine.run([ids])[0] - together[i]).max())
                for i, ids in enumerate(texts))
    if not np.isfinite(together).all():
        raise ModelFormatError(f"model \"{engine.spec.uri}\" variant {engine.variant} gives "
                               "non-finite vectors on this CPU",
                               hint="run the int8 variant: pglocalai serve --variant int8")
    if worst > 1e-6:
        raise ModelFormatError(f"model \"{engine.spec.uri}\" variant {engine.variant} is not "
                               "batch-invariant on this CPU",
                               detail=f"a text alone and in a batch differ by {worst:.2e}",
                               hint="run the int8 variant: pglocalai serve --variant int8")
