"""`synapse model add | list | verify | remove`: the operations behind the CLI."""

from __future__ import annotations

import os
import posixpath
import stat
import time
from pathlib import Path
from typing import Any

from synapse_os.apply.untrusted import inside
from synapse_os.errors import OperationError, UserError
from synapse_os.model import inspect as insp
from synapse_os.model import pins, store
from synapse_os.model.bundled import target_path
from synapse_os.profile import load_profile
from synapse_os.profile.model import ModelRef, Profile
from synapse_os.profile.types import parse_size

ROLES = ("main", "small", "draft")
DEFAULT_CONTEXT = int(ModelRef.model_fields["context"].default)
DEFAULT_RESERVE = "2G"


def _open_source(file: Path) -> int:
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"{file}: no such file; pass a .gguf model file") from None
    except OSError as exc:
        raise UserError(f"{file}: cannot be read ({exc.strerror}); pass a .gguf model file") \
            from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{file}: is not a regular file; pass a .gguf model file")
    return fd


def _budget(profile: Profile) -> tuple[int, str]:
    """Bytes the profile leaves for models, and how that was worked out."""
    rt = profile.runtime
    reserve = rt.memory_reserve if rt is not None else DEFAULT_RESERVE
    if profile.hardware.ram == "auto":
        import psutil

        ram = int(psutil.virtual_memory().total)
        ram_text = f"hardware.ram auto = this machine's {insp.human(ram)}"
    else:
        ram = parse_size(profile.hardware.ram)
        ram_text = f"hardware.ram {profile.hardware.ram}"
    return ram - parse_size(reserve), f"{ram_text} minus runtime.memory_reserve {reserve}"


def _context(profile: Profile, role: str) -> int:
    rt = profile.runtime
    if rt is not None and role in rt.models:
        return rt.models[role].context
    return DEFAULT_CONTEXT


def _stored_sha(path: str) -> str | None:
    name = posixpath.basename(path)
    m = store.MODEL_NAME.fullmatch(name)
    return m.group(1) if m and posixpath.dirname(path) == store.STORE else None


def _known_inspection(dir_fd: int | None, path: str) -> dict[str, Any] | None:
    sha = _stored_sha(path)
    if sha is None or dir_fd is None:
        return None
    fd = store.open_regular(dir_fd, f"{sha}.gguf")
    if fd is None:
        return None
    os.close(fd)
    rec, _ = store.read_record(dir_fd, sha)
    return rec["inspection"] if rec else None


def _main_inspection(root: Path, dir_fd: int | None, profile: Profile,
                     profile_path: Path) -> tuple[dict[str, Any], str]:
    """The main model's inspection: its store record, or an inspection of its file."""
    rt = profile.runtime
    if rt is None or "main" not in rt.models:
        raise UserError(f"{profile_path} pins no main model; add the main model first "
                        "(synapse model add FILE --role main), a draft must share its vocabulary")
    path = rt.models["main"].path
    known = _known_inspection(dir_fd, path)
    if known is not None:
        return known, path
    if path.startswith("pypi:"):
        from synapse_os.models import MODEL_PACKAGE, default_model

        if path != "pypi:" + MODEL_PACKAGE:
            raise UserError(f"{profile_path}: main model {path!r} is not a PyPI model synapse "
                            f"knows (only pypi:{MODEL_PACKAGE})")
        file = default_model()[0]
    else:
        file = root / str(target_path(path)).lstrip("/")
        if not inside(root, file):
            raise UserError(f"{profile_path}: main model {path} leads outside {root} through "
                            "a symlink; refusing to read it")
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise UserError(f"{profile_path}: its main model {path} is not in {root}; add it "
                        "with synapse model add FILE --role main first") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{profile_path}: its main model {path} is not a regular file")
        info, _ = insp.inspect_file(fd, f"main model {path}")
    finally:
        os.close(fd)
    return info, path


def _other_models(dir_fd: int | None, profile: Profile, role: str) -> tuple[int, list[str]]:
    """Memory of the other pinned models whose inspection the store holds (each file once,
    at the largest context it is pinned with)."""
    rt = profile.runtime
    if rt is None:
        return 0, []
    files: dict[str, tuple[dict[str, Any], int, list[str]]] = {}
    for r, ref in rt.models.items():
        if r == role:
            continue
        info = _known_inspection(dir_fd, ref.path)
        if info is None:
            continue
        _, ctx, roles = files.get(ref.path, (info, 0, []))
        files[ref.path] = (info, max(ctx, ref.context), [*roles, r])
    total = sum(insp.memory_need(info, ctx) for info, ctx, _ in files.values())
    return total, [r for _, _, roles in files.values() for r in roles]


def add(file: Path, role: str, profile_path: Path, root: Path) -> dict[str, Any]:
    if role not in ROLES:
        raise UserError(f"--role {role!r}: use one of {', '.join(ROLES)}")
    profile = load_profile(profile_path)  # the profile must be valid before we touch anything
    shown = str(file)
    src = _open_source(file)
    staged: Path | None = None
    try:
        head = os.pread(src, 4, 0)
        if head != b"GGUF":
            raise UserError(f"{shown}: is not a GGUF file (it does not start with the GGUF "
                            "magic); refusing it, nothing was copied")
        with store.store_dir(root, create=True) as dir_fd:
            assert dir_fd is not None
            # Inspect the copy, not the source: what is judged is exactly what is installed.
            tmp, sha, size = store.copy_in(src, dir_fd)
            try:
                ro = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    info, probe = insp.inspect_file(ro, shown)
                finally:
                    os.close(ro)
                context = _context(profile, role)
                need = insp.memory_need(info, context)
                others, other_roles = _other_models(dir_fd, profile, role)
                budget, how = _budget(profile)
                if need + others > budget:
                    kv = insp.kv_bytes(info, context)
                    with_others = (f" plus {insp.human(others)} for the pinned "
                                   f"{'/'.join(other_roles)} model" if others else "")
                    raise UserError(
                        f"{shown}: needs {insp.human(need)} (weights "
                        f"{insp.human(info['tensor_bytes'])} + KV cache "
                        f"{insp.human(kv) if kv is not None else 'unknown'} at {context} tokens)"
                        f"{with_others}, more than the {insp.human(max(budget, 0))} "
                        f"{profile_path} leaves for models ({how}); refusing it, nothing was "
                        "copied")
                if role == "draft":
                    main_info, main_path = _main_inspection(root, dir_fd, profile, profile_path)
                    if insp.vocabulary(info) != insp.vocabulary(main_info):
                        raise UserError(
                            f"{shown}: its vocabulary ({insp.describe_vocabulary(info)}) differs "
                            f"from the main model {main_path} "
                            f"({insp.describe_vocabulary(main_info)}), and a draft must share "
                            "it token for token; refusing it, nothing was copied")
                if role == "main" and profile.runtime and "draft" in profile.runtime.models:
                    draft = _known_inspection(dir_fd, profile.runtime.models["draft"].path)
                    if draft is not None and insp.vocabulary(draft) != insp.vocabulary(info):
                        raise UserError(
                            f"{shown}: its vocabulary ({insp.describe_vocabulary(info)}) differs "
                            "from the pinned draft model's "
                            f"({insp.describe_vocabulary(draft)}); add a matching draft or "
                            "remove the draft pin first; refusing it, nothing was copied")
                path = store.target_path(sha)
                staged, _ = pins.stage(profile_path,
                                       pins.pinned_text(profile_path, role, path, sha))
                record = store.make_record(sha, size, os.path.abspath(file), role,
                                           os.path.abspath(profile_path), info, probe.sandbox,
                                           probe.seconds)
                os.rename(tmp, f"{sha}.gguf", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                tmp = ""
                store.write_file(dir_fd, f"{sha}.json", record)
                os.fsync(dir_fd)
            finally:
                if tmp:
                    store.remove_quietly(dir_fd, tmp)
        pins.commit(staged, profile_path)
        staged = None
    finally:
        os.close(src)
        if staged is not None:
            staged.unlink(missing_ok=True)
    return {"sha256": sha, "size": size, "path": path, "role": role,
            "profile": str(profile_path), "root": str(root), "inspection": info,
            "inspect_seconds": round(probe.seconds, 3), "sandbox": probe.sandbox,
            "memory_need": need, "context": context, "memory_budget": budget}


def _pins(profiles: list[Path]) -> dict[str, list[str]]:
    """sha256 -> ['main in my.yaml', ...] for the models these profiles pin."""
    out: dict[str, list[str]] = {}
    for p in profiles:
        prof = load_profile(p)
        if prof.runtime is None:
            continue
        for role, ref in prof.runtime.models.items():
            sha = _stored_sha(ref.path) or ref.sha256
            if sha:
                out.setdefault(sha, []).append(f"{role} in {p}")
    return out


def list_models(root: Path, profiles: list[Path]) -> list[dict[str, Any]]:
    pinned = _pins(profiles)
    with store.store_dir(root, create=False) as dir_fd:
        if dir_fd is None:
            return []
        entries = store.scan(dir_fd)
    for e in entries:
        if e.sha256 and e.kind == "model":
            e.pins = pinned.get(e.sha256, [])
    return [e.as_dict() for e in entries]


def verify(root: Path) -> list[dict[str, Any]]:
    """Every store entry with `ok` and, when not ok, the problem."""
    out = []
    with store.store_dir(root, create=False) as dir_fd:
        if dir_fd is None:
            return []
        for e in store.scan(dir_fd):
            d = e.as_dict()
            if e.kind == "model" and e.record is not None and e.sha256:
                fd = store.open_regular(dir_fd, e.name)
                if fd is None:
                    e.problem = "vanished or replaced while verifying"
                else:
                    try:
                        actual = store.sha256_fd(fd)
                        size = os.fstat(fd).st_size
                    finally:
                        os.close(fd)
                    d["actual_sha256"] = actual
                    if actual != e.sha256:
                        e.problem = f"content sha256 is {actual}, not {e.sha256}"
                    elif size != e.record["size"]:
                        e.problem = f"size {size} differs from the recorded {e.record['size']}"
            d["problem"] = e.problem
            d["ok"] = e.problem is None
            out.append(d)
    return out


def remove(what: str, profile_path: Path, root: Path) -> dict[str, Any]:
    sha = _stored_sha(what) or (what if store.MODEL_NAME.fullmatch(what + ".gguf") else None)
    if sha is None:
        raise UserError(f"{what!r}: name a stored model by its sha256 or by its path "
                        f"{store.STORE}/<sha256>.gguf (see synapse model list)")
    pinned = _pins([profile_path]).get(sha)
    if pinned:
        raise UserError(f"{store.target_path(sha)} is pinned as {', '.join(pinned)}; pin "
                        "another model there first, refusing to remove it")
    with store.store_dir(root, create=False) as dir_fd:
        try:
            present = dir_fd is not None and bool(
                os.stat(f"{sha}.gguf", dir_fd=dir_fd, follow_symlinks=False))
        except FileNotFoundError:
            present = False
        if not present or dir_fd is None:
            raise UserError(f"{store.target_path(sha)} is not in the model store under {root}")
        removed = []
        for name in (f"{sha}.gguf", f"{sha}.json"):
            try:
                os.unlink(name, dir_fd=dir_fd)
                removed.append(name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise OperationError(f"{name}: cannot be removed ({exc.strerror})") from None
        os.fsync(dir_fd)
    return {"sha256": sha, "removed": removed, "root": str(root), "at": time.time()}
