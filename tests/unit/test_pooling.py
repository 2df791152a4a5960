"""Numpy pooling for graphs that output token states, and the padding helper."""

from __future__ import annotations

import numpy as np
import pytest

from pglocalai.errors import ModelFormatError
from pglocalai.service import pooling
from pglocalai.service.engine import pad


def test_mean_pool_ignores_padding() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = pooling.mean_pool(hidden, mask)
    np.testing.assert_allclose(out[0], hidden[0, :3].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[1], hidden[1].mean(axis=0), rtol=1e-6)
    hidden[0, 3:] = 1e6  # whatever sits under the padding changes nothing
    np.testing.assert_allclose(pooling.mean_pool(hidden, mask)[0], out[0], rtol=1e-6)


def test_cls_and_normalize() -> None:
    hidden = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = pooling.pool(hidden, np.ones((2, 3)), "cls", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0], hidden[0, 0] / np.linalg.norm(hidden[0, 0]), rtol=1e-6)
    zero = pooling.l2_normalize(np.zeros((1, 4), dtype=np.float32))
    assert np.isfinite(zero).all() and not zero.any()
    assert pooling.pool(hidden, np.ones((2, 3)), "mean", normalize=False).dtype == np.float32


def test_unsupported_pooling_or_shape() -> None:
    with pytest.raises(ModelFormatError, match="pooling"):
        pooling.pool(np.zeros((1, 2, 3)), np.ones((1, 2)), "max", normalize=True)
    with pytest.raises(ModelFormatError, match="rank"):
        pooling.pool(np.zeros((2, 3)), np.ones((2, 3)), "mean", normalize=True)


def test_pad_right_pads_and_masks() -> None:
    ids, mask = pad([np.array([0, 5, 2]), np.array([0, 2])], pad_id=1)
    assert ids.tolist() == [[0, 5, 2], [0, 2, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert ids.dtype == mask.dtype == np.int64
