"""Where bench caches live (llama-bench builds, sources, the bandwidth probe)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$SYNAPSE_CACHE_DIR, else $XDG_CACHE_HOME/synapse, else ~/.cache/synapse."""
    explicit = os.environ.get("SYNAPSE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "synapse"
