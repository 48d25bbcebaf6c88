"""The bandwidth probe and the provenance reader, on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from synapse_os.bench import bandwidth, provenance
from tests.conftest import need_tool


def test_bandwidth_probe_measures_memory_not_cache() -> None:
    need_tool("gcc", "apt-get install gcc")
    from_memory = bandwidth.measure(1, array_bytes=256 * 1024 * 1024, passes=5)
    in_cache = bandwidth.measure(1, array_bytes=256 * 1024, passes=20)
    assert from_memory.array_bytes == 256 * 1024 * 1024
    assert from_memory.passes == 5
    assert 0.5 < from_memory.best_gbps < 2000
    assert from_memory.median_gbps <= from_memory.best_gbps
    # a quarter MiB stays in L2: reading it must be clearly faster than streaming from DRAM
    assert in_cache.best_gbps > 1.5 * from_memory.best_gbps


def test_probe_binary_is_compiled_once() -> None:
    first = bandwidth.probe_binary()
    mtime = first.stat().st_mtime_ns
    assert bandwidth.probe_binary() == first
    assert first.stat().st_mtime_ns == mtime


def test_roofline_fraction_arithmetic() -> None:
    # 50 tokens/s reading 200 MB each = 10 GB/s of a 20 GB/s machine
    assert bandwidth.roofline_fraction(50.0, 200e6, 20.0) == pytest.approx(0.5)


def test_default_array_is_far_larger_than_the_cache() -> None:
    assert bandwidth.default_array_bytes() >= min(bandwidth.MIN_ARRAY_BYTES,
                                                  bandwidth.psutil.virtual_memory().available // 4)


def _sysfs_choice(path: Path) -> str | None:
    if not path.exists():
        return None
    words = path.read_text().split()
    return next(w[1:-1] for w in words if w.startswith("["))


def test_provenance_reads_the_live_system() -> None:
    facts = provenance.collect()
    assert facts["cmdline"] == Path("/proc/cmdline").read_text().strip()
    assert facts["kernel"] == Path("/proc/sys/kernel/osrelease").read_text().strip()
    thp = Path("/sys/kernel/mm/transparent_hugepage")
    assert facts["thp"]["enabled"] == _sysfs_choice(thp / "enabled")
    assert facts["thp"]["defrag"] == _sysfs_choice(thp / "defrag")
    vulns = Path("/sys/devices/system/cpu/vulnerabilities")
    assert set(facts["vulnerabilities"]) == {p.name for p in vulns.iterdir()}
    governors = sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"))
    if governors:
        assert facts["cpu"]["governor"] is not None
    else:  # no cpufreq (a VM): recorded as unknown, not guessed
        assert facts["cpu"]["governor"] is None
    assert facts["cpu"]["logical_cores"] >= facts["cpu"]["physical_cores"] >= 1
    assert "avx2" in facts["cpu"]["flags"] or "avx2" not in Path("/proc/cpuinfo").read_text()
    assert facts["memory"]["total_bytes"] > 0
    assert facts["synapse"]["version"]
    assert set(facts["swap"]) == {"total_bytes", "devices", "zram", "zswap_enabled"}


def test_git_revision_names_this_checkout() -> None:
    need_tool("git", "apt-get install git")
    revision = provenance.git_revision()
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        assert revision["commit"] is not None and len(revision["commit"]) == 40
        assert isinstance(revision["dirty"], bool)
