"""The rendered tree, fitted to the machine apply and verify work on.

The rendered etc/kernel/cmdline names the root file system by the partition label that
install/partition.sh gives it (root=PARTLABEL=synapse-root). A machine synapse did not
install has no such partition, and kernel-install would write a boot entry that cannot
find its root; so the machine's own root= word is kept: from its etc/kernel/cmdline, or
(on the running system) from the kernel's command line. What is read there is untrusted:
only a regular file inside the root, and only a plain root= word is taken; anything else
is refused, never copied.

The boot loader's files go to the EFI system partition where the target mounts it (/efi,
/boot or /boot/efi: the running system's mounts, else the target's fstab), not where a
fresh install of the profile would mount it. Boot loader entries (Arch renders them) name
their kernel; an entry whose kernel image the target's ESP does not have would be a dead
menu line, and the default one an unbootable machine, so it is left out, with a note that
says which package to install first.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from synapse_os.distro import distro_for
from synapse_os.errors import UserError
from synapse_os.profile.model import Profile
from synapse_os.render import Tree, render_profile

CMDLINE = "rootfs/etc/kernel/cmdline"
ROOT_WORD = re.compile(r"root=[A-Za-z0-9_./:=+-]{1,200}")


def fitted_tree(profile: Profile, root: Path, notes: list[str] | None = None) -> Tree:
    """The render for this target; why anything was left out is appended to `notes`."""
    root = Path(root)
    tree = render_profile(profile)
    rendered = tree.files.get(CMDLINE)
    own = machine_root_word(root)
    if rendered is not None and own is not None:
        words = [own if w.startswith("root=") else w for w in rendered.content.decode().split()]
        tree.files[CMDLINE] = dataclasses.replace(
            rendered, content=(" ".join(words) + "\n").encode())
    rendered_esp = distro_for(profile).esp_mount.strip("/")
    esp = target_esp(root) or rendered_esp
    if esp != rendered_esp:
        moved = f"rootfs/{rendered_esp}/loader/"
        for rel in [r for r in tree.files if r.startswith(moved)]:
            tree.files[f"rootfs/{esp}/loader/{rel[len(moved):]}"] = tree.files.pop(rel)
        if notes is not None:
            notes.append(f"this machine's EFI system partition is /{esp} (a fresh install "
                         f"mounts it at /{rendered_esp}): the boot loader files go there")
    entries = f"rootfs/{esp}/loader/entries/"
    for rel, f in sorted(tree.files.items()):
        if not rel.startswith(entries) or f.link is not None:
            continue
        kernel = next((line.split(None, 1)[1].strip() for line in f.content.decode().splitlines()
                       if line.startswith("linux ") and len(line.split()) > 1), None)
        if kernel is not None and not (root / esp / kernel.lstrip("/")).is_file():
            del tree.files[rel]
            if notes is not None:
                notes.append(f"/{rel[len('rootfs/'):]} is left out: its kernel /{esp}/"
                             f"{kernel.lstrip('/')} is not on this machine; install "
                             f"{kernel.rsplit('/', 1)[-1].removeprefix('vmlinuz-')} first, then "
                             "apply again")
    return tree


def _read_regular(source: Path, limit: int) -> str | None:
    """The first `limit` bytes of `source` as text when it is a regular file (never through
    a symlink), else None: what apply reads from a target is untrusted."""
    if source.is_symlink() or not source.is_file():
        return None
    try:
        with source.open("rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


ESP_MOUNTS = ("efi", "boot", "boot/efi")  # where systemd-boot and distributions mount it


def target_esp(root: Path) -> str | None:
    """Where the target mounts its EFI system partition (relative to its root), from the
    running system's mount table when the target is the running system, else from its
    fstab: the first vfat mount at one of ESP_MOUNTS. None when neither names one."""
    sources = [root / "etc/fstab"]
    if root.resolve() == Path("/"):
        sources.insert(0, Path("/proc/self/mounts"))
    for source in sources:
        text = _read_regular(source, 65536)
        for line in (text or "").splitlines():
            fields = line.split()
            if len(fields) >= 3 and not fields[0].startswith("#") and fields[2] == "vfat":
                mount = fields[1].strip("/")
                if mount in ESP_MOUNTS:
                    return mount
    return None


def machine_root_word(root: Path) -> str | None:
    """The target's own root= word, or None when it has none (a fresh install keeps the
    rendered partition label)."""
    sources = [root / "etc/kernel/cmdline"]
    if root.resolve() == Path("/"):
        sources.append(Path("/proc/cmdline"))
    for source in sources:
        words = [w for w in (_read_regular(source, 8192) or "").split() if w.startswith("root=")]
        if not words:
            continue
        if not ROOT_WORD.fullmatch(words[0]):
            raise UserError(
                f"{source}: its root= word is not a plain root file system specification "
                "(letters, digits and _ . / : = + - only); refusing to copy it into the "
                "kernel command line: fix that file first"
            )
        return words[0]
    return None
