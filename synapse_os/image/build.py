"""`synapse image build`: a profile becomes a bootable GPT disk image by the very install
path a user runs on a bare disk.

    synapse bundle (cached packages and wheels) → sparse image file attached as a disk
    (loopdisk) → the bundle's install/partition.sh → its install/install.sh --removable,
    offline (its own network namespace), which places the bundled models → boot metadata

The image is written to a temp file beside OUTPUT and renamed into place, so a failed
build leaves nothing behind; the bundle and mount point live in a work directory that is
removed on every exit path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synapse_os import __version__
from synapse_os.errors import OperationError, UserError
from synapse_os.image import disk, loopdisk
from synapse_os.image.bundle import build_bundle
from synapse_os.image.cache import LayerCache
from synapse_os.image.progress import Progress
from synapse_os.kernel.pkgbuild import localversion_for
from synapse_os.model import bundled
from synapse_os.models import default_model
from synapse_os.proc import require_tool, run
from synapse_os.profile.model import Profile, parse_size

# Extra kernel words every image boots with: the serial console is how a VM is watched.
CONSOLE_WORDS = ("console=tty0", "console=ttyS0,115200")
ESP = "boot/efi"  # where the Debian install mounts the ESP (distro.esp_mount)
BUILD_TOOLS = (
    ("mmdebstrap", "mmdebstrap"), ("arch-chroot", "arch-install-scripts"),
    ("sgdisk", "gdisk"), ("sfdisk", "fdisk"), ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"), ("mkfs.ext4", "e2fsprogs"), ("unshare", "util-linux"),
    ("losetup", "mount"),
)
HEADROOM = 1536 * 1024 * 1024  # initramfs, apt state, and free space for the running system
ROOT_ROOM = 512 * 1024 * 1024  # a root partition of its own: initramfs and free space


@dataclass
class ImageInfo:
    path: str
    profile: str
    profile_hash: str
    base: str
    test: bool
    kernel: str
    initrd: str
    kernel_version: str
    cmdline: str
    size_bytes: int
    runtime_port: int | None
    synapse_version: str = __version__
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def check_output(output: Path) -> None:
    if output.is_dir():
        raise UserError(
            f"{output}: is a directory; -o takes the image file to write (e.g. out/cpu.img)"
        )
    parent = output.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{output}: cannot create its directory ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"{output}: its directory {parent} is not writable")


def build_image(
    profile: Profile,
    output: Path,
    *,
    test: bool = False,
    cache: LayerCache | None = None,
    progress: Progress | None = None,
    profile_dir: Path = Path("."),
    kernel_tarball: Path | None = None,
) -> ImageInfo:
    progress = progress or Progress()
    cache = cache or LayerCache()
    output = Path(output)
    check_output(output)
    if profile.boot.loader != "systemd-boot":
        raise UserError(
            f"boot.loader: {profile.boot.loader} is not supported by image builds; "
            "images boot with systemd-boot (set boot.loader: systemd-boot)"
        )
    if os.geteuid() != 0:
        raise UserError(
            "image build must run as root (it attaches loop devices and mounts them); "
            "rerun with sudo"
        )
    for tool, package in BUILD_TOOLS:
        require_tool(tool, f"apt-get install {package}")
    require_vfat()

    work_parent = cache.root / "tmp"
    work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build.", dir=work_parent))
    tmp: Path | None = None
    try:
        tree = work / "tree"
        # the real small model at every runtime.models path, placed by install.sh
        bundle = build_bundle(profile, tree, test=test, cache=cache, progress=progress,
                              profile_dir=profile_dir, kernel_tarball=kernel_tarball,
                              model_source=default_model()[0] if profile.runtime else None)
        size = image_size(profile, tree)
        parent = output.resolve().parent
        disk.check_space(parent, size, f"the disk image {output.name}")
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.truncate(tmp, size)  # sparse
        esp_size = parse_size(profile.disk.esp_size)
        mnt = work / "mnt"
        # the image stands in for the profile's target disk, under its name when it has one
        target_name = Path(profile.disk.target).name if profile.disk.target \
            else f"synapse-image-{tmp.name.strip('.')}"
        root_mib = profile.disk.root_mib()
        with loopdisk.attach(tmp, esp_size, target_name,
                             root_mib * 1024**2 if root_mib else None) as target:
            try:
                with progress.step("install/partition.sh on the image (GPT, ESP, root)"):
                    run(["bash", tree / "install/partition.sh", "--yes", target.link,
                         "--mnt", mnt], timeout=600)
                    target.check_table()
                with progress.step("install/install.sh --removable, offline (no network)"):
                    run(["unshare", "--net", "--", "bash", tree / "install/install.sh",
                         "--mnt", mnt, "--removable"], timeout=3600)
                info = boot_metadata(profile, mnt / ESP, output, test)
            finally:
                unmount(mnt)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
        info.size_bytes = output.stat().st_size
        progress.note(f"bundle: {bundle.packages} packages, {bundle.wheels} wheels")
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        with progress.step("removing the work directory"):
            shutil.rmtree(work, ignore_errors=True)
    info.timings = dict(progress.timings)
    return info


def unmount(mnt: Path) -> None:
    """Unmount everything under mnt. A FUSE-mounted ESP (stacked: see
    scripts/mount.vfat-fuse) stays busy until its upper daemon has exited, so retry a
    while, then unmount lazily; the error that got us here, if any, is the one to report."""
    for _ in range(40):
        if not os.path.ismount(mnt) or run(["umount", "-R", mnt], check=False).returncode == 0:
            return
        time.sleep(0.25)
    run(["umount", "-R", "--lazy", mnt], check=False)


def require_vfat() -> None:
    """The ESP is mounted like on any machine: by the kernel, or a mount.vfat helper."""
    with contextlib.suppress(OSError):
        if "vfat" in Path("/proc/filesystems").read_text().split():
            return
    if any(Path(d, "mount.vfat").exists() for d in ("/sbin", "/usr/sbin")):
        return
    raise UserError(
        "this host cannot mount FAT file systems (its kernel has no vfat and there is no "
        "mount.vfat helper), so no ESP can be installed; load the vfat module, or run "
        "scripts/setup.sh, which installs a FUSE mount.vfat helper on such hosts"
    )


def image_size(profile: Profile, tree: Path) -> int:
    """Bytes for the disk: the ESP, what the packages unpack to (their Installed-Size; a
    tuned kernel's packages count their size once more, for the initramfs made from them),
    the runtime's wheels three times over (unpacked plus bytecode), the models, headroom.
    With disk.root_size the root partition has that size and /var the models and headroom."""
    installed = 0
    for line in (tree / "bundle/debs/Packages").read_text().splitlines():
        if line.startswith("Installed-Size:"):
            installed += int(line.split()[1]) * 1024
    for deb in sorted((tree / "bundle/kernel").glob("*.deb")):  # a tuned kernel (and initrd)
        size = run(["dpkg-deb", "--field", deb, "Installed-Size"]).stdout.strip()
        installed += int(size or 0) * 1024 + deb.stat().st_size
    wheels = sum(p.stat().st_size for p in (tree / "bundle/wheels").glob("*.whl")) \
        if (tree / "bundle/wheels").is_dir() else 0
    index = tree / bundled.INDEX  # each line a model file install.sh places
    models = sum((tree / bundled.MODELS_DIR / f"{line.split()[0]}.gguf").stat().st_size
                 for line in index.read_text().splitlines()) if index.exists() else 0
    system = installed + 3 * wheels
    if profile.disk.root_size is None:
        total = parse_size(profile.disk.esp_size) + system + models + HEADROOM
    else:  # the root partition has the profile's size, /var (models, state) the rest
        root = parse_size(profile.disk.root_size)
        if root < system + ROOT_ROOM:
            gib = 1024**3
            raise UserError(f"disk.root_size: {profile.disk.root_size} cannot hold the installed "
                            f"system (about {(system + ROOT_ROOM) / gib:.1f}G with room to "
                            "run); raise it")
        total = parse_size(profile.disk.esp_size) + root + models + HEADROOM
    mib = 1024 * 1024
    return (total + mib - 1) // mib * mib + 2 * mib  # partition alignment and the GPTs


def boot_metadata(profile: Profile, esp: Path, output: Path, test: bool) -> ImageInfo:
    """Read the entry kernel-install wrote and leave on the ESP what the VM driver needs
    to boot the image directly (kernel, initrd, command line plus the serial console)."""
    entries = sorted((esp / "loader/entries").glob("synapse-*.conf"))
    if profile.kernel.source == "custom":  # the tuned kernel's, not the stock fallback's
        entries = [e for e in entries if e.stem.endswith(localversion_for(profile))]
    if not entries:
        raise OperationError(f"install.sh wrote no boot entry for the profile's kernel into "
                             f"{esp}/loader/entries")
    fields: dict[str, str] = {}
    for line in entries[-1].read_text().splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            fields.setdefault(key, value.strip())
    for key in ("linux", "initrd", "options", "version"):
        if key not in fields:
            raise OperationError(f"{entries[-1]}: the boot entry has no {key} line")
    cmdline = " ".join([*fields["options"].split(), *CONSOLE_WORDS])
    rt = profile.runtime
    info = ImageInfo(
        path=str(output), profile=profile.name, profile_hash=profile.hash(), base=profile.base,
        test=test, kernel=fields["linux"].lstrip("/"), initrd=fields["initrd"].lstrip("/"),
        kernel_version=fields["version"], cmdline=cmdline, size_bytes=0,
        runtime_port=rt.port if rt is not None else None,
    )
    meta = {k: v for k, v in info.as_dict().items() if k not in ("path", "size_bytes", "timings")}
    (esp / disk.METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return info
