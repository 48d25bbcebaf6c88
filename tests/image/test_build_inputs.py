"""What the image build caches on, and how it refuses bad input (before any slow work)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synapse_os.image import debian
from synapse_os.image.runtime import pinned_requirements
from synapse_os.profile import load_profile
from tests.conftest import PROFILES, REPO

DEBIAN_CPU = PROFILES / "cpu-avx2-debian.yaml"


def synapse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synapse_os.cli", *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=120)


def write_child(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "child.yaml"
    p.write_text(f"extends: {DEBIAN_CPU}\n{body}")
    return p


def test_debian_variant_keeps_every_setting_of_the_cpu_profile() -> None:
    deb = load_profile(DEBIAN_CPU)
    arch = load_profile(PROFILES / "cpu-avx2.yaml")
    assert deb.base == "debian" and arch.base == "arch"
    # the same tuned kernel, tickless on the CI guest's second vCPU, without the display,
    # sound, Wi-Fi and NFS a headless guest has no use for
    assert deb.kernel.source == "custom" and deb.kernel.nohz_full_cpus == "1"
    assert deb.kernel.model_dump(exclude={"nohz_full_cpus", "extra"}) == \
        arch.kernel.model_dump(exclude={"nohz_full_cpus", "extra"})
    assert set(deb.kernel.extra.values()) == {"n"} and not arch.kernel.extra
    for section in ("memory", "services", "journald", "sysctl"):
        assert getattr(deb, section) == getattr(arch, section), section
    # the 2-vCPU guest has no CPUs to spare for a system/inference partition
    assert deb.cpu.model_dump(exclude={"inference_cpus"}) == arch.cpu.model_dump(exclude={"inference_cpus"})
    assert deb.cpu.inference_cpus is None and arch.cpu.inference_cpus == "2-15"
    assert deb.boot.cmdline == arch.boot.cmdline and deb.boot.mitigations == "off"
    assert deb.runtime is not None and arch.runtime is not None
    # the guest serves the main model only (each role loads for ~30 s under TCG at boot)
    assert deb.runtime.models == {"main": arch.runtime.models["main"]}
    assert "small" in arch.runtime.models
    assert deb.runtime.model_dump(exclude={"models", "threads"}) == \
        arch.runtime.model_dump(exclude={"models", "threads"})


def test_image_packages_are_the_rendered_list_with_what_boot_and_the_runtime_need() -> None:
    tuned = debian.image_packages(load_profile(DEBIAN_CPU))
    stock = debian.image_packages(load_profile(PROFILES / "stock-baseline-debian.yaml"))
    for pkg in ("linux-image-amd64", "initramfs-tools", "zstd", "systemd-boot", "systemd-sysv"):
        assert pkg in tuned and pkg in stock
    assert "systemd-zram-generator" in tuned and "systemd-zram-generator" not in stock
    assert "libgomp1" in tuned and "libgomp1" not in stock  # llama.cpp links it
    assert tuned == sorted(set(tuned))


def test_overlay_only_change_reuses_the_cached_base(tmp_path: Path) -> None:
    base = debian.base_key(load_profile(DEBIAN_CPU))
    overlay_only = write_child(tmp_path, "memory:\n  swappiness: 100\nsysctl:\n  vm.max_map_count: 262144\n")
    assert debian.base_key(load_profile(overlay_only)) == base
    more_packages = write_child(tmp_path, "packages:\n  extra: [htop, tmux]\n")
    assert debian.base_key(load_profile(more_packages)) != base


def test_mirror_is_part_of_the_base_key(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_profile(DEBIAN_CPU)
    before = debian.base_key(profile)
    monkeypatch.setenv("SYNAPSE_DEBIAN_MIRROR", "http://example.invalid/debian")
    assert debian.base_key(profile) != before


def test_runtime_wheels_are_pinned_to_this_host() -> None:
    pins = pinned_requirements()
    names = {p.split("==")[0] for p in pins}
    assert {"llama-cpp-python", "fastapi", "uvicorn", "pydantic", "click"} <= names
    assert "synapse-os" not in names
    from importlib.metadata import version

    assert f"llama-cpp-python=={version('llama-cpp-python')}" in pins


def test_arch_base_needs_an_arch_host(tmp_path: Path) -> None:
    res = synapse("image", "build", str(PROFILES / "cpu-avx2.yaml"), "-o",
                  str(tmp_path / "never.img"))
    assert res.returncode == 2, res.stderr
    assert "Arch Linux build host" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    res = synapse("image", "build", str(DEBIAN_CPU), "-o", str(tmp_path))
    assert res.returncode == 2 and "is a directory" in res.stderr


def test_missing_mmdebstrap_names_the_package(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {**os.environ, "PATH": str(bin_dir), "SYNAPSE_CACHE": str(tmp_path / "cache")}
    res = synapse("image", "build", str(DEBIAN_CPU), "-o", str(tmp_path / "x.img"), env=env)
    assert res.returncode == 2, res.stderr
    assert "mmdebstrap" in res.stderr and "apt-get install mmdebstrap" in res.stderr
    assert not (tmp_path / "x.img").exists()


def test_hosts_with_avx512_build_a_portable_llama_wheel_for_avx2_images() -> None:
    from synapse_os.image.runtime import NATIVE_NO_AMX, PORTABLE_AVX2, llama_cmake_args

    zen = {"avx", "avx2", "fma", "f16c"}
    assert llama_cmake_args("avx2", zen) is None  # the host's -march=native wheel fits
    assert llama_cmake_args("avx2", zen | {"avx512f"}) == PORTABLE_AVX2
    assert llama_cmake_args("native", zen | {"avx512f"}) == PORTABLE_AVX2
    assert llama_cmake_args("avx512", zen | {"avx512f"}) is None
    # ggml's AMX kernels are left out of native builds on AMX hosts (bench/build.py NO_AMX)
    assert llama_cmake_args("avx512", zen | {"avx512f", "amx_tile"}) == NATIVE_NO_AMX
    assert "-mno-amx-int8" in NATIVE_NO_AMX and "-DGGML_NATIVE=ON" in NATIVE_NO_AMX
    # an NVIDIA profile's wheel has the CUDA backend, for named GPU generations (the build
    # host may have no GPU for CMake to ask), with the CPU part chosen as above
    cuda = llama_cmake_args("avx2", zen | {"avx512f"}, "nvidia")
    assert cuda is not None and cuda.startswith(PORTABLE_AVX2)
    assert "-DGGML_CUDA=ON" in cuda and "-DCMAKE_CUDA_ARCHITECTURES=75;80;86;89;90" in cuda
    assert "-DGGML_CUDA=ON" in (llama_cmake_args("native", zen, "nvidia") or "")
    assert llama_cmake_args("native", zen, "amd") is None
    assert "-DGGML_NATIVE=OFF" in PORTABLE_AVX2 and "-DGGML_AVX512=OFF" in PORTABLE_AVX2


def test_the_host_runs_the_llama_wheel_its_avx2_images_carry() -> None:
    """scripts/setup.sh installs, on a host whose native build would not run in an AVX2
    image (AVX-512, AMX), the cached wheel those images take in: one build, not two. The
    installed library is byte for byte the one in that wheel."""
    import hashlib
    import zipfile
    from importlib import metadata

    from synapse_os.image.cache import LayerCache
    from synapse_os.image.runtime import LLAMA, host_llama_cmake_args, llama_wheel_key

    cmake_args = host_llama_cmake_args()
    installed = metadata.distribution(LLAMA)
    if cmake_args is None:  # no second build to save: the images take the host's own one
        return
    cached = LayerCache().complete_dir(
        "llama-wheel", llama_wheel_key(f"{LLAMA}=={installed.version}", cmake_args))
    assert cached is not None, "no cached llama-cpp-python wheel for this host: run " \
        "scripts/setup.sh"
    [wheel] = cached.glob("llama_cpp_python-*.whl")
    lib = next(f for f in installed.files or [] if f.name == "libllama.so")
    with zipfile.ZipFile(wheel) as z:
        packed = z.read(str(lib))
    assert hashlib.sha256(packed).hexdigest() == \
        hashlib.sha256(Path(str(lib.locate())).read_bytes()).hexdigest()


def test_a_cached_directory_exists_only_once_it_was_completed(tmp_path: Path) -> None:
    from synapse_os.image.cache import LayerCache

    cache = LayerCache(tmp_path)
    with pytest.raises(RuntimeError), cache.put_dir("kind", "k1", ["a"]) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("interrupted")
    assert cache.complete_dir("kind", "k1") is None
    assert not list((tmp_path / "kind").iterdir())  # nothing half-written is left
    with cache.put_dir("kind", "k1", ["a"]) as tmp:
        (tmp / "a").write_text("whole")
    done = cache.complete_dir("kind", "k1")
    assert done is not None and (done / "a").read_text() == "whole"
    assert (done / ".complete").read_text() == "a\n"
