#!/usr/bin/env python3
"""Time a two-host rollout of the exported Ansible role over real SSH (two sshd on
127.0.0.1, one target root directory each) against a plain local `synapse apply`, as whole
processes. Target (issue 16): under 20 s per host beyond apply itself.

    python bench/bench_fleet.py [--profile profiles/nvidia-gpu.yaml] [--runs 2]

Prints: the export time (wheel build included); the first rollout (installs synapse in a
venv per host, then apply + verify); then, per run on fresh roots with synapse installed,
the rollout time (`ansible-playbook site.yml`: serial 1, apply + verify + fetch per host)
and a local `synapse apply --yes --json` + `synapse verify --json` on a fresh root; the
per-host overhead of the Ansible layer is rollout/2 minus local apply (and minus local
apply + verify). Exit status 1 when the median overhead over apply misses 20 s.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from timing import synapse_cmd  # noqa: E402

from tests.apply.helpers import build_root  # noqa: E402
from tests.fleet.harness import Fleet, recap  # noqa: E402

TARGET_S = 20.0
HOSTS = ("alpha", "beta")


def timed(argv: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=str(REPO / "profiles/nvidia-gpu.yaml"))
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    cmd = synapse_cmd()
    base = Path(tempfile.mkdtemp(prefix="bench-fleet."))
    fleet = Fleet(base / "fleet")
    try:
        export = base / "export"
        t = timed([*cmd, "fleet", "export", args.profile, "-o", str(export)])
        print(f"synapse fleet export (wheel build included): {t:.1f} s")
        for name in HOSTS:
            fleet.start(name)

        def inventory(run: str) -> Path:
            host_vars = {}
            for name in HOSTS:
                root = base / run / f"root-{name}"
                root.parent.mkdir(exist_ok=True)
                build_root(root)
                host_vars[name] = {"synapse_root": str(root),
                                   "synapse_remote_dir": str(base / f"remote-{name}"),
                                   "synapse_venv": str(base / f"venv-{name}"),
                                   "synapse_python": sys.executable,
                                   "synapse_venv_system_site_packages": True}
            return fleet.write_inventory(host_vars, filename=f"{run}.ini")

        def rollout(run: str) -> float:
            inv = inventory(run)
            start = time.perf_counter()
            res = fleet.playbook(export / "site.yml", inv)
            took = time.perf_counter() - start
            if res.returncode != 0:
                print(res.stdout[-4000:], res.stderr[-2000:])
                raise SystemExit(f"rollout {run} failed (exit {res.returncode})")
            counters = recap(res.stdout)
            changed = ", ".join(f"{h}={counters[h]['changed']}" for h in HOSTS)
            print(f"rollout {run}: {took:.1f} s for {len(HOSTS)} hosts (changed: {changed})")
            return took

        rollout("first-with-install")
        rollouts, applies, verifies = [], [], []
        for i in range(args.runs):
            rollouts.append(rollout(f"run{i}"))
            root = base / f"local{i}"
            build_root(root)
            applies.append(timed([*cmd, "apply", args.profile, "--root", str(root), "--yes",
                                  "--json"]))
            verifies.append(timed([*cmd, "verify", args.profile, "--root", str(root),
                                   "--json"]))
            print(f"local run{i}: apply {applies[-1]:.2f} s, verify {verifies[-1]:.2f} s")
    finally:
        fleet.stop()
        shutil.rmtree(base, ignore_errors=True)
    per_host = statistics.median(rollouts) / len(HOSTS)
    apply_s = statistics.median(applies)
    verify_s = statistics.median(verifies)
    overhead = per_host - apply_s
    print(f"two-host rollout: median {statistics.median(rollouts):.1f} s "
          f"({per_host:.1f} s per host, serial 1)")
    print(f"local synapse apply: median {apply_s:.2f} s; + verify {apply_s + verify_s:.2f} s")
    print(f"Ansible layer per host: {overhead:.1f} s over apply, "
          f"{per_host - apply_s - verify_s:.1f} s over apply + verify (target < {TARGET_S} s)")
    return 0 if overhead < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
