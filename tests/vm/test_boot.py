"""Boot the tuned Debian image in QEMU and prove every setting of the profile is live."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from synapse_os.image import disk
from synapse_os.profile import load_profile
from synapse_os.vm.assertions import vm_assertions
from synapse_os.vm.machine import Machine
from synapse_os.vm.runner import (
    GUEST_PROFILE,
    GUEST_SYNAPSE,
    resolved_profile_yaml,
    run_checks,
    upload,
)
from tests.conftest import REPO
from tests.vm.test_qemu import qemu_pids_for

pytestmark = pytest.mark.slow


def test_vm_test_passes_every_assertion_and_verify_agrees(tuned_image: Path, tuned_profile: Path,
                                                          tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    res = subprocess.run(
        [sys.executable, "-m", "synapse_os.cli", "vm", "test", str(tuned_image), "--profile",
         str(tuned_profile), "--junit", str(junit), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=1800)
    report = json.loads(res.stdout)
    failed = [a for a in report["assertions"] if a["status"] == "fail"]
    assert res.returncode == 0, (failed, report["infra_error"], report["verify"], res.stderr[-3000:])
    assert report["ok"] and report["infra_error"] is None
    statuses = {a["id"]: a["status"] for a in report["assertions"]}
    assert len(statuses) == len(vm_assertions(load_profile(tuned_profile)))
    # QEMU has no cpufreq, and TCG's CPU no energy/performance bias: those read "unknown",
    # everything else must pass (the scratch NVMe disk `synapse vm test` adds carries the
    # NVMe queue settings udev applied)
    unknown = sorted(i for i, s in statuses.items() if s == "unknown")
    assert all("/cpufreq/" in i or "/energy_perf_bias" in i for i in unknown), unknown
    # the idle latency limit, written to every CPU's PM QoS file by tmpfiles at boot
    assert statuses["sysfs /sys/devices/system/cpu/cpu[0-9]*/power/pm_qos_resume_latency_us"] \
        == "pass"
    assert statuses["unit fstrim.timer enabled"] == "pass"
    assert statuses["sysfs /sys/block/nvme[0-9]*n[0-9]*/queue/scheduler"] == "pass"
    assert statuses["sysfs /sys/block/nvme[0-9]*n[0-9]*/queue/read_ahead_kb"] == "pass"
    for must in ("zram0 swap active", "zram0 algorithm", "journald Storage",
                 "cmdline mitigations=off", "sysfs /sys/kernel/mm/transparent_hugepage/enabled",
                 "unit bluetooth.service masked", "kernel CONFIG_ZRAM",
                 "service /health", "service completion", "service listening address",
                 "service synapse-runtime.service Nice",
                 "service synapse-runtime.service CPUSchedulingPolicy",
                 "service synapse-runtime.service OOMScoreAdjust",
                 "service synapse-runtime.service MemoryHigh",
                 "service synapse-runtime.service User",
                 "service synapse-runtime.service LockedModels", "timezone", "root file system",
                 "root mount option noatime", "package htop", "sysfs /sys/kernel/mm/ksm/run",
                 # the tuned kernel, built by the bundle and booted: its config and behaviour
                 "kernel running", "kernel CONFIG_PREEMPT_VOLUNTARY",
                 "kernel CONFIG_PREEMPT_DYNAMIC", "kernel CONFIG_HZ_300",
                 "kernel CONFIG_NO_HZ_FULL", "kernel CONFIG_IKCONFIG_PROC",
                 # 6.12's name; the 6.1 kernel has it as CONFIG_CRYPTO_ZSTD (renames.toml)
                 "kernel CONFIG_ZRAM_BACKEND_ZSTD",
                 "kernel preemption model", "kernel tick rate (measured HZ)",
                 "kernel nohz_full CPUs"):
        assert statuses[must] == "pass", must
    completion = next(a for a in report["assertions"] if a["id"] == "service completion")
    assert completion["actual"].startswith("answered")
    assert report["verify"]["ran"] and report["verify"]["ok"]
    assert report["verify"]["compared"] >= 40
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert suite.get("skipped") == str(len(unknown))
    assert not qemu_pids_for(str(tuned_image))


def test_uefi_boot_and_drift_is_caught_by_both_vm_and_verify(tuned_image: Path,
                                                            tuned_profile: Path) -> None:
    """systemd-boot under OVMF boots the entry install.sh had kernel-install write; a setting
    changed live fails its assertion and `synapse verify` in the guest fails it too (the
    assertions can fail)."""
    profile = load_profile(tuned_profile)
    version = disk.read_metadata(tuned_image)["kernel_version"]
    checks = {c.id: c for c in vm_assertions(profile)}
    with Machine(tuned_image, uefi=True) as m:
        m.start()
        m.wait_for_shell(600)
        cmdline = m.succeed("cat /proc/cmdline").split()
        for word in profile.boot.cmdline:
            assert word in cmdline
        entry = m.succeed("tr -d '\\000' < /sys/firmware/efi/efivars/"
                          "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f | cut -c2-")
        assert entry.strip() == f"synapse-{version}.conf"
        # the tuned kernel is the default entry; Debian's stock kernel stays as a fallback
        assert version.endswith("-synapse") and m.succeed("uname -r").strip() == version
        m.wait_for_unit("multi-user.target", 600)  # the ESP is mounted by then
        entries = m.succeed("ls /boot/efi/loader/entries").split()
        assert any(e.endswith("-amd64.conf") for e in entries), entries
        swappiness = checks["sysctl vm.swappiness"]
        assert run_checks(m, [swappiness])[0].status == "pass"
        m.succeed("sysctl -qw vm.swappiness=60")
        drifted = run_checks(m, [swappiness])[0]
        assert drifted.status == "fail" and drifted.actual == "60"
        m.fail("systemctl unmask cups.service >/dev/null && "
               "[ \"$(systemctl is-enabled cups.service 2>/dev/null)\" = masked ]")
        upload(m, GUEST_PROFILE, resolved_profile_yaml(profile))
        rc, out = m.execute(f"{GUEST_SYNAPSE} verify {GUEST_PROFILE} --settings-only --json "
                            "2>/dev/null", timeout=600)
        verify = {c["id"]: c["status"] for c in json.loads(out)["checks"]}
        assert rc == 1
        assert verify["sysctl vm.swappiness"] == "fail"
        assert verify["unit cups.service masked"] == "fail"
        assert verify["zram0 swap active"] == "pass"
        m.shutdown()
        assert m.proc is not None and m.proc.returncode == 0
    assert not qemu_pids_for(str(tuned_image))

