"""The profile -> fragment step: pure, deterministic, every option backed by a file."""

from __future__ import annotations

import gzip
import typing
from pathlib import Path

import pytest

from synapse_os.errors import UserError
from synapse_os.kernel.configfile import (
    format_assignment,
    parse_config,
    parse_fragment,
    read_config_file,
)
from synapse_os.kernel.fragment import (
    CONCERNS,
    kernel_fragment,
    kernel_section_hash,
    requested_entries,
    requested_symbols,
    required_symbols,
)
from synapse_os.kernel.renames import load_renames
from synapse_os.profile import load_profile
from synapse_os.profile.model import Cpu, Kernel, Profile
from synapse_os.resources import data_dir
from tests.conftest import PROFILES


def custom(**kernel: object) -> Profile:
    return Profile(synapse=1, name="t", kernel=Kernel(source="custom", **kernel))


def concern_symbols(profile: Profile) -> dict[str, str]:
    """The symbols the profile's concerns and kernel.extra ask for (not the required ones)."""
    return {f"CONFIG_{e.symbol}": e.value for e in requested_entries(profile)
            if not e.origin.startswith("required by ")}


def test_cpu_avx2_fragment_sets_each_concern_with_real_symbol_names() -> None:
    symbols = concern_symbols(load_profile(PROFILES / "cpu-avx2.yaml"))
    assert symbols == {
        "CONFIG_PREEMPT_VOLUNTARY": "y",
        "CONFIG_PREEMPT_DYNAMIC": "n",
        "CONFIG_HZ_300": "y",
        "CONFIG_NO_HZ_FULL": "y",
        "CONFIG_TRANSPARENT_HUGEPAGE": "y",
        "CONFIG_TRANSPARENT_HUGEPAGE_MADVISE": "y",
        "CONFIG_NUMA": "n",
        "CONFIG_CPU_FREQ_GOV_PERFORMANCE": "y",
        "CONFIG_CPU_FREQ_DEFAULT_GOV_PERFORMANCE": "y",
        "CONFIG_CPU_MITIGATIONS": "n",
        "CONFIG_SOFTLOCKUP_DETECTOR": "n",
        "CONFIG_HARDLOCKUP_DETECTOR": "n",
    }


def test_fragment_text_writes_n_as_not_set_and_is_deterministic() -> None:
    profile = load_profile(PROFILES / "cpu-avx2.yaml")
    text = kernel_fragment(profile)
    assert text == kernel_fragment(load_profile(PROFILES / "cpu-avx2.yaml"))
    assert "# CONFIG_NUMA is not set\n" in text
    assert "CONFIG_NUMA=n" not in text
    assert "CONFIG_HZ=" not in text  # HZ is derived; the choice HZ_300 is what is set
    assert parse_config(text) == {k.removeprefix("CONFIG_"): v
                                  for k, v in requested_symbols(profile).items()}


def test_stock_profile_has_no_kernel_options() -> None:
    profile = load_profile(PROFILES / "stock-baseline.yaml")
    assert requested_symbols(profile) == {}
    assert parse_config(kernel_fragment(profile)) == {}


def test_extra_overrides_a_fragment_symbol_and_keeps_one_line() -> None:
    profile = custom(preempt="voluntary", extra={"CONFIG_PREEMPT_VOLUNTARY": "n",
                                                 "CONFIG_SCHED_EEVDF": "y"})
    text = kernel_fragment(profile)
    assert text.count("PREEMPT_VOLUNTARY") == 1
    assert concern_symbols(profile) == {"CONFIG_PREEMPT_VOLUNTARY": "n",
                                        "CONFIG_PREEMPT_DYNAMIC": "n",
                                        "CONFIG_SCHED_EEVDF": "y"}


@pytest.mark.parametrize("preempt,expected", [
    ("none", {"PREEMPT_NONE": "y", "PREEMPT_DYNAMIC": "n"}),
    ("voluntary", {"PREEMPT_VOLUNTARY": "y", "PREEMPT_DYNAMIC": "n"}),
    ("full", {"PREEMPT": "y", "PREEMPT_DYNAMIC": "n"}),
    ("dynamic", {"PREEMPT_VOLUNTARY": "y", "PREEMPT_DYNAMIC": "y"}),
])
def test_each_preempt_mode_builds_only_what_it_says(preempt: str,
                                                    expected: dict[str, str]) -> None:
    symbols = concern_symbols(custom(preempt=preempt))
    assert symbols == {f"CONFIG_{k}": v for k, v in expected.items()}


def test_required_symbols_follow_the_profile() -> None:
    avx2 = load_profile(PROFILES / "cpu-avx2.yaml")
    needs = {r.symbol: r.reason for r in required_symbols(avx2)}
    assert "disk.root_fs: xfs" in needs["XFS_FS"] and "EXT4_FS" not in needs
    assert "disk.target: nvme" in needs["BLK_DEV_NVME"]
    assert "systemd-boot" in needs["EFI_STUB"]
    assert "memory.zram" in needs["ZRAM"] and "zstd" in needs["ZRAM_BACKEND_ZSTD"]
    assert "ZRAM_WRITEBACK" not in needs  # only with a backing device
    backed = avx2.model_copy(update={"memory": avx2.memory.model_copy(update={
        "zram": avx2.memory.zram.model_copy(update={
            "writeback_device": "/dev/disk/by-id/nvme-Scratch_1"})})})
    assert "memory.zram.writeback_device" in {
        r.symbol: r.reason for r in required_symbols(backed)}["ZRAM_WRITEBACK"]
    assert "runtime.memory_high" in needs["MEMCG"]
    assert {"IKCONFIG", "IKCONFIG_PROC", "VIRTIO_BLK", "VIRTIO_CONSOLE"} <= set(needs)
    plain = custom()  # no zram, no runtime, default disk (xfs, no target)
    plain_needs = {r.symbol for r in required_symbols(plain)}
    assert {"ZRAM", "MEMCG", "BLK_DEV_NVME"}.isdisjoint(plain_needs)
    assert "XFS_FS" in plain_needs
    ext4 = Profile(synapse=1, name="t", kernel=Kernel(source="custom"),
                   disk={"root_fs": "ext4", "target": "/dev/disk/by-id/ata-X_1"},
                   boot={"loader": "grub"})
    ext4_needs = {r.symbol for r in required_symbols(ext4)}
    assert {"EXT4_FS", "SATA_AHCI", "BLK_DEV_SD"} <= ext4_needs and "EFI_STUB" not in ext4_needs
    assert required_symbols(load_profile(PROFILES / "stock-baseline.yaml")) == []
    # required symbols are in the rendered fragment, each under the key that implies it
    text = kernel_fragment(avx2)
    assert "# required by disk.root_fs: xfs" in text and "CONFIG_XFS_FS=y" in text
    assert requested_symbols(avx2)["CONFIG_IKCONFIG_PROC"] == "y"


def test_kernel_section_hash_follows_what_the_resolution_depends_on() -> None:
    avx2 = load_profile(PROFILES / "cpu-avx2.yaml")
    assert kernel_section_hash(avx2) == kernel_section_hash(
        load_profile(PROFILES / "cpu-avx2.yaml"))
    for changed in (avx2.model_copy(update={"kernel": avx2.kernel.model_copy(update={"hz": 1000})}),
                    avx2.model_copy(update={"disk": avx2.disk.model_copy(update={"root_fs": "ext4"})})):
        assert kernel_section_hash(changed) != kernel_section_hash(avx2)


def test_cpu_governor_only_reaches_the_kernel_for_custom_kernels() -> None:
    stock = Profile(synapse=1, name="t", cpu=Cpu(governor="schedutil"))
    assert requested_symbols(stock) == {}
    tuned = Profile(synapse=1, name="t", kernel=Kernel(source="custom"),
                    cpu=Cpu(governor="schedutil"))
    assert requested_symbols(tuned)["CONFIG_CPU_FREQ_DEFAULT_GOV_SCHEDUTIL"] == "y"


@pytest.mark.parametrize("field,pattern", [(c[0], c[1]) for c in CONCERNS])
def test_every_profile_choice_has_a_fragment_file(field: str, pattern: str) -> None:
    section, name = field.split(".")
    model = Kernel if section == "kernel" else Cpu
    annotation = model.model_fields[name].annotation
    choices: list[object] = []
    for arg in typing.get_args(annotation):
        choices += list(typing.get_args(arg)) or ([True, False] if arg is bool else [])
    assert choices, field
    for choice in choices:
        value = {True: "on", False: "off"}.get(choice, choice) if isinstance(choice, bool) else choice
        path = data_dir("kernel-config") / pattern.format(value)
        assert path.is_file(), path
        assert parse_fragment(path.read_text(), str(path)), f"{path} sets nothing"


def test_rename_table_links_both_directions_and_notes_phantoms() -> None:
    table = load_renames()
    assert [a for a, _ in table.aliases("SPECULATION_MITIGATIONS")] == ["CPU_MITIGATIONS"]
    assert [a for a, _ in table.aliases("CPU_MITIGATIONS")] == ["SPECULATION_MITIGATIONS"]
    assert table.aliases("NUMA") == []
    assert "6.6" in table.notes["SCHED_EEVDF"]


def test_format_and_parse_round_trip() -> None:
    assert format_assignment("CONFIG_NUMA", "n") == "# CONFIG_NUMA is not set"
    assert format_assignment("HZ", "300") == "CONFIG_HZ=300"
    text = "\n".join([format_assignment("A", "y"), format_assignment("B", "n"),
                      'CONFIG_C="x y"', "# a comment"])
    assert parse_config(text) == {"A": "y", "B": "n", "C": '"x y"'}


def test_user_fragment_garbage_is_a_user_error_with_file_and_line() -> None:
    with pytest.raises(UserError, match=r"extra\.config:2: 'NUMA=n' is not a kernel config line"):
        parse_fragment("CONFIG_A=y\nNUMA=n\n", "extra.config")


def test_base_config_reading(tmp_path: Path) -> None:
    plain = tmp_path / "config"
    plain.write_text("CONFIG_NUMA=y\n# CONFIG_SMP is not set\n")
    packed = tmp_path / "config.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_config_file(packed) == read_config_file(plain)
    with pytest.raises(UserError, match="does not exist"):
        read_config_file(tmp_path / "missing")
    with pytest.raises(UserError, match="is a directory"):
        read_config_file(tmp_path)
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not a text .config"):
        read_config_file(tmp_path / "binary")
    (tmp_path / "prose").write_text("hello\n")
    with pytest.raises(UserError, match="no CONFIG_ lines"):
        read_config_file(tmp_path / "prose")
