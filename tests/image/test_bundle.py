"""`synapse bundle`, and the rendered scripts refusing a bad bundle or disk before they
write anything (on a real loop device, with the by-id links udev would make)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from synapse_os.image import loopdisk
from tests.conftest import PROFILES, REPO, need_tool

STOCK = PROFILES / "stock-baseline-debian.yaml"
TUNED = PROFILES / "cpu-avx2-debian.yaml"  # targets a named disk (disk.target)
MIB = 1024 * 1024


def synapse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synapse_os.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def stock_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("mmdebstrap", "apt-get install mmdebstrap")
    need_tool("dpkg-scanpackages", "apt-get install dpkg-dev")
    out = tmp_path_factory.mktemp("bundle") / "stock"
    res = synapse("bundle", str(STOCK), "-o", str(out))
    assert res.returncode == 0, res.stderr
    return out


def test_every_file_is_listed_and_checks(stock_bundle: Path) -> None:
    listed = {line.split("  ", 1)[1] for line in
              (stock_bundle / "bundle/SHA256SUMS").read_text().splitlines()}
    present = {p.relative_to(stock_bundle).as_posix() for p in stock_bundle.rglob("*")
               if p.is_file() and not p.is_symlink()} - {"bundle/SHA256SUMS"}
    assert listed == present
    assert {"install/partition.sh", "install/install.sh", "install/fstab",
            "bundle/debs/Packages", "bundle/debs/Release"} <= listed
    subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "bundle/SHA256SUMS"],
                   cwd=stock_bundle, check=True)


def test_the_local_repository_pins_every_package_it_holds(stock_bundle: Path) -> None:
    debs = stock_bundle / "bundle/debs"
    index = (debs / "Packages").read_text()
    pinned = {}
    for stanza in index.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        pinned[fields["Filename"].removeprefix("./")] = fields["SHA256"]
    files = {p.name for p in debs.glob("*.deb")}
    assert files == set(pinned) and len(files) > 100
    some = sorted(files)[0]
    assert hashlib.sha256((debs / some).read_bytes()).hexdigest() == pinned[some]
    wanted = {line for line in (stock_bundle / "install/packages.debian").read_text().splitlines()
              if line and not line.startswith("#")}
    names = {f.split("_", 1)[0] for f in files}
    assert wanted and wanted <= names  # every listed package, with its dependencies
    assert "Codename: bookworm" in (debs / "Release").read_text()


def test_arch_base_cannot_be_bundled_here(tmp_path: Path) -> None:
    res = synapse("bundle", str(PROFILES / "cpu-avx2.yaml"), "-o", str(tmp_path / "b"))
    assert res.returncode == 2
    assert "indexed with repo-add on an Arch Linux build host" in res.stderr
    assert not (tmp_path / "b").exists()


def test_a_kernel_tarball_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    """cpu-avx2-debian builds its tuned kernel in the bundle: a local tarball stands in for
    kernel.org's only with the sha256 the recipes pin (6.12.64's here)."""
    fake = tmp_path / "linux-6.12.64.tar.xz"
    fake.write_bytes(b"not the kernel\n")
    for given, said in ((fake, "does not have the sha256 the recipes pin for linux-6.12.64"),
                        (tmp_path / "missing.tar.xz", "is not a file")):
        res = synapse("bundle", str(TUNED), "-o", str(tmp_path / "b"), "--without-models",
                      "--cache", str(tmp_path / "cache"), "--kernel-tarball", str(given))
        assert res.returncode == 2 and said in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "b").exists()


def test_a_foreign_output_directory_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine\n")
    res = synapse("bundle", str(STOCK), "-o", str(tmp_path))
    assert res.returncode == 2 and "did not write" in res.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine\n"


# -- the scripts refuse before they touch the disk -------------------------------------

@pytest.fixture
def blank_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 64 MiB blank image attached as a disk, linked as /dev/disk/by-id/<name>."""
    need_tool("losetup", "apt-get install mount")
    image = tmp_path / "disk.img"
    image.touch()
    os.truncate(image, 64 * MIB)
    with loopdisk.attach(image, 16 * MIB, f"synapse-test-{os.getpid()}-{tmp_path.name}") as d:
        yield d.link, image


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, symlinks=True, copy_function=os.link)
    return dest


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          timeout=120)


def _untouched(image: Path) -> bool:
    with image.open("rb") as fh:
        return not any(fh.read(4 * MIB))


def _tamper(tree: Path, how: str) -> str:
    if how == "changed":
        target = tree / "rootfs/etc/sysctl.d/90-synapse.conf"
        if not target.exists():
            target = tree / "install/fstab"
        data = target.read_bytes()
        target.unlink()  # the copy is hard-linked to the original: replace, not edit
        target.write_bytes(data + b"# one more line\n")
        return "does not match bundle/SHA256SUMS"
    if how == "added":
        (tree / "rootfs/etc/cron.d").mkdir(parents=True, exist_ok=True)
        (tree / "rootfs/etc/cron.d/extra").write_text("* * * * * root true\n")
        return "does not list (rootfs/etc/cron.d/extra)"
    (tree / "bundle/SHA256SUMS").unlink()
    return "no bundle in"


@pytest.mark.parametrize("how", ["changed", "added", "missing"])
def test_partition_refuses_a_bad_bundle_and_leaves_the_disk_alone(
    stock_bundle: Path, blank_disk: tuple[Path, Path], tmp_path: Path, how: str
) -> None:
    link, image = blank_disk
    tree = _copy(stock_bundle, tmp_path / "tree")
    expected = _tamper(tree, how)
    res = _run(tree / "install/partition.sh", "--yes", str(link), "--mnt", str(tmp_path / "m"))
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr and res.stderr.count("\n") == 1
    assert _untouched(image)


def test_partition_needs_yes_and_the_profiles_disk(tmp_path: Path,
                                                   blank_disk: tuple[Path, Path]) -> None:
    link, image = blank_disk
    tree = tmp_path / "render"
    assert synapse("render", str(TUNED), "-o", str(tree)).returncode == 0
    res = _run(tree / "install/partition.sh", str(link))
    assert res.returncode == 2 and f"refusing to erase {link} without --yes" in res.stderr
    res = _run(tree / "install/partition.sh", "--yes", str(link))
    assert res.returncode == 2
    assert "refusing: the profile targets /dev/disk/by-id/nvme-Samsung" in res.stderr
    res = _run(tree / "install/partition.sh", "--yes", "/dev/loop0")
    assert res.returncode == 2 and "unexpected argument '/dev/loop0'" in res.stderr
    assert _untouched(image)


def test_install_refuses_a_bad_bundle_before_writing_to_the_target(
    stock_bundle: Path, tmp_path: Path
) -> None:
    tree = _copy(stock_bundle, tmp_path / "tree")
    expected = _tamper(tree, "changed")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        res = _run(tree / "install/install.sh", "--mnt", str(mnt), "--removable")
        assert res.returncode == 2, res.stderr
        assert expected in res.stderr
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
