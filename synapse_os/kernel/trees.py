"""Debian's packaged kernel sources (`linux-source-X.Y`), unpacked once per tarball.

The tests and `bench/bench_kernel.py` resolve against real trees. A tree is extracted into
the cache (`$SYNAPSE_CACHE`, default ~/.cache/synapse) under a directory named after the
tarball's sha256, so an updated package is extracted afresh and an unchanged one never
twice; a file lock keeps parallel processes from extracting the same tarball together.
The extracted tree is only ever read.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from synapse_os.errors import UserError

MARKER = ".synapse-extracted"


def cache_dir() -> Path:
    return Path(os.environ.get("SYNAPSE_CACHE", Path.home() / ".cache" / "synapse"))


def debian_package(series: str) -> str:
    return f"linux-source-{series}"


def debian_tarball(series: str) -> Path:
    return Path("/usr/src") / f"{debian_package(series)}.tar.xz"


def install_hint(series: str) -> str:
    return f"apt-get install -y {debian_package(series)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepared_tree(series: str, cache: Path | None = None) -> Path:
    """The unpacked tree of Debian's linux-source-<series>, extracted on first use.

    UserError (with the apt command) when the package is not installed."""
    tarball = debian_tarball(series)
    if not tarball.is_file():
        raise UserError(
            f"{tarball} is missing; install Debian's kernel source with: {install_hint(series)}"
        )
    return extracted_tree(tarball, debian_package(series), cache)


def extracted_tree(tarball: Path, label: str, cache: Path | None = None) -> Path:
    """`tarball` (one top directory: a kernel source tree) unpacked under the cache as
    `<label>-<sha256 prefix>`, once; earlier extractions under the same label are removed."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = _sha256(tarball)[:16]
    dest = cache / f"{label}-{key}"
    if (dest / MARKER).is_file():
        return dest
    with open(cache / f"{label}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / MARKER).is_file():
            return dest
        # older extractions under the same label (another tarball hash) are stale
        for stale in cache.glob(f"{label}-*"):
            if stale.is_dir() and stale != dest:
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
        try:
            subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp)], check=True)
            top = [p for p in tmp.iterdir() if p.is_dir()]
            if len(top) != 1:
                raise UserError(f"{tarball} does not hold one kernel source directory")
            (top[0] / MARKER).write_text(f"extracted from {tarball} (sha256 prefix {key})\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(top[0], dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
