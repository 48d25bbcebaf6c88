"""Shared by the whole-process benchmarks: run a `synapse` command N times, print each
wall time, then the median and minimum against a target (exit status 1 when missed)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def synapse_cmd() -> list[str]:
    synapse = shutil.which("synapse")
    return [synapse] if synapse else [sys.executable, "-m", "synapse_os.cli"]


def time_runs(argv_for: Callable[[int], Sequence[str]], runs: int,
              **kwargs: object) -> tuple[list[float], subprocess.CompletedProcess[str]]:
    """Wall times of `runs` runs of argv_for(i) (check=True), and the last run's result."""
    times: list[float] = []
    result: subprocess.CompletedProcess[str] | None = None
    for i in range(runs):
        start = time.perf_counter()
        result = subprocess.run(list(argv_for(i)), check=True, text=True,
                                stdout=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]
        times.append(time.perf_counter() - start)
        print(f"run {i + 1:2d}: {times[-1]:.3f} s")
    assert result is not None, "runs must be at least 1"
    return times, result


def verdict(what: str, times: list[float], target_s: float) -> int:
    median = statistics.median(times)
    print(f"{what}: median {median:.3f} s, min {min(times):.3f} s over {len(times)} runs "
          f"(target < {target_s} s)")
    return 0 if median < target_s else 1
