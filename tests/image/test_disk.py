"""The disk image format: GPT written by sfdisk, FAT ESP and ext4 root filled in place."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from synapse_os.errors import UserError
from synapse_os.image import disk
from tests.conftest import need_tool
from tests.image.tiny import MIB, ROOT_X86_64_TYPE, make_tiny_image


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_tool("sfdisk", "apt-get install fdisk")
    need_tool("mkfs.fat", "apt-get install dosfstools")
    need_tool("mcopy", "apt-get install mtools")
    need_tool("mkfs.ext4", "apt-get install e2fsprogs")


def test_tiny_image_has_gpt_esp_and_root_readable_by_real_tools(tmp_path: Path) -> None:
    img = make_tiny_image(tmp_path / "tiny.img")
    table = json.loads(subprocess.run(["sfdisk", "--json", str(img)], check=True,
                                      capture_output=True, text=True).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    names = [p["name"] for p in table["partitions"]]
    assert names == ["synapse-esp", "synapse-root"]
    assert table["partitions"][0]["type"] == disk.ESP_TYPE
    assert table["partitions"][1]["type"] == ROOT_X86_64_TYPE
    assert disk.find_esp(img) == MIB
    assert disk.read_metadata(img)["kernel"] == "vmlinuz-0.0"
    out = tmp_path / "x"
    out.mkdir()
    disk.extract(img, ["vmlinuz-0.0"], out)
    assert (out / "vmlinuz-0.0").read_bytes().startswith(b"this is not a kernel")
    # the root file system at its offset is a clean ext4 holding the tree
    root = table["partitions"][1]
    part = tmp_path / "root.ext4"
    subprocess.run(["dd", f"if={img}", f"of={part}", "bs=512", f"skip={root['start']}",
                    f"count={root['size']}", "status=none"], check=True)
    subprocess.run(["e2fsck", "-fn", str(part)], check=True, capture_output=True)
    cat = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(part)], check=True,
                         capture_output=True, text=True)
    assert cat.stdout == "tiny\n"


def test_a_file_without_gpt_is_refused_as_not_bootable(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 4 * MIB)
    with pytest.raises(UserError, match="no GPT partition table"):
        disk.read_metadata(junk)
    with pytest.raises(UserError, match="no such image"):
        disk.read_metadata(tmp_path / "missing.img")


def test_an_image_without_synapse_metadata_is_refused(tmp_path: Path) -> None:
    img = make_tiny_image(tmp_path / "plain.img", with_metadata=False)
    with pytest.raises(UserError, match="not built by `synapse image build`"):
        disk.read_metadata(img)


def test_no_space_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not enough free space.*GiB free"):
        disk.check_space(tmp_path, 1 << 60, "the disk image")
