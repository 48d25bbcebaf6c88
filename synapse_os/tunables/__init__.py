"""The settings a profile declares, one module per concern (sysctl, sysfs, cmdline, units,
journald, zram, the engine's unit properties, ...), and the one registry every consumer
loops over: render writes each tunable's files, `apply` plans its activations and keeps
its live values for rollback, `synapse verify` and the VM assertions run its checks, the
stock boot hides the files it reads at boot. A new setting is one model field plus, for
a new kind, one module here.

Checks of what is not a tunable of the running system: `kernel` (CONFIG_* and the booted
kernel's behaviour), `install` (mounts, locale, network, packages) and `files` (hashes).
"""

from __future__ import annotations

from synapse_os.profile.model import Profile
from synapse_os.tunables import (
    cmdline,
    cpus,
    identity,
    journald,
    service,
    sysctl,
    sysfs,
    units,
    zram,
)
from synapse_os.tunables.base import UNKNOWN_RC, Activation, Check, Tunable, matches
from synapse_os.tunables.kernel import kernel_checks
from synapse_os.tunables.state import SystemState, ZramState

REGISTRY: tuple[Tunable, ...] = tuple(m.TUNABLE for m in (
    sysctl, sysfs, cpus, cmdline, units, journald, zram, service, identity))


def desired_state(profile: Profile) -> SystemState:
    """Everything the profile asks of a running system."""
    sources: dict[str, str] = {}
    parts: dict[str, object] = {}
    for tunable in REGISTRY:
        parts |= tunable.desire(profile, sources)
    return SystemState(**parts, sources=sources)  # type: ignore[arg-type]


def checks(state: SystemState) -> list[Check]:
    """One live check per declared setting (files are checked from the manifest elsewhere)."""
    return [check for tunable in REGISTRY for check in tunable.checks(state)]


def live_checks(profile: Profile) -> list[Check]:
    """Every live check of a profile: what `synapse verify` runs and the VM asserts."""
    state = desired_state(profile)
    return [*checks(state), *kernel_checks(profile, state)]


__all__ = ["REGISTRY", "UNKNOWN_RC", "Activation", "Check", "SystemState", "ZramState",
           "checks", "desired_state", "live_checks", "matches"]
