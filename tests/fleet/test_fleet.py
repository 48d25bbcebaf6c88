"""`synapse fleet`: the exported role run by real ansible-playbook over real SSH against two
booted tuned-image VMs (QEMU, SSH forwarded from 127.0.0.1 ports), plus the report.

The rollout stages (hardware refusal, check, apply, second apply, drift) run once per module
in that order (fixture `rollout`); each test asserts on one stage. The guests are the CI
image (profiles/cpu-avx2-debian.yaml, tuned kernel); the fleet applies that profile with a
changed swappiness and each VM's own hardware: alpha's from host_vars, beta's read on the
host (`synapse_hardware: detected`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from synapse_os.vm.machine import Machine
from tests.apply.helpers import synapse
from tests.conftest import PROFILES, need_tool
from tests.fleet.harness import Fleet, Missing, free_port, recap

PROFILE = PROFILES / "nvidia-gpu.yaml"
DRIFTED = "etc/sysctl.d/90-synapse.conf"
HOSTS = ("alpha", "beta")
GUEST_MEMORY_MB = 6144  # cpu-avx2 keeps a 4G memory_reserve: the host's RAM must exceed it
# Everything apply may write or keep (files, boot loader entries, journals), as the guest
# sees it: path -> kind, mode, owner, sha256 or link target.
SNAPSHOT = r"""
import hashlib, json, os, stat
out = {}
for top in ("/etc", "/boot/efi/loader", "/var/lib/synapse/transactions", "/var/lib/synapse/lock"):
    walk = [(os.path.dirname(top), [], [os.path.basename(top)])] if os.path.isfile(top)         else os.walk(top)
    for d, dirs, files in walk:
        for name in sorted(dirs + files):
            p = os.path.join(d, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[p] = ["link", os.readlink(p)]
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    out[p] = ["file", oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid,
                              hashlib.sha256(fh.read()).hexdigest()]
            elif stat.S_ISDIR(st.st_mode):
                out[p] = ["dir", oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid]
print(json.dumps(out, sort_keys=True))
"""


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`synapse fleet export` of the GPU profile (builds the wheel of this checkout)."""
    need_tool("ansible-playbook", "pip install -e '.[fleet]'")
    out = tmp_path_factory.mktemp("export") / "fleet"
    res = synapse("fleet", "export", PROFILE, "-o", out, "--json", timeout=900)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Keys, inventory directory and ansible environment, with no host behind them."""
    try:
        made = Fleet(tmp_path_factory.mktemp("fleet-bad"))
    except Missing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield made
    made.stop()


@dataclass
class Host:
    machine: Machine
    port: int

    def snapshot(self) -> dict[str, list[object]]:
        out = self.machine.succeed(f"/usr/bin/python3 -c {shlex.quote(SNAPSHOT)}", timeout=300)
        return json.loads(out)


@dataclass
class Rollout:
    fleet: Fleet
    site: Path
    inventory: Path
    hosts: dict[str, Host]
    results: Path
    before: dict[str, dict[str, list[object]]] = field(default_factory=dict)
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, dict[str, list[object]]]] = field(default_factory=dict)

    def play(self, stage: str, *args: str) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        res = self.fleet.playbook(self.site, self.inventory, *args, timeout=1800)
        print(f"ansible-playbook {stage}: {time.monotonic() - start:.1f} s")
        self.runs[stage] = res
        self.snapshots[stage] = {h: host.snapshot() for h, host in self.hosts.items()}
        return res


@pytest.fixture(scope="module")
def vms(tuned_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Fleet, dict[str, Host]]]:
    """Two guests of the tuned image with root's SSH key from the fleet's controller."""
    base = tmp_path_factory.mktemp("fleet")
    try:
        fleet = Fleet(base)
    except Missing as exc:
        pytest.fail(str(exc), pytrace=False)
    hosts: dict[str, Host] = {}
    try:
        for name in HOSTS:
            port = free_port()
            machine = Machine(tuned_image, memory_mb=GUEST_MEMORY_MB, cpus=2,
                              forwards={port: 22}, keep_log=base / f"{name}-serial.log")
            hosts[name] = Host(machine, port)
            machine.start()
        key = (fleet.keys / "client.pub").read_text().strip()
        for host in hosts.values():
            host.machine.wait_for_shell()
            host.machine.succeed(
                "install -d -m 0700 /root/.ssh && printf '%s\\n' "
                f"{shlex.quote(key)} > /root/.ssh/authorized_keys && "
                "chmod 0600 /root/.ssh/authorized_keys")
            host.machine.wait_for_open_port(22)
        yield fleet, hosts
    finally:
        for host in hosts.values():
            host.machine.close()
        fleet.stop()


@pytest.fixture(scope="module")
def rollout(vms: tuple[Fleet, dict[str, Host]], tuned_profile: Path) -> Rollout:
    fleet, hosts = vms
    profile = fleet.base / "fleet.yaml"
    profile.write_text(f"extends: {tuned_profile}\nmemory:\n  swappiness: 150\n")
    export = fleet.base / "export"
    res = synapse("fleet", "export", profile, "-o", export, "--json", timeout=900)
    assert res.returncode == 0, res.stderr
    detected = json.loads(hosts["alpha"].machine.succeed("/opt/synapse/bin/synapse init --json",
                                                         timeout=300))["hardware"]
    common = {
        # the image's own venv already holds every dependency: no index (the guests are
        # offline), only the exported wheel is installed
        "synapse_venv": "/opt/synapse",
        "synapse_pip_extra_args": "--no-index",
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    inventory = fleet.write_inventory(
        {"alpha": common | {"synapse_hardware": {
            "cpu_vendor": detected["cpu_vendor"], "physical_cores": detected["physical_cores"],
            "logical_cpus": detected["logical_cpus"], "ram": f"{GUEST_MEMORY_MB // 1024}G"}},
         "beta": common | {"synapse_hardware": "detected"}},
        ports={name: host.port for name, host in hosts.items()})
    r = Rollout(fleet, export / "site.yml", inventory, hosts, export / "results")
    r.before = {h: host.snapshot() for h, host in hosts.items()}
    # the profile as exported says intel, 8 cores, 32G: beta without its own hardware
    r.play("hardware", "--limit", "beta", "-e", json.dumps({"synapse_hardware": {}}))
    r.play("check", "--check", "--diff", "-e", "synapse_serial=2")
    r.play("apply")
    r.play("again", "-e", "synapse_serial=2")
    return r


def _ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    return res.stdout


def test_host_whose_hardware_contradicts_the_profile_is_refused_before_any_change(
        rollout: Rollout) -> None:
    res = rollout.runs["hardware"]
    flat = " ".join(res.stdout.split())
    assert res.returncode != 0, flat[-4000:]
    assert recap(res.stdout)["beta"]["failed"] == 1
    assert "was written for other hardware: hardware.cpu_vendor" in flat \
        or "was written for other hardware: hardware.physical_cores" in flat, flat[-4000:]
    assert "hardware.ram is 32G but this machine has" in flat
    for host in HOSTS:
        assert rollout.snapshots["hardware"][host] == rollout.before[host], host


def test_check_shows_the_plan_and_changes_nothing(rollout: Rollout) -> None:
    out = _ok(rollout.runs["check"])
    # the plan is the diff, per host: the profile's swappiness and each host's memory limit
    assert "+++ b/etc/sysctl.d/90-synapse.conf" in out
    assert "+vm.swappiness = 150" in out
    assert "+MemoryHigh=2147483648" in out  # 6G declared - 4G reserve (alpha)
    assert set(recap(out)) >= set(HOSTS)
    for host in HOSTS:
        # byte for byte, synapse's state included: no journal, no lock
        assert rollout.snapshots["check"][host] == rollout.before[host], host


def test_play_applies_and_verifies_on_both_hosts(rollout: Rollout) -> None:
    out = _ok(rollout.runs["apply"])
    counters = recap(out)
    for host in HOSTS:
        assert counters[host]["failed"] == 0 and counters[host]["changed"] >= 1, counters
        report = json.loads((rollout.results / host / "verify.json").read_text())
        assert report["ok"] is True and report["counts"]["fail"] == 0
        assert report["live"] is True and report["counts"]["pass"] > 50
        live = rollout.hosts[host].machine.succeed("sysctl -n vm.swappiness").strip()
        assert live == "150", (host, live)
        journals = [p for p in rollout.snapshots["apply"][host]
                    if p.startswith("/var/lib/synapse/transactions/")]
        assert journals, f"{host}: no transaction journal"
    assert "0 fail" in " ".join(out.split())


def test_second_run_changes_nothing(rollout: Rollout) -> None:
    counters = recap(_ok(rollout.runs["again"]))
    for host in HOSTS:
        assert counters[host]["changed"] == 0, counters
        assert counters[host]["failed"] == 0
        assert rollout.snapshots["again"][host] == rollout.snapshots["apply"][host], host


def test_report_lists_both_hosts(rollout: Rollout, tmp_path: Path) -> None:
    res = synapse("fleet", "report", rollout.results, "-o", tmp_path / "report", "--json")
    assert res.returncode == 0, res.stderr
    hosts = {h["host"]: h for h in json.loads(res.stdout)["hosts"]}
    assert set(hosts) == set(HOSTS)
    assert all(h["verify_ok"] and h["counts"]["fail"] == 0 for h in hosts.values())
    md = (tmp_path / "report/RESULTS.md").read_text()
    assert "| alpha | ok |" in md and "| beta | ok |" in md


def test_drift_fails_the_host_rolls_it_back_and_stops_the_rollout(rollout: Rollout) -> None:
    """Drift on alpha (first in the inventory) after the apply: an audit run
    (`--tags synapse_verify`) fails alpha, rolls it back byte for byte and never reaches
    beta (serial 1, max_fail_percentage 0)."""
    _ = rollout.runs["again"]
    rollout.hosts["alpha"].machine.succeed(f"sed -i 's/= 150/= 60/' /{DRIFTED}")
    res = rollout.play("drift", "--tags", "synapse_verify",
                       "-e", "synapse_rollback_on_failure=true")
    out = " ".join(res.stdout.split())
    assert res.returncode != 0, out[-4000:]
    counters = recap(res.stdout)
    assert counters["alpha"]["failed"] == 1, counters
    assert "beta" not in counters or counters["beta"]["ok"] == 0, counters
    assert f"file /{DRIFTED}" in out and "rolled back with synapse rollback" in out
    # alpha: every file as before the first apply (the journal stays, marked rolled back);
    # beta: untouched (still applied)
    restored = {p: v for p, v in rollout.snapshots["drift"]["alpha"].items()
                if not p.startswith("/var/lib/synapse/")}
    assert restored == {p: v for p, v in rollout.before["alpha"].items()
                        if not p.startswith("/var/lib/synapse/")}
    assert rollout.snapshots["drift"]["beta"] == rollout.snapshots["again"]["beta"]
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
