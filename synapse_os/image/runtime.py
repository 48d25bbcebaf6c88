"""The runtime's wheels for a bundle: install.sh makes /opt/synapse from them offline.

The wheels are pinned to the versions installed on the build host (the target is Debian
bookworm with CPython 3.11 like the host, so the host's wheels fit). llama-cpp-python is
the host's own native build where that runs on the image's CPUs, else one built with the
CMake arguments the image needs, cached (`llama_wheel`; setup.sh installs that same wheel on
hosts whose native build would not run in an AVX2 image). The wheelhouse is cached, keyed by
the pinned requirement list; synapse's own wheel is built fresh for every bundle.
"""

from __future__ import annotations

import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

import synapse_os
from synapse_os.bench import build as bench_build
from synapse_os.bench.build import NO_AMX
from synapse_os.errors import OperationError, UserError
from synapse_os.image.cache import LayerCache, layer_key, link_or_copy
from synapse_os.image.progress import Progress
from synapse_os.proc import run

VENV = "/opt/synapse"
DIST = "synapse-os"
EXTRAS = ("runtime",)
LLAMA = "llama-cpp-python"


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(dist: str = DIST, extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """name==version for every distribution `dist[extras]` needs, as installed here."""
    env = {k: str(v) for k, v in default_environment().items()}
    seen: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(dist, extras)]
    while todo:
        name, want = todo.pop()
        try:
            d = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise UserError(
                f"the runtime dependency {name!r} is not installed on this build host; run: "
                "pip install -e '.[runtime]'"
            ) from None
        key = _canon(d.metadata["Name"])
        if key in seen and not want:
            continue
        seen[key] = d.version
        for line in d.requires or []:
            req = Requirement(line)
            if req.marker is not None:
                ok = any(req.marker.evaluate({**env, "extra": e}) for e in (*want, ""))
                if not ok:
                    continue
            if _canon(req.name) not in seen or req.extras:
                todo.append((req.name, tuple(sorted(req.extras))))
    seen.pop(_canon(dist), None)
    return sorted(f"{name}=={version}" for name, version in seen.items())


def source_tree() -> Path:
    root = Path(synapse_os.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise UserError(
            "building an image with the synapse runtime needs synapse's source tree "
            f"(no pyproject.toml next to {Path(synapse_os.__file__).parent}); "
            "install synapse with pip install -e from a checkout"
        )
    return root


def build_synapse_wheel(dest: Path) -> Path:
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest),
         str(source_tree())], timeout=600)
    wheels = sorted(dest.glob("synapse_os-*.whl"))
    if not wheels:
        raise OperationError(f"pip wheel wrote no synapse_os wheel into {dest}")
    return wheels[-1]


# A portable llama.cpp build for x86-64 AVX2 machines (and QEMU's TCG `-cpu max`).
PORTABLE_AVX2 = " ".join(bench_build.PORTABLE_AVX2)


def host_cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# A native build without Intel AMX (synapse_os.bench.build.NO_AMX says why).
NATIVE_NO_AMX = f'-DGGML_NATIVE=ON -DCMAKE_C_FLAGS="{NO_AMX}" -DCMAKE_CXX_FLAGS="{NO_AMX}"'


# The GPUs a CUDA wheel is built for when the build host cannot say (it may have none):
# Turing, Ampere (A100 and consumer), Ada, Hopper.
CUDA_ARCHITECTURES = "75;80;86;89;90"


def llama_cmake_args(isa: str, host_flags: set[str], gpu: str = "none") -> str | None:
    """CMAKE_ARGS for the image's llama-cpp-python, or None to reuse the host's wheel.

    pip builds llama-cpp-python with -march=native: on a host with AVX-512 that wheel
    would die with SIGILL on an AVX2 target (and in a TCG guest), so such hosts build a
    portable AVX2 wheel for images whose profile does not declare isa: avx512; a host with
    AMX builds its native wheel without AMX. A profile with an NVIDIA GPU gets the CUDA
    backend, for the GPU generations above (the build host need not have the GPU).
    """
    if "avx512f" in host_flags and isa != "avx512":
        cpu: str | None = PORTABLE_AVX2
    elif "amx_tile" in host_flags:
        cpu = NATIVE_NO_AMX
    else:
        cpu = None
    if gpu == "nvidia":
        return f"{cpu or '-DGGML_NATIVE=ON'} -DGGML_CUDA=ON " \
               f"-DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCHITECTURES}"
    return cpu


def llama_wheel_key(requirement: str, cmake_args: str) -> str:
    return layer_key("llama-wheel", {"requirement": requirement,
                                     "python": sys.version_info[:2], "cmake_args": cmake_args})


def llama_wheel(cache: LayerCache, requirement: str, cmake_args: str) -> Path:
    """llama-cpp-python (`requirement`, pinned) built from its sdist with CMAKE_ARGS, cached
    by requirement, Python and arguments: the one wheel both the build host
    (scripts/setup.sh, through `python -m synapse_os.image.runtime`) and its images use."""
    key = llama_wheel_key(requirement, cmake_args)
    if cache.complete_dir("llama-wheel", key) is None:
        with cache.put_dir("llama-wheel", key) as tmp:
            run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir",
                 "--no-binary", LLAMA, "-w", str(tmp), requirement],
                env={"CMAKE_ARGS": cmake_args}, timeout=3 * 3600)
    wheels = sorted(cache.path("llama-wheel", key, suffix="").glob("llama_cpp_python-*.whl"))
    if len(wheels) != 1:
        raise OperationError(f"pip wheel {requirement} left {len(wheels)} llama-cpp-python "
                             f"wheels in {cache.path('llama-wheel', key, suffix='')}")
    return wheels[0]


def wheelhouse(cache: LayerCache, progress: Progress, isa: str = "native",
               gpu: str = "none") -> Path:
    """A directory of wheels for every pinned runtime dependency (cached)."""
    reqs = pinned_requirements()
    cmake_args = llama_cmake_args(isa, host_cpu_flags(), gpu)
    key = layer_key("wheels", {"requirements": reqs, "python": sys.version_info[:2],
                               "llama_cmake_args": cmake_args})
    cached = cache.complete_dir("wheels", key)
    if cached is not None:
        progress.note(f"runtime wheels: cached ({len(reqs)} packages)")
        return cached
    with cache.put_dir("wheels", key, reqs) as tmp, progress.step(
            f"collecting {len(reqs)} runtime wheels (pip wheel, pinned to this host)"):
        llama = [r for r in reqs if _canon(r.split("==")[0]) == LLAMA]
        if cmake_args is not None and llama:
            progress.note(f"{llama[0]} with CMAKE_ARGS {cmake_args}")
            link_or_copy(wheel := llama_wheel(cache, llama[0], cmake_args), tmp / wheel.name)
            reqs_rest = [r for r in reqs if r not in llama]
        else:
            reqs_rest = reqs
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp),
             *reqs_rest], timeout=3600)
    return cache.path("wheels", key, suffix="")


def host_llama_cmake_args() -> str | None:
    """What an AVX2 image built on this host needs, which the host then runs too."""
    return llama_cmake_args("avx2", host_cpu_flags())


def host_llama_wheel(cache: LayerCache) -> Path | None:
    """For scripts/setup.sh, before the runtime extra is installed: the llama-cpp-python
    wheel an AVX2 image built on this host would carry, so that the host installs that one
    and its images build none of their own; None where that is the host's own native build
    (pip builds it, and images reuse it from pip's cache)."""
    cmake_args = host_llama_cmake_args()
    if cmake_args is None:
        return None
    spec = next(Requirement(r) for r in metadata.distribution(DIST).requires or []
                if _canon(Requirement(r).name) == LLAMA)
    with tempfile.TemporaryDirectory() as tmp:  # the newest sdist the index has for the spec
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", LLAMA,
             "-d", tmp, f"{LLAMA}{spec.specifier}"], timeout=1800)
        [sdist] = Path(tmp).glob("llama_cpp_python-*.tar.gz")
    version = sdist.name.removeprefix("llama_cpp_python-").removesuffix(".tar.gz")
    return llama_wheel(cache, f"{LLAMA}=={version}", cmake_args)


if __name__ == "__main__":  # scripts/setup.sh: prints the wheel to install, or nothing
    built = host_llama_wheel(LayerCache())
    print(built or "")
