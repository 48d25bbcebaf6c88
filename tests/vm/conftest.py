"""The real test images of profiles/cpu-avx2-debian.yaml (with its tuned kernel, built from
Debian's 6.1 tree) and profiles/stock-baseline-debian.yaml, each built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROFILES, need_tool

TUNED = PROFILES / "cpu-avx2-debian.yaml"
STOCK = PROFILES / "stock-baseline-debian.yaml"


def _build(profile: Path, tmp_path_factory: pytest.TempPathFactory,
           kernel_tarball: Path | None = None) -> Path:
    for tool, pkg in (("mmdebstrap", "mmdebstrap"), ("qemu-system-x86_64", "qemu-system-x86"),
                      ("sfdisk", "fdisk"), ("mcopy", "mtools"), ("mkfs.fat", "dosfstools")):
        need_tool(tool, f"apt-get install {pkg}")
    from synapse_os.image.build import build_image
    from synapse_os.image.progress import Progress
    from synapse_os.profile import load_profile

    image = tmp_path_factory.mktemp("vm") / f"{profile.stem}.img"
    build_image(load_profile(profile), image, test=True, progress=Progress(quiet=True),
                profile_dir=profile.parent, kernel_tarball=kernel_tarball)
    return image


@pytest.fixture(scope="session")
def tuned_profile(local_kernel_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """profiles/cpu-avx2-debian.yaml with its kernel built from Debian's 6.1 tree: the only
    change is the release and the tarball's sha256 (kernel.org is out of reach here)."""
    from synapse_os.models import sha256_file

    version = local_kernel_tarball.name.removeprefix("linux-").removesuffix(".tar.xz")
    profile = tmp_path_factory.mktemp("profile") / TUNED.name
    profile.write_text(f"extends: {TUNED}\nkernel:\n  version: '{version}'\n"
                       f"  tarball_sha256: '{sha256_file(local_kernel_tarball)}'\n")
    return profile


@pytest.fixture(scope="session")
def tuned_image(tuned_profile: Path, local_kernel_tarball: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built with the layer cache (~/.cache/synapse/images): cold ~25 min (the kernel
    ~20 min of it), warm ~2 min."""
    image = _build(tuned_profile, tmp_path_factory, local_kernel_tarball)
    yield image
    image.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def stock_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    image = _build(STOCK, tmp_path_factory)
    yield image
    image.unlink(missing_ok=True)
