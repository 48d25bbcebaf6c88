"""Output directories written all at once: built in a temporary sibling, then renamed into
place, so a failure never leaves anything half-written, and a directory that is not a
previous output of the same command is never replaced.

What marks a directory as synapse's own: its marker file (manifest.json for render). With
`listed=True` the marker must be a synapse manifest (a JSON object with "synapse_version"
and a "files" mapping), so a foreign directory that merely happens to hold a file called
manifest.json is never replaced. Modes are set explicitly (files as
given, directories 0755), whatever the caller's umask."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
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


def _is_synapse_manifest(marker: Path) -> bool:
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "synapse_version" in data \
        and isinstance(data.get("files"), dict)


def check_output_dir(out: Path, marker: str, listed: bool = False) -> None:
    """Refuse an -o path we must not replace: a file, or a foreign non-empty directory."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"{out}: exists and is not a directory; choose another -o path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / marker).is_file():
        raise UserError(
            f"{out}: is a non-empty directory that synapse did not write (no {marker}); "
            "choose an empty or new directory"
        )
    if listed and not _is_synapse_manifest(out / marker):
        raise UserError(f"{out}: its {marker} was not written by synapse (no synapse_version "
                        "and files in it); choose an empty or new directory")


def write_dir(out: Path, files: Mapping[str, File], marker: str, listed: bool = False,
              fill: Callable[[Path], None] | None = None) -> None:
    """Write `files` (relative paths) as directory `out`; `files` must include `marker`.
    `fill(new_dir)` may add more before the directory is renamed into place."""
    out = Path(out)
    check_output_dir(out, marker, listed)
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
        if fill is not None:
            fill(tmp)
        for dirpath, _dirs, _files in os.walk(tmp):
            os.chmod(dirpath, 0o755)
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
