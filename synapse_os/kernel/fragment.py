"""The profile's kernel section as one Kconfig fragment (pure: reads only shipped files).

Each concern (preemption, timer, memory, cpufreq, mitigations, watchdogs) has small
fragment files in `kernel-config/`; the profile picks one per concern, then
`kernel.extra` is applied last. A symbol set twice keeps its last value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from synapse_os.kernel.configfile import format_assignment, parse_fragment
from synapse_os.profile.model import Profile
from synapse_os.resources import data_dir


@dataclass(frozen=True)
class Requested:
    """One symbol the profile asks for."""

    symbol: str  # without the CONFIG_ prefix
    value: str  # y, n, m or a literal value
    origin: str  # the profile key (and fragment file) that asked for it


def _on_off(flag: bool | None) -> str | None:
    return None if flag is None else ("on" if flag else "off")


# (profile key, fragment file pattern, how to read the choice from the profile)
CONCERNS: tuple[tuple[str, str, Callable[[Profile], object]], ...] = (
    ("kernel.preempt", "preempt/{}.config", lambda p: p.kernel.preempt),
    ("kernel.hz", "timer/hz-{}.config", lambda p: p.kernel.hz),
    ("kernel.tick", "timer/tick-{}.config", lambda p: p.kernel.tick),
    ("kernel.thp_default", "memory/thp-{}.config", lambda p: p.kernel.thp_default),
    ("kernel.numa", "memory/numa-{}.config", lambda p: _on_off(p.kernel.numa)),
    ("cpu.governor", "cpufreq/{}.config", lambda p: p.cpu.governor),
    ("kernel.mitigations", "mitigations/{}.config", lambda p: _on_off(p.kernel.mitigations)),
    ("kernel.watchdogs", "watchdogs/{}.config", lambda p: _on_off(p.kernel.watchdogs)),
)


@lru_cache(maxsize=64)
def _fragment_file(relative: str) -> tuple[tuple[str, str], ...]:
    path = data_dir("kernel-config") / relative
    return tuple((c.symbol, c.value) for c in parse_fragment(path.read_text(), relative))


def requested_entries(profile: Profile) -> list[Requested]:
    """Every symbol the profile asks for, in fragment order, each symbol once (last wins)."""
    if profile.kernel.source != "custom":
        return []
    entries: dict[str, Requested] = {}

    def add(entry: Requested) -> None:
        entries.pop(entry.symbol, None)  # keep the position of the last setting
        entries[entry.symbol] = entry

    for key, pattern, choose in CONCERNS:
        choice = choose(profile)
        if choice is None:
            continue
        relative = pattern.format(choice)
        for symbol, value in _fragment_file(relative):
            add(Requested(symbol, value, f"{key} ({relative})"))
    for name, value in profile.kernel.extra.items():
        add(Requested(name.removeprefix("CONFIG_"), value.strip(), "kernel.extra"))
    return list(entries.values())


def requested_symbols(profile: Profile) -> dict[str, str]:
    """CONFIG_NAME -> requested value ("y", "n", "m" or a literal), in fragment order."""
    return {f"CONFIG_{e.symbol}": e.value for e in requested_entries(profile)}


def kernel_fragment(profile: Profile) -> str:
    """The fragment text for `kernel/synapse.config`: deterministic, "n" as "is not set"."""
    lines = [
        f"# Kernel config fragment rendered by Synapse from profile '{profile.name}'.",
        "# Resolve it against a kernel tree: synapse kernel config PROFILE --source DIR -o OUT",
    ]
    entries = requested_entries(profile)
    if not entries:
        lines.append("# kernel.source is 'stock' or sets nothing: no kernel build options.")
    origin = None
    for entry in entries:
        if entry.origin != origin:
            origin = entry.origin
            lines += ["", f"# {origin}"]
        lines.append(format_assignment(entry.symbol, entry.value))
    return "\n".join(lines) + "\n"
