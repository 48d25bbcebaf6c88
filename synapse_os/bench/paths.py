"""Where bench caches live (llama-bench builds, sources, the bandwidth probe), and the
A/B runs' output directories."""

from __future__ import annotations

import os
from pathlib import Path

from synapse_os.errors import UserError


def cache_root() -> Path:
    """$SYNAPSE_CACHE_DIR, else $XDG_CACHE_HOME/synapse, else ~/.cache/synapse."""
    explicit = os.environ.get("SYNAPSE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "synapse"


def check_output_dir(output: Path) -> None:
    """An A/B run writes into a new or empty directory, never over earlier results."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"-o {output} exists and is not an empty directory; pass a new or "
                        "empty directory for the A/B results")
