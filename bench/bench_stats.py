"""How long `synapse bench compare` statistics take: 12 tests x 30 samples, 10 000 resamples.

Run: python bench/bench_stats.py  (prints seconds per full comparison; target < 2 s)
"""

from __future__ import annotations

import time

import numpy as np

from synapse_os.bench import stats


def main() -> None:
    rng = np.random.default_rng(0)
    pairs = [(list(rng.normal(100, 2, 30)), list(rng.normal(103, 2, 30))) for _ in range(12)]
    start = time.perf_counter()
    verdicts = [stats.compare_samples(base, cand).verdict for base, cand in pairs]
    elapsed = time.perf_counter() - start
    print(f"compare 12 tests x 30 samples: {elapsed:.3f} s "
          f"({verdicts.count('improved')}/12 improved for a true +3 % shift)")


if __name__ == "__main__":
    main()
