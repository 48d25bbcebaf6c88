"""`synapse bundle`: the rendered tree plus everything its install needs offline.

    out/install/, rootfs/, …   the render: install/partition.sh and install/install.sh
    out/bundle/debs/           Debian base: a flat apt repository of every package the
                               bootstrap installs (the Packages index pins each by sha256)
    out/bundle/pkgs/           Arch base: the same as a pacman repository (repo-add's
                               database pins each by sha256), made on an Arch host
    out/bundle/kernel-src/     Arch base: a custom kernel's kernel.org tarball and signature
    out/bundle/kernel/         Debian base: a custom kernel built here (make bindeb-pkg): its
                               linux-image and linux-headers packages and its resolution
    out/bundle/wheels/         the runtime's wheels: synapse, llama-cpp-python built for the
                               profile's ISA, and their dependencies (pip --no-index)
    out/bundle/models/         the files runtime.models names, by sha256, and their index
                               (synapse_os/model/bundled.py); install.sh places them
    out/bundle/SHA256SUMS      every file of out/; both scripts check it before they act

`--test` adds the VM test driver's root shell and serial autologin to the overlay, so
the installed system can be driven by `synapse vm` (never for machines you deploy).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synapse_os import __version__
from synapse_os.image import archrepo, debian, kernelsrc
from synapse_os.image.cache import LayerCache, link_or_copy
from synapse_os.image.progress import Progress
from synapse_os.image.runtime import build_synapse_wheel, wheelhouse
from synapse_os.model import bundled
from synapse_os.models import sha256_file
from synapse_os.outdir import check_output_dir
from synapse_os.profile.model import Profile
from synapse_os.render import MANIFEST, Tree, render_profile, write_tree
from synapse_os.vm.qemu import SHELL_PORT

SUMS = "bundle/SHA256SUMS"
TEST_PORT = SHELL_PORT  # the port the VM driver connects to
TEST_SHELL_UNIT = "synapse-test-shell.service"

# Test bundles only: a root shell on a virtio serial port (no tty in between, so no echo
# and no line-length limit), which the VM test driver talks to. A plain virtserialport
# allows one opener, hence one `<>` and dup'ed stdout/stderr.
TEST_SHELL = f"""\
# Test images only: a root shell for the synapse VM test driver on a virtio port.
[Unit]
Description=Synapse VM test root shell on /dev/virtio-ports/{TEST_PORT}
DefaultDependencies=no
After=systemd-udevd.service systemd-udev-trigger.service
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/bin/bash --noprofile --norc -c 'exec 0<>/dev/virtio-ports/{TEST_PORT} 1>&0 2>&0; \\
echo; echo @@SYNAPSE-SHELL-READY@@; exec /bin/bash --noprofile --norc'
Restart=always
RestartSec=1
KillMode=process

[Install]
WantedBy=sysinit.target
"""

# Test images: log in on the serial console without a password (`synapse vm run`).
SERIAL_AUTOLOGIN = """\
# Test images only: root autologin on the serial console for `synapse vm run`.
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
"""


@dataclass
class BundleInfo:
    output: str
    profile: str
    profile_hash: str
    base: str
    test: bool
    files: int
    size_bytes: int
    packages: int
    wheels: int
    models: int = 0
    synapse_version: str = __version__
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def add_test_access(tree: Tree) -> None:
    system = "rootfs/etc/systemd/system"
    tree.add(f"{system}/{TEST_SHELL_UNIT}", TEST_SHELL)
    tree.link(f"{system}/sysinit.target.wants/{TEST_SHELL_UNIT}",
              f"/etc/systemd/system/{TEST_SHELL_UNIT}")
    tree.add(f"{system}/serial-getty@ttyS0.service.d/autologin.conf", SERIAL_AUTOLOGIN)


def build_bundle(
    profile: Profile,
    output: Path,
    *,
    test: bool = False,
    cache: LayerCache | None = None,
    progress: Progress | None = None,
    profile_dir: Path = Path("."),
    kernel_tarball: Path | None = None,
    models_root: Path | None = None,
    model_source: Path | None = None,
) -> BundleInfo:
    """`profile_dir`: where the profile's relative paths (kernel.localmodconfig) start.
    `kernel_tarball`: a local copy of a custom kernel's kernel.org tarball (checked against
    its pinned sha256) instead of the download. The model files runtime.models names come from
    `models_root` (at their paths) or, for test images, `model_source` (one file at every
    path); with neither, the installed system gets its models some other way."""
    progress = progress or Progress()
    cache = cache or LayerCache()
    output = Path(output)
    if profile.base == "arch":
        archrepo.require_arch_host(profile)
    check_output_dir(output, MANIFEST, listed=True)
    models = bundled.collect(profile, root=models_root, source=model_source) \
        if models_root is not None or model_source is not None else []
    tree = render_profile(profile)
    if test:
        add_test_access(tree)
    kernel_sources: list[Path] = []
    kernel_debs: Path | None = None
    if profile.base == "arch":
        packages = archrepo.fetch_packages(profile, tree.files["install/pacman.conf"].content,
                                           cache, progress)
        kernel_sources = kernelsrc.fetch_kernel_sources(profile, cache, progress, kernel_tarball)
    else:
        if profile.kernel.source == "custom":
            from synapse_os.kernel.debs import kernel_debs as build_kernel_debs

            tarball, = kernelsrc.fetch_kernel_sources(profile, cache, progress, kernel_tarball,
                                                      signature=False)
            kernel_debs = build_kernel_debs(profile, profile_dir, tarball, cache, progress)
        packages = debian.fetch_debs(profile, cache, progress)
    wheels = (wheelhouse(cache, progress, profile.hardware.isa, profile.hardware.gpu)
              if profile.runtime else None)
    counts = {"packages": 0, "wheels": 0}

    def fill(root: Path) -> None:
        if profile.base == "arch":
            with progress.step("laying the bundle: local pacman repository (repo-add)"):
                counts["packages"] = archrepo.write_repository(packages, root / "bundle/pkgs")
        else:
            with progress.step("laying the bundle: local apt repository and Packages index"):
                debian.write_repository(packages, root / "bundle/debs")
                counts["packages"] = len(list((root / "bundle/debs").glob("*.deb")))
        if kernel_sources:
            (root / "bundle/kernel-src").mkdir(parents=True)
            for source in kernel_sources:
                link_or_copy(source, root / "bundle/kernel-src" / source.name)
        if kernel_debs is not None:
            (root / "bundle/kernel").mkdir(parents=True)
            for built in sorted(kernel_debs.iterdir()):
                if not built.name.startswith("."):
                    link_or_copy(built, root / "bundle/kernel" / built.name)
        if wheels is not None:
            with progress.step("laying the bundle: runtime wheels and synapse's own wheel"):
                dest = root / "bundle/wheels"
                dest.mkdir(parents=True)
                for w in sorted(wheels.glob("*.whl")):
                    link_or_copy(w, dest / w.name)
                build_synapse_wheel(dest)
                counts["wheels"] = len(list(dest.glob("*.whl")))
        if models:
            with progress.step("laying the bundle: the profile's models (bundle/models)"):
                bundled.write(models, root)
        with progress.step("checksumming every file (bundle/SHA256SUMS)"):
            write_sums(root)

    write_tree(tree, output, tree.manifest(profile), fill=fill)
    files, size = 0, 0
    for dirpath, _dirs, names in os.walk(output):
        for name in names:
            p = Path(dirpath) / name
            if not p.is_symlink():
                files += 1
                size += p.stat().st_size
    return BundleInfo(
        output=str(output), profile=profile.name, profile_hash=profile.hash(),
        base=profile.base, test=test, files=files, size_bytes=size, packages=counts["packages"],
        wheels=counts["wheels"], models=len({m.sha256 for m in models}),
        timings=dict(progress.timings),
    )


def write_sums(root: Path) -> None:
    """bundle/SHA256SUMS in sha256sum's format: every regular file, sorted, but itself."""
    lines = []
    for dirpath, dirnames, names in os.walk(root):
        dirnames.sort()
        for name in names:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel == SUMS or p.is_symlink():
                continue
            lines.append((rel, sha256_file(p)))
    (root / SUMS).parent.mkdir(parents=True, exist_ok=True)
    (root / SUMS).write_text(sums_text(lines))


def sums_text(entries: list[tuple[str, str]]) -> str:
    """(relative path, sha256) pairs as sha256sum --check reads them."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(entries))

