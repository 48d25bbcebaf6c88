"""Fuzz the loader: no input may produce anything but a Profile or a UserError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synapse_os.errors import UserError
from synapse_os.profile import load_profile
from synapse_os.profile.model import Profile
from tests.conftest import PROFILES

KEYS = st.sampled_from(
    ["synapse", "name", "base", "memory", "swappiness", "zram", "size", "boot", "cmdline",
     "mitigations", "kernel", "hz", "disk", "target", "runtime", "models", "main", "path",
     "extends", "services", "mask", "thp", "x", "", "1"]
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=30), st.sampled_from(["off", "auto", "ram / 2", "/dev/disk/by-id/x", "1"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=20,
)


def _load(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(text)
        try:
            assert isinstance(load_profile(path), Profile)
        except UserError as exc:
            assert str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _load(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_arbitrary_structures(data: dict) -> None:
    _load(yaml.safe_dump(data))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_shipped_profile(data: st.DataObject) -> None:
    """Replace one value of a real profile with arbitrary data."""
    base = yaml.safe_load((PROFILES / "nvidia-gpu.yaml").read_text())
    node = base
    path = []
    while isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node)))
        path.append(key)
        if not isinstance(node[key], dict) or data.draw(st.booleans()):
            node[key] = data.draw(VALUES)
            break
        node = node[key]
    _load(yaml.safe_dump(base))
