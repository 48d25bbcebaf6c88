"""The runtime's wheels for a bundle: install.sh makes /opt/synapse from them offline.

The wheels are pinned to the versions installed on the build host (the target is Debian
bookworm with CPython 3.11 like the host, so the host's wheels fit, including the
llama-cpp-python wheel pip built and cached when synapse was installed). The wheelhouse
is cached, keyed by the pinned requirement list; synapse's own wheel is built fresh for
every bundle.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

import synapse_os
from synapse_os.bench import build as bench_build
from synapse_os.bench.build import NO_AMX
from synapse_os.errors import OperationError, UserError
from synapse_os.image.cache import LayerCache, layer_key
from synapse_os.image.progress import Progress
from synapse_os.proc import run

VENV = "/opt/synapse"
DIST = "synapse-os"
EXTRAS = ("runtime",)


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
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp)]
        llama = [r for r in reqs if r.startswith("llama-cpp-python==")]
        if cmake_args is not None and llama:
            progress.note(f"building {llama[0]} with CMAKE_ARGS {cmake_args}")
            run([*pip, "--no-cache-dir", "--no-binary", "llama-cpp-python", *llama],
                env={"CMAKE_ARGS": cmake_args}, timeout=3 * 3600)
            reqs_rest = [r for r in reqs if r not in llama]
        else:
            reqs_rest = reqs
        run([*pip, *reqs_rest], timeout=3600)
    return cache.path("wheels", key, suffix="")
