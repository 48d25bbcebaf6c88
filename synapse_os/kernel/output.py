"""Writing an output directory all at once: nothing half-written is ever left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from synapse_os.errors import UserError


def check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} exists and is not a directory; pass a directory path")


def write_dir_atomically(
    out: Path, files: dict[str, str], executable: frozenset[str] = frozenset()
) -> None:
    """Write `files` into a temporary sibling of `out`, then rename it into place."""
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, content in files.items():
            path = tmp / name
            path.write_text(content)
            path.chmod(0o755 if name in executable else 0o644)
        tmp.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
