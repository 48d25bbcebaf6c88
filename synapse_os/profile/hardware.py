"""`synapse init`: read this machine's hardware and write a profile pre-filled from it.

psutil gives cores and RAM, /proc/cpuinfo the vendor, model and ISA, pyudev the disks
(by stable id) and GPUs. Every fact is optional: a missing source leaves `auto`.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from pydantic import BaseModel

from synapse_os.errors import UserError
from synapse_os.profile.model import Hardware, Profile
from synapse_os.profile.schema import nested_models
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


def proposed_settings(model: type[BaseModel] = Profile) -> dict[str, tuple[Any, str]]:
    """What `synapse init` proposes: every field's `init` metadata (model.proposed), nested
    as in a profile; each entry is (value or nested entries, the field's description)."""
    out: dict[str, tuple[Any, str]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if "init" in extra:
            out[name] = (extra["init"], info.description or "")
            continue
        for sub, suffix in nested_models(info.annotation):
            inner = proposed_settings(sub) if not suffix else {}
            if inner:
                out[name] = (inner, info.description or "")
    return out


def _yaml_lines(entries: dict[str, tuple[Any, str]], indent: str = "") -> list[str]:
    """Block YAML with each key's description as a comment above it (values as JSON, which
    YAML reads as written)."""
    lines: list[str] = []
    for name, (value, description) in entries.items():
        lines += [f"{indent}# {line}" for line in
                  textwrap.wrap(description, 90 - len(indent), break_on_hyphens=False)]
        if isinstance(value, dict) and all(isinstance(v, tuple) for v in value.values()):
            lines += [f"{indent}{name}:", *_yaml_lines(value, indent + "  ")]
        elif isinstance(value, dict):
            dumped = yaml.safe_dump(value, default_flow_style=False, sort_keys=False)
            lines += [f"{indent}{name}:",
                      *(f"{indent}  {line}" for line in dumped.splitlines())]
        else:
            lines.append(f"{indent}{name}: {json.dumps(value)}")
    return lines


def profile_yaml(facts: Facts, base: str = "arch") -> str:
    """A commented starting profile: this machine's facts, then every setting the model
    proposes for an inference box (the fields' own `init` values and descriptions)."""
    disk = _choose_disk(facts.disks)
    lines = [
        "# Generated by `synapse init` from this machine's hardware. Review before use:",
        "# each setting below is what synapse proposes for an inference box (its description",
        "# above it); delete a setting to leave it at its default.",
        "synapse: 1",
        "name: my-box",
        f"description: {json.dumps(facts.cpu_model or 'this machine')}",
        f"base: {base}",
        "",
        "hardware:",
    ]
    found = hardware_section(facts)
    hardware = {"cpu_vendor": facts.cpu_vendor,
                **{k: found[k] for k in ("cpu_model", "physical_cores", "logical_cpus")
                   if k in found},
                "threads": "auto", "isa": facts.isa, "ram": found.get("ram", "auto"),
                "gpu": facts.gpu}
    lines += [f"  {key}: {json.dumps(value)}" for key, value in hardware.items()]
    proposed = proposed_settings()
    if not facts.ram_bytes:  # memory_high: auto needs the RAM
        del proposed["runtime"][0]["memory_high"]
    for section, (entries, _) in proposed.items():
        lines += ["", f"{section}:"]
        if section == "disk":
            if disk is not None:
                lines.append(f"  target: {disk.by_id}  # {disk.model} "
                             f"{disk.size_bytes // GIB} GiB")
                lines += [f"  # other disk: {d.by_id}" for d in facts.disks if d is not disk]
            else:
                lines.append("  # target: /dev/disk/by-id/...  (no disk with a stable id "
                             "was found)")
        lines += _yaml_lines(entries, "  ")
    return "\n".join(lines) + "\n"
