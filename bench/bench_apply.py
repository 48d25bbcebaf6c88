#!/usr/bin/env python3
"""Time `synapse apply --dry-run` of the CPU profile against a root tree, as a whole
process (a fresh interpreter each run, as a user runs it). Target: median under 1 s.

    python bench/bench_apply.py [--runs 15] [--profile profiles/cpu-avx2.yaml]

The root tree is a small target with files the profile replaces, an enabled unit the
profile disables, and one earlier transaction applied (so the plan reads a journal,
snapshots and hashes files, asks `systemctl --root` about units and diffs a changed
profile). Prints each run's wall time, then the median and minimum; exits 1 when the
median misses the target.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import synapse_cmd, time_runs, verdict

TARGET_S = 1.0
REPO = Path(__file__).resolve().parent.parent
UNIT = "[Unit]\nDescription=test\n[Service]\nExecStart=/bin/true\n" \
       "[Install]\nWantedBy=multi-user.target\n"


def build_root(root: Path) -> None:
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "var/lib").mkdir(parents=True)
    (root / "etc/hostname").write_text("debian\n")
    (root / "usr/lib/systemd/system/avahi-daemon.service").write_text(UNIT)
    os.symlink("/usr/lib/systemd/system/avahi-daemon.service",
               root / "etc/systemd/system/multi-user.target.wants/avahi-daemon.service")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--profile", default=str(REPO / "profiles/cpu-avx2.yaml"))
    args = parser.parse_args()
    cmd = synapse_cmd()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        build_root(root)
        # an earlier transaction (the GPU profile), so the dry run has history to read
        subprocess.run([*cmd, "apply", str(REPO / "profiles/nvidia-gpu.yaml"), "--root",
                        str(root), "--yes"], check=True, stdout=subprocess.DEVNULL)
        times, out = time_runs(
            lambda i: [*cmd, "apply", args.profile, "--root", str(root), "--dry-run"], args.runs)
    changed = out.stdout.split("\n", 2)[1].strip()
    return verdict(f"synapse apply --dry-run {Path(args.profile).name} ({changed})", times,
                   TARGET_S)


if __name__ == "__main__":
    sys.exit(main())
