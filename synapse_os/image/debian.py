"""Debian backend: the bundle's packages, downloaded by mmdebstrap and cached by their inputs."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from synapse_os.distro import distro_for
from synapse_os.errors import OperationError
from synapse_os.image.cache import LayerCache, layer_key, link_or_copy
from synapse_os.image.progress import Progress
from synapse_os.proc import require_tool, run
from synapse_os.profile.model import Profile

SUITE = "bookworm"
COMPONENTS = ("main", "non-free-firmware")  # intel/amd microcode live in non-free-firmware
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def mirror() -> str:
    return os.environ.get("SYNAPSE_DEBIAN_MIRROR", DEFAULT_MIRROR)


def image_packages(profile: Profile) -> list[str]:
    """What install.sh bootstraps: the rendered package list (install/packages.debian)."""
    return distro_for(profile).packages(profile)


def mmdebstrap_version() -> str:
    out = run(["mmdebstrap", "--version"]).stdout.strip()
    return out.split()[-1] if out else "unknown"


def base_key(profile: Profile) -> str:
    return layer_key("debian-debs", {
        "suite": SUITE,
        "components": list(COMPONENTS),
        "mirror": mirror(),
        "packages": image_packages(profile),
        "mmdebstrap": mmdebstrap_version(),
    })


def fetch_debs(profile: Profile, cache: LayerCache, progress: Progress) -> Path:
    """A cached directory of every .deb the profile's bootstrap installs (minbase + the
    package list), downloaded once by mmdebstrap itself so the set resolves the same way
    when install.sh bootstraps from it offline."""
    require_tool("mmdebstrap", "apt-get install mmdebstrap")
    key = base_key(profile)
    cached = cache.complete_dir("debian-debs", key)
    if cached is not None:
        progress.note(f"Debian packages: cached ({cached.name})")
        return cached
    packages = image_packages(profile)
    what = f"downloading Debian {SUITE} packages with mmdebstrap ({len(packages)} listed)"
    with cache.put_dir("debian-debs", key, packages) as tmp, progress.step(what):
        run([
            "mmdebstrap", "--mode=root", "--variant=minbase", "--format=null",
            f"--components={','.join(COMPONENTS)}",
            f"--include={','.join(packages)}",
            "--aptopt=Acquire::Retries \"3\"",
            "--skip=essential/unlink", "--skip=download/empty",
            f"--customize-hook=sync-out /var/cache/apt/archives {tmp}",
            SUITE, "/dev/null", mirror(),
        ], timeout=3600)
        for junk in ("lock", "partial"):
            p = tmp / junk
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        if not any(tmp.glob("*.deb")):
            raise OperationError(f"mmdebstrap downloaded no packages into {tmp}")
    return cache.path("debian-debs", key, suffix="")


def write_repository(debs: Path, dest: Path) -> None:
    """A flat apt repository in `dest`: the .debs and a Packages index (sha256 of each)."""
    dest.mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        link_or_copy(deb, dest / deb.name)
    require_tool("dpkg-scanpackages", "apt-get install dpkg-dev")
    index = run(["dpkg-scanpackages", "--multiversion", "."], cwd=dest, timeout=600).stdout
    (dest / "Packages").write_text(index)
    # Suite and codename as the mirror's: mmdebstrap's minbase selects the required
    # packages by ?archive(^bookworm$) or ?codename(^bookworm$)
    digest = hashlib.sha256(index.encode()).hexdigest()
    (dest / "Release").write_text(
        f"Suite: {SUITE}\nCodename: {SUITE}\nArchitectures: amd64\n"
        f"Date: Thu, 01 Jan 1970 00:00:00 UTC\nSHA256:\n {digest} {len(index.encode())} Packages\n"
    )
