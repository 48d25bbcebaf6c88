"""The live checks derived from a profile, run for real against this machine's kernel."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from synapse_os.profile import load_profile
from synapse_os.tunables import Check, checks, desired_state, matches
from synapse_os.tunables.service import SERVICE_PROBES
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
    # nice -5, batch, -500, MemoryHigh auto = 32G RAM - 4G reserve (page-aligned already),
    # the weights mlocked, the engine on the inference CPUs
    assert service == {"Nice": "-5", "CPUSchedulingPolicy": "B", "OOMScoreAdjust": "-500",
                       "MemoryHigh": str(28 * 2**30), "User": "synapse",
                       "LockedModels": "locked", "CPUAffinity": "2-15"}


def test_service_properties_are_read_from_the_running_process() -> None:
    """The probe bodies against a real process started the way systemd would start it
    (systemd itself cannot run here: the booted VM test runs the whole probe)."""
    proc = subprocess.Popen(["chrt", "--batch", "0", "nice", "-n", "7", "sleep", "60"])
    try:
        import time

        for _ in range(200):  # until chrt and nice have exec'd the sleep they set up
            if Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep":
                break
            time.sleep(0.01)
        Path(f"/proc/{proc.pid}/oom_score_adj").write_text("321")  # raising needs no privilege
        for prop, want in (("Nice", "7"), ("CPUSchedulingPolicy", "B"),
                           ("OOMScoreAdjust", "321"), ("User", "root")):
            probe = Check(prop, "unit", "runtime", want, f"pid={proc.pid}; "
                          + SERVICE_PROBES[prop])
            assert run_probe(probe) == ("pass", want)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("mlock", [True, False])
def test_locked_models_are_read_from_the_engines_mappings(small_model: tuple[Path, str],
                                                          mlock: bool) -> None:
    """runtime.mlock: the engine's own loader (llama-cpp-python) with and without mlock,
    one file loaded for three roles as cpu-avx2 does (smaps shares a file's locked pages
    out between its mappings: the probe compares VmLck with the mappings' size)."""
    import sys

    loader = ("import sys, time\n"
              "from synapse_os.runtime.config import ModelConfig\n"
              "from synapse_os.runtime.engine import load_model\n"
              f"m = [load_model(role, ModelConfig(path={str(small_model[0])!r}, context=128), "
              f"1, 32, 42, None, {mlock}) for role in ('main', 'small', 'draft')]\n"
              "print('loaded', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", loader], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "loaded"
        probe = Check("LockedModels", "unit", "runtime.mlock", "locked",
                      f"pid={proc.pid}; " + SERVICE_PROBES["LockedModels"])
        status, actual = run_probe(probe)
        if mlock:
            assert (status, actual) == ("pass", "locked")
        else:
            assert status == "fail" and actual.startswith("0 of ") and "kB locked" in actual
    finally:
        proc.kill()
        proc.wait()


def test_mlock_is_refused_for_an_engine_that_would_ignore_it(tmp_path: Path) -> None:
    from synapse_os.errors import UserError

    with pytest.raises(UserError, match="ollama takes no mlock setting"):
        profile_with(tmp_path, "runtime:\n  engine: ollama\n  mlock: true\n")


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


def test_nvme_queue_settings_are_checked_on_every_namespace(tmp_path: Path) -> None:
    """The scheduler is a choice file ("[none] mq-deadline kyber"): the bracketed word is
    the live value. Without NVMe (this machine, the CI guest) the check says unknown."""
    import glob

    from synapse_os.apply.untrusted import LIVE_PATH

    found = {c.id: c for c in profile_with(
        tmp_path, "disk:\n  nvme_scheduler: none\n  nvme_read_ahead_kb: 4096\n"
                  "  fstrim: true\n")}
    scheduler = found["sysfs /sys/block/nvme[0-9]*n[0-9]*/queue/scheduler"]
    assert scheduler.source == "disk.nvme_scheduler"
    assert matches("selected", "none", "[none] mq-deadline kyber")
    assert not matches("selected", "none", "none [mq-deadline] kyber")
    ahead = found["sysfs /sys/block/nvme[0-9]*n[0-9]*/queue/read_ahead_kb"]
    assert (ahead.source, ahead.expected) == ("disk.nvme_read_ahead_kb", "4096")
    if not glob.glob("/sys/block/nvme*n*/queue/scheduler"):
        assert run_probe(scheduler) == ("unknown", "not readable on this machine")
    assert found["unit fstrim.timer enabled"].source == "disk.fstrim"
    # rollback may restore them: the journal's live values accept these paths only
    assert LIVE_PATH.fullmatch("/sys/block/nvme0n1/queue/scheduler")
    assert not LIVE_PATH.fullmatch("/sys/block/nvme0n1/queue/../../../../etc/shadow")
    assert not LIVE_PATH.fullmatch("/sys/block/sda/queue/scheduler")


def test_power_and_idle_settings_are_read_from_every_cpu(tmp_path: Path) -> None:
    """One declaration each (the field's sysfs metadata): rendered, checked, remembered by
    apply and recorded by bench. Where this machine has the file, its live value decides."""
    import glob

    from synapse_os.apply.untrusted import LIVE_PATH

    found = {c.id: c for c in profile_with(
        tmp_path, "cpu:\n  energy_perf_bias: balance-power\n  no_turbo: true\n"
                  "  platform_profile: quiet\n  idle_latency_us: 0\n")}
    cpu = "/sys/devices/system/cpu"
    epb = found[f"sysfs {cpu}/cpu[0-9]*/power/energy_perf_bias"]
    assert (epb.source, epb.expected) == ("cpu.energy_perf_bias", "8")  # read back as a number
    assert found[f"sysfs {cpu}/intel_pstate/no_turbo"].expected == "1"
    assert found["sysfs /sys/firmware/acpi/platform_profile"].expected == "quiet"
    idle = found[f"sysfs {cpu}/cpu[0-9]*/power/pm_qos_resume_latency_us"]
    assert (idle.source, idle.expected) == ("cpu.idle_latency_us", "n/a")  # 0: polling only
    latencies = {Path(p).read_text().strip()
                 for p in glob.glob(f"{cpu}/cpu[0-9]*/power/pm_qos_resume_latency_us")}
    if latencies:  # every CPU has it on a PM kernel: "0" (no limit) unless someone set one
        assert run_probe(idle) == ("pass" if latencies == {"n/a"} else "fail",
                                   " ".join(sorted(latencies)))
    for check in (epb, found["sysfs /sys/firmware/acpi/platform_profile"]):
        if not glob.glob(check.id.removeprefix("sysfs ")):
            assert run_probe(check) == ("unknown", "not readable on this machine")
    assert LIVE_PATH.fullmatch(f"{cpu}/cpu3/power/pm_qos_resume_latency_us")
    assert LIVE_PATH.fullmatch("/sys/firmware/acpi/platform_profile")
    assert not LIVE_PATH.fullmatch(f"{cpu}/cpu3/power/control")


def test_cpu_partition_is_read_from_the_engine_and_from_systemd(tmp_path: Path) -> None:
    """The engine's CPUs from its main process (a real process pinned with taskset), and
    systemd's from PID 1, each in the kernel's CPU-list form."""
    found = {c.id: c for c in profile_with(
        tmp_path, "hardware: {logical_cpus: 2}\ncpu: {inference_cpus: '1'}\n"
                  "runtime:\n  models: {main: {path: /m.gguf}}\n")}
    assert found["cmdline irqaffinity=0"].source == "cpu.inference_cpus"
    pid1 = live("/proc/1/status").split("Cpus_allowed_list:")[1].split()[0]
    system = found["systemd CPUAffinity"]
    assert run_probe(system)[0] == ("pass" if pid1 == "0" else "fail")
    assert found["service synapse-runtime.service CPUAffinity"].expected == "1"
    proc = subprocess.Popen(["taskset", "-c", "1", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while "sleep" not in live(f"/proc/{proc.pid}/comm") and time.monotonic() < deadline:
            time.sleep(0.05)
        probe = Check("CPUAffinity", "unit", "cpu.inference_cpus", "1",
                      f"pid={proc.pid}; " + SERVICE_PROBES["CPUAffinity"])
        assert run_probe(probe) == ("pass", "1")
    finally:
        proc.kill()
        proc.wait()


def test_one_inference_thread_per_physical_core_of_the_affinity(tmp_path: Path) -> None:
    """SMT siblings (same package and core id) count once; CPUs outside the process's
    affinity do not count."""
    import os

    from synapse_os.runtime.config import physical_cores_available

    mine = sorted(os.sched_getaffinity(0))
    for cpu in mine:  # every CPU this process may use is a sibling of core 0
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text("0\n")
    assert physical_cores_available(tmp_path) == 1
    res = subprocess.run(["taskset", "-c", str(mine[0]), sys.executable, "-c",
                          "from synapse_os.runtime.config import physical_cores_available;"
                          "print(physical_cores_available())"],
                         capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "1"


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


def _host_config() -> dict[str, str]:
    import gzip

    out = {}
    for line in gzip.decompress(Path("/proc/config.gz").read_bytes()).decode().splitlines():
        if line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_a_custom_kernel_is_checked_by_what_it_does_once_booted() -> None:
    from synapse_os.tunables import kernel_checks

    profile = load_profile(PROFILES / "cpu-avx2-debian.yaml")
    boot = {c.id: c for c in kernel_checks(profile, desired_state(profile))
            if not c.id.startswith("kernel CONFIG_")}
    assert {i: (c.source, c.expected) for i, c in boot.items()} == {
        "kernel running": ("kernel.source", "linux-synapse"),
        "kernel preemption model": ("kernel.preempt", "voluntary"),
        "kernel tick rate (measured HZ)": ("kernel.hz", "300"),
        "kernel nohz_full CPUs": ("kernel.nohz_full_cpus", "1"),
    }
    assert all(c.after_reboot for c in boot.values())
    # this machine runs another kernel: each check reads it and fails, or cannot read it
    results = {i: run_probe(c) for i, c in boot.items()}
    assert results["kernel running"] == ("fail", subprocess.run(
        ["uname", "-r"], capture_output=True, text=True).stdout.strip())
    assert results["kernel nohz_full CPUs"][0] in ("fail", "unknown")


def test_the_tick_rate_is_measured_and_matches_this_kernels_config() -> None:
    from synapse_os.tunables.kernel import _HZ_PROBE

    hz = _host_config()["CONFIG_HZ"]
    res = subprocess.run(["sh", "-c", _HZ_PROBE], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == hz, (res.stdout, res.stderr)


def test_the_preemption_model_is_read_from_debugfs_on_a_dynamic_kernel() -> None:
    """This machine's kernel is PREEMPT_DYNAMIC: the model is the one debugfs puts in
    parentheses (mounted in a mount namespace of the test's own), or unknown where debugfs
    cannot be read (not mounted, or refused by a locked-down kernel) - never a guess."""
    from synapse_os.tunables import UNKNOWN_RC
    from synapse_os.tunables.kernel import _PREEMPT_PROBE

    assert _host_config().get("CONFIG_PREEMPT_DYNAMIC") == "y"
    mount = "mount -t debugfs none /sys/kernel/debug 2>/dev/null; "
    res = subprocess.run(["unshare", "--mount", "sh", "-c", mount + _PREEMPT_PROBE],
                         capture_output=True, text=True, timeout=30)
    listing = subprocess.run(["unshare", "--mount", "sh", "-c",
                              mount + "cat /sys/kernel/debug/sched/preempt"],
                             capture_output=True, text=True)
    if listing.returncode == 0:
        assert res.returncode == 0 and f"({res.stdout.strip()})" in listing.stdout.split()
    else:
        assert res.returncode == UNKNOWN_RC and "not readable" in res.stdout


@pytest.mark.parametrize(("spec", "text"), [("1", "1"), ("2-15", "2-15"), ("3,1-2", "1-3"),
                                            ("1,3,5-7", "1,3,5-7"), ("4,5,6,9", "4-6,9")])
def test_cpu_lists_are_written_as_the_kernel_prints_them(spec: str, text: str) -> None:
    from synapse_os.tunables.kernel import cpulist_text

    assert cpulist_text(spec) == text


def test_a_starting_engine_is_unknown_but_a_crash_loop_fails(tmp_path: Path) -> None:
    """A Type=notify engine loading its models is activating/start: its active check and
    its locked-models check read unknown meanwhile; activating/auto-restart (a crash loop)
    still fails the active check. systemctl here is a stand-in printing the given states
    (this machine has no systemd as PID 1); the probes are the shipped ones, minus the
    systemd-is-running guard."""
    from synapse_os.tunables.base import SYSTEMD_UP

    fake = tmp_path / "systemctl"
    fake.write_text('#!/bin/sh\ncase "$*" in\n  *ActiveState*|is-active*) echo "$ACTIVE" ;;\n'
                    '  *SubState*) echo "$SUB" ;;\nesac\n')
    fake.chmod(0o755)
    profile = load_profile(PROFILES / "cpu-avx2-debian.yaml")
    active = next(c for c in checks(desired_state(profile))
                  if c.id == "unit synapse-runtime.service active")
    probe = active.probe.replace(SYSTEMD_UP, "")
    seen = []
    for state, sub in (("activating", "start"), ("activating", "auto-restart"),
                       ("active", "running"), ("failed", "failed")):
        res = subprocess.run(["sh", "-c", probe], capture_output=True, text=True,
                             env={"PATH": f"{tmp_path}:/usr/bin:/bin", "ACTIVE": state,
                                  "SUB": sub})
        seen.append(active.evaluate(res.returncode, res.stdout)[0])
    assert seen == ["unknown", "fail", "pass", "fail"]
