"""Kernel sysctls: the fields that own one (`json_schema_extra={"sysctl": KEY}` on the
memory model) and the free `sysctl:` map, written to one sysctl.d file."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from synapse_os.profile.model import NUMA_SYSCTLS, OWNED_SYSCTL, Profile, parse_size
from synapse_os.tunables.base import Activation, Check, Tunable, changed_under, guarded
from synapse_os.tunables.state import SystemState

if TYPE_CHECKING:
    from synapse_os.render import Context, Tree

SYSCTL_D = "etc/sysctl.d/"
SYSCTL_FILE = f"{SYSCTL_D}90-synapse.conf"
# What bench provenance records: every sysctl a field owns, plus the ones inference
# results are known to follow.
PROVENANCE_SYSCTLS = tuple(sorted({*OWNED_SYSCTL, "vm.overcommit_memory", "vm.max_map_count",
                                   *NUMA_SYSCTLS, "kernel.nmi_watchdog",
                                   "kernel.sched_autogroup_enabled"}))


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    sysctl: dict[str, str] = {}
    for key, src in OWNED_SYSCTL.items():
        value = getattr(profile.memory, src.removeprefix("memory."))
        if value is not None:
            sysctl[key] = str(parse_size(value) if isinstance(value, str) else value)
            sources[f"sysctl {key}"] = src
    for extra_key, extra_value in sorted(profile.sysctl.items()):
        sysctl[extra_key] = str(extra_value)
        sources[f"sysctl {extra_key}"] = f"sysctl.{extra_key}"
    return {"sysctl": sysctl}


def checks(state: SystemState) -> list[Check]:
    out = []
    for key, value in state.sysctl.items():
        path = shlex.quote(sysctl_path(key))
        # the kernel prints some sysctls with tabs between fields: normalise whitespace
        out.append(Check(f"sysctl {key}", "sysctl", state.sources[f"sysctl {key}"],
                         " ".join(value.split()),
                         guarded(path, f"tr -s '\\t ' '  ' < {path}")))
    return out


def render(ctx: Context, tree: Tree) -> None:
    if ctx.state.sysctl:
        tree.add(f"rootfs/{SYSCTL_FILE}", ctx.template("sysctl.conf.j2"))


def activate(changed: list[str], gone: set[str], with_systemd: bool) -> list[Activation]:
    files = changed_under(changed, SYSCTL_D)
    return [Activation("sysctl", ("sysctl", "--system"), ", ".join(files))] if files else []


def live_paths(state: SystemState) -> list[str]:
    return [sysctl_path(key) for key in state.sysctl]


TUNABLE = Tunable("sysctl", desire, checks, render, activate, live_paths,
                  read_at_boot={SYSCTL_FILE: "systemd-sysctl.service"})
