"""`synapse diff OLD NEW`: what a profile change changes, file by file, as unified diffs."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from synapse_os.errors import UserError
from synapse_os.render import MANIFEST


@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # added | removed | modified | mode
    diff: str = ""

    def text(self) -> str:
        head = f"{self.kind}: {self.path}"
        return f"{head}\n{self.diff}" if self.diff else head

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "diff": self.diff}


def _read_tree(root: Path) -> dict[str, tuple[str, bytes]]:
    """relpath -> (mode or 'link', content or link target) for every file of a render."""
    if not (root / MANIFEST).is_file():
        raise UserError(f"{root}: is not a rendered tree (no {MANIFEST}); run synapse render first")
    files: dict[str, tuple[str, bytes]] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            if path.is_symlink():
                files[rel] = ("link", os.readlink(path).encode())
            else:
                files[rel] = (f"{path.stat().st_mode & 0o7777:04o}", path.read_bytes())
    return files


def _text_diff(path: str, old: bytes, new: bytes) -> str:
    try:
        a, b = old.decode().splitlines(keepends=True), new.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return "binary content differs\n"
    return "".join(difflib.unified_diff(a, b, f"a/{path}", f"b/{path}"))


def diff_trees(old: Path, new: Path) -> list[Change]:
    a, b = _read_tree(Path(old)), _read_tree(Path(new))
    changes: list[Change] = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            changes.append(Change(path, "removed", _text_diff(path, a[path][1], b"")))
        elif path not in a:
            changes.append(Change(path, "added", _text_diff(path, b"", b[path][1])))
        elif a[path][1] != b[path][1]:
            changes.append(Change(path, "modified", _text_diff(path, a[path][1], b[path][1])))
        elif a[path][0] != b[path][0]:
            changes.append(Change(path, "mode", f"{a[path][0]} -> {b[path][0]}\n"))
    return changes
