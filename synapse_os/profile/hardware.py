"""`synapse init`: read this machine's hardware and write a profile pre-filled from it.

psutil gives cores and RAM, /proc/cpuinfo the vendor, model and ISA, pyudev the disks
(by stable id) and GPUs. Every fact is optional: a missing source leaves `auto`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from synapse_os.errors import UserError
from synapse_os.profile.model import Hardware, Profile
from synapse_os.profile.types import parse_size

GIB = 1024**3
MIB = 1024**2
# MemTotal is installed RAM less what firmware and the kernel keep (2-5 %, more on small VMs)
RAM_TOLERANCE = 0.15
ISA_FLAGS = {"avx2": {"avx2", "fma"}, "avx512": {"avx512f", "avx512bw"}}
PCI_VENDORS = {"0x10de": "nvidia", "0x1002": "amd"}
DISPLAY_CLASS = "0x03"


@dataclass
class Disk:
    by_id: str
    device: str
    size_bytes: int
    rotational: bool
    model: str


@dataclass
class Facts:
    cpu_vendor: str = "auto"
    cpu_model: str | None = None
    physical_cores: int | None = None
    logical_cpus: int | None = None
    flags: list[str] = field(default_factory=list)
    ram_bytes: int | None = None
    gpu: str = "none"
    disks: list[Disk] = field(default_factory=list)

    @property
    def isa(self) -> str:
        if {"avx512f", "avx512bw"} <= set(self.flags):
            return "avx512"
        if "avx2" in self.flags:
            return "avx2"
        return "native"

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"isa": self.isa}


def read_cpuinfo(text: str) -> tuple[str, str | None, list[str]]:
    vendor, model, flags = "auto", None, list[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id":
            vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(value, "auto")
        elif key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = sorted(value.split())
    return vendor, model, flags


def _disks() -> list[Disk]:
    try:
        import pyudev
    except ImportError:
        return []
    disks: dict[str, Disk] = {}
    try:
        context = pyudev.Context()
        for dev in context.list_devices(subsystem="block", DEVTYPE="disk"):
            if dev.sys_name.startswith(("loop", "ram", "zram", "sr", "dm-")):
                continue
            links = [x for x in dev.device_links if x.startswith("/dev/disk/by-id/")]
            # prefer the vendor-model-serial name over wwn-/nvme-eui. aliases
            links.sort(key=lambda x: ("wwn-" in x or "eui." in x, x))
            if not links:
                continue
            attrs = dev.attributes
            size = attrs.asint("size") * 512 if "size" in attrs.available_attributes else 0
            rot = dev.attributes.get("queue/rotational", b"0") == b"1"
            model = dev.get("ID_MODEL", "") or ""
            disks[dev.device_node] = Disk(links[0], dev.device_node, size, rot, model)
    except (OSError, ValueError, KeyError):
        return list(disks.values())
    return sorted(disks.values(), key=lambda d: d.device)


def _gpu(pci_root: Path = Path("/sys/bus/pci/devices")) -> str:
    try:
        devices = list(pci_root.iterdir())
    except OSError:
        return "none"
    found = "none"
    for dev in devices:
        try:
            cls = (dev / "class").read_text().strip()
            vendor = (dev / "vendor").read_text().strip()
        except OSError:
            continue
        if cls.startswith(DISPLAY_CLASS) and vendor in PCI_VENDORS:
            if PCI_VENDORS[vendor] == "nvidia":
                return "nvidia"
            found = PCI_VENDORS[vendor]
    return found


def detect() -> Facts:
    try:
        vendor, model, flags = read_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        vendor, model, flags = "auto", None, list[str]()
    return Facts(
        cpu_vendor=vendor,
        cpu_model=model,
        physical_cores=psutil.cpu_count(logical=False),
        logical_cpus=psutil.cpu_count(logical=True),
        flags=flags,
        ram_bytes=psutil.virtual_memory().total,
        gpu=_gpu(),
        disks=_disks(),
    )


def _choose_disk(disks: list[Disk]) -> Disk | None:
    """The largest non-rotational disk (NVMe first): the usual model-storage choice."""
    if not disks:
        return None
    return sorted(disks, key=lambda d: (d.rotational, not d.device.startswith("/dev/nvme"),
                                        -d.size_bytes))[0]


def ram_text(ram_bytes: int) -> str:
    """Detected RAM as a profile size: whole GiB when that is within 3 %, else MiB."""
    gib = round(ram_bytes / GIB)
    if gib and abs(gib * GIB - ram_bytes) <= 0.03 * ram_bytes:
        return f"{gib}G"
    return f"{ram_bytes // MIB}M"


def hardware_section(facts: Facts) -> dict[str, object]:
    """The profile's `hardware:` keys this machine's facts fill in (what `synapse init`
    writes, and what the fleet role maps a host's facts onto)."""
    section: dict[str, object] = {"cpu_vendor": facts.cpu_vendor, "gpu": facts.gpu}
    if facts.cpu_model:
        section["cpu_model"] = facts.cpu_model
    if facts.physical_cores:
        section["physical_cores"] = facts.physical_cores
    if facts.logical_cpus:
        section["logical_cpus"] = facts.logical_cpus
    if facts.ram_bytes:
        section["ram"] = ram_text(facts.ram_bytes)
    return section


def contradictions(hardware: Hardware, facts: Facts) -> list[str]:
    """What the profile's hardware section says that this machine's facts contradict: each
    would tune the box for another machine (threads, nohz_full CPUs and memory limits sized
    for cores and RAM it lacks, an engine built for an ISA it cannot run)."""
    found: list[str] = []
    if "auto" not in (hardware.cpu_vendor, facts.cpu_vendor) \
            and hardware.cpu_vendor != facts.cpu_vendor:
        found.append(f"cpu_vendor is {hardware.cpu_vendor} but this machine's CPU is "
                     f"{facts.cpu_vendor}")
    for key, have in (("physical_cores", facts.physical_cores),
                      ("logical_cpus", facts.logical_cpus)):
        want = getattr(hardware, key)
        if want is not None and have is not None and want != have:
            found.append(f"{key} is {want} but this machine has {have}")
    if hardware.ram != "auto" and facts.ram_bytes:
        want_bytes = parse_size(hardware.ram)
        if not 1 - RAM_TOLERANCE <= facts.ram_bytes / want_bytes <= 1 + RAM_TOLERANCE:
            found.append(f"ram is {hardware.ram} but this machine has "
                         f"{ram_text(facts.ram_bytes)}")
    needed = ISA_FLAGS.get(hardware.isa, set())
    if needed and facts.flags and not needed <= set(facts.flags):
        found.append(f"isa is {hardware.isa} but this machine's CPU lacks "
                     f"{', '.join(sorted(needed - set(facts.flags)))}")
    if hardware.gpu != "none" and facts.gpu != hardware.gpu:
        found.append(f"gpu is {hardware.gpu} but this machine has "
                     f"{'no GPU' if facts.gpu == 'none' else f'a {facts.gpu} GPU'}")
    return found


def refuse_contradicting(profile: Profile, facts: Facts) -> None:
    found = contradictions(profile.hardware, facts)
    if found:
        raise UserError(
            f"profile {profile.name} was written for other hardware: hardware."
            + "; hardware.".join(found)
            + "; fix the profile's hardware section (`synapse init --json` prints this "
            "machine's) before applying it here")


def profile_yaml(facts: Facts, base: str = "arch") -> str:
    """A commented starting profile: tuned defaults that validate, with this machine's facts."""
    disk = _choose_disk(facts.disks)
    lines = [
        "# Generated by `synapse init` from this machine's hardware. Review before use:",
        "# every value below changes the distribution default.",
        "synapse: 1",
        "name: my-box",
        f"description: {json.dumps(facts.cpu_model or 'this machine')}",
        f"base: {base}",
        "",
        "hardware:",
        f"  cpu_vendor: {facts.cpu_vendor}",
    ]
    if facts.cpu_model:
        lines.append(f"  cpu_model: {json.dumps(facts.cpu_model)}")
    if facts.physical_cores:
        lines.append(f"  physical_cores: {facts.physical_cores}")
    if facts.logical_cpus:
        lines.append(f"  logical_cpus: {facts.logical_cpus}")
    lines += [
        "  threads: auto",
        f"  isa: {facts.isa}",
        f"  ram: {ram_text(facts.ram_bytes) if facts.ram_bytes else 'auto'}",
        f"  gpu: {facts.gpu}",
        "",
        "disk:",
    ]
    if disk is not None:
        others = [d.by_id for d in facts.disks if d is not disk]
        lines.append(f"  target: {disk.by_id}  # {disk.model} {disk.size_bytes // GIB} GiB")
        lines += [f"  # other disk: {o}" for o in others]
    else:
        lines.append("  # target: /dev/disk/by-id/...  (no disk with a stable id was found)")
    lines += [
        "  root_fs: xfs",
        "  mount_options: [noatime]",
        "",
        "boot:",
        "  loader: systemd-boot",
        "  timeout: 0",
        "  cmdline: [nowatchdog]",
        "",
        "memory:",
        "  thp: madvise",
        "  zram:",
        "    size: min(ram / 2, 8192)",
        "    algorithm: zstd",
        "  zswap: false",
        "  swappiness: 180",
        "  page_cluster: 0",
        "",
        "cpu:",
        "  governor: performance",
        "",
        "journald:",
        "  storage: volatile",
        "  runtime_max_use: 64M",
        "",
        "runtime:",
        "  engine: synapse-runtime",
        "  port: 8090",
        "  models:",
        "    main:",
        "      path: /var/lib/synapse/models/main.gguf",
        "  threads: auto",
        "  memory_high: auto" if facts.ram_bytes else "  # memory_high: auto  (needs hardware.ram)",
        "  memory_reserve: 2G",
        "",
    ]
    return "\n".join(lines)
