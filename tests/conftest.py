"""Shared fixtures. A test that needs a real component fails with its install command."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"


def need_tool(name: str, install: str) -> str:
    """Path of a real tool the test needs, or a loud failure naming how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required for this test; install it with: {install}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def small_model() -> tuple[Path, str]:
    """The real gemma3 270M GGUF (path, sha256) from the PyPI package."""
    from synapse_os.models import default_model

    return default_model()


@pytest.fixture(scope="session")
def local_kernel_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's 6.1 tree packed under the name and top directory of kernel.org's tarball of
    its version (kernel.org is out of reach here), uncompressed (tar and makepkg's bsdtar
    read the format, not the name), beside the empty signature file makepkg would fetch.
    Profiles that build it pin its sha256 in kernel.tarball_sha256, as for any release
    Synapse does not pin itself."""
    import subprocess

    from synapse_os.kernel.pkgbuild import upstream_version
    from tests.kernel.conftest import real_tree

    tree = real_tree("6.1")
    version = subprocess.run(["make", "-s", "kernelversion"], cwd=tree,
                             capture_output=True, text=True, check=True).stdout.strip()
    srcdest = tmp_path_factory.mktemp("kernel-src")
    name = f"linux-{upstream_version(version)}"
    # the same bytes in every session (sorted, one owner): the kernel packages built from
    # it are cached under its sha256
    subprocess.run(["tar", "-cf", srcdest / f"{name}.tar.xz", "--sort=name", "--owner=0",
                    "--group=0", "--numeric-owner", "-C", tree.parent,
                    f"--transform=s,^{tree.name},{name},", tree.name], check=True)
    (srcdest / f"{name}.tar.sign").write_text("")
    return srcdest / f"{name}.tar.xz"


_HOST_FILES = ("/dev/null", "/dev/zero", "/dev/urandom", "/tmp")


def _host_modes() -> dict[str, int]:
    import os

    return {p: os.stat(p).st_mode for p in _HOST_FILES}


@pytest.fixture(scope="session", autouse=True)
def _host_baseline() -> dict[str, int]:
    return _host_modes()


@pytest.fixture(autouse=True)
def _host_untouched(_host_baseline: dict[str, int]):
    """A test (as root) must never change the host's shared files; chmod through a mask link
    once made /dev/null 0644, which broke apt's sandbox for every later test. Compared with
    the session's start, so a change made while building a shared fixture is caught too."""
    yield
    after = _host_modes()
    changed = {p: f"{_host_baseline[p]:o} -> {after[p]:o}"
               for p in _host_baseline if _host_baseline[p] != after[p]}
    assert not changed, f"host file modes changed: {changed}"


# --- the real test images of profiles/cpu-avx2-debian.yaml (with its tuned kernel, built
# from Debian's 6.1 tree) and profiles/stock-baseline-debian.yaml, each built once per
# session (the VM tests and the fleet's two-VM rollout boot them)
TUNED = PROFILES / "cpu-avx2-debian.yaml"
STOCK = PROFILES / "stock-baseline-debian.yaml"


def _build(profile: Path, tmp_path_factory: pytest.TempPathFactory,
           kernel_tarball: Path | None = None) -> Path:
    for tool, pkg in (("mmdebstrap", "mmdebstrap"), ("qemu-system-x86_64", "qemu-system-x86"),
                      ("sfdisk", "fdisk"), ("mcopy", "mtools"), ("mkfs.fat", "dosfstools")):
        need_tool(tool, f"apt-get install {pkg}")
    from synapse_os.image.build import build_image
    from synapse_os.image.progress import Progress
    from synapse_os.profile import load_profile

    image = tmp_path_factory.mktemp("vm") / f"{profile.stem}.img"
    build_image(load_profile(profile), image, test=True, progress=Progress(quiet=True),
                profile_dir=profile.parent, kernel_tarball=kernel_tarball)
    return image


@pytest.fixture(scope="session")
def tuned_profile(local_kernel_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """profiles/cpu-avx2-debian.yaml with its kernel built from Debian's 6.1 tree (the release
    and the tarball's sha256 change: kernel.org is out of reach here), and zram writing idle
    pages back to the scratch NVMe every test guest has."""
    from synapse_os.models import sha256_file
    from synapse_os.vm.qemu import SCRATCH_NVME

    version = local_kernel_tarball.name.removeprefix("linux-").removesuffix(".tar.xz")
    profile = tmp_path_factory.mktemp("profile") / TUNED.name
    profile.write_text(f"extends: {TUNED}\nkernel:\n  version: '{version}'\n"
                       f"  tarball_sha256: '{sha256_file(local_kernel_tarball)}'\n"
                       f"memory:\n  zram:\n    writeback_device: {SCRATCH_NVME}\n")
    return profile


@pytest.fixture(scope="session")
def tuned_image(tuned_profile: Path, local_kernel_tarball: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built with the layer cache (~/.cache/synapse/images): cold ~25 min (the kernel
    ~20 min of it), warm ~2 min."""
    image = _build(tuned_profile, tmp_path_factory, local_kernel_tarball)
    yield image
    image.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def stock_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    image = _build(STOCK, tmp_path_factory)
    yield image
    image.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def llama_bench() -> Path:
    """The real llama-bench, built with CMake from the llama-cpp-python sdist on first use:
    the portable build, so the host tests and the A/B guests (TCG: AVX2, no AVX-512) run
    the same binary and CI compiles llama.cpp for llama-bench once."""
    need_tool("cmake", "apt-get install cmake")
    need_tool("c++", "apt-get install g++")
    from synapse_os.bench import build

    return build.build(build.resolve_source(None), flavour="portable").path
