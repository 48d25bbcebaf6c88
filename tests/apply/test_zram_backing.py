"""zram overwrites its backing device: an apply on the running system refuses one that is
missing or whose disk is in use, before anything changes (real loop devices, real mounts)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from synapse_os.tunables.zram import backing_device_in_use
from tests.apply.helpers import synapse
from tests.conftest import need_tool


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[str]:
    need_tool("losetup", "apt-get install mount")
    need_tool("mkfs.ext4", "apt-get install e2fsprogs")
    image = tmp_path / "scratch.img"
    with image.open("wb") as fh:
        fh.truncate(16 * 1024 * 1024)
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                            text=True, check=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["umount", str(tmp_path / "mnt")], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def test_a_disk_in_use_is_refused_and_a_free_one_taken(loop: str, tmp_path: Path) -> None:
    assert backing_device_in_use(loop) is None
    link = Path(f"/dev/disk/by-id/synapse-test-{os.getpid()}")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(loop)
    try:
        profile = tmp_path / "p.yaml"
        profile.write_text(f"synapse: 1\nname: t\nmemory:\n  zram:\n    writeback_device: {link}\n")
        free = synapse("apply", "--dry-run", "--root", "/", profile)
        assert free.returncode == 0, free.stderr
        subprocess.run(["mkfs.ext4", "-q", loop], check=True)
        (tmp_path / "mnt").mkdir()
        subprocess.run(["mount", loop, str(tmp_path / "mnt")], check=True)
        why = backing_device_in_use(str(link))
        assert why is not None and f"{loop} mounted on {tmp_path / 'mnt'}" in why
        res = synapse("apply", "--dry-run", "--root", "/", profile)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith(f"error: memory.zram.writeback_device: {link} ({loop}) "
                                     f"is on disk {loop}, which is in use"), res.stderr
        assert "zram would overwrite it" in res.stderr and "Traceback" not in res.stderr
    finally:
        link.unlink()
    assert backing_device_in_use(str(link)) == f"{link} is not a block device on this machine"

