"""Arch backend: the bundle's packages as a local pacman repository, made on an Arch host.

pacman downloads every package the bootstrap installs (the rendered list and all it
depends on) into a database of its own, empty, so nothing the build host has installed is
left out, and checks each against the host's keyring as it does for any download;
repo-add indexes them into the `synapse-bundle` repository, whose database records every
package's sha256 (pacman checks it before installing). install.sh's pacstrap reads only
that repository (install/pacman-bundle.conf). A custom kernel's kernel.org tarball and
signature travel too (image/kernelsrc.py), so makepkg builds offline. pacman's mirrors
and keyring are the host's: this needs an Arch Linux host.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from synapse_os.distro import distro_for
from synapse_os.errors import OperationError, UserError
from synapse_os.image.cache import LayerCache, layer_key, link_or_copy
from synapse_os.image.progress import Progress
from synapse_os.proc import require_tool, run
from synapse_os.profile.model import Profile

REPO = "synapse-bundle"  # the repository name install/pacman-bundle.conf reads
PACKAGE_GLOBS = ("*.pkg.tar.zst", "*.pkg.tar.xz")


def is_arch_host() -> bool:
    return Path("/etc/arch-release").is_file() and shutil.which("pacman") is not None


def require_arch_host(profile: Profile) -> None:
    if not is_arch_host():
        raise UserError(
            f"base: {profile.base}: its bundle's packages are downloaded by pacman from "
            "Arch's mirrors and indexed with repo-add on an Arch Linux build host, and "
            "this host is not one; run `synapse bundle` there (bundles of base: debian "
            "are made anywhere)"
        )


def fetch_packages(profile: Profile, pacman_conf: bytes, cache: LayerCache,
                   progress: Progress) -> Path:
    """A cached directory of every package the profile's pacstrap installs."""
    require_tool("pacman", "an Arch Linux host")
    packages = distro_for(profile).packages(profile)
    version = run(["pacman", "--version"]).stdout.split("Pacman v", 1)[-1].split()[0:1]
    key = layer_key("arch-pkgs", {"packages": packages, "pacman.conf": pacman_conf.decode(),
                                  "pacman": version})
    cached = cache.complete_dir("arch-pkgs", key)
    if cached is not None:
        progress.note(f"Arch packages: cached ({cached.name})")
        return cached
    what = f"downloading Arch packages with pacman ({len(packages)} listed)"
    with cache.put_dir("arch-pkgs", key, packages) as tmp, progress.step(what):
        (tmp / "pacman.conf").write_bytes(pacman_conf)
        (tmp / "db").mkdir()
        run(["pacman", "-Syw", "--noconfirm", "--config", str(tmp / "pacman.conf"),
             "--dbpath", str(tmp / "db"), "--cachedir", str(tmp), "--logfile", "/dev/null",
             *packages], timeout=3600)
        shutil.rmtree(tmp / "db")
        (tmp / "pacman.conf").unlink()
        if not _packages(tmp):
            raise OperationError(f"pacman downloaded no packages into {tmp}")
    return cache.path("arch-pkgs", key, suffix="")


def _packages(directory: Path) -> list[Path]:
    return sorted(p for glob in PACKAGE_GLOBS for p in directory.glob(glob))


def write_repository(pkgs: Path, dest: Path) -> int:
    """The `synapse-bundle` pacman repository in `dest`: the packages (with their
    signatures, when pacman kept them) and the database repo-add makes. Returns how many
    packages it holds."""
    require_tool("repo-add", "pacman -S pacman (Debian: apt-get install pacman-package-manager)")
    dest.mkdir(parents=True, exist_ok=True)
    found = _packages(pkgs)
    for pkg in found:
        link_or_copy(pkg, dest / pkg.name)
        sig = pkg.with_name(pkg.name + ".sig")
        if sig.is_file():
            link_or_copy(sig, dest / sig.name)
    run(["repo-add", "--quiet", str(dest / f"{REPO}.db.tar.gz"),
         *(str(dest / p.name) for p in found)], timeout=1800)
    # repo-add's links (synapse-bundle.db -> .db.tar.gz) are what pacman reads; a bundle's
    # checksums cover regular files only, so the link is replaced by the file itself
    for link in (dest / f"{REPO}.db", dest / f"{REPO}.files"):
        if link.is_symlink():
            target = link.resolve()
            link.unlink()
            shutil.copy2(target, link)
    return len(found)
