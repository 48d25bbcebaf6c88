"""The system state a benchmark ran under, read from /proc and /sys.

Every value that cannot be read on this machine (no cpufreq in a VM, no microcode field) is
recorded as None, never guessed, so two records can be diffed honestly.
"""

from __future__ import annotations

import fnmatch
import platform
from pathlib import Path
from typing import Any

from synapse_os import __version__
from synapse_os.profile.model import SYSFS_FIELDS
from synapse_os.revision import git_revision
from synapse_os.tunables.sysctl import PROVENANCE_SYSCTLS as SYSCTLS
from synapse_os.tunables.sysctl import sysctl_path

SYS_CPU = "/sys/devices/system/cpu"
THP = "/sys/kernel/mm/transparent_hugepage"


class Files:
    """Where provenance is read from: this machine's /proc and /sys, or (`FileDump`) a dump
    of the same files taken inside a guest, so both are read by one set of rules."""

    def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    def glob(self, pattern: str) -> list[str]:
        return sorted(str(p) for p in Path("/").glob(pattern.lstrip("/")))


class FileDump(Files):
    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def read(self, path: str) -> str | None:
        text = self.files.get(path)
        return None if text is None else text.strip()

    def glob(self, pattern: str) -> list[str]:
        return sorted(p for p in self.files if fnmatch.fnmatchcase(p, pattern))


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


def _cpuinfo(files: Files) -> dict[str, Any]:
    models: list[str] = []
    microcode: list[str] = []
    flags: list[str] = []
    cores: set[tuple[str, str]] = set()
    logical = 0
    package = ""
    for line in (files.read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            logical += 1
        elif key == "physical id":
            package = value
        elif key == "core id":
            cores.add((package, value))
        elif key == "model name":
            models.append(value)
        elif key == "microcode":
            microcode.append(value)
        elif key == "flags" and not flags:
            flags = value.split()
    return {
        "model": _unique(models),
        "microcode": _unique(microcode) or files.read(f"{SYS_CPU}/cpu0/microcode/version"),
        "flags": sorted(flags) or None,
        "logical_cores": logical or None,
        "physical_cores": len(cores) or logical or None,
    }


def _per_cpu(files: Files, relative: str) -> str | list[str] | None:
    values = [v for p in files.glob(f"{SYS_CPU}/cpu[0-9]*/{relative}") if (v := files.read(p))]
    return _unique(values)


def _vulnerabilities(files: Files) -> dict[str, str] | None:
    found = files.glob(f"{SYS_CPU}/vulnerabilities/*")
    if not found:
        return None
    return {Path(p).name: files.read(p) or "unknown" for p in found}


def _meminfo_bytes(files: Files, field: str) -> int | None:
    for line in (files.read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key == field and value.split():
            return int(value.split()[0]) * 1024
    return None


def _swap(files: Files) -> dict[str, Any]:
    devices = []
    for line in (files.read("/proc/swaps") or "").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5:
            devices.append({"name": parts[0], "type": parts[1], "size_kib": int(parts[2]),
                            "priority": int(parts[4])})
    zram = []
    for block in files.glob("/sys/block/zram*/disksize"):
        base = block.rsplit("/", 1)[0]
        zram.append({"name": Path(base).name, "disksize": files.read(block),
                     "algorithm": _bracketed(files.read(f"{base}/comp_algorithm"))})
    return {"total_bytes": _meminfo_bytes(files, "SwapTotal"), "devices": devices, "zram": zram,
            "zswap_enabled": files.read("/sys/module/zswap/parameters/enabled")}


def _os_release(files: Files) -> str | None:
    for line in (files.read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return None


# What `collect` reads: a guest dumps exactly these (globs expanded there).
READ_PATTERNS = (
    "/proc/cpuinfo", "/proc/cmdline", "/proc/meminfo", "/proc/swaps", "/proc/loadavg",
    "/proc/sys/kernel/hostname", "/proc/sys/kernel/osrelease", "/proc/sys/kernel/version",
    "/etc/os-release", f"{SYS_CPU}/cpu0/microcode/version", f"{SYS_CPU}/smt/control",
    f"{SYS_CPU}/smt/active", f"{SYS_CPU}/cpu[0-9]*/cpufreq/scaling_governor",
    f"{SYS_CPU}/cpu[0-9]*/cpufreq/scaling_driver",
    f"{SYS_CPU}/cpu[0-9]*/cpufreq/energy_performance_preference",
    f"{SYS_CPU}/vulnerabilities/*", "/sys/devices/system/node/node[0-9]*/cpulist",
    f"{THP}/enabled", f"{THP}/defrag", "/sys/block/zram*/disksize",
    "/sys/block/zram*/comp_algorithm", "/sys/module/zswap/parameters/enabled",
    *(sysctl_path(key) for key in SYSCTLS),
    *(f.path for f in SYSFS_FIELDS),
)


def _sysfs_settings(files: Files) -> dict[str, str | list[str] | None]:
    """The live value of every profile field that is a sysfs file, by profile key."""
    out = {}
    for setting in SYSFS_FIELDS:
        values = [files.read(p) or "" for p in files.glob(setting.path)]
        if setting.choice:
            values = [_bracketed(v) or "" for v in values]
        out[setting.key] = _unique([v for v in values if v])
    return out


def collect(files: Files | None = None) -> dict[str, Any]:
    """Everything about a system that can change a benchmark's result: this machine's, or
    (given a `FileDump`) a guest's."""
    files = files or Files()
    local = type(files) is Files
    cpu = _cpuinfo(files)
    load = (files.read("/proc/loadavg") or "").split()[:3]
    return {
        "host": files.read("/proc/sys/kernel/hostname"),
        "os": _os_release(files),
        "kernel": files.read("/proc/sys/kernel/osrelease"),
        "kernel_version": files.read("/proc/sys/kernel/version"),
        "cmdline": files.read("/proc/cmdline"),
        "cpu": {
            "model": cpu["model"] or (platform.processor() if local else None) or None,
            "flags": cpu["flags"],
            "microcode": cpu["microcode"],
            "logical_cores": cpu["logical_cores"],
            "physical_cores": cpu["physical_cores"],
            "smt_control": files.read(f"{SYS_CPU}/smt/control"),
            "smt_active": files.read(f"{SYS_CPU}/smt/active"),
            "governor": _per_cpu(files, "cpufreq/scaling_governor"),
            "scaling_driver": _per_cpu(files, "cpufreq/scaling_driver"),
            "energy_performance_preference": _per_cpu(
                files, "cpufreq/energy_performance_preference"),
            "numa_nodes": len(files.glob("/sys/devices/system/node/node[0-9]*/cpulist"))
            or None,
        },
        "vulnerabilities": _vulnerabilities(files),
        "thp": {"enabled": _bracketed(files.read(f"{THP}/enabled")),
                "defrag": _bracketed(files.read(f"{THP}/defrag"))},
        "sysctl": {key: files.read(sysctl_path(key)) for key in SYSCTLS},
        "sysfs": _sysfs_settings(files),
        "memory": {"total_bytes": _meminfo_bytes(files, "MemTotal")},
        "swap": _swap(files),
        "synapse": {"version": __version__, **git_revision()},  # the harness that measured
        "python": platform.python_version() if local else None,
        "load_average": [float(x) for x in load] or None,
    }
