"""`synapse image build`: a profile becomes a bootable GPT disk image, in small named steps.

    bootstrap base (cached) → unpack → runtime venv + model → overlay → users, units,
    fstab → [test access] → ESP (systemd-boot, kernel, initrd, entry) → disk image

The result is written to a temp file beside OUTPUT and renamed into place, so a failed
build leaves nothing behind; the working root lives under the cache directory and is
removed on every exit path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synapse_os import __version__
from synapse_os.errors import UserError
from synapse_os.image import arch, debian, disk, rootfs
from synapse_os.image.cache import LayerCache
from synapse_os.image.progress import Progress
from synapse_os.image.runtime import install_venv
from synapse_os.proc import require_tool
from synapse_os.profile.model import Profile, parse_size
from synapse_os.render import Tree, render_profile
from synapse_os.state import desired_state

# Extra kernel words every image boots with: the serial console is how a VM is watched.
CONSOLE_WORDS = ("console=tty0", "console=ttyS0,115200")
ENTRY = "synapse.conf"
BUILD_TOOLS = (
    ("mmdebstrap", "mmdebstrap"), ("sfdisk", "fdisk"), ("mkfs.fat", "dosfstools"),
    ("mcopy", "mtools"), ("mkfs.ext4", "e2fsprogs"), ("tar", "tar"), ("chroot", "coreutils"),
)


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
    if profile.base == "arch":
        arch.require_arch_host()
    if os.geteuid() != 0:
        raise UserError(
            "image build must run as root (mmdebstrap and chroot need it); rerun with sudo"
        )
    if profile.disk.root_fs != "ext4":
        raise UserError(
            f"disk.root_fs: {profile.disk.root_fs} images cannot be filled without mounting on "
            "this host (mkfs.xfs has no directory import here); set disk.root_fs: ext4"
        )

    for tool, package in BUILD_TOOLS:
        require_tool(tool, f"apt-get install {package}")
    tree = render_profile(profile)
    state = desired_state(profile)
    base_key = debian.base_key(profile)
    base_tar = debian.bootstrap_base(profile, cache, progress)

    needed = base_tar.stat().st_size * 2 + 1024 * disk.MIB
    work_parent = work_dir_parent(cache, needed)
    disk.check_space(work_parent, needed, "the image root")
    work = Path(tempfile.mkdtemp(prefix="build.", dir=work_parent))
    try:
        root = work / "root"
        esp = work / "esp"
        root.mkdir()
        esp.mkdir()
        with progress.step("unpacking the base root"):
            rootfs.unpack(base_tar, root)
        if profile.runtime is not None:
            install_venv(root, base_key, cache, progress, profile.hardware.isa)
        with progress.step("laying the rendered overlay, users, units and fstab"):
            rootfs.system_basics(root, profile)
            boot_files = rootfs.lay_overlay(tree, root)
            rootfs.create_users(root)
            rootfs.apply_units(root, state)
            rootfs.write_fstab(root, profile)
            if test:
                rootfs.add_test_access(root)
        if profile.runtime is not None:
            with progress.step("placing the model at the profile's runtime.models paths"):
                models = rootfs.install_models(root, profile)
            progress.note("models: " + ", ".join(models))
        with progress.step("preparing the EFI system partition (systemd-boot)"):
            info = _prepare_esp(profile, tree, root, esp, boot_files, output, test)
        with progress.step("writing the GPT disk image (mkfs.fat + mtools, mkfs.ext4 -d)"):
            _write_disk(profile, root, esp, output)
        info.size_bytes = output.stat().st_size
    finally:
        with progress.step("removing the working root"):
            shutil.rmtree(work, ignore_errors=True)
    info.timings = dict(progress.timings)
    return info


def work_dir_parent(cache: LayerCache, needed: int) -> Path:
    """Where the image root is assembled: RAM (/dev/shm) when there is plenty of it.

    Unpacking a root takes seconds anywhere, but deleting 20,000 files again can take
    minutes on a disk mounted with `discard`; on tmpfs both are instant.
    """
    override = os.environ.get("SYNAPSE_WORKDIR")
    if override:
        path = Path(override)
    else:
        shm = Path("/dev/shm")
        path = cache.root / "tmp"
        if shm.is_dir() and os.access(shm, os.W_OK) and _mem_available() > needed * 3:
            with contextlib.suppress(OSError):
                if shutil.disk_usage(shm).free > needed * 2:
                    path = shm
    path.mkdir(parents=True, exist_ok=True)
    return path


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _prepare_esp(
    profile: Profile, tree: Tree, root: Path, esp: Path, boot_files: list[str], output: Path,
    test: bool,
) -> ImageInfo:
    rootfs.move_boot(root, esp)
    kernels = sorted(p.name for p in esp.glob("vmlinuz-*"))
    if not kernels:
        raise UserError(f"profile {profile.name}: the bootstrapped root has no kernel in /boot")
    kernel = kernels[-1]
    version = kernel[len("vmlinuz-"):]
    initrd = f"initrd.img-{version}"
    if not (esp / initrd).is_file():
        raise UserError(f"profile {profile.name}: no initramfs for kernel {version} in /boot")
    loader_efi = root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    for name in ("EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"):
        (esp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(loader_efi, esp / name)
    for rel in boot_files:  # rootfs/boot/... from the render (loader.conf)
        dest = esp / rel[len("rootfs/boot/"):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(tree.files[rel].content)
    words = tree.files["rootfs/etc/kernel/cmdline"].content.decode().split()
    cmdline = " ".join([*words, *CONSOLE_WORDS])
    entries = esp / "loader/entries"
    entries.mkdir(parents=True, exist_ok=True)
    (entries / ENTRY).write_text(
        f"# Written by synapse image build for profile {profile.name}.\n"
        f"title   Synapse {profile.name} (Debian, {version})\n"
        f"linux   /{kernel}\ninitrd  /{initrd}\noptions {cmdline}\n"
    )
    rt = profile.runtime
    info = ImageInfo(
        path=str(output), profile=profile.name, profile_hash=profile.hash(), base=profile.base,
        test=test, kernel=kernel, initrd=initrd, kernel_version=version, cmdline=cmdline,
        size_bytes=0, runtime_port=rt.port if rt is not None else None,
    )
    meta = {k: v for k, v in info.as_dict().items() if k not in ("path", "size_bytes", "timings")}
    (esp / disk.METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return info


def _write_disk(profile: Profile, root: Path, esp: Path, output: Path) -> None:
    esp_size = parse_size(profile.disk.esp_size)
    used = disk.tree_size(esp)
    if used > esp_size * 0.9:
        raise UserError(
            f"disk.esp_size: {profile.disk.esp_size} is too small for the kernel and initramfs "
            f"({used // disk.MIB} MiB); raise it"
        )
    lay = disk.layout(esp_size, disk.root_size_for(disk.tree_size(root)))
    parent = output.resolve().parent
    disk.check_space(parent, lay.total, f"the disk image {output.name}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        disk.partition(tmp, lay)
        disk.make_esp(tmp, lay, esp)
        disk.make_root(tmp, lay, root, profile.disk.root_fs)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
