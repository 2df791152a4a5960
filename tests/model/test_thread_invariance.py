"""A text's vector does not depend on how many threads ran it (IMMUTABLE contract).

The queue runs a lone batch on the engine's wide session (all intra-op threads) and
batches of a busy queue on one-thread sessions; both must give the same vector.
"""

from __future__ import annotations

import numpy as np
import pytest

from pglocalai.models.convert import URI
from pglocalai.models.store import ModelStore
from pglocalai.service.catalog import StoreCatalog

SETTINGS = {"intra_op_parallelism": 2, "inter_op_parallelism": 1, "spin_control": True}
pytestmark = pytest.mark.model

LENGTHS = sorted({int(x) for x in np.geomspace(1, 512, 40)} | set(range(16, 513, 24))
                 | {255, 256, 511, 512})  # 54 lengths, 1 to 512 tokens


def test_wide_and_narrow_runs_give_the_same_vectors(store: ModelStore,
                                                    texts: list[str]) -> None:
    engine = StoreCatalog(store.root).load(URI, "int8", SETTINGS, workers=2)
    assert engine.wide_threads == 2  # one-thread sessions for the workers, a 2-thread one
    worst = 0.0
    for n, length in enumerate(LENGTHS):
        # a different passage for each length, repeated until it fills 512 tokens
        ids = engine.tokenize([" ".join([texts[(7 * n) % len(texts)]] * 200)])[0]
        cut = np.concatenate([ids[: max(0, length - 1)], ids[-1:]])[:length]
        assert len(cut) == length
        narrow = engine.run([cut], 0)
        wide = engine.run([cut], 0, wide=True)
        assert narrow.shape == wide.shape == (1, 384)
        worst = max(worst, float(np.abs(narrow - wide).max()))
        assert worst <= 1e-5, f"{length} tokens: wide and narrow differ by {worst}"
    # and in a batch of mixed lengths, wide against narrow, row by row
    batch = [engine.tokenize([t])[0] for t in texts[:16]]
    np.testing.assert_allclose(engine.run(batch, 1, wide=True), engine.run(batch, 1), atol=1e-5,
                               rtol=0)
