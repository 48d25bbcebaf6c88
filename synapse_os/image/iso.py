"""`synapse build-iso`: an archiso profile (releng layout) that installs the profile.

The profile directory is rendered from `iso/` templates and the rendered tree (which
lands in the live system at /root/synapse), written atomically; on an Arch host the tree
is then replaced by the profile's whole bundle (`synapse bundle`: its pacman repository,
kernel source and wheels) and the directory handed to `mkarchiso`. Without mkarchiso (any
non-Arch host) the directory is still written and the command exits 2 with the install
command, so the profile can be checked or copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from synapse_os import __version__
from synapse_os.errors import UserError
from synapse_os.image.bundle import SUMS, build_bundle, sums_text
from synapse_os.image.cache import link_or_copy
from synapse_os.outdir import File, write_dir
from synapse_os.proc import run
from synapse_os.profile.model import Profile
from synapse_os.render import render_profile, template

PROFILE_DIR = "profile"
MARKER = ".synapse-archiso"
TREE_IN_ISO = "airootfs/root/synapse"
LIVE_PACKAGES = (
    # releng's essentials for a bootable archiso
    "base", "linux", "linux-firmware", "mkinitcpio", "mkinitcpio-archiso", "syslinux",
    "amd-ucode", "intel-ucode", "memtest86+-efi",
    # what the rendered partition.sh/install.sh run
    "arch-install-scripts", "gptfdisk", "parted", "dosfstools", "e2fsprogs", "xfsprogs",
    "util-linux", "systemd-resolvconf",
)
WANTS = "airootfs/etc/systemd/system/multi-user.target.wants"


def iso_files(profile: Profile) -> dict[str, File]:
    """Every file of the archiso profile directory (pure)."""
    if profile.base != "arch":
        raise UserError(
            f"build-iso builds Arch installer ISOs, but profile {profile.name} has base: "
            f"{profile.base}; use `synapse image build` for a {profile.base} disk image"
        )
    tree = render_profile(profile)
    files: dict[str, File] = {}

    def add(path: str, text: str, mode: int = 0o644) -> None:
        files[path] = File(text.encode(), mode)

    def link(path: str, target: str) -> None:
        files[path] = File(link=target, mode=0o777)

    for rel, f in sorted(tree.files.items()):
        files[f"{TREE_IN_ISO}/{rel}"] = f
    manifest = json.dumps(tree.manifest(profile), indent=2, sort_keys=True) + "\n"
    add(f"{TREE_IN_ISO}/manifest.json", manifest)
    # the scripts check every file of the tree they run from; build_iso replaces this tree
    # by the whole bundle (packages, kernel source, wheels) before mkarchiso runs
    sums = [(rel[len(TREE_IN_ISO) + 1:], hashlib.sha256(f.content).hexdigest())
            for rel, f in files.items() if f.link is None]
    add(f"{TREE_IN_ISO}/{SUMS}", sums_text(sums))
    executables = [f"/root/synapse/{rel}" for rel, f in sorted(tree.files.items())
                   if f.link is None and f.mode & 0o111]
    label = "".join(c for c in profile.name.upper() if c.isalnum())[:20]
    ctx = {"profile": profile}
    add("profiledef.sh", template("profiledef.sh.j2", label=label, version=__version__,
                                  executables=executables, **ctx), 0o755)
    packages = sorted(set(LIVE_PACKAGES) | {"xfsprogs" if profile.disk.root_fs == "xfs"
                                            else "e2fsprogs"})
    add("packages.x86_64", template("packages.x86_64.j2", packages=packages, **ctx))
    add("pacman.conf", tree.files["install/pacman.conf"].content.decode())
    add("airootfs/usr/local/bin/synapse-autoinstall", template("autoinstall.sh.j2", **ctx),
        0o755)
    add("airootfs/etc/systemd/system/synapse-autoinstall.service",
        template("synapse-autoinstall.service.j2", **ctx))
    link(f"{WANTS}/synapse-autoinstall.service", "../synapse-autoinstall.service")
    add("airootfs/etc/systemd/network/20-ethernet.network", template("20-ethernet.network.j2"))
    link(f"{WANTS}/systemd-networkd.service", "/usr/lib/systemd/system/systemd-networkd.service")
    link(f"{WANTS}/systemd-resolved.service", "/usr/lib/systemd/system/systemd-resolved.service")
    add("airootfs/etc/mkinitcpio.conf.d/archiso.conf", template("mkinitcpio-archiso.conf.j2"))
    add("airootfs/etc/mkinitcpio.d/linux.preset", template("linux.preset.j2"))
    add("airootfs/etc/hostname", "synapse-installer\n")
    add("efiboot/loader/loader.conf", "timeout 15\ndefault 01-synapse-live.conf\n")
    add("efiboot/loader/entries/01-synapse-live.conf", template(
        "efiboot-entry.conf.j2", title="Synapse live system (no changes to disks)",
        sort_key="01", extra=""))
    add("efiboot/loader/entries/02-synapse-install.conf", template(
        "efiboot-entry.conf.j2",
        title=f"Install {profile.name} (ERASES {profile.disk.target or 'the synapse.disk= disk'})",
        sort_key="02", extra=" synapse.autoinstall=1"))
    add("syslinux/syslinux.cfg", template("syslinux.cfg.j2", **ctx))
    return files


def build_iso(profile: Profile, output: Path) -> dict[str, str]:
    files = iso_files(profile)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"{output}: is not a directory; -o takes the output directory")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{output}: cannot create the output directory ({exc.strerror})") from None
    profile_dir = output / PROFILE_DIR
    marker = File(f"synapse {__version__}\n".encode())
    write_dir(profile_dir, files | {MARKER: marker}, marker=MARKER)
    mkarchiso = shutil.which("mkarchiso")
    if mkarchiso is None:
        raise UserError(
            f"mkarchiso was not found, so no ISO was built; the archiso profile is in "
            f"{profile_dir}; on an Arch Linux host install it with: pacman -S archiso, "
            f"then run: mkarchiso -v -w /tmp/archiso-work -o {output} {profile_dir}"
        )
    if os.geteuid() != 0:
        raise UserError("mkarchiso must run as root; rerun build-iso with sudo")
    # the installer carries the bundle, so install.sh runs offline from the ISO: the same
    # render, plus its pacman repository, kernel source and wheels, and their checksums
    bundle = output / "bundle"
    build_bundle(profile, bundle)
    tree_in_iso = profile_dir / TREE_IN_ISO
    shutil.rmtree(tree_in_iso)
    shutil.copytree(bundle, tree_in_iso, symlinks=True, copy_function=link_or_copy)
    work = Path(tempfile.mkdtemp(prefix="archiso-work.", dir=output))
    try:
        before = set(output.glob("*.iso"))
        run([mkarchiso, "-v", "-w", str(work), "-o", str(output), str(profile_dir)],
            timeout=4 * 3600)
        isos = sorted(set(output.glob("*.iso")) - before) or sorted(output.glob("*.iso"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"profile_dir": str(profile_dir), "iso": str(isos[-1]) if isos else ""}
