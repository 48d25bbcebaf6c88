"""Which synapse produced a record: the checkout's commit and whether it had local changes."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from synapse_os import __version__
from synapse_os.proc import run


@lru_cache(maxsize=1)
def git_revision() -> dict[str, Any]:
    """{"commit", "dirty"} of this checkout; both None for an installed release."""
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") and (root / ".git").exists():
        head = run(["git", "-C", str(root), "rev-parse", "HEAD"], check=False, timeout=10)
        if head.returncode == 0:
            status = run(["git", "-C", str(root), "status", "--porcelain",
                          "--untracked-files=no"], check=False, timeout=30)
            return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    return {"commit": None, "dirty": None}


def revision_label() -> str:
    """One word for a record: the commit (+ '-dirty'), or 'release-<version>'."""
    rev = git_revision()
    if rev["commit"] is None:
        return f"release-{__version__}"
    return rev["commit"] + ("-dirty" if rev["dirty"] else "")
