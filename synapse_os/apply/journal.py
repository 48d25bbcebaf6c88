"""Transaction journals and the apply lock, under <root>/var/lib/synapse/.

Layout:
    var/lib/synapse/lock                          flock()ed by apply and rollback
    var/lib/synapse/transactions/<id>/journal.json
    var/lib/synapse/transactions/<id>/backups/<n> hard links to (or copies of) originals

The journal is rewritten atomically (temp file, fsync, rename, directory fsync) after every
step, so after a crash it tells exactly which files may have been touched.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from synapse_os.apply import faults
from synapse_os.apply.fsops import fsync_dir, write_all
from synapse_os.apply.untrusted import check_journal, check_state_path
from synapse_os.errors import OperationError, UserError

STATE_DIR = Path("var/lib/synapse")
JOURNAL_VERSION = 1
MAX_JOURNAL_BYTES = 64 * 1024 * 1024

IN_PROGRESS = "in-progress"
APPLIED = "applied"
ROLLING_BACK = "rolling-back"
ROLLED_BACK = "rolled-back"
FAILED = "failed"  # an error stopped apply and everything it did was undone
UNFINISHED = (IN_PROGRESS, ROLLING_BACK)


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


def transactions_dir(root: Path) -> Path:
    return state_dir(root) / "transactions"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Journal:
    id: str
    root: Path
    profile: str
    profile_hash: str
    live: bool
    started: str
    state: str = IN_PROGRESS
    finished: str | None = None
    rolled_back: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    live_values: dict[str, str] = field(default_factory=dict)
    activations: list[dict[str, Any]] = field(default_factory=list)
    reboot_reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def dir(self) -> Path:
        return transactions_dir(self.root) / self.id

    @property
    def backups(self) -> Path:
        return self.dir / "backups"

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": JOURNAL_VERSION, "id": self.id, "profile": self.profile,
            "profile_hash": self.profile_hash, "live": self.live, "started": self.started,
            "state": self.state, "finished": self.finished, "rolled_back": self.rolled_back,
            "entries": self.entries, "live_values": self.live_values,
            "activations": self.activations, "reboot_reasons": self.reboot_reasons,
            "warnings": self.warnings, "error": self.error,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "started": self.started, "finished": self.finished,
            "profile": self.profile, "profile_hash": self.profile_hash, "state": self.state,
            "rolled_back": self.rolled_back,
            "files": sum(1 for e in self.entries if e["kind"] == "file"),
            "reboot_needed": bool(self.reboot_reasons), "error": self.error,
        }

    def save(self, label: str) -> None:
        """Write the journal durably, then pass a fault-injection checkpoint."""
        path = self.dir / "journal.json"
        tmp = self.dir / "journal.json.tmp"
        data = (json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n").encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(self.dir)
        faults.checkpoint(f"journal: {label}")


def new_journal(root: Path, profile: str, profile_hash: str, live: bool) -> Journal:
    """Create the directory of a fresh transaction, numbered after the existing ones."""
    base = transactions_dir(root)
    check_state_path(root, base)
    base.mkdir(parents=True, exist_ok=True)
    check_state_path(root, base)
    numbers = [int(m.group(1)) for p in base.iterdir() if (m := re.match(r"^(\d+)-", p.name))]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tx_id = f"{max(numbers, default=0) + 1:04d}-{stamp}"
    journal = Journal(tx_id, root, profile, profile_hash, live, now())
    os.mkdir(journal.dir, 0o700)
    try:
        os.mkdir(journal.backups, 0o700)
        fsync_dir(base)
        journal.save("created")
    except OSError:
        shutil.rmtree(journal.dir, ignore_errors=True)
        raise
    return journal


def load(root: Path, tx_dir: Path) -> Journal:
    path = tx_dir / "journal.json"
    try:
        if path.stat().st_size > MAX_JOURNAL_BYTES:
            raise ValueError(f"larger than {MAX_JOURNAL_BYTES} bytes")
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise OperationError(f"{path}: cannot read the transaction journal ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != JOURNAL_VERSION:
        raise OperationError(f"{path}: not a synapse journal of version {JOURNAL_VERSION}")
    check_journal(root, tx_dir, data)
    return _from_dict(root, data)


def _from_dict(root: Path, data: dict[str, Any]) -> Journal:
    return Journal(
        id=data["id"], root=root, profile=data["profile"], profile_hash=data["profile_hash"],
        live=data["live"], started=data["started"], state=data["state"],
        finished=data["finished"], rolled_back=data["rolled_back"], entries=data["entries"],
        live_values=data["live_values"], activations=data["activations"],
        reboot_reasons=data["reboot_reasons"], warnings=data["warnings"], error=data["error"],
    )


def trusted(path: Path) -> None:
    """Refuse journal paths another user could have planted: /var/lib/synapse is the
    runtime user's StateDirectory, and rollback writes wherever a journal says."""
    st = os.lstat(path)
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022 or stat.S_ISLNK(st.st_mode):
        raise OperationError(
            f"{path}: owned by uid {st.st_uid} or writable by others; refusing to trust "
            "synapse transaction data there (it must belong to root)"
        )


def all_journals(root: Path) -> list[Journal]:
    """Every transaction under `root`, oldest first (a directory without journal is skipped:
    a crash hit before its first journal write, so it changed nothing)."""
    base = transactions_dir(root)
    if not os.path.lexists(base):
        return []
    check_state_path(root, base)
    trusted(base)
    dirs = sorted((p for p in base.iterdir() if re.match(r"^\d+-", p.name)),
                  key=lambda p: int(p.name.split("-")[0]))
    out = []
    for d in dirs:
        if (d / "journal.json").is_file():
            trusted(d)
            trusted(d / "journal.json")
            if os.path.lexists(d / "backups"):
                trusted(d / "backups")
            out.append(load(root, d))
    return out


def find(root: Path, tx: str) -> Journal:
    """A transaction by full id or by its number (`3`, `0003`)."""
    journals = all_journals(root)
    for j in journals:
        if j.id == tx or (tx.isdigit() and int(j.id.split("-")[0]) == int(tx)):
            return j
    known = ", ".join(j.id for j in journals) or "none"
    raise UserError(f"transaction {tx!r} not found under {transactions_dir(root)}; known: {known}")


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold <root>/var/lib/synapse/lock; refuse (not wait) when another apply holds it."""
    directory = state_dir(root)
    check_state_path(root, directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a planted symlink must not make root truncate another file
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OperationError(f"{directory / 'lock'}: is a symlink; refusing to use it") \
                from None
        raise OperationError(
            f"{directory}: cannot create the synapse state directory ({exc.strerror}); "
            "the target must be writable"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()):
            raise OperationError(f"{directory / 'lock'}: not a regular file owned by root")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise OperationError(
                f"another synapse apply or rollback (pid {holder}) holds {directory / 'lock'}; "
                "wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
