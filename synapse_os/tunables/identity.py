"""The machine's name and time zone."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from synapse_os.profile.model import Profile
from synapse_os.tunables.base import Check, Tunable
from synapse_os.tunables.state import SystemState

if TYPE_CHECKING:
    from synapse_os.render import Context, Tree


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    return {"hostname": profile.hostname, "timezone": profile.timezone}


def checks(state: SystemState) -> list[Check]:
    # Aliases (UTC, Etc/UTC) are one zone: compare the zone data, show the link otherwise.
    zone = shlex.quote(f"/usr/share/zoneinfo/{state.timezone}")
    return [Check("hostname", "file", "hostname", state.hostname, "cat /etc/hostname"),
            Check("timezone", "file", "timezone", state.timezone,
                  f'[ "$(sha256sum < /etc/localtime)" = "$(sha256sum < {zone})" ] '
                  f"&& echo {shlex.quote(state.timezone)} "
                  "|| readlink /etc/localtime | sed 's|^.*/zoneinfo/||'")]


def render(ctx: Context, tree: Tree) -> None:
    tree.add("rootfs/etc/hostname", f"{ctx.state.hostname}\n")


TUNABLE = Tunable("identity", desire, checks, render)
