"""Fixtures for apply tests: a real target root tree, profiles, mounts cleaned up."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apply.helpers import build_root
from tests.conftest import PROFILES, need_tool


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return build_root(tmp_path / "root")


@pytest.fixture
def gpu_profile() -> Path:
    return PROFILES / "nvidia-gpu.yaml"


@pytest.fixture
def variant_profile(tmp_path: Path) -> Path:
    """A second profile: other sysctl values, no zram, avahi disabled, a unit enabled."""
    path = tmp_path / "variant.yaml"
    path.write_text(
        f"extends: {PROFILES / 'nvidia-gpu.yaml'}\n"
        "name: gpu-variant\n"
        "memory:\n  swappiness: 100\n  zram: null\n"
        "services:\n  disable: [avahi-daemon.service]\n"
    )
    return path


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points a test creates; unmounted (innermost first) even when it fails."""
    need_tool("mount", "apt-get install mount")
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], check=False)
