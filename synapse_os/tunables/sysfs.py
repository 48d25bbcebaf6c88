"""Kernel files under /sys a field owns (`json_schema_extra={"sysfs": PATH}`): THP, the
CPU governor and EPP, KSM, ... through tmpfiles at boot; block queues through a udev rule,
as devices appear."""

from __future__ import annotations

import glob
import shutil
from typing import TYPE_CHECKING

from synapse_os.profile.model import NVME_QUEUE_SYSFS, SYSFS_FIELDS, Profile
from synapse_os.tunables.base import Activation, Check, Tunable, changed_under, guarded
from synapse_os.tunables.state import SystemState

if TYPE_CHECKING:
    from synapse_os.render import Context, Tree

SYSFS_CHOICE = {f.path: f.choice for f in SYSFS_FIELDS}
NVME_RULES = "etc/udev/rules.d/60-synapse-nvme.rules"
TMPFILES = "etc/tmpfiles.d/synapse-sysfs.conf"
UDEV_RULES_D = "etc/udev/rules.d/"


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    sysfs: dict[str, str] = {}
    for setting in SYSFS_FIELDS:
        section, name = setting.key.split(".")
        value = getattr(getattr(profile, section), name)
        if value is not None:
            sysfs[setting.path] = setting.value_text(value)
            sources[f"sysfs {setting.path}"] = setting.key
    return {"sysfs": sysfs}


def checks(state: SystemState) -> list[Check]:
    out = []
    for path, value in state.sysfs.items():
        choice = SYSFS_CHOICE[path]  # "always [madvise] never"
        probe = (f"cat {path}" if choice else f"cat {path} | sort -u | tr '\\n' ' ' | sed 's/ $//'")
        out.append(Check(f"sysfs {path}", "sysfs", state.sources[f"sysfs {path}"], value,
                         guarded(path, probe), "selected" if choice else "equal"))
    return out


def render(ctx: Context, tree: Tree) -> None:
    # block devices come and go (hotplug, driver load): udev sets their queues as they appear
    nvme_queue = {path.rsplit("/", 1)[1]: value for path, value in ctx.state.sysfs.items()
                  if path.startswith(NVME_QUEUE_SYSFS)}
    if nvme_queue:
        tree.add(f"rootfs/{NVME_RULES}", ctx.template("udev-nvme.rules.j2", nvme_queue=nvme_queue))
    if len(ctx.state.sysfs) > len(nvme_queue):
        tree.add(f"rootfs/{TMPFILES}",
                 ctx.template("tmpfiles-sysfs.conf.j2", block_queue=NVME_QUEUE_SYSFS))


def activate(changed: list[str], gone: set[str], with_systemd: bool) -> list[Activation]:
    """udev re-reads its rules, then replays block adds (tmpfiles files are run by apply's
    own tmpfiles step, which serves every tmpfiles.d file)."""
    rules = changed_under(changed, UDEV_RULES_D)
    if not rules or not shutil.which("udevadm"):
        return []
    why = ", ".join(rules)
    return [Activation("udev", ("udevadm", "control", "--reload"), why, required=False),
            Activation("udev", ("udevadm", "trigger", "--action=change",
                                "--subsystem-match=block"), why, required=False)]


def live_paths(state: SystemState) -> list[str]:
    return [path for pattern in state.sysfs for path in sorted(glob.glob(pattern))]


TUNABLE = Tunable("sysfs", desire, checks, render, activate, live_paths, read_at_boot={
    TMPFILES: "systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service",
    NVME_RULES: "systemd-udevd.service"})
