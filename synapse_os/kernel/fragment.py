"""The profile's kernel section as one Kconfig fragment (pure: reads only shipped files).

First come the symbols the profile's own machine needs to boot and be verified
(`required_symbols`: root file system, disk bus, EFI stub, zram, memcg, IKCONFIG, the
VM test's virtio devices...), each with the profile key that implies it. Then each
concern (preemption, timer, memory, cpufreq, mitigations, watchdogs) has small fragment
files in `kernel-config/`; the profile picks one per concern, then `kernel.extra` is
applied last. A symbol set twice keeps its last value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache

from synapse_os.kernel.configfile import Requirement, format_assignment, parse_fragment
from synapse_os.profile.model import Profile
from synapse_os.resources import data_dir


@dataclass(frozen=True)
class Requested:
    """One symbol the profile asks for."""

    symbol: str  # without the CONFIG_ prefix
    value: str  # y, n, m or a literal value
    origin: str  # the profile key (and fragment file) that asked for it


def _on_off(flag: bool | None) -> str | None:
    return None if flag is None else ("on" if flag else "off")


# (profile key, fragment file pattern, how to read the choice from the profile)
CONCERNS: tuple[tuple[str, str, Callable[[Profile], object]], ...] = (
    ("kernel.preempt", "preempt/{}.config", lambda p: p.kernel.preempt),
    ("kernel.hz", "timer/hz-{}.config", lambda p: p.kernel.hz),
    ("kernel.tick", "timer/tick-{}.config", lambda p: p.kernel.tick),
    ("kernel.thp_default", "memory/thp-{}.config", lambda p: p.kernel.thp_default),
    ("kernel.numa", "memory/numa-{}.config", lambda p: _on_off(p.kernel.numa)),
    ("cpu.governor", "cpufreq/{}.config", lambda p: p.cpu.governor),
    ("kernel.mitigations", "mitigations/{}.config", lambda p: _on_off(p.kernel.mitigations)),
    ("kernel.watchdogs", "watchdogs/{}.config", lambda p: _on_off(p.kernel.watchdogs)),
)


# systemd's own list of kernel options it cannot run without (systemd README, "REQUIREMENTS")
SYSTEMD_NEEDS = ("DEVTMPFS", "CGROUPS", "INOTIFY_USER", "SIGNALFD", "TIMERFD", "EPOLL",
                 "UNIX", "SYSFS", "PROC_FS", "FHANDLE", "TMPFS")
# /dev/disk/by-id/<prefix>-... -> the drivers of that disk bus
DISK_BUS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nvme-", ("BLK_DEV_NVME",)),
    ("ata-", ("ATA", "SATA_AHCI", "BLK_DEV_SD")),
    ("scsi-", ("SCSI", "BLK_DEV_SD")),
    ("wwn-", ("ATA", "SATA_AHCI", "BLK_DEV_SD")),
    ("virtio-", ("VIRTIO_PCI", "VIRTIO_BLK")),
    ("usb-", ("USB_STORAGE", "BLK_DEV_SD")),
    ("mmc-", ("MMC", "MMC_BLOCK")),
)
ROOT_FS = {"xfs": "XFS_FS", "ext4": "EXT4_FS"}
# zram's compressor: the 6.12 backend names (renames.toml maps them to the crypto API
# modules older kernels use)
ZRAM_BACKEND = {"zstd": "ZRAM_BACKEND_ZSTD", "lz4": "ZRAM_BACKEND_LZ4",
                "lzo-rle": "ZRAM_BACKEND_LZO", "lzo": "ZRAM_BACKEND_LZO",
                "842": "ZRAM_BACKEND_842"}


def required_symbols(profile: Profile) -> list[Requirement]:
    """What the profile's own machine needs from a custom kernel: to find and mount its
    root, boot through its loader, run systemd, honour its memory and service settings,
    be verified (`synapse verify` and the VM test read the running config), and boot in
    the VM test (QEMU's virtio disk and console). Each comes with its reason."""
    if profile.kernel.source != "custom":
        return []
    out: list[Requirement] = []

    def need(reason: str, *symbols: str) -> None:
        out.extend(Requirement(symbol, "y", reason) for symbol in symbols)

    disk = profile.disk
    need(f"disk.root_fs: {disk.root_fs} (the root file system, mounted before any module "
         "can load)", ROOT_FS[disk.root_fs])
    target = (disk.target or "").rsplit("/", 1)[-1]
    for prefix, drivers in DISK_BUS:
        if target.startswith(prefix):
            need(f"disk.target: {prefix[:-1]} disk (the root disk's bus)", *drivers)
    need("install/partition.sh: GPT partitions, root=PARTLABEL=", "EFI_PARTITION")
    need("boot: the initramfs (mkinitcpio, initramfs-tools)", "BLK_DEV_INITRD")
    if profile.boot.loader == "systemd-boot":
        need("boot.loader: systemd-boot (starts the kernel as an EFI program from the "
             "FAT ESP)", "EFI", "EFI_STUB", "VFAT_FS")
    need("systemd (the init system every profile boots)", *SYSTEMD_NEEDS)
    need("synapse verify / vm test (read the running kernel's config from "
         "/proc/config.gz)", "IKCONFIG", "IKCONFIG_PROC")
    need("synapse vm test (QEMU's virtio disk and virtio-serial test shell)",
         "VIRTIO_PCI", "VIRTIO_BLK", "VIRTIO_CONSOLE")
    zram = profile.memory.zram
    if zram is not None and zram.enabled:
        need("memory.zram (swap on zram through zram-generator)", "ZRAM")
        need(f"memory.zram.algorithm: {zram.algorithm} (zram's compressor)",
             ZRAM_BACKEND[zram.algorithm])
        if zram.writeback_device:
            need("memory.zram.writeback_device (zram's backing_dev and idle writeback)",
                 "ZRAM_WRITEBACK")
    if profile.memory.zswap is not None:
        need("memory.zswap (zswap.enabled= on the cmdline; verify reads CONFIG_ZSWAP)",
             "ZSWAP")
    if profile.memory.thp is not None:
        need(f"memory.thp: {profile.memory.thp} (the sysfs transparent_hugepage knobs)",
             "TRANSPARENT_HUGEPAGE")
    if profile.memory.ksm is not None:
        need("memory.ksm (/sys/kernel/mm/ksm/run, which only a kernel with KSM has)", "KSM")
    if profile.memory.hugepages:
        need("memory.hugepages (vm.nr_hugepages)", "HUGETLBFS")
    if profile.runtime is not None and profile.runtime.memory_high is not None:
        need("runtime.memory_high (MemoryHigh= on the service needs the memory cgroup)",
             "MEMCG")
    return out


@lru_cache(maxsize=64)
def _fragment_file(relative: str) -> tuple[tuple[str, str], ...]:
    path = data_dir("kernel-config") / relative
    return tuple((c.symbol, c.value) for c in parse_fragment(path.read_text(), relative))


def requested_entries(profile: Profile) -> list[Requested]:
    """Every symbol the profile asks for, in fragment order, each symbol once (last wins)."""
    if profile.kernel.source != "custom":
        return []
    entries: dict[str, Requested] = {}

    def add(entry: Requested) -> None:
        entries.pop(entry.symbol, None)  # keep the position of the last setting
        entries[entry.symbol] = entry

    for req in required_symbols(profile):
        add(Requested(req.symbol, req.value, f"required by {req.reason}"))
    for key, pattern, choose in CONCERNS:
        choice = choose(profile)
        if choice is None:
            continue
        relative = pattern.format(choice)
        for symbol, value in _fragment_file(relative):
            add(Requested(symbol, value, f"{key} ({relative})"))
    for name, value in profile.kernel.extra.items():
        add(Requested(name.removeprefix("CONFIG_"), value.strip(), "kernel.extra"))
    return list(entries.values())


def kernel_section_hash(profile: Profile) -> str:
    """sha256 of what a resolution of this profile depends on: the kernel section and
    every symbol it requests or requires (which also follow cpu.governor, disk, boot,
    memory and runtime). Recorded in resolution.json; recipes refuse a mismatch."""
    data = {
        "kernel": profile.kernel.model_dump(mode="json"),
        "requested": [asdict(e) for e in requested_entries(profile)],
        "required": [asdict(r) for r in required_symbols(profile)],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def requested_symbols(profile: Profile) -> dict[str, str]:
    """CONFIG_NAME -> requested value ("y", "n", "m" or a literal), in fragment order."""
    return {f"CONFIG_{e.symbol}": e.value for e in requested_entries(profile)}


def kernel_fragment(profile: Profile) -> str:
    """The fragment text for `kernel/synapse.config`: deterministic, "n" as "is not set"."""
    lines = [
        f"# Kernel config fragment rendered by Synapse from profile '{profile.name}'.",
        "# Resolve it against a kernel tree: synapse kernel config PROFILE --source DIR -o OUT",
    ]
    entries = requested_entries(profile)
    if not entries:
        lines.append("# kernel.source is 'stock' or sets nothing: no kernel build options.")
    origin = None
    for entry in entries:
        if entry.origin != origin:
            origin = entry.origin
            lines += ["", f"# {origin}"]
        lines.append(format_assignment(entry.symbol, entry.value))
    return "\n".join(lines) + "\n"
