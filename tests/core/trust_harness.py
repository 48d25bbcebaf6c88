"""Helpers for the trust-boundary tests: the string fields of the model, hostile values,
and running rendered shell with every external command replaced by a recorder.

Bash itself parses and runs the rendered scripts (the real consumer); only the programs
they call (sgdisk, pacstrap, arch-chroot, …) are replaced, so nothing touches the host.
The oracle is a marker file that only the command `synapse_pwned` creates: if any value
breaks out of its quoting and runs a command, the marker appears.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synapse_os.profile.model import Profile

KEY, VALUE = "<key>", "<value>"

# Commands the scripts need to really run (reading the rendered tree); every other
# command name the scripts call becomes a recorder.
PASSTHROUGH = ("bash", "sh", "dirname", "grep", "paste", "cat", "sed", "tr", "id", "readlink",
               "basename", "env", "printf", "sort", "cut", "head", "tail", "wc", "sha256sum",
               "comm", "find", "mktemp")
RECORDED = ("sgdisk", "partprobe", "udevadm", "blockdev", "seq", "sleep", "kernel-install", "mkfs.xfs", "mkfs.ext4", "mkfs.vfat", "mount",
            "umount", "mkdir", "lsblk", "swapon", "findmnt", "mountpoint", "pacstrap",
            "mmdebstrap", "install", "genfstab", "cp", "arch-chroot", "useradd", "chown",
            "runuser", "makepkg", "pacman", "bootctl", "grub-install", "grub-mkconfig",
            "python3", "systemctl", "locale-gen", "hwclock", "ln", "nproc", "synapse_pwned",
            "touch", "rm", "curl", "wget", "reboot", "poweroff")

PAYLOADS = [
    "$(synapse_pwned)", "`synapse_pwned`", ";synapse_pwned", "'; synapse_pwned; '",
    '"; synapse_pwned; "', "\nsynapse_pwned\n", "\nCHROOT\nsynapse_pwned\nCHROOT\n",
    "\nExecStartPre=+/bin/sh -c synapse_pwned", "\nL+ /etc/pwned - - - - /tmp",
    "\nkernel.core_pattern=|/usr/bin/synapse_pwned", "%h", "${IFS}synapse_pwned",
    "|synapse_pwned", "&& synapse_pwned", "\r\nsynapse_pwned", "\u2028synapse_pwned",
    "\x00", " $(synapse_pwned)", "-synapse_pwned", "--config=/tmp/pwned", "../../etc/shadow",
    "a b", "\tx", "'", '"', "\\", "$HOME", "*", "?", "[a]", "{a,b}", "~root", "!", "#x",
    "\\\nsynapse_pwned", "x=y", "/..", "//", "<(synapse_pwned)", ">/tmp/pwned",
]


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _walk(annotation: Any, path: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out: list[tuple[Any, ...]] = []
        for arg in typing.get_args(annotation):
            out += [p for p in _walk(arg, path) if p not in out]
        return out
    if origin is list:
        return _walk(typing.get_args(annotation)[0], (*path, 0))
    if origin is dict:
        key, value = typing.get_args(annotation)
        keys = [(*path, KEY)] if _unwrap(key) is str else []
        return keys + _walk(value, (*path, VALUE))
    if annotation is str:
        return [path]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return string_fields(annotation, path)
    return []


def string_fields(model: type[BaseModel] = Profile,
                  prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place a profile holds a free string: fields, list items, dict keys/values."""
    out: list[tuple[Any, ...]] = []
    for name, field in model.model_fields.items():
        out += _walk(field.annotation, (*prefix, name))
    return out


# benign keys used where a dict's key or value is the field under test
DICT_DEFAULTS = {("sysctl",): ("vm.max_map_count", "1048576"),
                 ("kernel", "extra"): ("CONFIG_IKCONFIG", "y"),
                 ("runtime", "models"): ("main", {"path": "/var/lib/synapse/models/m.gguf"})}


def get_value(data: dict[str, Any], path: tuple[Any, ...]) -> Any:
    node: Any = data
    for part in path:
        if part in (KEY, VALUE):
            return None
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def set_value(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if part == VALUE:  # a dict value: descend into the default key's entry
            key, default = DICT_DEFAULTS[tuple(path[:i])]
            node = node.setdefault(key, default if isinstance(default, dict) else {})
            continue
        if isinstance(node, list):
            if not node:
                node.append({})
            node = node[part]
            continue
        if node.get(part) is None:
            node[part] = [] if nxt == 0 else {}
        node = node[part]
    last = path[-1]
    parent = tuple(path[:-1])
    if last == KEY:
        node[value] = DICT_DEFAULTS[parent][1]
    elif last == VALUE:
        node[DICT_DEFAULTS[parent][0]] = value
    elif last == 0:
        if node:
            node[0] = value
        else:
            node.append(value)
    else:
        node[last] = value


def stub_dir(work: Path, marker: Path) -> Path:
    """A PATH directory: real tools for PASSTHROUGH, recorders for the rest. A recorder
    appends its argv (NUL-separated, one line per call) to work/calls and reads stdin."""
    bindir = work / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name in PASSTHROUGH:
        real = shutil.which(name)
        assert real, f"{name} is missing on this machine"
        (bindir / name).symlink_to(real)
    bash = shutil.which("bash")
    for name in RECORDED:
        body = f"#!{bash}\nprintf '%s\\0' \"$(basename \"$0\")\" \"$@\" >> {work}/calls\n" \
               f"printf '\\n' >> {work}/calls\n[ -t 0 ] || cat > /dev/null\n"
        if name == "synapse_pwned":
            body += f": > {marker}\n"
        elif name == "lsblk":
            body += "echo disk\n"
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    return bindir


def run_script(script: Path, args: list[str], work: Path, marker: Path,
               mnt: Path) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    bindir = work / "bin"
    if not bindir.exists():
        stub_dir(work, marker)
    calls = work / "calls"
    calls.write_text("")
    env = {"PATH": str(bindir), "HOME": str(work), "LC_ALL": "C", "TMPDIR": str(work)}
    result = subprocess.run([str(bindir / "bash"), str(script), *args], cwd=work, env=env,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    recorded = [line.split("\0")[:-1] for line in calls.read_text().split("\0\n") if line]
    return result, recorded


def source_vars(file: Path, names: list[str], work: Path, marker: Path) -> list[str]:
    """Source `file` with bash (as makepkg and grub-mkconfig do) and print the variables."""
    bindir = work / "bin"
    if not bindir.exists():
        stub_dir(work, marker)
    code = 'source "$1"; shift; for v in "$@"; do printf "%s\\0" "${!v-}"; done'
    result = subprocess.run([str(bindir / "bash"), "-c", code, "bash", str(file), *names],
                            env={"PATH": str(bindir)}, capture_output=True, text=True,
                            timeout=30, cwd=work)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\0")[:-1]


def write_tree(files: dict[str, Any], root: Path) -> None:
    for rel, f in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if f.link is None:
            dest.write_bytes(f.content)
            os.chmod(dest, f.mode)
