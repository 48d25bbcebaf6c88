"""STREAM-style memory read bandwidth, measured by a small C program compiled on the fly.

Why C and not numpy: the probe must read memory the way llama.cpp does (every thread streams
its own part, vectorised, with no temporaries), and numpy reductions run on one thread. The
kernel is an integer sum (integer addition is associative, so the compiler vectorises it
without -ffast-math) over an array much larger than the last-level cache, first touched by the
same threads that later read it. Like STREAM, the best of several passes is the figure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from synapse_os import proc
from synapse_os.bench.paths import cache_root
from synapse_os.errors import OperationError

MIN_ARRAY_BYTES = 256 * 1024 * 1024
DEFAULT_PASSES = 10

PROBE_SOURCE = r"""
#include <inttypes.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s BYTES PASSES THREADS\n", argv[0]);
        return 2;
    }
    size_t n = (size_t)strtoull(argv[1], NULL, 10) / sizeof(uint64_t);
    int passes = atoi(argv[2]);
    int threads = atoi(argv[3]);
    omp_set_num_threads(threads);
    uint64_t *a = aligned_alloc(64, n * sizeof(uint64_t));
    if (a == NULL) {
        fprintf(stderr, "cannot allocate %zu bytes\n", n * sizeof(uint64_t));
        return 1;
    }
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = i;
    uint64_t check = 0;
    printf("{\"bytes\": %zu, \"threads\": %d, \"seconds\": [", n * sizeof(uint64_t), threads);
    for (int p = 0; p <= passes; p++) {  /* pass 0 warms up and is not reported */
        uint64_t sum = 0;
        double t0 = now();
        #pragma omp parallel for schedule(static) reduction(+:sum)
        for (size_t i = 0; i < n; i++) sum += a[i];
        double t1 = now();
        check ^= sum;
        if (p > 0) printf("%s%.9f", p > 1 ? ", " : "", t1 - t0);
    }
    printf("], \"checksum\": %" PRIu64 "}\n", check);
    free(a);
    return 0;
}
"""

CFLAGS = ("-O3", "-march=native", "-fopenmp")


@dataclass(frozen=True)
class Bandwidth:
    threads: int
    array_bytes: int
    best_gbps: float  # 1e9 bytes per second, best pass (STREAM convention)
    median_gbps: float
    passes: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _last_level_cache_bytes() -> int:
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        unit = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes, default=32 * 1024**2)


def default_array_bytes() -> int:
    """16x the last-level cache, at least 256 MiB, at most a quarter of available memory."""
    wanted = max(MIN_ARRAY_BYTES, 16 * _last_level_cache_bytes())
    return min(wanted, psutil.virtual_memory().available // 4)


def probe_binary() -> Path:
    """Compile the probe once per compiler, flags and CPU (it is built with -march=native)."""
    cc = proc.require_tool("gcc", "apt-get install gcc (Debian) / pacman -S gcc (Arch)")
    version = proc.run([cc, "--version"]).stdout.splitlines()[0]
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu_flags = next((line for line in cpu.splitlines() if line.startswith("flags")), "")
    key = hashlib.sha256("\0".join([PROBE_SOURCE, version, *CFLAGS, cpu_flags]).encode())
    directory = cache_root() / "bandwidth" / key.hexdigest()[:20]
    binary = directory / "stream-read"
    if binary.is_file():
        return binary
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "stream-read.c"
    source.write_text(PROBE_SOURCE)
    tmp = directory / f".stream-read.tmp-{os.getpid()}"
    proc.run([cc, *CFLAGS, "-o", str(tmp), str(source)])
    os.replace(tmp, binary)
    return binary


def measure(threads: int, *, array_bytes: int | None = None,
            passes: int = DEFAULT_PASSES) -> Bandwidth:
    size = array_bytes or default_array_bytes()
    result = proc.run([probe_binary(), str(size), str(passes), str(threads)], timeout=600)
    try:
        data = json.loads(result.stdout)
        seconds = [float(s) for s in data["seconds"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise OperationError(f"the bandwidth probe printed unreadable output: {exc}") from exc
    if not seconds or min(seconds) <= 0:
        raise OperationError("the bandwidth probe reported no usable pass timings")
    rates = sorted(int(data["bytes"]) / s / 1e9 for s in seconds)
    return Bandwidth(threads=threads, array_bytes=int(data["bytes"]), best_gbps=rates[-1],
                     median_gbps=rates[len(rates) // 2], passes=len(rates))


def roofline_fraction(tokens_per_second: float, bytes_per_token: float, gbps: float) -> float:
    """Share of the bandwidth roofline reached: tokens/s x bytes read per token / bandwidth."""
    return tokens_per_second * bytes_per_token / (gbps * 1e9)


def have_compiler() -> bool:
    return shutil.which("gcc") is not None
