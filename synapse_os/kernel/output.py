"""The kernel commands' output directories, written all at once (see synapse_os.outdir)."""

from __future__ import annotations

from pathlib import Path

from synapse_os.outdir import File, write_dir


def write_dir_atomically(
    out: Path, files: dict[str, str], marker: str, executable: frozenset[str] = frozenset()
) -> None:
    """Write `files` as `out`; an existing `out` is replaced only if it holds `marker`."""
    write_dir(out, {name: File(text.encode(), 0o755 if name in executable else 0o644)
                    for name, text in files.items()}, marker=marker)
