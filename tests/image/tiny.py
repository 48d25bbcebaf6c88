"""A tiny GPT disk image in synapse's format, built with the real tools (seconds).

It has the ESP metadata the VM driver reads, but its "kernel" is not a kernel and its
ESP has no boot loader: exactly an image that is not bootable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from synapse_os.image import disk
from synapse_os.proc import run

MIB = 1024 * 1024
SECTOR = disk.SECTOR
ESP_TYPE = disk.ESP_TYPE
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"

# The writers below make a small image without mounting anything (sfdisk, mkfs.fat
# --offset + mtools, mkfs.ext4 -d): images users boot are made by install.sh.


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


def partition(image: Path, lay: Layout) -> None:
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
    run(["mkfs.fat", "-F", "32", "-n", "SYNAPSE-ESP", f"--offset={lay.esp_start // SECTOR}",
         str(image), str(lay.esp_size // 1024)])
    target = f"{image}@@{lay.esp_start}"
    env = {"MTOOLS_SKIP_CHECK": "1"}
    entries = sorted(p.name for p in files.iterdir())
    if entries:
        run(["mcopy", "-s", "-p", "-i", target, *[str(files / e) for e in entries], "::/"],
            env=env, timeout=600)


def make_root(image: Path, lay: Layout, root: Path) -> None:
    run(["mkfs.ext4", "-q", "-F", "-L", "synapse-root", "-E",
         f"offset={lay.root_start},root_owner=0:0", "-d", str(root), str(image),
         f"{lay.root_size // 1024}k"], timeout=1800)




def make_tiny_image(path: Path, *, test: bool = True, with_metadata: bool = True) -> Path:
    work = path.parent / f"{path.name}.parts"
    esp = work / "esp"
    root = work / "root"
    esp.mkdir(parents=True)
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("tiny\n")
    (esp / "vmlinuz-0.0").write_bytes(b"this is not a kernel\n" * 100)
    (esp / "initrd.img-0.0").write_bytes(b"nor an initramfs\n" * 100)
    if with_metadata:
        (esp / disk.METADATA).write_text(json.dumps({
            "profile": "tiny", "profile_hash": "0" * 64, "base": "debian", "test": test,
            "kernel": "vmlinuz-0.0", "initrd": "initrd.img-0.0", "kernel_version": "0.0",
            "cmdline": "root=PARTLABEL=synapse-root console=ttyS0,115200",
            "runtime_port": None, "synapse_version": "0",
        }))
    lay = layout(40 * MIB, 8 * MIB)
    partition(path, lay)
    make_esp(path, lay, esp)
    make_root(path, lay, root)
    return path
