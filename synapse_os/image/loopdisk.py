"""An image file as a disk that the rendered partition.sh accepts: loop devices and the
/dev/disk/by-id/ links udev would make for a real disk.

Without udev (containers, CI machines) nothing makes by-id links, and a kernel built
without partition-table support never makes loopNp1 nodes; so each partition gets a loop
device of its own, at the place partition.sh puts it (the first from 1 MiB, the root
partition to the last usable sector, or of the profile's root size with /var after it to
the last usable sector), and the table partition.sh writes is read back and
compared with them before anything is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from synapse_os.errors import OperationError, UserError
from synapse_os.proc import require_tool, run

SECTOR = 512
FIRST = 2048  # partition.sh's first partition starts at 1 MiB
GPT_TAIL = 33  # the backup table and header after the last usable sector
BY_ID = Path("/dev/disk/by-id")


@dataclass(frozen=True)
class Part:
    start: int  # sectors
    size: int


@dataclass(frozen=True)
class LoopDisk:
    link: Path  # /dev/disk/by-id/<name>: what partition.sh is given
    image: Path
    parts: tuple[Part, ...]

    def check_table(self) -> None:
        """The partition table partition.sh wrote matches the partition loop devices."""
        table = json.loads(run(["sfdisk", "--json", str(self.image)]).stdout)["partitiontable"]
        got = tuple(Part(int(p["start"]), int(p["size"])) for p in table.get("partitions", []))
        if got != self.parts:
            raise OperationError(
                f"partition.sh wrote partitions {got} on {self.image}, not the expected "
                f"{self.parts}: the loop devices standing in for them would not match"
            )


def layout(total: int, first_size: int, root_size: int | None = None) -> tuple[Part, ...]:
    sectors = total // SECTOR
    first = Part(FIRST, first_size // SECTOR)
    root_start = first.start + first.size
    if root_size is None:
        return first, Part(root_start, sectors - GPT_TAIL - root_start)
    root = Part(root_start, root_size // SECTOR)
    var_start = root.start + root.size
    return first, root, Part(var_start, sectors - GPT_TAIL - var_start)


@contextlib.contextmanager
def attach(image: Path, first_size: int, name: str,
           root_size: int | None = None) -> Iterator[LoopDisk]:
    """Attach `image` (whole disk + its partitions) and link it as by-id/`name`."""
    require_tool("losetup", "apt-get install mount")
    link = BY_ID / name
    if link.exists() or link.is_symlink():
        raise UserError(f"{link} already exists on this host; the image would take its place")
    parts = layout(image.stat().st_size, first_size, root_size)
    devices: list[str] = []
    links: list[Path] = []
    try:
        devices.append(_losetup(image))
        for p in parts:
            devices.append(_losetup(image, p.start * SECTOR, p.size * SECTOR))
        BY_ID.mkdir(parents=True, exist_ok=True)
        names = (link, *(Path(f"{link}-part{i}") for i in range(1, len(parts) + 1)))
        for path, dev in zip(names, devices, strict=True):
            os.symlink(dev, path)
            links.append(path)
        yield LoopDisk(link=link, image=image, parts=parts)
    finally:
        for path in links:
            path.unlink(missing_ok=True)
        wait_unused(devices)
        for dev in devices:
            run(["losetup", "-d", dev], check=False)


def _losetup(image: Path, offset: int = 0, size: int = 0) -> str:
    argv = ["losetup", "--find", "--show"]
    if size:
        argv += ["--offset", str(offset), "--sizelimit", str(size)]
    return run([*argv, str(image)]).stdout.strip()


def wait_unused(devices: list[str], timeout: float = 60) -> None:
    """Wait until no process holds the devices open: a FUSE file system daemon (a host
    without vfat in its kernel mounts the ESP through one) finishes writing after unmount."""
    wanted = {os.path.realpath(d) for d in devices}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _holders(wanted):
            return
        time.sleep(0.2)
    raise OperationError(f"{', '.join(sorted(wanted))}: still open after {timeout:.0f} s")


def _holders(devices: set[str]) -> bool:
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in devices:
                        return True
    return False
