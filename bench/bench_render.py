#!/usr/bin/env python3
"""Time `synapse render` of the CPU profile as a whole process (cold: a fresh interpreter
each run, as a user runs it). Target: median under 0.5 s on a 2-core machine.

    python bench/bench_render.py [--runs 15] [--profile profiles/cpu-avx2.yaml]

Prints each run's wall time, then the median and minimum; exits 1 when the median
misses the target, so it can gate a change.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from timing import synapse_cmd, time_runs, verdict

TARGET_S = 0.5
REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--profile", default=str(REPO / "profiles/cpu-avx2.yaml"))
    args = parser.parse_args()
    cmd = synapse_cmd()
    with tempfile.TemporaryDirectory() as tmp:
        times, _ = time_runs(lambda i: [*cmd, "render", args.profile, "-o", f"{tmp}/out{i}"],
                             args.runs)
    return verdict(f"synapse render {Path(args.profile).name}", times, TARGET_S)


if __name__ == "__main__":
    sys.exit(main())
