#!/usr/bin/env python3
"""Time `synapse kernel config` of the CPU profile against a prepared kernel tree, as a
whole process (fresh interpreter, fresh scratch build dir: kconfig is compiled, the base
config, the fragment and the explanations all run each time). Target: median under 30 s
on a 2-core machine.

    python bench/bench_kernel.py [--runs 3] [--source DIR] [--profile profiles/cpu-avx2.yaml]

"Prepared" means unpacked: by default Debian's linux-source-6.1 in ~/.cache/synapse
(extracted there first if missing, not timed). Prints each run's wall time, then the
median and minimum; exits 1 when the median misses the target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import synapse_cmd, time_runs, verdict

TARGET_S = 30.0
REPO = Path(__file__).resolve().parent.parent
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
CACHE = Path(os.environ.get("SYNAPSE_CACHE", Path.home() / ".cache" / "synapse"))


def prepared_tree() -> Path:
    tree = CACHE / "linux-source-6.1"
    if (tree / ".synapse-extracted").exists():
        return tree
    if not TARBALL.exists():
        sys.exit(f"{TARBALL} is missing; install it with: apt-get install linux-source-6.1")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".extract-"))
    subprocess.run(["tar", "-xJf", TARBALL, "-C", tmp], check=True)
    (tmp / "linux-source-6.1" / ".synapse-extracted").write_text(f"extracted from {TARBALL}\n")
    os.rename(tmp / "linux-source-6.1", tree)
    shutil.rmtree(tmp)
    return tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--profile", default=str(REPO / "profiles/cpu-avx2.yaml"))
    args = parser.parse_args()
    source = args.source or prepared_tree()
    cmd = synapse_cmd()
    with tempfile.TemporaryDirectory() as tmp:
        times, _ = time_runs(lambda i: [*cmd, "kernel", "config", args.profile, "--source",
                                        str(source), "-o", f"{tmp}/out{i}", "--json"],
                             args.runs, cwd=REPO)
    return verdict(f"kernel config resolution ({os.cpu_count()} CPUs, {source})", times,
                   TARGET_S)


if __name__ == "__main__":
    sys.exit(main())
