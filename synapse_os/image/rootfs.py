"""Lay a rendered profile onto a bootstrapped root: overlay, units, users, model, fstab.

Everything here edits a directory; nothing is mounted. Commands that must run as the
target system (systemctl enable, systemd-sysusers) run with the target's own binaries
through chroot, so the host's systemd version does not matter.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from synapse_os.image.runtime import chroot
from synapse_os.models import default_model
from synapse_os.proc import run
from synapse_os.profile.model import Profile
from synapse_os.render import ROOT_PARTLABEL, Tree
from synapse_os.state import SystemState

ESP_PARTLABEL = "synapse-esp"
TEST_PORT = "org.synapse.shell"
TEST_SHELL_UNIT = "synapse-test-shell.service"

# Only test images get this: a root shell on a virtio serial port (no tty in between, so
# no echo and no line-length limit), which the VM test driver talks to. A plain
# virtserialport allows one opener, hence one `<>` and dup'ed stdout/stderr.
TEST_SHELL = f"""\
# Test images only: a root shell for the synapse VM test driver on a virtio port.
[Unit]
Description=Synapse VM test root shell on /dev/virtio-ports/{TEST_PORT}
DefaultDependencies=no
After=systemd-udevd.service systemd-udev-trigger.service
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/bin/bash --noprofile --norc -c 'exec 0<>/dev/virtio-ports/{TEST_PORT} 1>&0 2>&0; \
echo; echo @@SYNAPSE-SHELL-READY@@; exec /bin/bash --noprofile --norc'
Restart=always
RestartSec=1
KillMode=process

[Install]
WantedBy=sysinit.target
"""

# Test images: log in on the serial console without a password (`synapse vm run`).
SERIAL_AUTOLOGIN = """\
# Test images only: root autologin on the serial console for `synapse vm run`.
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
"""


def unpack(tarball: Path, root: Path) -> None:
    run(["tar", "-C", str(root), "--numeric-owner", "--xattrs", "--xattrs-include=*",
         "-xpf", str(tarball)], timeout=1800)


def lay_overlay(tree: Tree, root: Path) -> list[str]:
    """Write the rendered rootfs/ files into `root`; return the /boot ones (they go to the ESP)."""
    boot_files = []
    for rel, f in sorted(tree.files.items()):
        if not rel.startswith("rootfs/"):
            continue
        target = rel[len("rootfs/"):]
        if target.startswith("boot/"):
            boot_files.append(rel)
            continue
        dest = root / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        if f.link is not None:
            os.symlink(f.link, dest)
        else:
            dest.write_bytes(f.content)
            os.chmod(dest, f.mode)
    return boot_files


def apply_units(root: Path, state: SystemState) -> None:
    if state.enable:
        chroot(root, ["systemctl", "enable", *state.enable])
    for unit in state.disable:
        # a unit the image does not have is as disabled as it gets
        if _unit_exists(root, unit):
            chroot(root, ["systemctl", "disable", unit])
    for unit in state.mask:
        chroot(root, ["systemctl", "mask", unit])


def _unit_exists(root: Path, unit: str) -> bool:
    return any((root / d / unit).exists() for d in
               ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"))


def create_users(root: Path) -> None:
    """Accounts from sysusers.d now, so files can be owned by them (tmpfiles runs at boot)."""
    chroot(root, ["systemd-sysusers"])


def install_models(root: Path, profile: Profile) -> list[str]:
    """Copy the real small model to every runtime.models path (hard links share one copy).

    Models stay root's and world-readable, as tmpfiles.d makes their directory: the
    service only reads them.
    """
    rt = profile.runtime
    if rt is None or not rt.models:
        return []
    source, _sha = default_model()
    placed: dict[str, Path] = {}
    for ref in rt.models.values():
        if ref.path in placed:
            continue
        dest = root / ref.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        first = next(iter(placed.values()), None)
        if first is not None:
            os.link(first, dest)
        else:
            shutil.copyfile(source, dest)
        os.chmod(dest, 0o644)
        placed[ref.path] = dest
    return sorted(placed)


def write_fstab(root: Path, profile: Profile) -> None:
    options = ",".join(profile.disk.mount_options) or "defaults"
    (root / "etc/fstab").write_text(
        "# Written by synapse image build: partitions by GPT label.\n"
        f"PARTLABEL={ROOT_PARTLABEL} / {profile.disk.root_fs} {options} 0 1\n"
        f"PARTLABEL={ESP_PARTLABEL} /boot vfat umask=0077,nofail 0 2\n"
    )


def system_basics(root: Path, profile: Profile) -> None:
    localtime = root / "etc/localtime"
    if localtime.is_symlink() or localtime.exists():
        localtime.unlink()
    os.symlink(f"/usr/share/zoneinfo/{profile.timezone}", localtime)
    (root / "etc/machine-id").write_text("")  # generated on first boot
    hosts = root / "etc/hosts"
    hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{profile.hostname}\n"
                     "::1\t\tlocalhost ip6-localhost ip6-loopback\n")


def add_test_access(root: Path) -> None:
    unit = root / "etc/systemd/system" / TEST_SHELL_UNIT
    unit.write_text(TEST_SHELL)
    chroot(root, ["systemctl", "enable", TEST_SHELL_UNIT])
    dropin = root / "etc/systemd/system/serial-getty@ttyS0.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "autologin.conf").write_text(SERIAL_AUTOLOGIN)


def move_boot(root: Path, esp: Path) -> None:
    """Kernel, initrd and config move to the ESP, which the system mounts at /boot."""
    boot = root / "boot"
    for item in sorted(boot.iterdir()):
        if item.is_file() and item.name.split("-", 1)[0] in ("vmlinuz", "initrd.img", "config"):
            shutil.move(str(item), esp / item.name)
        elif item.is_file():
            item.unlink()
    for link in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        p = root / link
        if p.is_symlink():
            p.unlink()
