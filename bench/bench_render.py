#!/usr/bin/env python3
"""Time `synapse render` of the CPU profile as a whole process (cold: a fresh interpreter
each run, as a user runs it). Target: median under 0.5 s on a 2-core machine.

    python bench/bench_render.py [--runs 15] [--profile profiles/cpu-avx2.yaml]

Prints each run's wall time, then the median and minimum; exits 1 when the median
misses the target, so it can gate a change.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.5
REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--profile", default=str(REPO / "profiles/cpu-avx2.yaml"))
    args = parser.parse_args()
    synapse = shutil.which("synapse")
    cmd = [synapse] if synapse else [sys.executable, "-m", "synapse_os.cli"]
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            start = time.perf_counter()
            subprocess.run([*cmd, "render", args.profile, "-o", f"{tmp}/out{i}"], check=True,
                           stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
            print(f"run {i + 1:2d}: {times[-1]:.3f} s")
    median = statistics.median(times)
    print(f"synapse render {Path(args.profile).name}: median {median:.3f} s, "
          f"min {min(times):.3f} s over {args.runs} runs (target < {TARGET_S} s)")
    return 0 if median < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
