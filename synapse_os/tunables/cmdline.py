"""Kernel command-line words: the profile's own (`boot.cmdline`) and those a field owns.
They reach the boot loader's files (render's boot step) and take effect at the next boot."""

from __future__ import annotations

import re

from synapse_os.profile.model import Profile
from synapse_os.tunables.base import Check, Tunable, guarded
from synapse_os.tunables.state import SystemState

ZSWAP_ENABLED = "/sys/module/zswap/parameters/enabled"


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    mem = profile.memory
    partition = profile.cpu_partition()
    cmdline: list[str] = []
    for word in profile.boot.cmdline:
        cmdline.append(word)
        sources[f"cmdline {word}"] = "boot.cmdline"
    owned: tuple[tuple[str | None, str], ...] = (
        ("mitigations=off" if profile.boot.mitigations == "off" else None, "boot.mitigations"),
        (f"transparent_hugepage={mem.thp}" if mem.thp else None, "memory.thp"),
        (f"nohz_full={profile.kernel.nohz_full_cpus}" if profile.kernel.nohz_full_cpus
         else None, "kernel.nohz_full_cpus"),
        ("zswap.enabled=0" if mem.zswap is False else
         "zswap.enabled=1" if mem.zswap else None, "memory.zswap"),
        (f"irqaffinity={partition[1]}" if partition else None, "cpu.inference_cpus"),
    )
    for owned_word, src in owned:
        if owned_word:
            cmdline.append(owned_word)
            sources[f"cmdline {owned_word}"] = src
    return {"cmdline": tuple(cmdline), "zswap_enabled": mem.zswap}


def checks(state: SystemState) -> list[Check]:
    out = [Check(f"cmdline {word}", "cmdline", state.sources[f"cmdline {word}"], word,
                 "cat /proc/cmdline", "token", after_reboot=True) for word in state.cmdline]
    if state.zswap_enabled is not None:
        out.append(Check("zswap enabled", "sysfs", "memory.zswap",
                         "Y" if state.zswap_enabled else "N",
                         guarded(ZSWAP_ENABLED, f"cat {ZSWAP_ENABLED}"), after_reboot=True))
    return out


def cmdline_string(words: tuple[str, ...] | list[str]) -> str:
    for word in words:
        if not re.match(r'^[^\s"]+$', word):
            raise ValueError(f"kernel parameter {word!r} contains whitespace or quotes")
    return " ".join(words)


TUNABLE = Tunable("cmdline", desire, checks)
