"""The image layer cache: tarballs keyed by a hash of everything that produced them.

A layer (the bootstrapped base root, the runtime's dependency venv) is rebuilt only when
one of its inputs changes, so a profile change that touches only the overlay reuses both
and an image rebuild takes seconds. Writes are atomic (temp file + rename), so an
interrupted build never leaves a half-written layer that a later build would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from synapse_os.errors import UserError

LAYER_FORMAT = 1  # bump when the way layers are made changes


def cache_root() -> Path:
    """~/.cache/synapse/images, or $SYNAPSE_CACHE/images."""
    base = os.environ.get("SYNAPSE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "synapse"
    )
    return Path(base) / "images"


def layer_key(kind: str, inputs: dict[str, object]) -> str:
    blob = json.dumps({"kind": kind, "format": LAYER_FORMAT, **inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class LayerCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()

    def path(self, kind: str, key: str, suffix: str = ".tar") -> Path:
        return self.root / kind / f"{key}{suffix}"

    def get(self, kind: str, key: str, suffix: str = ".tar") -> Path | None:
        p = self.path(kind, key, suffix)
        return p if p.is_file() else None

    @contextmanager
    def put(self, kind: str, key: str, suffix: str = ".tar") -> Iterator[Path]:
        """Yield a temp path to write the layer to; it becomes the layer only on success."""
        final = self.path(kind, key, suffix)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"{final.parent}: cannot create the image cache ({exc.strerror}); "
                "set SYNAPSE_CACHE to a writable directory"
            ) from None
        fd, tmp_name = tempfile.mkstemp(prefix=f".{key}.", suffix=suffix, dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


    def complete_dir(self, kind: str, key: str) -> Path | None:
        """The cached directory of `kind` and `key`, when one was completed."""
        final = self.path(kind, key, suffix="")
        return final if (final / COMPLETE).is_file() else None

    @contextmanager
    def put_dir(self, kind: str, key: str, listing: list[str] | None = None) -> Iterator[Path]:
        """Yield a temp directory to fill; on success it becomes the cached directory, with
        `listing` (what it holds; by default the names it holds) in its completion marker."""
        final = self.path(kind, key, suffix="")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            yield tmp
            names = listing if listing is not None else sorted(p.name for p in tmp.iterdir())
            (tmp / COMPLETE).write_text("\n".join(names) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


COMPLETE = ".complete"


def link_or_copy(src: Path, dest: Path) -> None:
    """A hard link to a cached file (instant, no space), or a copy across file systems."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
