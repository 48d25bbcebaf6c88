"""Swap on compressed RAM: zram-generator's configuration, set up by its own unit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from synapse_os.profile.model import Profile
from synapse_os.tunables.base import Activation, Check, Tunable, guarded
from synapse_os.tunables.state import SystemState, ZramState

if TYPE_CHECKING:
    from synapse_os.render import Context, Tree

CONFIG = "etc/systemd/zram-generator.conf"
SETUP_UNIT = "systemd-zram-setup@zram0.service"
UNITS = (SETUP_UNIT, "dev-zram0.swap")  # what the stock boot masks


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    z = profile.memory.zram
    if z is None or not z.enabled:
        return {}
    return {"zram": ZramState(z.size, z.algorithm, z.priority)}


def checks(state: SystemState) -> list[Check]:
    z = state.zram
    if z is None:
        return []
    return [
        Check("zram0 swap active", "zram", "memory.zram.enabled", "/dev/zram0",
              "swapon --noheadings --show=NAME", "token"),
        Check("zram0 algorithm", "zram", "memory.zram.algorithm", z.algorithm,
              guarded("/sys/block/zram0", "cat /sys/block/zram0/comp_algorithm"), "selected"),
        Check("zram0 priority", "zram", "memory.zram.priority", str(z.priority),
              "swapon --noheadings --show=NAME,PRIO | awk '$1==\"/dev/zram0\"{print $2}'"),
    ]


def render(ctx: Context, tree: Tree) -> None:
    if ctx.state.zram:
        tree.add(f"rootfs/{CONFIG}", ctx.template("zram-generator.conf.j2"))


def activate(changed: list[str], gone: set[str], with_systemd: bool) -> list[Activation]:
    if CONFIG not in changed or not with_systemd:
        return []
    verb = "stop" if CONFIG in gone else "restart"
    return [Activation("zram", ("systemctl", verb, SETUP_UNIT), CONFIG)]


TUNABLE = Tunable("zram", desire, checks, render, activate)
