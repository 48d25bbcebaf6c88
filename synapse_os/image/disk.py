"""Read a built disk image without mounting it: its ESP (sfdisk), the boot metadata the
VM driver needs, and the kernel and initramfs for direct kernel boot (mtools)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from synapse_os.errors import UserError
from synapse_os.proc import require_tool, run

SECTOR = 512
MIB = 1024 * 1024
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
METADATA = "synapse-image.json"  # on the ESP: what the VM driver needs to boot the image


def check_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise UserError(
            f"{directory}: not enough free space for {what}: needs about "
            f"{needed / 1024**3:.1f} GiB, {free / 1024**3:.1f} GiB free; "
            "free some space or choose another output or cache directory (SYNAPSE_CACHE)"
        )


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
    """Copy files from the image's ESP into dest, by their base names (for direct kernel
    boot)."""
    esp = find_esp(image)
    for name in names:
        res = run(["mcopy", "-n", "-i", f"{image}@@{esp}", f"::/{name}",
                   str(dest / Path(name).name)],
                  env={"MTOOLS_SKIP_CHECK": "1"}, check=False)
        if res.returncode != 0:
            raise UserError(f"{image}: not bootable: {name} is missing from its ESP")
