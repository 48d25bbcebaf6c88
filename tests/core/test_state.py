"""The live checks derived from a profile, run for real against this machine's kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from synapse_os.profile import load_profile
from synapse_os.state import _SERVICE_PROBES, Check, checks, desired_state, matches
from tests.conftest import PROFILES


def run_probe(check: Check) -> tuple[str, str]:
    res = subprocess.run(["sh", "-c", check.probe], capture_output=True, text=True, timeout=30)
    return check.evaluate(res.returncode, res.stdout)


def profile_with(tmp_path: Path, body: str) -> list[Check]:
    path = tmp_path / "p.yaml"
    path.write_text("synapse: 1\nname: t\n" + body)
    return checks(desired_state(load_profile(path)))


def live(path: str) -> str:
    return Path(path).read_text().strip()


def test_every_tuned_setting_gets_a_check() -> None:
    state = desired_state(load_profile(PROFILES / "cpu-avx2.yaml"))
    ids = {c.id for c in checks(state)}
    assert {f"sysctl {k}" for k in state.sysctl} <= ids
    assert {f"cmdline {w}" for w in state.cmdline} <= ids
    assert {f"journald {k}" for k in state.journald} <= ids
    assert {"zram0 swap active", "zram0 algorithm", "zswap enabled"} <= ids
    assert "unit bluetooth.service masked" in ids and "unit synapse-runtime.service active" in ids
    for check in checks(state):
        assert check.source, check.id  # every check names the profile key behind it
    service = {c.id.rsplit(" ", 1)[1]: c.expected for c in checks(state)
               if c.id.startswith("service synapse-runtime.service ")}
    # nice -5, batch, -500, MemoryHigh auto = 32G RAM - 4G reserve (page-aligned already)
    assert service == {"Nice": "-5", "CPUSchedulingPolicy": "B", "OOMScoreAdjust": "-500",
                       "MemoryHigh": str(28 * 2**30), "User": "synapse"}


def test_service_properties_are_read_from_the_running_process() -> None:
    """The probe bodies against a real process started the way systemd would start it
    (systemd itself cannot run here: the booted VM test runs the whole probe)."""
    proc = subprocess.Popen(["chrt", "--batch", "0", "nice", "-n", "7", "sleep", "60"])
    try:
        Path(f"/proc/{proc.pid}/oom_score_adj").write_text("321")  # raising needs no privilege
        for prop, want in (("Nice", "7"), ("CPUSchedulingPolicy", "B"),
                           ("OOMScoreAdjust", "321"), ("User", "root")):
            probe = Check(prop, "unit", "runtime", want, f"pid={proc.pid}; "
                          + _SERVICE_PROBES[prop])
            assert run_probe(probe) == ("pass", want)
    finally:
        proc.kill()
        proc.wait()


def test_service_checks_are_unknown_without_systemd(tmp_path: Path) -> None:
    body = ("runtime:\n  engine: synapse-runtime\n  nice: 3\n  models:\n    main:\n"
            "      path: /var/lib/synapse/models/m.gguf\n")
    (check,) = [c for c in profile_with(tmp_path, body) if c.id.endswith(" Nice")]
    status, actual = run_probe(check)
    if not Path("/run/systemd/system").is_dir():  # no systemd as PID 1 (containers, CI)
        assert (status, actual) == ("unknown", "not readable on this machine")
    else:  # the engine is not installed on a development host
        assert (status, actual) == ("unknown", "synapse-runtime.service is not running")


def test_timezone_is_compared_by_zone_data(tmp_path: Path) -> None:
    link = Path("/etc/localtime").readlink().as_posix().split("zoneinfo/", 1)[1]
    other = "Asia/Tokyo" if link != "Asia/Tokyo" else "Europe/Paris"
    for zone, want in ((link, ("pass", link)), (other, ("fail", link))):
        (check,) = [c for c in profile_with(tmp_path, f"timezone: {zone}\n")
                    if c.id == "timezone"]
        assert run_probe(check) == want
    if link in ("Etc/UTC", "UTC"):  # an alias of the live zone is the same zone
        alias = "UTC" if link == "Etc/UTC" else "Etc/UTC"
        (check,) = [c for c in profile_with(tmp_path, f"timezone: {alias}\n")
                    if c.id == "timezone"]
        assert run_probe(check) == ("pass", alias)


def test_sysctl_matching_the_live_value_passes_and_another_fails(tmp_path: Path) -> None:
    current = int(live("/proc/sys/vm/swappiness"))
    (ok,) = [c for c in profile_with(tmp_path, f"memory:\n  swappiness: {current}\n")
             if c.id == "sysctl vm.swappiness"]
    assert run_probe(ok) == ("pass", str(current))
    other = (current + 7) % 200
    (bad,) = [c for c in profile_with(tmp_path, f"memory:\n  swappiness: {other}\n")
              if c.id == "sysctl vm.swappiness"]
    assert run_probe(bad) == ("fail", str(current))


def test_thp_choice_file_is_read_for_its_selected_value(tmp_path: Path) -> None:
    selected = live("/sys/kernel/mm/transparent_hugepage/enabled").split("[")[1].split("]")[0]
    other = next(m for m in ("always", "madvise", "never") if m != selected)
    for mode, status in ((selected, "pass"), (other, "fail")):
        (check,) = [c for c in profile_with(tmp_path, f"memory:\n  thp: {mode}\n")
                    if c.id.endswith("transparent_hugepage/enabled")]
        assert run_probe(check)[0] == status


def test_ksm_run_file_is_read_live(tmp_path: Path) -> None:
    running = live("/sys/kernel/mm/ksm/run") == "1"
    for ksm, status in ((running, "pass"), (not running, "fail")):
        (check,) = [c for c in profile_with(tmp_path, f"memory:\n  ksm: {str(ksm).lower()}\n")
                    if c.id == "sysfs /sys/kernel/mm/ksm/run"]
        assert (check.source, run_probe(check)[0]) == ("memory.ksm", status)


def test_unreadable_setting_is_unknown_not_pass(tmp_path: Path) -> None:
    (check,) = [c for c in profile_with(tmp_path, "cpu:\n  governor: performance\n")
                if "scaling_governor" in c.id]
    status, actual = run_probe(check)
    if Path("/sys/devices/system/cpu/cpu0/cpufreq").exists():  # bare metal: a real answer
        assert status in {"pass", "fail"} and actual
    else:  # VMs and containers have no cpufreq
        assert (status, actual) == ("unknown", "not readable on this machine")


def test_cmdline_token_check_reads_proc_cmdline(tmp_path: Path) -> None:
    words = live("/proc/cmdline").split()
    present = next(w for w in words if "=" in w or w.isalnum())
    assert matches("token", present, " ".join(words))
    (check,) = [c for c in profile_with(tmp_path, "boot:\n  cmdline: [nowatchdog]\n")
                if c.id == "cmdline nowatchdog"]
    assert run_probe(check)[0] == ("pass" if "nowatchdog" in words else "fail")
    assert check.after_reboot


@pytest.mark.parametrize(
    ("how", "expected", "actual", "result"),
    [
        ("equal", "150", "150", True), ("equal", "150", "15", False),
        ("selected", "madvise", "always [madvise] never", True),
        ("selected", "never", "always [madvise] never", False),
        ("token", "audit=0", "root=x audit=0 rw", True), ("token", "audit=0", "audit=00", False),
        ("one_of", "disabled|masked", "masked", True), ("one_of", "disabled|masked", "enabled", False),
    ],
)
def test_matching(how: str, expected: str, actual: str, result: bool) -> None:
    assert matches(how, expected, actual) is result  # type: ignore[arg-type]
