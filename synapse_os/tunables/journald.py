"""journald's limits: one drop-in, read by systemd-journald (restarted when it changes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from synapse_os.profile.model import Profile, parse_size
from synapse_os.tunables.base import Activation, Check, Tunable, changed_under
from synapse_os.tunables.state import SystemState

if TYPE_CHECKING:
    from synapse_os.render import Context, Tree

DROP_IN = "etc/systemd/journald.conf.d/90-synapse.conf"


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    jd = profile.journald
    journald: dict[str, str] = {}
    for key, value, src in (
        ("Storage", jd.storage, "journald.storage"),
        ("SystemMaxUse", jd.system_max_use and str(parse_size(jd.system_max_use)),
         "journald.system_max_use"),
        ("RuntimeMaxUse", jd.runtime_max_use and str(parse_size(jd.runtime_max_use)),
         "journald.runtime_max_use"),
        ("MaxRetentionSec", jd.max_retention, "journald.max_retention"),
    ):
        if value is not None:
            journald[key] = value
            sources[f"journald {key}"] = src
    return {"journald": journald}


def checks(state: SystemState) -> list[Check]:
    return [Check(f"journald {key}", "journald", state.sources[f"journald {key}"], value,
                  "systemd-analyze cat-config systemd/journald.conf 2>/dev/null"
                  f" | sed -n 's/^{key}=//p' | tail -n 1")
            for key, value in state.journald.items()]


def render(ctx: Context, tree: Tree) -> None:
    if ctx.state.journald:
        tree.add(f"rootfs/{DROP_IN}", ctx.template("journald.conf.j2"))


def activate(changed: list[str], gone: set[str], with_systemd: bool) -> list[Activation]:
    files = changed_under(changed, "etc/systemd/journald.conf")
    if not (files and with_systemd):
        return []
    return [Activation("journald", ("systemctl", "restart", "systemd-journald"),
                       ", ".join(files))]


TUNABLE = Tunable("journald", desire, checks, render, activate,
                  read_at_boot={DROP_IN: "systemd-journald.service"})
