"""Debian backend: bootstrap the base root with mmdebstrap, cached by its inputs."""

from __future__ import annotations

import os
from pathlib import Path

from synapse_os.distro import distro_for
from synapse_os.image.cache import LayerCache, layer_key
from synapse_os.image.progress import Progress
from synapse_os.proc import require_tool, run
from synapse_os.profile.model import Profile

SUITE = "bookworm"
COMPONENTS = ("main", "non-free-firmware")  # intel/amd microcode live in non-free-firmware
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# What a bootable image needs beyond the profile's own package list.
BOOT_PACKAGES = ("initramfs-tools", "zstd", "systemd-boot-efi")
# What the synapse runtime venv needs from the system (llama.cpp links libgomp).
RUNTIME_PACKAGES = ("python3-venv", "libgomp1", "libstdc++6")


def mirror() -> str:
    return os.environ.get("SYNAPSE_DEBIAN_MIRROR", DEFAULT_MIRROR)


def image_packages(profile: Profile) -> list[str]:
    pkgs = set(distro_for(profile).packages(profile)) | set(BOOT_PACKAGES)
    if profile.runtime is not None:
        pkgs |= set(RUNTIME_PACKAGES)
    return sorted(pkgs)


def mmdebstrap_version() -> str:
    out = run(["mmdebstrap", "--version"]).stdout.strip()
    return out.split()[-1] if out else "unknown"


def base_key(profile: Profile) -> str:
    return layer_key("debian-base", {
        "suite": SUITE,
        "components": list(COMPONENTS),
        "mirror": mirror(),
        "packages": image_packages(profile),
        "mmdebstrap": mmdebstrap_version(),
    })


def bootstrap_base(profile: Profile, cache: LayerCache, progress: Progress) -> Path:
    """The cached base root tarball for this profile's package set (built when missing)."""
    require_tool("mmdebstrap", "apt-get install mmdebstrap")
    key = base_key(profile)
    hit = cache.get("debian-base", key)
    if hit is not None:
        progress.note(f"base root: cached ({hit.name})")
        return hit
    packages = image_packages(profile)
    what = f"bootstrapping Debian {SUITE} with mmdebstrap ({len(packages)} packages)"
    with progress.step(what), cache.put("debian-base", key) as tmp:
        run([
            "mmdebstrap", "--mode=root", "--variant=minbase", "--format=tar",
            f"--components={','.join(COMPONENTS)}",
            f"--include={','.join(packages)}",
            "--aptopt=Acquire::Retries \"3\"",
            # the image never runs apt against this cache: keep the tarball small
            "--customize-hook=rm -rf \"$1\"/var/cache/apt/*.bin \"$1\"/var/lib/apt/lists/*",
            SUITE, str(tmp), mirror(),
        ], timeout=3600)
    return cache.path("debian-base", key)
