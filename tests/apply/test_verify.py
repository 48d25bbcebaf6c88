"""verify on this machine (live /) and on a target tree: pass / fail / unknown, honestly."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from synapse_os.tunables import checks, desired_state
from tests.apply.helpers import synapse
from tests.conftest import PROFILES


def live_hostname() -> str:
    return Path("/etc/hostname").read_text().strip()


def live_swappiness() -> int:
    return int(Path("/proc/sys/vm/swappiness").read_text())


def write_profile(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "live.yaml"
    path.write_text(f"synapse: 1\nname: live-test\nbase: debian\nhostname: {live_hostname()}\n"
                    + body)
    return path


def verify_json(*args: str | Path) -> tuple[int, dict[str, object]]:
    res = synapse("verify", *args, "--json")
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout)


def by_id(report: dict[str, object]) -> dict[str, dict[str, str]]:
    return {c["id"]: c for c in report["checks"]}  # type: ignore[attr-defined, index]


def test_stock_baseline_has_only_hostname_and_timezone() -> None:
    from synapse_os.profile import load_profile

    state = desired_state(load_profile(PROFILES / "stock-baseline.yaml"))
    assert [c.id for c in checks(state)] == ["hostname", "timezone"]


def test_current_swappiness_passes_and_another_value_fails(tmp_path: Path) -> None:
    now = live_swappiness()
    rc, report = verify_json(write_profile(tmp_path, f"memory:\n  swappiness: {now}\n"),
                             "--settings-only")
    assert by_id(report)["sysctl vm.swappiness"]["status"] == "pass"
    assert by_id(report)["hostname"]["status"] == "pass"
    assert rc == 0 and report["ok"] is True

    other = 10 if now != 10 else 20
    rc, report = verify_json(write_profile(tmp_path, f"memory:\n  swappiness: {other}\n"),
                             "--settings-only")
    check = by_id(report)["sysctl vm.swappiness"]
    assert (check["status"], check["actual"], check["expected"]) == ("fail", str(now),
                                                                     str(other))
    assert rc == 1 and report["ok"] is False


def test_unreadable_values_are_unknown_not_pass(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, "cpu:\n  governor: performance\n")
    rc, report = verify_json(profile, "--settings-only")
    check = by_id(report)["sysfs /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"]
    if glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor"):
        assert check["status"] in ("pass", "fail")  # a machine with cpufreq: a real verdict
    else:
        assert check["status"] == "unknown"  # this VM: no cpufreq
        assert rc == 0  # unknown is not drift


def test_table_output(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, f"memory:\n  swappiness: {live_swappiness()}\n")
    res = synapse("verify", profile, "--settings-only")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "EXPECTED", "ACTUAL"]
    assert any(line.startswith("PASS") and "vm.swappiness" in line for line in lines)
    assert "3 pass, 0 fail, 0 unknown" in res.stdout


def test_files_on_a_target_tree(gpu_profile: Path, root: Path) -> None:
    rc, report = verify_json(gpu_profile, "--root", root)
    assert rc == 1
    assert report["live"] is False and "not the running system" in report["notes"][0]
    assert all(c["kind"] == "file" for c in report["checks"])
    assert by_id(report)["file /etc/systemd/zram-generator.conf"]["actual"] == "missing"

    assert synapse("apply", gpu_profile, "--root", root, "--yes").returncode == 0
    rc, report = verify_json(gpu_profile, "--root", root)
    assert rc == 0, [c for c in report["checks"] if c["status"] != "pass"]
    assert report["counts"] == {"pass": 19, "fail": 0, "unknown": 0}
    assert by_id(report)["file /etc/systemd/system/cups.service"]["actual"] == "-> /dev/null"

    (root / "etc/sysctl.d/90-synapse.conf").write_text("vm.swappiness = 1\n")
    (root / "etc/hostname").chmod(0o600)
    rc, report = verify_json(gpu_profile, "--root", root)
    assert rc == 1
    failed = sorted(c["id"] for c in report["checks"] if c["status"] == "fail")
    assert failed == ["file /etc/hostname", "file /etc/sysctl.d/90-synapse.conf"]
    assert by_id(report)["file /etc/hostname"]["actual"].startswith("600 ")
