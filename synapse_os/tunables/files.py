"""The files a render placed: each one checked by content, mode or link target."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from synapse_os.tunables.base import Check


def keeps_permission_bits(rel: str) -> bool:
    """False under boot/: the ESP is FAT, whose files show the mount's fmask, not a mode."""
    return not rel.startswith("boot/")


def file_checks(files: Mapping[str, tuple[int, str, str | None]],
                root: str = "/") -> list[Check]:
    """One check per file placed on the target: `files` maps a path relative to the root
    ("etc/hostname") to (mode, sha256, symlink target or None), as in the render manifest.
    Permission bits are compared only where the file system keeps them."""
    out: list[Check] = []
    for rel, (mode, sha256, link) in sorted(files.items()):
        path = shlex.quote(root.rstrip("/") + "/" + rel)
        with_mode = keeps_permission_bits(rel)
        expected = (f"-> {link}" if link is not None
                    else f"{mode:o} {sha256}" if with_mode else sha256)
        show_mode = f'"$(stat -c %a {path})" ' if with_mode else ""
        probe = (f"if [ -L {path} ]; then printf -- '-> %s\\n' \"$(readlink {path})\"; "
                 f"elif [ -f {path} ]; then printf '%s\\n' {show_mode}"
                 f"\"$(sha256sum < {path} | cut -d' ' -f1)\" | tr '\\n' ' ' | sed 's/ $//'; "
                 "else echo missing; exit 1; fi")
        out.append(Check(f"file /{rel}", "file", "render", expected, probe))
    return out
