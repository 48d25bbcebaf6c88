"""A profile's hardware section against the machine: what contradicts it, how `synapse apply`
refuses it on the running system, and the fleet's per-host hardware profile."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from synapse_os.profile import load_profile
from synapse_os.profile.hardware import (
    GIB,
    Facts,
    contradictions,
    detect,
    hardware_section,
    ram_text,
)
from tests.apply.helpers import synapse
from tests.conftest import PROFILES

AVX2_BOX = Facts(cpu_vendor="intel", physical_cores=8, logical_cpus=16,
                 flags=["avx", "avx2", "fma"], ram_bytes=int(31.3 * GIB))


def test_the_machine_the_profile_describes_contradicts_nothing() -> None:
    assert contradictions(load_profile(PROFILES / "cpu-avx2.yaml").hardware, AVX2_BOX) == []


@pytest.mark.parametrize(("facts", "expected"), [
    (Facts(cpu_vendor="amd"), "cpu_vendor is intel but this machine's CPU is amd"),
    (Facts(physical_cores=2), "physical_cores is 8 but this machine has 2"),
    (Facts(logical_cpus=8), "logical_cpus is 16 but this machine has 8"),
    (Facts(ram_bytes=2 * GIB), "ram is 32G but this machine has 2G"),
    (Facts(ram_bytes=64 * GIB), "ram is 32G but this machine has 64G"),
    (Facts(flags=["avx", "sse4_2"]), "isa is avx2 but this machine's CPU lacks avx2, fma"),
])
def test_each_contradiction_is_named(facts: Facts, expected: str) -> None:
    hardware = load_profile(PROFILES / "cpu-avx2.yaml").hardware
    assert contradictions(hardware, facts) == [expected]


def test_unknown_facts_and_auto_settings_contradict_nothing() -> None:
    hardware = load_profile(PROFILES / "cpu-avx2.yaml").hardware
    assert contradictions(hardware, Facts()) == []  # nothing could be read
    gpu = load_profile(PROFILES / "nvidia-gpu.yaml").hardware
    assert "gpu is nvidia but this machine has no GPU" in contradictions(gpu, Facts())


def test_ram_text_keeps_whole_gib_only_when_close() -> None:
    assert ram_text(int(31.5 * GIB)) == "31G" or ram_text(int(31.5 * GIB)) == "32G"
    assert ram_text(5945 * 1024**2) == "5945M"  # a 6 GiB guest's MemTotal: 3.2 % short
    assert ram_text(24 * GIB - 300 * 1024**2) == "24G"


def test_this_machines_own_section_contradicts_nothing(tmp_path: Path) -> None:
    profile = tmp_path / "here.yaml"
    profile.write_text(json.dumps({"synapse": 1, "name": "here",
                                   "hardware": hardware_section(detect())}))
    facts = detect()
    assert contradictions(load_profile(profile).hardware, facts) == []


def test_apply_on_the_running_system_refuses_other_hardware_before_any_change(
        tmp_path: Path) -> None:
    """Real detection on this machine: a profile for one more core than it has is refused
    with exit 2 and one sentence, by the dry run too, and nothing is written."""
    facts = detect()
    assert facts.physical_cores
    profile = tmp_path / "other.yaml"
    profile.write_text(json.dumps({"synapse": 1, "name": "other", "hardware": {
        "physical_cores": facts.physical_cores + 1}}))
    lock_before = os.path.exists("/var/lib/synapse/lock")
    for args in (["--dry-run"], ["--yes"]):
        res = synapse("apply", profile, "--root", "/", *args)
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1
        assert (f"hardware.physical_cores is {facts.physical_cores + 1} but this machine has "
                f"{facts.physical_cores}") in res.stderr
    assert os.path.exists("/var/lib/synapse/lock") == lock_before


def test_host_profile_lays_the_hosts_hardware_over_the_export(tmp_path: Path) -> None:
    exported = tmp_path / "profile.yaml"
    exported.write_text((PROFILES / "cpu-avx2.yaml").read_text())
    host = tmp_path / "host-profile.yaml"
    hardware = {"physical_cores": 4, "logical_cpus": 16, "ram": "16G"}
    res = synapse("fleet", "host-profile", exported, "-o", host, "--hardware",
                  json.dumps(hardware), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["changed"] is True
    loaded = load_profile(host)
    assert (loaded.hardware.physical_cores, loaded.hardware.ram) == (4, "16G")
    assert loaded.hardware.cpu_vendor == "intel"  # kept from the export
    assert loaded.kernel.hz == load_profile(exported).kernel.hz
    again = synapse("fleet", "host-profile", exported, "-o", host, "--hardware",
                    json.dumps(hardware), "--json")
    assert json.loads(again.stdout)["changed"] is False
    # without hardware the host profile is the export itself (same hash)
    plain = tmp_path / "plain.yaml"
    assert synapse("fleet", "host-profile", exported, "-o", plain).returncode == 0
    assert load_profile(plain).hash() == load_profile(exported).hash()


@pytest.mark.parametrize(("hardware", "message"), [
    ('{"cores": 4}', "host-profile.yaml:4:14: unknown key 'hardware.cores'"),
    ('{"ram": "2G"}', "runtime.memory_reserve: 4G is not smaller than hardware.ram (2G)"),
    ('["ram"]', "--hardware '[\"ram\"]': is not a JSON object"),
    ('{"physical_cores": "$(reboot)"}', "hardware.physical_cores"),
])
def test_host_profile_refuses_bad_hardware_and_writes_nothing(tmp_path: Path, hardware: str,
                                                              message: str) -> None:
    exported = tmp_path / "profile.yaml"
    exported.write_text((PROFILES / "cpu-avx2.yaml").read_text())
    host = tmp_path / "host-profile.yaml"
    host.write_text("old\n")
    res = synapse("fleet", "host-profile", exported, "-o", host, "--hardware", hardware)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert host.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host-profile.yaml", "profile.yaml"]
