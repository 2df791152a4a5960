"""Smoothing of the int8 graph's activations (SmoothQuant): the ``int8-smooth`` variant.

The int8 graph quantises each token's activations with one scale per token. Where an
activation comes from a LayerNorm (the input of the query, key and value Linears and of
the FFN's first Linear), a few channels run 10-25x larger than the rest, so the scale
they set leaves the other channels few levels. Measured on 300 benchmark texts, cosine
to fp32: the int8 graph 0.99917; with the weights' int8 rounding alone 0.99992, so the
activations are most of the error; the query/key/value inputs in fp32 alone 0.99961.
Smoothing divides such an activation by a factor per channel,
``s = max|x_j|^a / max|W_j|^(1-a)``, and multiplies the Linear's weights by it, so that
``(x / s) (W s)^T = x W^T`` and the quantisation error is shared by both: 0.99969.

The LayerNorm's output also feeds the residual stream, so ``1 / s`` cannot be folded into
it: the graph gets one Mul per site (24 for 12 layers; 0.97x the int8 graph's rate). Each
factor is a power of two, so the Mul and the product ``W s`` are exact in fp32.

The factors are computed once from calibration passages
(``scripts/smoothing_factors.py``), not at install time: ONNX Runtime's kernels differ by
CPU in the last bits, and a factor computed on another machine could come out one power
of two away and change the vectors. They ship in ``e5-small-smoothing.npz`` with the
digest of the pack they belong to; for another pack no ``int8-smooth`` is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pglocalai.models.bert_onnx import SMOOTHING_KINDS, build_int8_probe, smoothing_site
from pglocalai.models.bert_weights import BertConfig
from pglocalai.models.onnx_session import cpu_session

FILE = Path(__file__).with_name("e5-small-smoothing.npz")
ALPHA = 0.6
# factors are kept between 2^-7 and 2^10
LOWEST, HIGHEST = -7, 10


def site_names(layers: int) -> list[str]:
    """The smoothing sites in graph order: ``l<i>_qkv`` and ``l<i>_fi`` of each layer."""
    return [smoothing_site(i, kind) for i in range(layers) for kind in SMOOTHING_KINDS]


def site_weights(site: str) -> list[str]:
    """The Hugging Face names of the Linears that read the activation of ``site``."""
    layer, _, kind = site[1:].partition("_")
    p = f"encoder.layer.{layer}."
    if kind == "qkv":
        return [p + f"attention.self.{n}.weight" for n in ("query", "key", "value")]
    return [p + "intermediate.dense.weight"]


def calibrate(weights: dict[str, np.ndarray], config: BertConfig,
              texts: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """max |x_j| per site and channel over ``texts`` (token ids, one array a text), read
    from the int8 graph without smoothing."""
    model, outputs = build_int8_probe(weights, config)
    session = cpu_session(model.SerializeToString())
    sites = list(outputs)
    xmax = {site: np.zeros(config.hidden, np.float32) for site in sites}
    for ids in texts:
        feed = {"input_ids": ids[None, :].astype(np.int64),
                "attention_mask": np.ones((1, len(ids)), np.int64)}
        for site, x in zip(sites, session.run([outputs[s] for s in sites], feed), strict=True):
            xmax[site] = np.maximum(xmax[site], np.abs(x).reshape(-1, config.hidden).max(0))
    return xmax


def exponents(xmax: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray],
              alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """log2 of each site's factors, rounded: int8 [hidden] by site."""
    out = {}
    for site, x in xmax.items():
        wmax = np.abs(np.concatenate([np.asarray(weights[n], np.float32)
                                      for n in site_weights(site)])).max(axis=0)
        s = np.maximum(x, 1e-6) ** alpha / np.maximum(wmax, 1e-6) ** (1 - alpha)
        out[site] = np.clip(np.rint(np.log2(s)), LOWEST, HIGHEST).astype(np.int8)
    return out


def factors(exps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {site: np.ldexp(np.float32(1), e.astype(np.int32)).astype(np.float32)
            for site, e in exps.items()}


def save(exps: Mapping[str, np.ndarray], digest: str, path: Path = FILE) -> None:
    with path.open("wb") as fh:
        np.savez_compressed(fh, pack_sha256=np.array(digest), alpha=np.array(ALPHA),
                            **{site: e for site, e in exps.items()})


def shipped(digest: str, path: Path = FILE) -> dict[str, np.ndarray] | None:
    """The shipped factors by site, or None when they belong to another pack (``digest``:
    the pack's sha256, :func:`pglocalai.models.metadata.sha256_file`) or are missing."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        if str(data["pack_sha256"]) != digest:
            return None
        return factors({k: data[k] for k in data.files if k.startswith("l")})
