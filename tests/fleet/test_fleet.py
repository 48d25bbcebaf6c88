"""`synapse fleet`: the exported role run by real ansible-playbook over real SSH against two
sshd instances on 127.0.0.1 (one target root directory each), plus the report.

The rollout stages (check, apply, second apply, drift) run once per module in that order
(fixture `rollout`); each test asserts on one stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.apply.helpers import build_root, synapse, tree_snapshot
from tests.conftest import PROFILES, need_tool
from tests.fleet.harness import Fleet, Missing, free_port, recap

PROFILE = PROFILES / "nvidia-gpu.yaml"
DRIFTED = "etc/sysctl.d/90-synapse.conf"


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`synapse fleet export` of the GPU profile (builds the wheel of this checkout)."""
    need_tool("ansible-playbook", "pip install -e '.[fleet]'")
    out = tmp_path_factory.mktemp("export") / "fleet"
    res = synapse("fleet", "export", PROFILE, "-o", out, "--json", timeout=900)
    assert res.returncode == 0, res.stderr
    return out


@dataclass
class Rollout:
    fleet: Fleet
    site: Path
    inventory: Path
    roots: dict[str, Path]
    results: Path
    before: dict[str, dict[str, tuple[object, ...]]] = field(default_factory=dict)
    before_all: dict[str, dict[str, tuple[object, ...]]] = field(default_factory=dict)
    after: dict[str, dict[str, tuple[object, ...]]] = field(default_factory=dict)
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, dict[str, tuple[object, ...]]]] = field(default_factory=dict)

    def play(self, stage: str, *args: str) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        res = self.fleet.playbook(self.site, self.inventory, *args)
        print(f"ansible-playbook {stage}: {time.monotonic() - start:.1f} s")
        self.runs[stage] = res
        self.snapshots[stage] = {h: tree_snapshot(r, include_state=True)
                                 for h, r in self.roots.items()}
        return res


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    try:
        made = Fleet(base)
    except Missing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        made.start("alpha")
        made.start("beta")
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def rollout(fleet: Fleet, exported: Path) -> Rollout:
    roots: dict[str, Path] = {}
    host_vars: dict[str, dict[str, object]] = {}
    for name in ("alpha", "beta"):
        roots[name] = build_root(fleet.base / f"root-{name}")
        host_vars[name] = {
            "synapse_root": str(roots[name]),
            "synapse_remote_dir": str(fleet.base / f"remote-{name}"),
            "synapse_venv": str(fleet.base / f"venv-{name}"),
            # the host's Python already has synapse's dependencies: no PyPI downloads
            "synapse_python": sys.executable,
            "synapse_venv_system_site_packages": True,
        }
    inventory = fleet.write_inventory(host_vars)
    shutil.rmtree(exported / "results", ignore_errors=True)
    r = Rollout(fleet, exported / "site.yml", inventory, roots, exported / "results")
    r.before = {h: tree_snapshot(root) for h, root in roots.items()}
    r.before_all = {h: tree_snapshot(root, include_state=True) for h, root in roots.items()}
    r.play("check", "--check", "--diff")
    r.play("apply")
    r.play("again")
    r.after = {h: tree_snapshot(root) for h, root in roots.items()}
    return r


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    return res.stdout


def test_check_shows_the_plan_and_changes_nothing(rollout: Rollout) -> None:
    out = _ok(rollout.runs["check"])
    # the plan is the diff, per host
    assert "+++ b/etc/sysctl.d/90-synapse.conf" in out
    assert "+vm.swappiness = 150" in out
    assert "reboot needed: the kernel command line changed" in out
    assert set(recap(out)) >= {"alpha", "beta"}
    for host in ("alpha", "beta"):
        # byte for byte, synapse's state directory included: no journal, no lock
        assert rollout.snapshots["check"][host] == rollout.before_all[host], host


def test_play_applies_and_verifies_on_both_hosts(rollout: Rollout) -> None:
    out = _ok(rollout.runs["apply"])
    counters = recap(out)
    for host in ("alpha", "beta"):
        assert counters[host]["failed"] == 0 and counters[host]["changed"] >= 1, counters
        root = rollout.roots[host]
        assert "vm.swappiness = 150" in (root / DRIFTED).read_text()
        assert list((root / "var/lib/synapse").rglob("*.json")), "no transaction journal"
        report = json.loads((rollout.results / host / "verify.json").read_text())
        assert report["ok"] is True and report["counts"]["fail"] == 0
        assert report["counts"]["pass"] > 0
    flat = " ".join(out.split())  # the yaml callback folds long messages
    assert "0 fail" in flat
    # reboot reasons reported, and the handler does not reboot a directory target
    assert "the target is not the running system: not rebooting" in flat


def test_second_run_changes_nothing(rollout: Rollout) -> None:
    counters = recap(_ok(rollout.runs["again"]))
    for host in ("alpha", "beta"):
        assert counters[host]["changed"] == 0, counters
        assert counters[host]["failed"] == 0
    assert rollout.after == {h: tree_snapshot(r) for h, r in rollout.roots.items()}


def test_report_lists_both_hosts(rollout: Rollout, tmp_path: Path) -> None:
    res = synapse("fleet", "report", rollout.results, "-o", tmp_path / "report", "--json")
    assert res.returncode == 0, res.stderr
    hosts = {h["host"]: h for h in json.loads(res.stdout)["hosts"]}
    assert set(hosts) == {"alpha", "beta"}
    assert all(h["verify_ok"] and h["counts"]["fail"] == 0 for h in hosts.values())
    md = (tmp_path / "report/RESULTS.md").read_text()
    assert "| alpha | ok |" in md and "| beta | ok |" in md


def test_drift_fails_the_host_rolls_it_back_and_stops_the_rollout(rollout: Rollout) -> None:
    """Drift on alpha (first in the inventory) after the apply: an audit run
    (`--tags synapse_verify`) fails alpha, rolls it back byte for byte and never reaches
    beta (serial 1, max_fail_percentage 0)."""
    _ = rollout.runs["again"]
    target = rollout.roots["alpha"] / DRIFTED
    target.write_text(target.read_text().replace("150", "60"))
    res = rollout.play("drift", "--tags", "synapse_verify",
                       "-e", "synapse_rollback_on_failure=true")
    out = " ".join(res.stdout.split())
    assert res.returncode != 0, out[-4000:]
    counters = recap(res.stdout)
    assert counters["alpha"]["failed"] == 1, counters
    assert "beta" not in counters or counters["beta"]["ok"] == 0, counters
    assert f"file /{DRIFTED}" in out and "rolled back with synapse rollback" in out
    # alpha: every file as before the first apply; beta: untouched (still applied)
    assert tree_snapshot(rollout.roots["alpha"]) == rollout.before["alpha"]
    assert tree_snapshot(rollout.roots["beta"]) == rollout.after["beta"]
    report = json.loads((rollout.results / "alpha" / "verify.json").read_text())
    assert report["counts"]["fail"] == 1
    assert any(c["id"] == f"file /{DRIFTED}" and c["status"] == "fail"
               for c in report["checks"])


def test_unreachable_host_is_a_clear_ansible_failure(fleet: Fleet, exported: Path) -> None:
    inventory = fleet.write_inventory({}, extra_hosts={"ghost": free_port()},
                                      filename="unreachable.ini")
    res = fleet.playbook(exported / "site.yml", inventory, timeout=300)
    assert res.returncode == 4, res.stdout[-3000:]
    assert "UNREACHABLE!" in res.stdout
    assert "ghost" in res.stdout and "Connection refused" in res.stdout + res.stderr


def test_missing_inventory_is_a_clear_failure(fleet: Fleet, exported: Path) -> None:
    res = fleet.playbook(exported / "site.yml", fleet.base / "no-such-inventory.ini",
                         timeout=300)
    assert res.returncode != 0
    assert "no hosts in group 'synapse'" in res.stdout
    assert "Unable to parse" in res.stdout + res.stderr


def test_exported_role_passes_ansible_lint(exported: Path) -> None:
    lint = need_tool("ansible-lint", "pip install -e '.[fleet]'")
    res = subprocess.run([lint, "--nocolor", "--offline", "-q"], cwd=exported,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_COLOR": "1",
                              "ANSIBLE_HOME": str(exported.parent / "lint-home")})
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
