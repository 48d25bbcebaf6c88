"""Resolution against the real Debian linux-source-6.1 tree with its own kconfig."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from synapse_os.kernel.configfile import ConfigLine, parse_config
from synapse_os.kernel.kbuild import copy_kconfig_tree
from synapse_os.kernel.resolve import (
    APPLIED,
    CHOICE,
    DERIVED,
    INVALID,
    SELECTED,
    UNKNOWN,
    UNMET,
    Resolution,
    load_resolution,
    resolve,
)
from tests.conftest import PROFILES
from tests.kernel.conftest import synapse, write_profile

# The blueprint's kernel table, verbatim, plus two symbols that exercise dependency
# ("NUMA_BALANCING needs NUMA") and select ("intel_pstate selects schedutil") failures.
BLUEPRINT = {
    "CONFIG_SCHED_EEVDF": "y",
    "CONFIG_HZ": "300",
    "CONFIG_NO_HZ_FULL": "y",
    "CONFIG_PREEMPT_VOLUNTARY": "y",
    "CONFIG_SPECULATION_MITIGATIONS": "n",
    "CONFIG_NUMA": "n",
    "CONFIG_TRANSPARENT_HUGEPAGE": "y",
    "CONFIG_CPU_FREQ_GOV_PERFORMANCE": "y",
}
EXTRA_CASES = {"CONFIG_NUMA_BALANCING": "y", "CONFIG_CPU_FREQ_GOV_SCHEDUTIL": "n"}


def tree_state(tree: Path) -> list[str]:
    """Top-level entries and the kbuild products that would mark the tree as configured."""
    return sorted(os.listdir(tree)) + [
        p for p in (".config", "include/config", "scripts/kconfig/conf") if (tree / p).exists()
    ]


@pytest.fixture(scope="module")
def blueprint_run(kernel_tree: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Resolution, Path, list[str]]:
    tmp = tmp_path_factory.mktemp("blueprint")
    extra = "\n".join(f"  {k}: '{v}'" for k, v in {**BLUEPRINT, **EXTRA_CASES}.items())
    profile = write_profile(tmp / "blueprint.yaml", f"source: custom\nextra:\n{extra}")
    before = tree_state(kernel_tree)
    out = tmp / "out"
    result = synapse("kernel", "config", profile, "--source", kernel_tree, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads((out / "resolution.json").read_text())
    return load_resolution(out / "resolution.json"), out, before


def test_blueprint_table_resolves_as_the_field_notes_say(blueprint_run: tuple) -> None:
    r, out, _ = blueprint_run
    assert r.kernel_version.startswith("6.1.")
    eevdf = r.get("CONFIG_SCHED_EEVDF")
    assert (eevdf.status, eevdf.actual) == (UNKNOWN, None)
    assert "not a symbol in Linux 6.1" in eevdf.reason and "EEVDF replaced CFS" in eevdf.reason

    hz = r.get("CONFIG_HZ")
    assert hz.status == DERIVED and hz.actual != "300"
    assert hz.fix == "CONFIG_HZ_300=y"

    for name in ("CONFIG_NO_HZ_FULL", "CONFIG_PREEMPT_VOLUNTARY", "CONFIG_TRANSPARENT_HUGEPAGE",
                 "CONFIG_CPU_FREQ_GOV_PERFORMANCE"):
        assert (r.get(name).status, r.get(name).actual) == (APPLIED, "y"), r.get(name)

    numa = r.get("CONFIG_NUMA")
    assert (numa.status, numa.actual, numa.base) == (APPLIED, "n", "y")  # changed from defconfig


def test_mitigations_resolve_under_the_name_this_tree_uses(blueprint_run: tuple,
                                                           kernel_tree: Path) -> None:
    r, out, _ = blueprint_run
    kconfig = (kernel_tree / "arch" / "x86" / "Kconfig").read_text()
    # Debian's 6.1.y carries the CPU_MITIGATIONS rename backport; the test checks that fact
    assert "menuconfig CPU_MITIGATIONS" in kconfig
    assert "config SPECULATION_MITIGATIONS" not in kconfig
    mit = r.get("CONFIG_SPECULATION_MITIGATIONS")
    assert (mit.status, mit.applied_as, mit.actual) == (APPLIED, "CPU_MITIGATIONS", "n")
    assert "renamed CONFIG_CPU_MITIGATIONS" in mit.reason
    config = (out / ".config").read_text()
    assert "# CONFIG_CPU_MITIGATIONS is not set" in config.splitlines()
    assert "# CONFIG_NUMA is not set" in config.splitlines()
    assert "CONFIG_HZ=1000" in config.splitlines()  # what the HZ request really left


def test_dependency_failure_is_explained_by_name(blueprint_run: tuple) -> None:
    r, _, _ = blueprint_run
    bal = r.get("CONFIG_NUMA_BALANCING")
    assert (bal.status, bal.actual) == (UNMET, "n")
    assert "not met: NUMA [=n]" in bal.reason


def test_selected_symbol_names_its_selector(blueprint_run: tuple) -> None:
    r, _, _ = blueprint_run
    gov = r.get("CONFIG_CPU_FREQ_GOV_SCHEDUTIL")
    assert (gov.status, gov.actual) == (SELECTED, "y")
    assert "selected by X86_INTEL_PSTATE [=y]" in gov.reason
    assert gov.fix == "disable CONFIG_X86_INTEL_PSTATE first"


def test_source_tree_is_never_written(blueprint_run: tuple, kernel_tree: Path) -> None:
    _, _, before = blueprint_run
    assert tree_state(kernel_tree) == before
    assert not (kernel_tree / ".config").exists()


def test_report_files_and_running_kernel_check(blueprint_run: tuple) -> None:
    r, out, _ = blueprint_run
    assert sorted(p.name for p in out.iterdir()) == [
        ".config", "resolution.json", "resolution.txt", "synapse.config"]
    text = (out / "resolution.txt").read_text()
    assert "CONFIG_SCHED_EEVDF" in text and "unmet-dependency" in text
    expected = r.expected_config()
    assert expected["CONFIG_CPU_MITIGATIONS"] == "n" and "CONFIG_SCHED_EEVDF" not in expected
    assert r.check_running_config(r.config) == []
    booted = r.config.replace("# CONFIG_NUMA is not set", "CONFIG_NUMA=y")
    assert r.check_running_config(booted) == ["CONFIG_NUMA: expected n, running kernel has y"]


def test_shipped_cpu_avx2_profile_resolves_with_nothing_unexplained(
        kernel_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "avx2"
    result = synapse("kernel", "config", PROFILES / "cpu-avx2.yaml", "--source", kernel_tree,
                     "-o", out, "--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    r = load_resolution(out / "resolution.json")
    assert r.unexplained == [] and r.differences == []
    assert len(r.symbols) == 11
    final = parse_config((out / ".config").read_text())
    assert final["HZ"] == "300" and final["NO_HZ_FULL"] == "y"
    assert final["TRANSPARENT_HUGEPAGE_MADVISE"] == "y"
    assert "applied" in result.stdout and "11/11 requested symbols applied" in result.stdout


def test_choice_override_invalid_values_and_changes_from_base(kernel_tree: Path) -> None:
    requests = [
        ConfigLine("PREEMPT_NONE", "y", "test"),
        ConfigLine("PREEMPT", "y", "test"),
        ConfigLine("X86_INTEL_PSTATE", "m", "test"),
        ConfigLine("NR_CPUS", "99999", "test"),
        ConfigLine("NO_HZ_IDLE", "n", "test"),
    ]
    r = resolve(requests, kernel_tree)
    none, full = r.get("PREEMPT_NONE"), r.get("PREEMPT")
    assert (full.status, full.actual, full.base) == (APPLIED, "y", "n")
    assert none.status == CHOICE and "CONFIG_PREEMPT was requested later" in none.reason
    assert r.get("X86_INTEL_PSTATE").status == INVALID
    assert "bool" in r.get("X86_INTEL_PSTATE").reason
    cpus = r.get("NR_CPUS")
    assert cpus.status == INVALID and "99999 was rejected" in cpus.reason
    idle = r.get("NO_HZ_IDLE")  # the only tick choice: a choice cannot be emptied
    assert idle.status == CHOICE and "CONFIG_NO_HZ_FULL" in idle.reason


def test_in_place_configured_tree_is_copied_not_touched(kernel_tree: Path,
                                                        tmp_path: Path) -> None:
    """A tree with its own .config (kbuild refuses O= then) resolves via a Kconfig copy,
    to the same result as the clean tree, and its .config stays as it was."""
    dirty = tmp_path / "dirty-tree"
    copy_kconfig_tree(kernel_tree, dirty, "x86")
    (dirty / ".config").write_text("CONFIG_NUMA=y\n")
    requests = [ConfigLine("HZ_250", "y", "t"), ConfigLine("NUMA", "n", "t")]
    from_dirty = resolve(requests, dirty)
    from_clean = resolve(requests, kernel_tree)
    assert (dirty / ".config").read_text() == "CONFIG_NUMA=y\n"
    assert not (dirty / "include" / "config").exists()
    strip = [line for line in from_clean.config.splitlines() if line.startswith("CONFIG_")]
    assert [line for line in from_dirty.config.splitlines() if line.startswith("CONFIG_")] == strip
    assert all(s.status == APPLIED for s in from_dirty.symbols)


def test_localmodconfig_trims_modules_to_the_capture(kernel_tree: Path, tmp_path: Path) -> None:
    capture = tmp_path / "hw.json"
    capture.write_text(json.dumps({
        "format": "synapse-hw-capture/1", "kernel": "6.1.0",
        "modules": ["x86_pkg_temp_thermal"],
        "pci": [{"slot": "0000:00:1f.0", "module": "efivarfs"}],
    }))
    profile = write_profile(tmp_path / "p.yaml", "source: custom\nnuma: false\n"
                            "localmodconfig: hw.json")
    out = tmp_path / "out"
    result = synapse("kernel", "config", profile, "--source", kernel_tree, "-o", out)
    assert result.returncode == 0, result.stderr
    final = parse_config((out / ".config").read_text())
    modules = {k for k, v in final.items() if v == "m"}
    # defconfig builds 13 modules (netfilter, thermal, efivarfs); the capture keeps two
    # (one from lsmod, one from a PCI device's driver), the netfilter ones go
    assert {"EFIVAR_FS", "X86_PKG_TEMP_THERMAL"} <= modules
    assert not {m for m in modules if m.startswith(("NF_", "NETFILTER_", "IP_NF_"))}
    assert len(modules) <= 3  # streamline_config.pl itself adds IKCONFIG=m on 6.1
    assert final["NUMA"] == "n"


def test_explain_shows_dependencies_and_help(kernel_tree: Path) -> None:
    result = synapse("kernel", "explain", "CONFIG_NUMA_BALANCING", "--source", kernel_tree)
    assert result.returncode == 0, result.stderr
    assert "NUMA [=y]" in result.stdout and "Memory placement aware NUMA scheduler" in result.stdout
    unknown = synapse("kernel", "explain", "SCHED_EEVDF", "--source", kernel_tree, "--json")
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout)["known"] is False
    assert "EEVDF replaced CFS" in json.loads(unknown.stdout)["note"]
    renamed = synapse("kernel", "explain", "CONFIG_SPECULATION_MITIGATIONS", "--source",
                      kernel_tree)
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.stdout.startswith("this tree calls it CONFIG_CPU_MITIGATIONS")
