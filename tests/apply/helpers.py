"""Helpers for apply tests: real target root trees, tree snapshots, running the CLI."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, need_tool

STATE = "var/lib/synapse"
AVAHI_UNIT = """[Unit]
Description=Avahi mDNS/DNS-SD Stack (test copy)

[Service]
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""


def build_root(root: Path) -> Path:
    """A small but realistic target: files the profile replaces (with odd modes and a
    symlink), a distribution unit that is enabled, directories that already exist."""
    need_tool("systemctl", "apt-get install systemd")
    (root / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True)
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "var/lib").mkdir(parents=True)
    (root / "etc/kernel").mkdir()
    (root / "etc/sysctl.d").mkdir()
    (root / "etc/hostname").write_text("debian\n")
    cmdline = root / "etc/kernel/cmdline"
    cmdline.write_text("root=/dev/sda1 ro quiet\n")
    os.chmod(cmdline, 0o600)
    os.symlink("../sysctl.conf", root / "etc/sysctl.d/90-synapse.conf")
    (root / "etc/sysctl.conf").write_text("# distribution sysctl.conf\n")
    cups = root / "etc/systemd/system/cups.service"
    cups.write_text("[Service]\nExecStart=/bin/false\n")
    os.chmod(cups, 0o640)
    (root / "usr/lib/systemd/system/avahi-daemon.service").write_text(AVAHI_UNIT)
    os.symlink("/usr/lib/systemd/system/avahi-daemon.service",
               root / "etc/systemd/system/multi-user.target.wants/avahi-daemon.service")
    # util-linux's timer, as every base system ships it (disk.fstrim enables it)
    (root / "usr/lib/systemd/system/fstrim.timer").write_text(
        "[Timer]\nOnCalendar=weekly\n\n[Install]\nWantedBy=timers.target\n")
    (root / "boot").mkdir()
    (root / "boot/vmlinuz-linux").write_bytes(b"the installed kernel (test stand-in)\n")
    return root


def tree_snapshot(root: Path, *, include_state: bool = False) -> dict[str, tuple[object, ...]]:
    """Everything observable about a tree: type, mode, owner, content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if not include_state and (rel == STATE or rel.startswith(STATE + "/")):
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                            path.read_bytes())
    return out


def synapse(*args: str | Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a separate process (as a user would)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "synapse_os.cli", *map(str, args)],
                          cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def copy_tree(src: Path, dst: Path) -> Path:
    """cp -a: keeps hard links (backups), symlinks, modes and owners."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def mount(mounts: list[Path], *args: str) -> None:
    subprocess.run(["mount", *args], check=True)
    if Path(args[-1]) not in mounts:
        mounts.append(Path(args[-1]))
