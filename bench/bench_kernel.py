#!/usr/bin/env python3
"""Time `synapse kernel config` of the CPU profile against each supported kernel tree, as a
whole process (fresh interpreter, fresh scratch build dir: kconfig is compiled, the base
config, the fragment and the explanations all run each time). Target: median under 30 s
per tree on a 2-core machine.

    python bench/bench_kernel.py [--runs 3] [--series 6.1 --series 6.12] [--source DIR]
                                 [--profile profiles/cpu-avx2.yaml]

By default every line in kernel-config/versions.toml (6.1 and 6.12): Debian's
linux-source-X.Y, unpacked once per tarball hash into ~/.cache/synapse (not timed).
Prints each run's wall time, then per tree the median and minimum, and the CPU time
(user + sys of synapse, make, conf, gcc) per run, which does not grow when other work
shares the machine; exits 1 when any tree's median wall time misses the target.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path

from timing import synapse_cmd, time_runs, verdict

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from synapse_os.errors import UserError  # noqa: E402
from synapse_os.kernel.kbuild import kernel_version  # noqa: E402
from synapse_os.kernel.trees import prepared_tree  # noqa: E402
from synapse_os.kernel.versions import load_versions  # noqa: E402

TARGET_S = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--series", action="append",
                        help="a supported line (repeatable; default: all of them)")
    parser.add_argument("--source", type=Path, action="append",
                        help="an unpacked tree instead (repeatable)")
    parser.add_argument("--profile", default=str(REPO / "profiles/cpu-avx2.yaml"))
    args = parser.parse_args()
    if args.source:
        trees = list(args.source)
    else:
        try:
            trees = [prepared_tree(s) for s in
                     (args.series or [s.series for s in load_versions().series])]
        except UserError as exc:
            sys.exit(str(exc))
    cmd = synapse_cmd()
    status = 0
    for tree in trees:
        print(f"== Linux {kernel_version(tree)} ({tree})")
        with tempfile.TemporaryDirectory() as tmp:

            def argv(i: int, tree: Path = tree, tmp: str = tmp) -> list[str]:
                return [*cmd, "kernel", "config", args.profile, "--source", str(tree),
                        "-o", f"{tmp}/out{i}", "--json"]

            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            times, _ = time_runs(argv, args.runs, cwd=REPO)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / args.runs
        print(f"cpu time per run (user+sys, all processes): {cpu:.1f} s; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        status |= verdict(f"kernel config resolution, Linux {kernel_version(tree)} "
                          f"({os.cpu_count()} CPUs)", times, TARGET_S)
    return status


if __name__ == "__main__":
    sys.exit(main())
