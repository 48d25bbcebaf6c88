"""systemd units: the engine (and its socket), what `services:` masks, disables and
enables, and the units a tuning turns on or off (fstrim.timer). Starting and stopping on
a live apply follows the plan's unit changes (apply.activate)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from synapse_os.profile.model import ENGINE_UNITS, RUNTIME_SOCKET, Profile
from synapse_os.tunables.base import SYSTEMD_UP, Check, Tunable, starting
from synapse_os.tunables.state import SystemState
from synapse_os.tunables.zram import WRITEBACK_TIMER

if TYPE_CHECKING:
    from synapse_os.render import Context, Tree

FSTRIM_TIMER = "fstrim.timer"


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    enable = list(profile.services.enable)
    disable = list(profile.services.disable)
    active: list[str] = []
    if profile.runtime is not None:
        unit = ENGINE_UNITS[profile.runtime.engine]
        enable.append(unit)
        active.append(unit)
        sources[f"unit {unit}"] = "runtime.engine"
        if profile.runtime.isolation == "nspawn":
            enable.append(RUNTIME_SOCKET)
            active.append(RUNTIME_SOCKET)
            sources[f"unit {RUNTIME_SOCKET}"] = "runtime.isolation"
    for key in ("mask", "disable", "enable"):
        for unit in getattr(profile.services, key):
            sources[f"unit {unit}"] = f"services.{key}"
    if profile.disk.fstrim is not None:
        (enable if profile.disk.fstrim else disable).append(FSTRIM_TIMER)
        sources[f"unit {FSTRIM_TIMER}"] = "disk.fstrim"
    zram = profile.memory.zram
    if zram is not None and zram.enabled and zram.writeback_device:
        enable.append(WRITEBACK_TIMER)
        active.append(WRITEBACK_TIMER)
        sources[f"unit {WRITEBACK_TIMER}"] = "memory.zram.writeback_device"
    return {"mask": tuple(profile.services.mask), "disable": tuple(disable),
            "enable": tuple(enable), "active": tuple(active)}


def _is_enabled(unit: str) -> str:
    return f"systemctl is-enabled {shlex.quote(unit)} 2>/dev/null; true"


def checks(state: SystemState) -> list[Check]:
    out: list[Check] = []
    src = state.sources
    for unit in state.mask:
        out.append(Check(f"unit {unit} masked", "unit", src[f"unit {unit}"], "masked",
                         _is_enabled(unit)))
        out.append(Check(f"unit {unit} inactive", "unit", src[f"unit {unit}"],
                         "inactive|failed|unknown",
                         f"{SYSTEMD_UP} systemctl is-active {shlex.quote(unit)} 2>/dev/null; true",
                         "one_of"))
    for unit in state.disable:
        out.append(Check(f"unit {unit} disabled", "unit", src[f"unit {unit}"],
                         "disabled|masked|static|not-found|", _is_enabled(unit), "one_of"))
    for unit in state.enable:
        out.append(Check(f"unit {unit} enabled", "unit", src[f"unit {unit}"], "enabled",
                         _is_enabled(unit)))
    for unit in state.active:
        out.append(Check(f"unit {unit} active", "unit", src[f"unit {unit}"], "active",
                         f"{SYSTEMD_UP} {starting(shlex.quote(unit))} "
                         f"systemctl is-active {shlex.quote(unit)} 2>/dev/null; true"))
    return out


def render(ctx: Context, tree: Tree) -> None:
    for unit in ctx.state.mask:
        tree.link(f"rootfs/etc/systemd/system/{unit}", "/dev/null")


TUNABLE = Tunable("units", desire, checks, render)
