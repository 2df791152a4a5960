"""What models the runtime can serve: their specs, and how to load one into an engine.

``StoreCatalog`` reads the model store (``pglocalai.models.store``); a test catalog
(``pglocalai.testing.fake_engine.FakeCatalog``) serves weightless stand-ins. The
manager (:mod:`pglocalai.service.manager`) sees either through :class:`Catalog`.

>>> catalog = StoreCatalog(Path(".run/models"))
>>> [s.uri for s in catalog.specs()]
['all-minilm-l6-v2:v1', 'multilingual-e5-small:v1']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pglocalai.errors import ModelFormatError
from pglocalai.service.engine import Engine, ModelSpec, OnnxEngine
from pglocalai.service.heap import release_free_memory


class Catalog(Protocol):
    engine: str  # which kind of engine its models run on ("onnx", "fake"), for HEALTH

    def specs(self) -> list[ModelSpec]: ...

    def spec(self, uri: str) -> ModelSpec: ...

    def load(self, uri: str, variant: str | None, settings: dict[str, Any],
             workers: int) -> Engine: ...


class StoreCatalog:
    """The models installed in a model store."""

    engine = "onnx"

    def __init__(self, root: Path | None = None, tokenizer_mode: str = "compact",
                 wide_runs: bool = True) -> None:
        from pglocalai.models.store import ModelStore, default_models_dir  # noqa: PLC0415

        self.store = ModelStore(Path(root) if root else default_models_dir())
        self.tokenizer_mode = tokenizer_mode
        self.wide_runs = wide_runs

    def specs(self) -> list[ModelSpec]:
        return [_spec_of(info) for info in self.store.list()]

    def spec(self, uri: str) -> ModelSpec:
        return _spec_of(self.store.get(uri))

    def load(self, uri: str, variant: str | None, settings: dict[str, Any],
             workers: int) -> Engine:
        spec = self.spec(uri)
        chosen, reason = choose_variant(spec, variant)
        engine = self._load(spec, chosen, settings, workers)
        engine.chosen_by = reason
        return engine

    def _load(self, spec: ModelSpec, chosen: str, settings: dict[str, Any],
              workers: int) -> Engine:
        uri = spec.uri
        vmeta = spec.metadata.get("variants", {}).get(chosen)
        if not vmeta or "file" not in vmeta:
            raise ModelFormatError(f"model \"{uri}\" has no file for variant {chosen}")
        tok_name = str(spec.metadata.get("tokenizer", "tokenizer.json"))
        tokenizer_json = self.store.read_verified(uri, tok_name).decode("utf-8")
        engine: Engine
        if vmeta.get("engine") == "openvino":
            from pglocalai.service import openvino_engine  # noqa: PLC0415 - heavy

            why_not = openvino_engine.available()
            if why_not:
                raise ModelFormatError(f"variant {chosen} of \"{uri}\" needs OpenVINO",
                                       detail=why_not)

            def read(key: str) -> bytes:
                return self.store.read_verified(uri, vmeta[key])

            engine = openvino_engine.OpenVinoEngine(spec, chosen, read, tokenizer_json,
                                                    settings, workers, self.tokenizer_mode,
                                                    self.wide_runs)
            openvino_engine.self_check(engine)
        else:
            engine = OnnxEngine(spec, chosen,
                                lambda: self.store.open_verified(uri, vmeta["file"]),
                                tokenizer_json, settings, workers, self.tokenizer_mode,
                                self.wide_runs)
        del tokenizer_json
        release_free_memory()
        return engine


def choose_variant(spec: ModelSpec, wanted: str | None) -> tuple[str, str]:
    """The variant to run and why: ``--variant`` when the model has it, else its default.

    Never chosen by a measurement at start, nor by the CPU's features: every machine gets
    the same variant, so an IMMUTABLE function's vectors do not change across restarts,
    nor between a primary, its standbys and a restore on other hardware. ``bf16`` would
    not be worth it where it was measured anyway (AVX512-BF16, no AMX: slower than int8 on
    short texts, ~150 MiB more; docs/models.md).
    """
    if wanted:
        if wanted in spec.variants:
            return wanted, "--variant"
        return spec.default_variant, (f"--variant {wanted} is not a variant of this model; "
                                      "the model's default_variant")
    return spec.default_variant, "the model's default_variant"


def _spec_of(info: Any) -> ModelSpec:
    variants = info.variants
    names = tuple(variants) if not isinstance(variants, str) else (variants,)
    return ModelSpec(uri=info.uri, dimensions=int(info.dimensions),
                     max_tokens=int(info.max_tokens), variants=names,
                     default_variant=str(info.default_variant), metadata=dict(info.metadata))
