"""A read-only root is writable for the length of a transaction and read-only after it, on
real mounts (tmpfs here; the booted proof is tests/vm/test_read_only_root.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from synapse_os.apply.rootmount import read_only, writable


@pytest.fixture
def ro_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with an etc/ directory, mounted read-only."""
    mnt = tmp_path / "root"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "etc").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_read_only_root_is_writable_only_inside_the_transaction(ro_mount: Path) -> None:
    warnings: list[str] = []
    with pytest.raises(OSError):
        (ro_mount / "etc/before").write_text("x")
    with writable(ro_mount, warnings):
        (ro_mount / "etc/inside").write_text("x")
    assert read_only(ro_mount / "etc") and not warnings
    with pytest.raises(OSError):
        (ro_mount / "etc/after").write_text("x")
    with writable(ro_mount, warnings, needed=False):  # nothing to recover: no remount
        assert read_only(ro_mount / "etc")


def test_an_etc_that_leads_out_of_the_root_is_never_remounted(ro_mount: Path,
                                                              tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "etc").symlink_to(ro_mount / "etc")
    with writable(target, []):
        assert read_only(ro_mount / "etc")
