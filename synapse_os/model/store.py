"""The model store: `<root>/var/ai-data/models/<sha256>.gguf`, each with `<sha256>.json`
(the inspection record) next to it.

Everything under a target root is untrusted (README, trust model): the store is reached
one directory at a time with O_NOFOLLOW, a symlink on the way is refused (naming whether it
leads out of the root), files are opened relative to the store's directory descriptor and
never through a symlink, and records are size-capped and checked field by field.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synapse_os.apply.untrusted import inside
from synapse_os.errors import OperationError, UserError
from synapse_os.model.inspect import check_inspection

STORE_PARTS = ("var", "ai-data", "models")
STORE = "/" + "/".join(STORE_PARTS)  # as the target system sees it
MODEL_NAME = re.compile(r"([0-9a-f]{64})\.gguf")
RECORD_NAME = re.compile(r"([0-9a-f]{64})\.json")
TEMP_PREFIX = ".intake-"
MAX_RECORD = 1 << 20
CHUNK = 4 << 20
RECORD_VERSION = 1
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def target_path(sha: str) -> str:
    """The model's path on the target system (what the profile pins)."""
    return f"{STORE}/{sha}.gguf"


def _refuse_link(root: Path, path: Path) -> UserError:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    where = "outside" if not inside(root, path) else "inside"
    return UserError(f"{path} is a symlink (to {target!r}, {where} {root}); the model store is "
                     "never reached through a symlink, refusing")


@contextmanager
def store_dir(root: Path, create: bool) -> Iterator[int | None]:
    """A descriptor of the store directory (None when absent and not `create`)."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(f"--root {root}: not a directory we can open ({exc.strerror})") from None
    path = root
    try:
        for part in STORE_PARTS:
            path = path / part
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    fd = -1
                    yield None
                    return
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
                if os.geteuid() == 0:
                    os.fchown(nfd, 0, 0)
                os.fchmod(nfd, 0o755)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
                    raise _refuse_link(root, path) from None
                if exc.errno == errno.ENOTDIR:
                    raise UserError(f"{path} is not a directory; the model store needs it to be "
                                    "one") from None
                raise OperationError(f"{path}: cannot be opened ({exc.strerror})") from None
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        if fd >= 0:
            os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OperationError("short write into the model store")
        view = view[n:]


def _own(fd: int) -> None:
    if os.geteuid() == 0:
        os.fchown(fd, 0, 0)
    os.fchmod(fd, 0o644)


def temp_name() -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.tmp"


def copy_in(src_fd: int, dir_fd: int) -> tuple[str, str, int]:
    """Copy src_fd into a new temporary file in the store: (temp name, sha256, size).
    The copy is root-owned, 0644 and fsynced; the caller renames or unlinks it."""
    name = temp_name()
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600, dir_fd=dir_fd)
    digest = hashlib.sha256()
    size = 0
    try:
        os.lseek(src_fd, 0, os.SEEK_SET)
        while block := os.read(src_fd, CHUNK):
            digest.update(block)
            _write_all(out, block)
            size += len(block)
        _own(out)
        os.fsync(out)
    except BaseException:
        os.close(out)
        remove_quietly(dir_fd, name)
        raise
    os.close(out)
    return name, digest.hexdigest(), size


def write_file(dir_fd: int, name: str, data: bytes) -> None:
    """Atomically place `name` in the store: temp file, fsync, rename."""
    tmp = temp_name()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        _write_all(fd, data)
        _own(fd)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(dir_fd, tmp)
        raise
    os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def remove_quietly(dir_fd: int, name: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def open_regular(dir_fd: int, name: str) -> int | None:
    """A read-only descriptor of a regular file in the store, never through a symlink;
    None when it is absent, a symlink or not a regular file."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while block := os.read(fd, CHUNK):
        digest.update(block)
    return digest.hexdigest()


def make_record(sha: str, size: int, source: str, role: str, profile: str,
                inspection: dict[str, Any], sandbox: dict[str, Any], seconds: float) -> bytes:
    record = {"version": RECORD_VERSION, "sha256": sha, "size": size, "source": source,
              "added_as": {"role": role, "profile": profile}, "inspection": inspection,
              "sandbox": sandbox, "inspect_seconds": round(seconds, 3)}
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def read_record(dir_fd: int, sha: str) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) or (None, why it is unusable). A record is untrusted data."""
    fd = open_regular(dir_fd, f"{sha}.json")
    if fd is None:
        return None, "no inspection record (or not a regular file)"
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_RECORD + 1)
    if len(data) > MAX_RECORD:
        return None, "inspection record larger than 1 MiB"
    try:
        rec = json.loads(data)
    except ValueError:
        return None, "inspection record is not JSON"
    if not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION \
            or rec.get("sha256") != sha:
        return None, "inspection record is not for this file"
    size = rec.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None, "inspection record has no size"
    try:
        rec["inspection"] = check_inspection(rec.get("inspection"))
    except OperationError:
        return None, "inspection record holds no valid inspection"
    added = rec.get("added_as")
    rec["added_as"] = {k: str(v)[:4096] for k, v in added.items() if k in ("role", "profile")} \
        if isinstance(added, dict) else {}
    rec["source"] = str(rec.get("source", ""))[:4096]
    return rec, None


@dataclass
class Entry:
    name: str
    sha256: str | None
    kind: str  # model | record | symlink | stray | temporary
    size: int | None = None
    record: dict[str, Any] | None = None
    problem: str | None = None
    pins: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "kind": self.kind,
                               "size": self.size, "problem": self.problem, "pins": self.pins}
        if self.sha256 and self.kind == "model":
            out["path"] = target_path(self.sha256)
        if self.record:
            out["inspection"] = self.record["inspection"]
            out["added_as"] = self.record["added_as"]
        return out


def scan(dir_fd: int) -> list[Entry]:
    """Every entry of the store, classified; nothing is followed."""
    entries: list[Entry] = []
    names = sorted(os.listdir(dir_fd))
    for name in names:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        m = MODEL_NAME.fullmatch(name)
        if stat.S_ISLNK(st.st_mode):
            entries.append(Entry(name, m.group(1) if m else None, "symlink",
                                 problem="a symlink in the model store (never followed)"))
        elif name.startswith(TEMP_PREFIX):
            entries.append(Entry(name, None, "temporary", st.st_size,
                                 problem="left over by an interrupted `model add`"))
        elif m and stat.S_ISREG(st.st_mode):
            rec, why = read_record(dir_fd, m.group(1))
            entries.append(Entry(name, m.group(1), "model", st.st_size, rec, why))
        elif RECORD_NAME.fullmatch(name) and stat.S_ISREG(st.st_mode):
            sha = name[:64]
            if f"{sha}.gguf" not in names:
                entries.append(Entry(name, sha, "record", st.st_size,
                                     problem="an inspection record without its model"))
        else:
            entries.append(Entry(name, None, "stray", st.st_size,
                                 problem="not a model the store knows"))
    return entries
