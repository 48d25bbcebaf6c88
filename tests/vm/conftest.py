"""The real test image of profiles/cpu-avx2-debian.yaml, built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROFILES, need_tool

TUNED = PROFILES / "cpu-avx2-debian.yaml"
STOCK = PROFILES / "stock-baseline-debian.yaml"


def _build(profile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool, pkg in (("mmdebstrap", "mmdebstrap"), ("qemu-system-x86_64", "qemu-system-x86"),
                      ("sfdisk", "fdisk"), ("mcopy", "mtools"), ("mkfs.fat", "dosfstools")):
        need_tool(tool, f"apt-get install {pkg}")
    from synapse_os.image.build import build_image
    from synapse_os.image.progress import Progress
    from synapse_os.profile import load_profile

    image = tmp_path_factory.mktemp("vm") / f"{profile.stem}.img"
    build_image(load_profile(profile), image, test=True, progress=Progress(quiet=True))
    return image


@pytest.fixture(scope="session")
def tuned_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built with the layer cache (~/.cache/synapse/images): cold ~2-5 min, warm ~20 s."""
    image = _build(TUNED, tmp_path_factory)
    yield image
    image.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def stock_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    image = _build(STOCK, tmp_path_factory)
    yield image
    image.unlink(missing_ok=True)
