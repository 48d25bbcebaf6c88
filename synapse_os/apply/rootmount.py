"""A read-only root (system.root: read-only) is made writable for the length of one apply or
rollback transaction and read-only again after it.

Crash safety needs nothing more: the root is read-only by the kernel command line and fstab,
so a killed apply leaves it writable only until the next boot, and the transaction journal
lives on /var (its own partition), where the next apply or rollback finds and undoes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from synapse_os.apply.untrusted import inside
from synapse_os.errors import OperationError
from synapse_os.proc import run


def mount_point(path: Path) -> Path:
    path = Path(os.path.realpath(path))
    while not os.path.ismount(path):
        path = path.parent
    return path


def read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


@contextmanager
def writable(root: Path, warn: list[str], needed: bool = True) -> Iterator[None]:
    """Remount the mount holding ROOT/etc read-write when it is read-only (and `needed`), and
    read-only again on the way out; a failure to make it read-only again is added to `warn`
    (the transaction stands, and the next boot mounts the root read-only)."""
    etc = root / "etc"
    # a target root is untrusted: an etc/ that leads out of it is never remounted
    if not needed or not etc.is_dir() or not inside(root, etc) or not read_only(etc):
        yield
        return
    mount = mount_point(etc)
    res = run(["mount", "-o", "remount,rw", str(mount)], check=False)
    if res.returncode != 0:
        raise OperationError(f"{mount} is mounted read-only and could not be made writable for "
                             f"the transaction ({res.stderr.strip()}); nothing was changed")
    try:
        yield
    finally:
        os.sync()
        res = run(["mount", "-o", "remount,ro", str(mount)], check=False)
        if res.returncode != 0:
            warn.append(f"{mount} could not be made read-only again ({res.stderr.strip()}); "
                        "it is read-only again from the next boot")
