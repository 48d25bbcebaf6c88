"""Crash-safe file operations on a target root: snapshot, atomic replace, restore.

Every change to a target file is "write a temporary file in the same directory, fsync it,
rename it over the target, fsync the directory", so a reader (or a crash) only ever sees
the old or the new content, never a mix. Originals are kept by hard-linking their inode
into the transaction's backup directory (no copy, no extra space, preserves owner, mode
and times); a copy is made only when the backup lives on another filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from synapse_os.apply import faults
from synapse_os.errors import OperationError


@dataclass(frozen=True)
class FileState:
    """What is at a path: absent, a regular file or a symlink (nothing else is managed)."""

    kind: str  # "absent" | "file" | "link"
    mode: int = 0
    uid: int = 0
    gid: int = 0
    sha256: str = ""
    link: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FileState:
        return cls(**data)  # type: ignore[arg-type]

    def same_content(self, other: FileState, modes: bool = True) -> bool:
        """Equal as far as apply cares: kind, content or link target, and permission bits
        (unless `modes` is false: a file system without them)."""
        if self.kind != other.kind:
            return False
        if self.kind == "link":
            return self.link == other.link
        if self.kind == "file":
            return self.sha256 == other.sha256 and (self.mode == other.mode or not modes)
        return True


ABSENT = FileState("absent")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(path: Path) -> FileState:
    """The state of `path` (not following a final symlink); refuses other file types."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ABSENT
    if stat.S_ISLNK(st.st_mode):
        return FileState("link", 0o777, st.st_uid, st.st_gid, "", os.readlink(path))
    if stat.S_ISREG(st.st_mode):
        return FileState("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                         sha256_path(path))
    raise OperationError(
        f"{path}: is a {'directory' if stat.S_ISDIR(st.st_mode) else 'special file'}, "
        "where the profile places a file; move it away or change the profile"
    )


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written: a short write (disk nearly full) raises
    instead of leaving a truncated file that looks complete."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def missing_parents(path: Path, root: Path) -> list[Path]:
    """Directories between `root` and `path` that do not exist yet, outermost first."""
    out: list[Path] = []
    parent = path.parent
    while parent != root and not parent.exists():
        out.append(parent)
        parent = parent.parent
    return list(reversed(out))


def make_dirs(dirs: list[Path]) -> None:
    for d in dirs:
        os.mkdir(d, 0o755)
        fsync_dir(d.parent)


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove directories a transaction created, innermost first, if still empty."""
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if not d.is_dir() or d.is_symlink():
            continue
        try:
            os.rmdir(d)
            fsync_dir(d.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as exc:  # FAT (an ESP under /boot) has no permission bits
        if exc.errno not in (errno.EPERM, errno.ENOTSUP):
            raise


def write_atomic(path: Path, tmp: Path, content: bytes | None, mode: int,
                 link: str | None = None) -> None:
    """Place `content` (or a symlink to `link`) at `path` via `tmp` in the same directory."""
    remove_if_present(tmp)
    if link is not None:
        os.symlink(link, tmp)
    else:
        assert content is not None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as fh:
                if faults.mid_write_now():
                    fh.write(content[: len(content) // 2])
                    fh.flush()
                    os.fsync(fd)
                    faults.die()
                fh.write(content)
                fh.flush()
                os.fsync(fd)
        finally:
            os.close(fd)
        _chmod(tmp, mode)
    faults.checkpoint(f"temp written {path}")
    os.rename(tmp, path)
    faults.checkpoint(f"renamed {path}")
    fsync_dir(path.parent)


def remove_if_present(path: Path) -> None:
    # check first: on a read-only filesystem unlink() of a missing name fails with EROFS
    if os.path.lexists(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def remove_durably(path: Path) -> None:
    if not os.path.lexists(path):
        return
    os.unlink(path)
    fsync_dir(path.parent)


def keep_original(path: Path, backup: Path) -> None:
    """Keep the original regular file at `backup`: a hard link, or a copy across filesystems."""
    remove_if_present(backup)
    try:
        os.link(path, backup, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        tmp = backup.with_name(backup.name + ".tmp")
        shutil.copy2(path, tmp, follow_symlinks=False)
        st = os.lstat(path)
        os.chown(tmp, st.st_uid, st.st_gid)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.rename(tmp, backup)
    fsync_dir(backup.parent)


def restore(path: Path, tmp: Path, original: FileState, backup: Path | None) -> None:
    """Put `original` back at `path` atomically (link its backup in, or recreate a symlink)."""
    if original.kind == "absent":
        remove_durably(path)
        return
    remove_if_present(tmp)
    if original.kind == "link":
        assert original.link is not None
        os.symlink(original.link, tmp)
        os.lchown(tmp, original.uid, original.gid)
    else:
        assert backup is not None
        st = os.lstat(backup)
        if not stat.S_ISREG(st.st_mode):
            raise OperationError(f"{backup}: the backup is not a regular file; refusing to "
                                 "restore from it")
        try:
            os.link(backup, tmp, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(backup, tmp)
            os.chown(tmp, original.uid, original.gid)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
    os.rename(tmp, path)
    fsync_dir(path.parent)
