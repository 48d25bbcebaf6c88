"""Output directories written all at once: built in a temporary sibling, then renamed into
place, so a failure never leaves anything half-written, and a directory that is not a
previous output of the same command is never replaced."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from synapse_os.errors import UserError


@dataclass(frozen=True)
class File:
    content: bytes = b""
    mode: int = 0o644
    link: str | None = None  # a symlink (unit masks point at /dev/null)

    def digest(self) -> str:
        data = self.link.encode() if self.link is not None else self.content
        return hashlib.sha256(data).hexdigest()


def check_output_dir(out: Path, marker: str) -> None:
    """Refuse an -o path we must not replace: a file, or a foreign non-empty directory."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another -o path")
    if out.is_dir() and not (out / marker).exists() and any(out.iterdir()):
        raise UserError(
            f"{out}: is a non-empty directory that synapse did not write (no {marker}); "
            "choose an empty or new directory"
        )


def write_dir(out: Path, files: Mapping[str, File], marker: str) -> None:
    """Write `files` (relative paths) as directory `out`; `files` must include `marker`."""
    out = Path(out)
    check_output_dir(out, marker)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as exc:
        raise UserError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    try:
        for rel, f in sorted(files.items()):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.link is not None:
                os.symlink(f.link, dest)
            else:
                dest.write_bytes(f.content)
                os.chmod(dest, f.mode)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            os.rename(out, old / "tree")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except OSError as exc:
        raise UserError(f"{out}: could not be written ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
