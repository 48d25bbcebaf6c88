"""Arch backend: pacstrap from the rendered package manifest (needs an Arch build host)."""

from __future__ import annotations

import shutil
from pathlib import Path

from synapse_os.errors import UserError


def is_arch_host() -> bool:
    return Path("/etc/arch-release").is_file() and shutil.which("pacman") is not None


def require_arch_host() -> None:
    if not is_arch_host():
        raise UserError(
            "base: arch images are bootstrapped with pacstrap and pacman, which need an Arch "
            "Linux build host (this host is not one); build on Arch, or use a Debian-base "
            "profile such as profiles/cpu-avx2-debian.yaml here"
        )
    raise UserError(
        "base: arch image builds are not implemented yet on Arch hosts; use "
        "`synapse build-iso` to install the profile from an installer ISO"
    )
