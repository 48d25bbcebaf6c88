"""The desired system state: every tunable's part of it, in one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ZramState:
    size: str
    algorithm: str
    priority: int
    writeback_device: str | None = None
    writeback_every_min: int = 60


@dataclass(frozen=True)
class SystemState:
    sysctl: dict[str, str] = field(default_factory=dict)
    sysfs: dict[str, str] = field(default_factory=dict)  # path (glob) -> value, via tmpfiles
    cmdline: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    enable: tuple[str, ...] = ()
    active: tuple[str, ...] = ()
    journald: dict[str, str] = field(default_factory=dict)
    zram: ZramState | None = None
    zswap_enabled: bool | None = None
    hostname: str = "synapse"
    timezone: str = "UTC"
    service_unit: str | None = None
    service: dict[str, str] = field(default_factory=dict)  # live property -> expected value
    system_cpus: str | None = None  # systemd's CPUAffinity (the housekeeping CPUs)
    sources: dict[str, str] = field(default_factory=dict)  # setting id -> profile key

    @property
    def is_stock(self) -> bool:
        return not (self.sysctl or self.sysfs or self.cmdline or self.mask or self.disable
                    or self.journald or self.zram)
