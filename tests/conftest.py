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


_HOST_FILES = ("/dev/null", "/dev/zero", "/dev/urandom", "/tmp")


def _host_modes() -> dict[str, int]:
    import os

    return {p: os.stat(p).st_mode for p in _HOST_FILES}


@pytest.fixture(scope="session", autouse=True)
def _host_baseline() -> dict[str, int]:
    return _host_modes()


@pytest.fixture(autouse=True)
def _host_untouched(_host_baseline: dict[str, int]):
    """A test (as root) must never change the host's shared files; chmod through a mask link
    once made /dev/null 0644, which broke apt's sandbox for every later test. Compared with
    the session's start, so a change made while building a shared fixture is caught too."""
    yield
    after = _host_modes()
    changed = {p: f"{_host_baseline[p]:o} -> {after[p]:o}"
               for p in _host_baseline if _host_baseline[p] != after[p]}
    assert not changed, f"host file modes changed: {changed}"
