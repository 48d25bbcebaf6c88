"""Assemble a GPT disk image (ESP + root) without mounting anything.

The partition table is written by sfdisk from an explicit script, the ESP is formatted in
place with `mkfs.fat --offset` and filled with mtools, and the root file system is
created in place from a directory with `mkfs.ext4 -E offset=… -d DIR`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from synapse_os.errors import UserError
from synapse_os.proc import require_tool, run

SECTOR = 512
MIB = 1024 * 1024
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
METADATA = "synapse-image.json"  # on the ESP: what the VM driver needs to boot the image


@dataclass(frozen=True)
class Layout:
    esp_start: int  # bytes
    esp_size: int
    root_start: int
    root_size: int
    total: int


def layout(esp_size: int, root_size: int) -> Layout:
    esp_size = _round_mib(esp_size)
    root_size = _round_mib(root_size)
    esp_start = MIB
    root_start = esp_start + esp_size
    total = root_start + root_size + MIB  # the backup GPT lives in the last MiB
    return Layout(esp_start, esp_size, root_start, root_size, total)


def _round_mib(n: int) -> int:
    return (n + MIB - 1) // MIB * MIB


def tree_size(path: Path) -> int:
    """Bytes used by a directory tree (apparent sizes, 4 KiB blocks per file)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        total += 4096 * (len(dirnames) + 1)
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += (st.st_size + 4095) // 4096 * 4096
    return total


def root_size_for(used: int) -> int:
    """Room for the root tree, ext4 metadata and 1 GiB free for the running system."""
    return int(used * 1.12) + 1024 * MIB


def check_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise UserError(
            f"{directory}: not enough free space for {what}: needs about "
            f"{needed / 1024**3:.1f} GiB, {free / 1024**3:.1f} GiB free; "
            "free some space or choose another output or cache directory (SYNAPSE_CACHE)"
        )


def partition(image: Path, lay: Layout) -> None:
    require_tool("sfdisk", "apt-get install fdisk")
    with image.open("wb") as fh:
        fh.truncate(lay.total)  # sparse
    script = "\n".join([
        "label: gpt",
        f"first-lba: {MIB // SECTOR}",
        f"start={lay.esp_start // SECTOR}, size={lay.esp_size // SECTOR}, "
        f'type={ESP_TYPE}, name="synapse-esp"',
        f"start={lay.root_start // SECTOR}, size={lay.root_size // SECTOR}, "
        f'type={ROOT_X86_64_TYPE}, name="synapse-root"',
    ]) + "\n"
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(image)], input=script)


def make_esp(image: Path, lay: Layout, files: Path) -> None:
    """FAT32 at the ESP offset, filled with the contents of `files`."""
    require_tool("mkfs.fat", "apt-get install dosfstools")
    require_tool("mcopy", "apt-get install mtools")
    run(["mkfs.fat", "-F", "32", "-n", "SYNAPSE-ESP", f"--offset={lay.esp_start // SECTOR}",
         str(image), str(lay.esp_size // 1024)])
    target = f"{image}@@{lay.esp_start}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    entries = sorted(p.name for p in files.iterdir())
    if entries:
        run(["mcopy", "-s", "-p", "-i", target, *[str(files / e) for e in entries], "::/"],
            env=env, timeout=600)


def make_root(image: Path, lay: Layout, root: Path, fs: str) -> None:
    if fs != "ext4":
        raise UserError(
            f"disk.root_fs: {fs} images cannot be filled without mounting on this host "
            "(mkfs.xfs here has no directory import); set disk.root_fs: ext4 for image builds"
        )
    require_tool("mkfs.ext4", "apt-get install e2fsprogs")
    run(["mkfs.ext4", "-q", "-F", "-L", "synapse-root", "-E",
         f"offset={lay.root_start},root_owner=0:0", "-d", str(root), str(image),
         f"{lay.root_size // 1024}k"], timeout=1800)


def read_metadata(image: Path) -> dict[str, object]:
    """The boot metadata the image carries on its ESP (UserError if this is no synapse image)."""
    esp = find_esp(image)
    require_tool("mtype", "apt-get install mtools")
    res = run(["mtype", "-i", f"{image}@@{esp}", f"::/{METADATA}"],
              env={"MTOOLS_SKIP_CHECK": "1"}, check=False)
    if res.returncode != 0:
        raise UserError(
            f"{image}: its EFI system partition has no {METADATA}; it was not built by "
            "`synapse image build`, so it cannot be booted by the VM driver"
        )
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise UserError(f"{image}: {METADATA} on its ESP is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError(f"{image}: {METADATA} on its ESP is not a JSON object")
    return data


def find_esp(image: Path) -> int:
    """Byte offset of the ESP, or a UserError saying why the image is not bootable."""
    if not image.is_file():
        raise UserError(f"{image}: no such image file")
    with image.open("rb") as fh:
        fh.seek(SECTOR)
        if fh.read(8) != b"EFI PART":
            raise UserError(
                f"{image}: not a bootable disk image (no GPT partition table); "
                "build one with `synapse image build PROFILE -o IMAGE`"
            )
    res = run(["sfdisk", "--json", str(image)], check=False)
    if res.returncode != 0:
        raise UserError(f"{image}: its partition table cannot be read ({res.stderr.strip()})")
    table = json.loads(res.stdout)["partitiontable"]
    for part in table.get("partitions", []):
        if part.get("type", "").upper() == ESP_TYPE:
            return int(part["start"]) * int(table.get("sectorsize", SECTOR))
    raise UserError(f"{image}: not bootable: no EFI system partition in its partition table")


def extract(image: Path, names: list[str], dest: Path) -> None:
    """Copy files from the image's ESP into dest (for direct kernel boot)."""
    esp = find_esp(image)
    for name in names:
        res = run(["mcopy", "-n", "-i", f"{image}@@{esp}", f"::/{name}", str(dest / name)],
                  env={"MTOOLS_SKIP_CHECK": "1"}, check=False)
        if res.returncode != 0:
            raise UserError(f"{image}: not bootable: {name} is missing from its ESP")
