"""Shared fixtures. A test that needs a real component fails with its install command."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"


def need_tool(name: str, install: str) -> str:
    """Path of a real tool the test needs, or a loud failure naming how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required for this test; install it with: {install}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def small_model() -> tuple[Path, str]:
    """The real gemma3 270M GGUF (path, sha256) from the PyPI package."""
    from synapse_os.models import default_model

    return default_model()
