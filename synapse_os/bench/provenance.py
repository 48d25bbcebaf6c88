"""The system state a benchmark ran under, read from /proc and /sys.

Every value that cannot be read on this machine (no cpufreq in a VM, no microcode field) is
recorded as None, never guessed, so two records can be diffed honestly.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any

import psutil

from synapse_os import __version__
from synapse_os.profile.model import NUMA_SYSCTLS, OWNED_SYSCTL
from synapse_os.revision import git_revision
from synapse_os.state import sysctl_path

SYS_CPU = Path("/sys/devices/system/cpu")
THP = Path("/sys/kernel/mm/transparent_hugepage")
# Every sysctl a profile field owns, plus the ones inference results are known to follow.
SYSCTLS = tuple(sorted({*OWNED_SYSCTL, "vm.overcommit_memory", "vm.max_map_count",
                        *NUMA_SYSCTLS, "kernel.nmi_watchdog", "kernel.sched_autogroup_enabled"}))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _bracketed(text: str | None) -> str | None:
    """The selected word of a sysfs choice such as 'always [madvise] never'."""
    if text is None:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return text


def _unique(values: list[str]) -> str | list[str] | None:
    distinct = sorted(set(values))
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else distinct


def _cpuinfo() -> dict[str, Any]:
    text = _read(Path("/proc/cpuinfo")) or ""
    models: list[str] = []
    microcode: list[str] = []
    flags: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name":
            models.append(value)
        elif key == "microcode":
            microcode.append(value)
        elif key == "flags" and not flags:
            flags = value.split()
    return {
        "model": _unique(models) or platform.processor() or None,
        "microcode": _unique(microcode) or _read(SYS_CPU / "cpu0" / "microcode" / "version"),
        "flags": sorted(flags) or None,
    }


def _per_cpu(relative: str) -> str | list[str] | None:
    values = [v for p in sorted(SYS_CPU.glob(f"cpu[0-9]*/{relative}")) if (v := _read(p))]
    return _unique(values)


def _vulnerabilities() -> dict[str, str] | None:
    directory = SYS_CPU / "vulnerabilities"
    if not directory.is_dir():
        return None
    return {p.name: _read(p) or "unknown" for p in sorted(directory.iterdir())}


def _swap() -> dict[str, Any]:
    devices = []
    for line in (_read(Path("/proc/swaps")) or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5:
            devices.append({"name": parts[0], "type": parts[1], "size_kib": int(parts[2]),
                            "priority": int(parts[4])})
    zram = []
    for block in sorted(Path("/sys/block").glob("zram*")):
        zram.append({"name": block.name, "disksize": _read(block / "disksize"),
                     "algorithm": _bracketed(_read(block / "comp_algorithm"))})
    return {"total_bytes": psutil.swap_memory().total, "devices": devices, "zram": zram,
            "zswap_enabled": _read(Path("/sys/module/zswap/parameters/enabled"))}


def _os_release() -> str | None:
    for line in (_read(Path("/etc/os-release")) or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return None


def collect() -> dict[str, Any]:
    """Everything about this system that can change a benchmark's result."""
    cpu = _cpuinfo()
    uname = platform.uname()
    return {
        "host": socket.gethostname(),
        "os": _os_release(),
        "kernel": uname.release,
        "kernel_version": uname.version,
        "cmdline": _read(Path("/proc/cmdline")),
        "cpu": {
            "model": cpu["model"],
            "flags": cpu["flags"],
            "microcode": cpu["microcode"],
            "logical_cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
            "smt_control": _read(SYS_CPU / "smt" / "control"),
            "smt_active": _read(SYS_CPU / "smt" / "active"),
            "governor": _per_cpu("cpufreq/scaling_governor"),
            "scaling_driver": _per_cpu("cpufreq/scaling_driver"),
            "energy_performance_preference": _per_cpu(
                "cpufreq/energy_performance_preference"),
            "numa_nodes": len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))) or None,
        },
        "vulnerabilities": _vulnerabilities(),
        "thp": {"enabled": _bracketed(_read(THP / "enabled")),
                "defrag": _bracketed(_read(THP / "defrag"))},
        "sysctl": {key: _read(Path(sysctl_path(key))) for key in SYSCTLS},
        "memory": {"total_bytes": psutil.virtual_memory().total},
        "swap": _swap(),
        "synapse": {"version": __version__, **git_revision()},
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }
