"""A tiny GPT disk image in synapse's format, built with the real tools (seconds).

It has the ESP metadata the VM driver reads, but its "kernel" is not a kernel and its
ESP has no boot loader: exactly an image that is not bootable.
"""

from __future__ import annotations

import json
from pathlib import Path

from synapse_os.image import disk

MIB = 1024 * 1024


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
    lay = disk.layout(40 * MIB, 8 * MIB)
    disk.partition(path, lay)
    disk.make_esp(path, lay, esp)
    disk.make_root(path, lay, root, "ext4")
    return path
