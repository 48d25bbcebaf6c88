"""Pinning a model in a profile file: runtime.models.<role>.{path, sha256}, edited with a
ruamel.yaml round trip so the user's comments, order and layout stay; the result must load
and render (what `synapse validate` checks) before it atomically replaces the file."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

from synapse_os.errors import OperationError, UserError
from synapse_os.profile import load_profile
from synapse_os.profile.model import Profile

MAX_PROFILE = 1 << 20


def _read(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UserError(f"{path}: is not a regular file; a profile is a YAML file")
        data = fh.read(MAX_PROFILE + 1)
    if len(data) > MAX_PROFILE:
        raise UserError(f"{path}: profile is larger than 1 MiB; is this the right file?")
    return data.decode("utf-8")


def _yaml() -> Any:
    try:
        from ruamel.yaml import YAML
    except ImportError:
        raise OperationError("ruamel.yaml is needed to edit a profile in place; run: "
                             "pip install -e '.[model]'") from None
    y = YAML()  # round trip: comments, key order, flow/block style, quotes kept
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)

    def null(rep: Any, _: None) -> Any:  # `key: null` stays `key: null` (a reset in extends)
        return rep.represent_scalar("tag:yaml.org,2002:null", "null")

    y.representer.add_representer(type(None), null)
    return y


def pinned_text(profile: Path, role: str, path: str, sha: str) -> str:
    """The profile's text with runtime.models.<role> pinned to path + sha256 (other keys of
    that role, such as context, kept)."""
    from ruamel.yaml.comments import CommentedMap

    y = _yaml()
    text = _read(profile)
    doc = y.load(text)
    if not isinstance(doc, dict):
        raise UserError(f"{profile}: is not a profile mapping; cannot pin a model in it")
    if "runtime" in doc and doc["runtime"] is None:
        raise UserError(f"{profile}: sets runtime: null (no inference service); remove that "
                        "line or give it a runtime section before pinning a model")
    runtime = doc.setdefault("runtime", CommentedMap())
    if not isinstance(runtime, dict):
        raise UserError(f"{profile}: runtime is not a mapping; cannot pin a model in it")
    if "models" in runtime and runtime["models"] is None:
        runtime["models"] = CommentedMap()
    models = runtime.setdefault("models", CommentedMap())
    if not isinstance(models, dict):
        raise UserError(f"{profile}: runtime.models is not a mapping; cannot pin a model in it")
    entry = models.get(role)
    if not isinstance(entry, dict):
        entry = models[role] = CommentedMap()
    entry["path"] = path
    entry["sha256"] = sha
    out = io.StringIO()
    y.dump(doc, out)
    return out.getvalue()


def stage(profile: Path, text: str) -> tuple[Path, Profile]:
    """Write `text` beside the profile as a temporary file and validate it as `validate`
    does (load + render). Returns (temp path, loaded profile); the caller commits or drops."""
    from synapse_os.render import render_profile

    real = Path(os.path.realpath(profile))
    tmp = real.with_name(f".{real.stem}.synapse-{os.getpid()}.yaml")
    st = os.stat(real)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        data = text.encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        loaded = load_profile(tmp)
        render_profile(loaded)
    except UserError as exc:
        tmp.unlink()
        raise UserError(f"pinning the model would leave {profile} invalid: "
                        f"{str(exc).replace(str(tmp), str(profile))}; nothing was copied") \
            from None
    except BaseException:
        tmp.unlink()
        raise
    return tmp, loaded


def commit(tmp: Path, profile: Path) -> None:
    real = Path(os.path.realpath(profile))
    os.replace(tmp, real)
    dfd = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
