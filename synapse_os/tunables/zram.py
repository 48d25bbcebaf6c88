"""Swap on compressed RAM: zram-generator's configuration, set up by its own unit; with a
backing device, a timer that writes the pages left idle to it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from synapse_os.profile.model import Profile
from synapse_os.tunables.base import Activation, Check, Tunable, guarded
from synapse_os.tunables.state import SystemState, ZramState

if TYPE_CHECKING:
    from synapse_os.render import Context, Tree

CONFIG = "etc/systemd/zram-generator.conf"
SETUP_UNIT = "systemd-zram-setup@zram0.service"
UNITS = (SETUP_UNIT, "dev-zram0.swap")  # what the stock boot masks
WRITEBACK = "synapse-zram-writeback"  # .service and .timer (enabled through tunables.units)
WRITEBACK_TIMER = f"{WRITEBACK}.timer"


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    z = profile.memory.zram
    if z is None or not z.enabled:
        return {}
    return {"zram": ZramState(z.size, z.algorithm, z.priority, z.writeback_device,
                              z.writeback_every_min)}


def checks(state: SystemState) -> list[Check]:
    z = state.zram
    if z is None:
        return []
    out = [
        Check("zram0 swap active", "zram", "memory.zram.enabled", "/dev/zram0",
              "swapon --noheadings --show=NAME", "token"),
        Check("zram0 algorithm", "zram", "memory.zram.algorithm", z.algorithm,
              guarded("/sys/block/zram0", "cat /sys/block/zram0/comp_algorithm"), "selected"),
        Check("zram0 priority", "zram", "memory.zram.priority", str(z.priority),
              "swapon --noheadings --show=NAME,PRIO | awk '$1==\"/dev/zram0\"{print $2}'"),
    ]
    if z.writeback_device:
        # the kernel shows the opened device's own path; the profile names a by-id link to it
        dev = shlex.quote(z.writeback_device)
        out.append(Check(
            "zram0 backing device", "zram", "memory.zram.writeback_device", z.writeback_device,
            guarded("/sys/block/zram0",
                    "[ -e /sys/block/zram0/backing_dev ] || { echo 'no backing_dev: the "
                    "kernel lacks ZRAM_WRITEBACK'; exit 1; }; "
                    f'b=$(cat /sys/block/zram0/backing_dev); [ "$b" = "$(readlink -f {dev})" ] '
                    f'&& echo {dev} || echo "$b"')))
    return out


def render(ctx: Context, tree: Tree) -> None:
    z = ctx.state.zram
    if z is None:
        return
    tree.add(f"rootfs/{CONFIG}", ctx.template("zram-generator.conf.j2"))
    if z.writeback_device:
        for kind in ("service", "timer"):
            tree.add(f"rootfs/etc/systemd/system/{WRITEBACK}.{kind}",
                     ctx.template(f"{WRITEBACK}.{kind}.j2"))


def activate(changed: list[str], gone: set[str], with_systemd: bool) -> list[Activation]:
    if CONFIG not in changed or not with_systemd:
        return []
    verb = "stop" if CONFIG in gone else "restart"
    return [Activation("zram", ("systemctl", verb, SETUP_UNIT), CONFIG)]


def backing_device_in_use(device: str) -> str | None:
    """Why this machine's `device` cannot be zram's backing device (zram overwrites it):
    it is missing, or its disk has a partition mounted, used as swap, or held by another
    block device (LVM, dm-crypt, RAID); None when it is free."""
    real = Path(device).resolve()
    block = Path("/sys/class/block") / real.name
    if not real.is_block_device() or not block.exists():
        return f"{device} is not a block device on this machine"
    disk = block.resolve().parent if (block / "partition").exists() else block.resolve()
    family = {disk.name} | {p.name for p in disk.iterdir() if (p / "partition").exists()}
    used: list[str] = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mountpoint, source = line.split()[4], line.split(" - ", 1)[1].split()[1]
            if source.startswith("/dev/") and Path(source).resolve().name in family:
                used.append(f"{source} mounted on {mountpoint}")
    with open("/proc/swaps") as fh:
        used += [f"{line.split()[0]} used as swap" for line in fh.readlines()[1:]
                 if Path(line.split()[0]).resolve().name in family]
    for name in sorted(family):
        holders = sorted(h.name for h in (Path("/sys/class/block") / name / "holders").iterdir())
        used += [f"/dev/{name} held by /dev/{h}" for h in holders]
    if used:
        return (f"{device} ({real}) is on disk /dev/{disk.name}, which is in use: "
                + "; ".join(used[:3]))
    return None


def refuse_busy_backing_device(profile: Profile) -> None:
    """Before an apply on the running system changes anything."""
    z = profile.memory.zram
    if z is None or not z.enabled or not z.writeback_device:
        return
    why = backing_device_in_use(z.writeback_device)
    if why is not None:
        from synapse_os.errors import UserError

        raise UserError(f"memory.zram.writeback_device: {why}; zram would overwrite it: name "
                        "an unused disk or partition of this machine")


TUNABLE = Tunable("zram", desire, checks, render, activate)
