"""CPU partitioning, systemd's side: PID 1 and every unit without its own CPUAffinity= run
on the housekeeping CPUs (the engine's unit takes the inference CPUs, see `service`; the
kernel's irqaffinity= word, see `cmdline`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from synapse_os.profile.model import Profile
from synapse_os.tunables.base import Check, Tunable
from synapse_os.tunables.state import SystemState

if TYPE_CHECKING:
    from synapse_os.render import Context, Tree

SYSTEM_CONF = "rootfs/etc/systemd/system.conf.d/90-synapse.conf"


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    partition = profile.cpu_partition()
    if not partition:
        return {}
    sources["systemd CPUAffinity"] = "cpu.inference_cpus"
    return {"system_cpus": partition[1]}


def checks(state: SystemState) -> list[Check]:
    if state.system_cpus is None:
        return []
    return [Check("systemd CPUAffinity", "unit", state.sources["systemd CPUAffinity"],
                  state.system_cpus, "awk '/^Cpus_allowed_list:/ {print $2}' /proc/1/status",
                  after_reboot=True)]


def render(ctx: Context, tree: Tree) -> None:
    if ctx.state.system_cpus:  # read by PID 1 at boot: a reboot reason, not an activation
        tree.add(SYSTEM_CONF, ctx.template("system-cpus.conf.j2"))


TUNABLE = Tunable("cpus", desire, checks, render)
