"""Resolution against the real Debian trees (linux-source-6.1 and -6.12) with their own
kconfig: the blueprint's table, every explanation path and the shipped profile on each."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from synapse_os.kernel.configfile import ConfigLine, parse_config
from synapse_os.kernel.fragment import required_symbols
from synapse_os.kernel.kbuild import copy_kconfig_tree, kernel_version
from synapse_os.kernel.resolve import (
    APPLIED,
    CHOICE,
    DERIVED,
    INVALID,
    OVERRIDDEN,
    SELECTED,
    UNKNOWN,
    UNMET,
    Resolution,
    load_resolution,
    resolve,
)
from synapse_os.kernel.versions import series_of
from synapse_os.profile import load_profile
from synapse_os.profile.model import MITIGATIONS_ACK
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


STAND_IN_SHA = "5" * 64  # no tarball is fetched: makepkg never runs in these tests


@pytest.fixture(scope="module")
def blueprint_run(any_tree: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Resolution, Path, list[str], Path]:
    """The blueprint's table through the real CLI, once per supported tree."""
    tmp = tmp_path_factory.mktemp("blueprint")
    extra = "\n".join(f"  {k}: '{v}'" for k, v in {**BLUEPRINT, **EXTRA_CASES}.items())
    # the blueprint switches mitigations off: that needs the acknowledgement
    ack = f"boot:\n  mitigations_risk: '{MITIGATIONS_ACK}'\n"
    # the recipes pin the source tarball's sha256; the tree's own release is not one the
    # version table pins, so the profile does (as a user building that release would)
    profile = write_profile(tmp / "blueprint.yaml",
                            f"source: custom\ntarball_sha256: '{STAND_IN_SHA}'\nextra:\n{extra}",
                            ack)
    before = tree_state(any_tree)
    out = tmp / "out"
    result = synapse("kernel", "config", profile, "--source", any_tree, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads((out / "resolution.json").read_text())
    return load_resolution(out / "resolution.json"), out, before, profile


def test_blueprint_table_resolves_as_the_field_notes_say(blueprint_run: tuple,
                                                         any_tree: Path) -> None:
    r, out, _, _ = blueprint_run
    assert r.kernel_version == kernel_version(any_tree) and r.supported
    eevdf = r.get("CONFIG_SCHED_EEVDF")
    assert (eevdf.status, eevdf.actual) == (UNKNOWN, None)
    assert f"not a symbol in Linux {r.kernel_version}" in eevdf.reason
    assert "EEVDF replaced CFS" in eevdf.reason

    hz = r.get("CONFIG_HZ")
    assert hz.status == DERIVED and hz.actual != "300"
    assert hz.fix == "CONFIG_HZ_300=y"

    for name in ("CONFIG_NO_HZ_FULL", "CONFIG_PREEMPT_VOLUNTARY", "CONFIG_TRANSPARENT_HUGEPAGE",
                 "CONFIG_CPU_FREQ_GOV_PERFORMANCE"):
        assert (r.get(name).status, r.get(name).actual) == (APPLIED, "y"), r.get(name)

    numa = r.get("CONFIG_NUMA")
    assert (numa.status, numa.actual, numa.base) == (APPLIED, "n", "y")  # changed from defconfig


def test_mitigations_resolve_under_the_name_this_tree_uses(blueprint_run: tuple,
                                                           any_tree: Path) -> None:
    r, out, _, _ = blueprint_run
    kconfig = (any_tree / "arch" / "x86" / "Kconfig").read_text()
    if (any_tree / "arch" / "Kconfig").exists():
        kconfig += (any_tree / "arch" / "Kconfig").read_text()
    # Debian's 6.1.y carries the CPU_MITIGATIONS rename backport; the test checks that fact
    assert "config CPU_MITIGATIONS" in kconfig
    assert "config SPECULATION_MITIGATIONS" not in kconfig
    mit = r.get("CONFIG_SPECULATION_MITIGATIONS")
    assert (mit.status, mit.applied_as, mit.actual) == (APPLIED, "CPU_MITIGATIONS", "n")
    assert "renamed CONFIG_CPU_MITIGATIONS" in mit.reason
    config = (out / ".config").read_text()
    assert "# CONFIG_CPU_MITIGATIONS is not set" in config.splitlines()
    assert "# CONFIG_NUMA is not set" in config.splitlines()
    assert "CONFIG_HZ=1000" in config.splitlines()  # what the HZ request really left


def test_dependency_failure_is_explained_by_name(blueprint_run: tuple) -> None:
    r, _, _, _ = blueprint_run
    bal = r.get("CONFIG_NUMA_BALANCING")
    assert (bal.status, bal.actual) == (UNMET, "n")
    assert "not met: NUMA [=n]" in bal.reason


def test_selected_symbol_names_its_selector(blueprint_run: tuple) -> None:
    r, _, _, _ = blueprint_run
    gov = r.get("CONFIG_CPU_FREQ_GOV_SCHEDUTIL")
    assert (gov.status, gov.actual) == (SELECTED, "y")
    assert "selected by X86_INTEL_PSTATE [=y]" in gov.reason
    assert gov.fix == "disable CONFIG_X86_INTEL_PSTATE first"


def test_source_tree_is_never_written(blueprint_run: tuple, any_tree: Path) -> None:
    _, _, before, _ = blueprint_run
    assert tree_state(any_tree) == before
    assert not (any_tree / ".config").exists()


def test_pkgbuild_refuses_unapplied_settings_unless_told(blueprint_run: tuple,
                                                        tmp_path: Path) -> None:
    r, out, _, profile = blueprint_run
    assert r.differences
    refused = synapse("kernel", "pkgbuild", profile, "--resolved", out, "-o", tmp_path / "a")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "did not apply" in refused.stderr and "CONFIG_HZ (derived)" in refused.stderr
    assert "--allow-unapplied" in refused.stderr and not (tmp_path / "a").exists()
    ok = synapse("kernel", "pkgbuild", profile, "--resolved", out, "-o", tmp_path / "b",
                 "--allow-unapplied")
    assert ok.returncode == 0, ok.stderr
    expected = (tmp_path / "b" / "expected.config").read_text().splitlines()
    # the guard checks what was resolved, and says which requests it gave up on
    assert "# unapplied: CONFIG_HZ requested 300, resolved 1000 (derived)" in expected
    assert "CONFIG_HZ=1000" in expected and "CONFIG_HZ=300" not in expected


def test_report_files_and_running_kernel_check(blueprint_run: tuple) -> None:
    r, out, _, _ = blueprint_run
    assert sorted(p.name for p in out.iterdir()) == [
        ".config", "resolution.json", "resolution.txt", "synapse.config"]
    text = (out / "resolution.txt").read_text()
    assert "CONFIG_SCHED_EEVDF" in text and "unmet-dependency" in text
    expected = r.expected_config()
    assert expected["CONFIG_CPU_MITIGATIONS"] == "n" and "CONFIG_SCHED_EEVDF" not in expected
    assert r.check_running_config(r.config) == []
    booted = r.config.replace("# CONFIG_NUMA is not set", "CONFIG_NUMA=y")
    assert r.check_running_config(booted) == ["CONFIG_NUMA: expected n, running kernel has y"]


CUSTOM_KERNEL_PROFILES = sorted(
    p.name for p in PROFILES.glob("*.yaml") if load_profile(p).kernel.source == "custom")


def test_there_is_a_shipped_custom_kernel_profile() -> None:
    assert "cpu-avx2.yaml" in CUSTOM_KERNEL_PROFILES


@pytest.mark.parametrize("name", CUSTOM_KERNEL_PROFILES)
def test_shipped_profile_default_base_boots_its_machine(name: str, any_tree: Path,
                                                        tmp_path: Path) -> None:
    """No --base: the arch defconfig plus the profile must carry every symbol the
    profile's own machine needs, and apply everything else it asks for."""
    profile = load_profile(PROFILES / name)
    out = tmp_path / "out"
    result = synapse("kernel", "config", PROFILES / name, "--source", any_tree, "-o", out,
                     "--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    r = load_resolution(out / "resolution.json")
    assert r.unexplained == [] and r.differences == [] and r.unbootable == ()
    final = parse_config((out / ".config").read_text())
    required = required_symbols(profile)
    root_fs = {"xfs": "XFS_FS", "ext4": "EXT4_FS"}[profile.disk.root_fs]
    assert {q.symbol for q in required} >= {root_fs, "BLK_DEV_NVME", "ZRAM", "MEMCG",
                                            "IKCONFIG", "IKCONFIG_PROC", "EFI_STUB",
                                            "VIRTIO_BLK"}
    for need in required:  # under this tree's name (zram's compressor differs by line)
        name_here = r.get(need.symbol).applied_as or need.symbol
        assert final.get(name_here) == "y", (need, name_here)
    assert "CANNOT BOOT" not in result.stdout and "required symbols present" in result.stdout
    requested = len(r.symbols)
    assert f"{requested}/{requested} requested symbols applied" in result.stdout
    if name == "cpu-avx2.yaml":
        assert final["HZ"] == "300" and final["NO_HZ_FULL"] == "y"
        assert final["TRANSPARENT_HUGEPAGE_MADVISE"] == "y"
        # preempt: voluntary builds only the voluntary model
        assert final["PREEMPT_VOLUNTARY"] == "y" and final.get("PREEMPT_DYNAMIC", "n") == "n"


# A rename from kernel-config/renames.toml of which the tree has neither name, and one of
# which it has the other name: real rows, different per line.
UNKNOWN_RENAMED = {"6.1": ("MITIGATION_CALL_DEPTH_TRACKING", "CALL_DEPTH_TRACKING"),
                   "6.12": ("MITIGATION_GDS_FORCE", "GDS_FORCE_MITIGATION")}
KNOWN_RENAMED = {"6.1": ("MITIGATION_RETPOLINE", "RETPOLINE"),
                 "6.12": ("RETPOLINE", "MITIGATION_RETPOLINE")}


@pytest.fixture(scope="module")
def paths_run(any_tree: Path) -> Resolution:
    """One resolution per tree that takes every explanation path."""
    series = series_of(kernel_version(any_tree))
    return resolve([
        ConfigLine(UNKNOWN_RENAMED[series][0], "y", "t:unknown"),
        ConfigLine(KNOWN_RENAMED[series][0], "y", "t:renamed"),
        ConfigLine("SPECULATION_MITIGATIONS", "n", "t:old-name"),
        ConfigLine("CPU_MITIGATIONS", "y", "t:new-name"),
        ConfigLine("NUMA", "n", "t"),
        ConfigLine("NUMA_BALANCING", "y", "t:unmet"),
        ConfigLine("TRANSPARENT_HUGEPAGE", "n", "t"),
        ConfigLine("TRANSPARENT_HUGEPAGE_MADVISE", "y", "t:unmet-choice-member"),
        ConfigLine("CPU_FREQ_GOV_SCHEDUTIL", "n", "t:selected"),
        ConfigLine("PREEMPT_NONE", "y", "t:choice"),
        ConfigLine("PREEMPT", "y", "t"),
        ConfigLine("NO_HZ_IDLE", "n", "t:choice-empty"),
        ConfigLine("HZ", "300", "t:derived"),
        ConfigLine("X86_INTEL_PSTATE", "m", "t:invalid"),
        ConfigLine("NR_CPUS", "99999", "t:range"),
    ], any_tree)


def test_unknown_symbol_with_its_rename(paths_run: Resolution) -> None:
    series = series_of(paths_run.kernel_version)
    asked, other = UNKNOWN_RENAMED[series]
    r = paths_run.get(asked)
    assert (r.status, r.actual, r.applied_as) == (UNKNOWN, None, None)
    assert f"not a symbol in Linux {paths_run.kernel_version}" in r.reason
    assert f"CONFIG_{other}" in r.reason and "this tree has neither name" in r.reason
    asked, here = KNOWN_RENAMED[series]
    r = paths_run.get(asked)
    assert (r.status, r.applied_as) == (APPLIED, here) and "renamed" in r.reason


def test_renamed_and_new_name_in_one_request_are_merged(paths_run: Resolution) -> None:
    old, new = paths_run.get("SPECULATION_MITIGATIONS"), paths_run.get("CPU_MITIGATIONS")
    assert (new.status, new.actual) == (APPLIED, "y")
    assert (old.status, old.applied_as, old.actual) == (OVERRIDDEN, "CPU_MITIGATIONS", "y")
    assert "t:new-name" in old.reason and "renamed CONFIG_CPU_MITIGATIONS" in old.reason
    assert paths_run.unexplained == []
    assert "CONFIG_CPU_MITIGATIONS=y" in paths_run.config.splitlines()


def test_unmet_dependencies_are_named_also_for_choice_members(paths_run: Resolution) -> None:
    bal = paths_run.get("NUMA_BALANCING")
    assert (bal.status, bal.actual) == (UNMET, "n")
    assert "not met: NUMA [=n]" in bal.reason
    madvise = paths_run.get("TRANSPARENT_HUGEPAGE_MADVISE")
    # 6.11+ records no dir_dep for choice members; before, the dependency reads "<choice>":
    # both must come out as the choice's own condition (kernel-config/versions.toml)
    assert (madvise.status, madvise.actual) == (UNMET, "n"), madvise
    assert "not met: TRANSPARENT_HUGEPAGE [=n]" in madvise.reason
    assert "in the choice 'Transparent Hugepage Support sysfs defaults'" in madvise.reason
    assert all("<choice>" not in s.reason for s in paths_run.symbols)


def test_selected_choice_derived_invalid_and_range(paths_run: Resolution) -> None:
    gov = paths_run.get("CPU_FREQ_GOV_SCHEDUTIL")
    assert (gov.status, gov.actual) == (SELECTED, "y")
    assert "selected by X86_INTEL_PSTATE [=y]" in gov.reason
    none, full = paths_run.get("PREEMPT_NONE"), paths_run.get("PREEMPT")
    assert (full.status, full.actual, full.base) == (APPLIED, "y", "n")
    assert none.status == CHOICE and "CONFIG_PREEMPT was requested later" in none.reason
    idle = paths_run.get("NO_HZ_IDLE")
    if series_of(paths_run.kernel_version) == "6.1":
        # old kconfig keeps the selected member of a choice set to n: it cannot be emptied
        assert idle.status == CHOICE and "CONFIG_NO_HZ_FULL" in idle.reason
    else:  # 6.11+ picks another member (kernel-config/versions.toml)
        final = parse_config(paths_run.config)
        assert (idle.status, idle.actual) == (APPLIED, "n")
        assert "y" in (final.get("NO_HZ_FULL"), final.get("HZ_PERIODIC"))
    hz = paths_run.get("HZ")
    assert (hz.status, hz.fix) == (DERIVED, "CONFIG_HZ_300=y") and hz.actual != "300"
    pstate = paths_run.get("X86_INTEL_PSTATE")
    assert pstate.status == INVALID and "bool" in pstate.reason
    cpus = paths_run.get("NR_CPUS")
    assert cpus.status == INVALID and "99999 was rejected" in cpus.reason
    assert paths_run.unexplained == []


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
                            "preempt: dynamic\nlocalmodconfig: hw.json")
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
    # required symbols come after localmodconfig: IKCONFIG is built in again
    assert final["IKCONFIG"] == "y" and final["IKCONFIG_PROC"] == "y"
    # preempt: dynamic keeps the boot-time switch, booting voluntary
    assert final["PREEMPT_DYNAMIC"] == "y" and final["PREEMPT_VOLUNTARY"] == "y"


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


def supported_rows() -> dict[str, tuple[str, str, str]]:
    """line -> (package, tested tree, release a PKGBUILD builds) from kernel-config/README.md."""
    from synapse_os.resources import data_dir

    text = (data_dir("kernel-config") / "README.md").read_text()
    section = text.split("## Supported kernel lines", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0][:1].isdigit():
            rows[cells[0]] = (cells[1], cells[2], cells[3].split()[0])
    return rows


def test_supported_versions_table_is_the_data_and_the_tested_trees(any_tree: Path) -> None:
    from synapse_os.kernel.versions import load_versions
    from tests.kernel.conftest import SERIES

    table = load_versions()
    rows = supported_rows()
    assert sorted(rows) == sorted(s.series for s in table.series) == sorted(SERIES)
    version = kernel_version(any_tree)
    package, tested, release = rows[series_of(version)]
    assert package == table.supported(version).debian_package  # type: ignore[union-attr]
    assert release == table.supported(version).release  # type: ignore[union-attr]
    assert tested == version, "update the tested tree in kernel-config/README.md"
    expected = "member_dep" if series_of(version) == "6.12" else "dir_dep"
    assert table.behaviour(version).choice_member_dependency == expected
    assert table.behaviour("6.10.0").choice_member_dependency == "dir_dep"
    assert table.behaviour("6.11.0").choice_member_dependency == "member_dep"


def test_explain_a_choice_member_names_the_choice_condition(any_tree: Path) -> None:
    """defconfig has no THP: the madvise default depends on it, on both kconfig styles."""
    result = synapse("kernel", "explain", "CONFIG_TRANSPARENT_HUGEPAGE_MADVISE", "--source",
                     any_tree)
    assert result.returncode == 0, result.stderr
    ours = result.stdout.split("\n\n", 1)[0]  # then kconfig's own help, as menuconfig shows it
    assert "depends on: TRANSPARENT_HUGEPAGE [=n]  [= n]" in ours
    assert "visible if TRANSPARENT_HUGEPAGE [= n]" in ours
    assert "<choice>" not in ours
