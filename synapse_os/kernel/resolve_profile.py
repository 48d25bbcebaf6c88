"""A profile's kernel settings resolved against a source tree: what `synapse kernel config`
prints and what a Debian bundle builds (the same requests, requirements, capture and hash)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from synapse_os.kernel.configfile import ConfigLine
from synapse_os.kernel.fragment import kernel_section_hash, requested_entries, required_symbols
from synapse_os.kernel.hw import load_capture, lsmod_text
from synapse_os.kernel.resolve import Resolution, resolve
from synapse_os.profile.model import Profile


def capture_path(profile: Profile, profile_dir: Path) -> Path | None:
    """kernel.localmodconfig, relative to the directory of the profile that names it."""
    name = profile.kernel.localmodconfig
    return None if name is None else profile_dir / name


def resolve_profile(
    profile: Profile, source: Path, *, profile_dir: Path, hw: Path | None = None,
    base_text: str | None = None, base_label: str | None = None,
    fragments: Sequence[ConfigLine] = (), strict_origins: frozenset[str] = frozenset(),
    arch: str = "x86", progress: Callable[[str], None] | None = None,
) -> Resolution:
    """Resolve the profile's requests (then `fragments`) on `source`: base config or the
    arch defconfig, trimmed to the hardware capture (`hw`, else kernel.localmodconfig)."""
    requests = [ConfigLine(e.symbol, e.value, e.origin) for e in requested_entries(profile)]
    capture = hw if hw is not None else capture_path(profile, profile_dir)
    lsmod = lsmod_text(load_capture(capture)) if capture is not None else None
    return resolve(
        dedupe([*requests, *fragments]), source, base_text=base_text,
        base_label=base_label or f"arch/{arch} defconfig", strict_origins=strict_origins,
        lsmod_text=lsmod, arch=arch, progress=progress,
        requirements=required_symbols(profile), profile_hash=kernel_section_hash(profile),
    )


def dedupe(requests: Sequence[ConfigLine]) -> list[ConfigLine]:
    """Last request for a symbol wins (as in kconfig), keeping its position."""
    latest: dict[str, ConfigLine] = {}
    for r in requests:
        latest.pop(r.symbol, None)
        latest[r.symbol] = r
    return list(latest.values())
