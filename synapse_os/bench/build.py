"""Find llama-bench, or build it with CMake into a content-addressed cache: native
(-DGGML_NATIVE=ON) for this machine, or portable (AVX2, no OpenMP) for guests and other boxes.

Lookup order: an explicit path, then $PATH, then the cache. The source is a llama.cpp tree
(a directory), a llama-cpp-python sdist (which vendors llama.cpp in vendor/llama.cpp), or, by
default, that sdist fetched with pip for the installed llama-cpp-python version.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from synapse_os import proc
from synapse_os.bench.paths import cache_root
from synapse_os.errors import OperationError, UserError

BUILD_HINT = "synapse bench llama-bench --build"
SDIST_PACKAGE = "llama-cpp-python"

# Native builds leave Intel AMX out. ggml's AMX kernels die with SIGILL (tilezero on a tile
# its configuration does not cover, in tinygemm_kernel_amx) during prompt processing on AMX
# hosts where AMX itself works (seen on a Xeon VM: a plain program configures and uses tiles
# in several threads), in llama.cpp as vendored by llama-cpp-python 0.3.36. GCC's explicit
# -mno-* flags win over -march=native whatever their order. Token generation does not use
# AMX; prompt processing loses its speed-up where it would have worked.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

# Minimal, self-contained build: static libraries, only the llama-bench target, no network
# code.
_COMMON_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
)
# GGML_NATIVE is passed explicitly because its default is OFF when SOURCE_DATE_EPOCH is set
# (as in package builds).
CMAKE_FLAGS: tuple[str, ...] = (
    *_COMMON_FLAGS[:1], "-DGGML_NATIVE=ON", f"-DCMAKE_C_FLAGS={NO_AMX}",
    f"-DCMAKE_CXX_FLAGS={NO_AMX}", *_COMMON_FLAGS[1:],
)
# x86-64 with AVX2/FMA/F16C and no AVX-512: any AVX2 machine, and QEMU's TCG `-cpu max`
# (which emulates AVX2 but not AVX-512). GGML_NATIVE=OFF makes these flags count.
PORTABLE_AVX2: tuple[str, ...] = ("-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON",
                                  "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
                                  "-DGGML_AVX512=OFF")
# The build `synapse bench ab` carries into guests: portable, and without OpenMP (ggml's own
# thread pool) so it runs on a stock system that has no libgomp.
PORTABLE_FLAGS: tuple[str, ...] = (*_COMMON_FLAGS, *PORTABLE_AVX2, "-DGGML_OPENMP=OFF")
FLAVOURS: dict[str, tuple[str, ...]] = {"native": CMAKE_FLAGS, "portable": PORTABLE_FLAGS}

# The parts of a llama.cpp tree that determine the llama-bench binary.
_HASHED_PARTS = ("CMakeLists.txt", "cmake", "ggml", "src", "include", "common", "vendor",
                 "tools/CMakeLists.txt", "tools/llama-bench")


@dataclass(frozen=True)
class Source:
    tree: Path  # llama.cpp root: CMakeLists.txt and tools/llama-bench
    origin: str  # human description: sdist name and version, or the directory
    source_id: str  # sha256 over the files that determine the binary
    sdist: Path | None = None  # the tarball, when the source came from one


@dataclass(frozen=True)
class LlamaBench:
    path: Path
    build_info: dict[str, Any]  # how it was built; minimal when it was not built by us

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "build_info": self.build_info}


def builds_dir() -> Path:
    return cache_root() / "llama-bench"


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def binary_sha256(path: Path) -> str:
    from synapse_os.models import sha256_file

    return sha256_file(path)


def _check_executable(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; pass a llama-bench executable or run: "
                        f"{BUILD_HINT}")
    if not os.access(path, os.X_OK):
        raise UserError(f"{what} {path} is not executable; pass a llama-bench executable")


def _read_build_info(binary: Path) -> dict[str, Any]:
    info_file = binary.parent.parent / "build-info.json"
    if info_file.is_file():
        try:
            data = json.loads(info_file.read_text())
            if isinstance(data, dict):
                return data
        except (OSError, json.JSONDecodeError):
            pass
    return {"origin": "external", "cmake_flags": "unknown"}


def flavour_of(binary: Path) -> str:
    return str(_read_build_info(binary).get("flavour", "native"))


def cached_binaries(flavour: str = "native") -> list[Path]:
    """Cached llama-bench builds of one flavour, newest first."""
    root = builds_dir()
    if not root.is_dir():
        return []
    found = [p / "bin" / "llama-bench" for p in root.iterdir()
             if (p / "bin" / "llama-bench").is_file() and not p.name.startswith(".")]
    found = [p for p in found if flavour_of(p) == flavour]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def locate(explicit: Path | None = None, flavour: str = "native") -> LlamaBench:
    """The llama-bench to run: --llama-bench PATH, then $PATH (native only), then the newest
    cached build of the flavour."""
    if explicit is not None:
        _check_executable(explicit, "llama-bench")
        path = explicit.resolve()
    else:
        on_path = shutil.which("llama-bench") if flavour == "native" else None
        if on_path is not None:
            path = Path(on_path).resolve()
        else:
            cached = cached_binaries(flavour)
            if not cached:
                hint = BUILD_HINT + (" --portable" if flavour == "portable" else "")
                raise UserError(f"llama-bench ({flavour}) was not found (no --llama-bench, not "
                                f"on PATH, no cached build); build it with: {hint}")
            path = cached[0]
    info = dict(_read_build_info(path))
    info["binary_sha256"] = binary_sha256(path)
    return LlamaBench(path, info)


# --- sources ---------------------------------------------------------------------------------

def tree_id(tree: Path) -> str:
    """sha256 over relative paths and contents of the parts of the tree that shape the binary."""
    digest = hashlib.sha256()
    for part in _HASHED_PARTS:
        top = tree / part
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for file in files:
            digest.update(str(file.relative_to(tree)).encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _llama_tree(directory: Path) -> Path | None:
    for candidate in (directory, directory / "vendor" / "llama.cpp"):
        has_bench = (candidate / "tools" / "llama-bench").is_dir()
        if (candidate / "CMakeLists.txt").is_file() and has_bench:
            return candidate
    return None


def _extract_sdist(tarball: Path) -> Path:
    """Unpack an sdist once into the cache (atomically); return the unpacked top directory."""
    digest = binary_sha256(tarball)[:16]
    target = builds_dir() / "src" / f"{tarball.name.removesuffix('.tar.gz')}-{digest}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{tarball} is not a readable source archive ({exc}); pass a "
                        "llama.cpp directory or a llama-cpp-python sdist (.tar.gz)") from None
    tops = [p for p in tmp.iterdir() if p.is_dir()]
    inner = tops[0] if len(tops) == 1 else tmp
    os.replace(inner, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_sdist() -> Path:
    """The llama-cpp-python sdist from the package registry (pip's cache when it has it)."""
    try:
        version = metadata.version(SDIST_PACKAGE)
        requirement = f"{SDIST_PACKAGE}=={version}"
    except metadata.PackageNotFoundError:
        requirement = SDIST_PACKAGE
    dest = builds_dir() / "sdist"
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if "==" in requirement:
        wanted = dest / f"llama_cpp_python-{requirement.split('==')[1]}.tar.gz"
        if wanted.is_file():
            return wanted
    proc.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              requirement, "-d", str(dest)], timeout=1800)
    fresh = sorted(set(dest.glob("llama_cpp_python-*.tar.gz")) - set(existing)) or sorted(
        dest.glob("llama_cpp_python-*.tar.gz"))
    if not fresh:
        raise OperationError(f"pip download of {requirement} produced no sdist in {dest}")
    return fresh[-1]


def resolve_source(source: Path | None) -> Source:
    """A llama.cpp tree from a directory, an sdist tarball, or (None) the registry's sdist."""
    sdist: Path | None = None
    if source is None:
        sdist = fetch_sdist()
        top = _extract_sdist(sdist)
    elif source.is_file() and source.name.endswith(".tar.gz"):
        sdist = source
        top = _extract_sdist(source)
    elif source.is_dir():
        top = source
    else:
        raise UserError(f"llama.cpp source {source} is neither a directory nor a .tar.gz sdist; "
                        "pass a llama.cpp checkout or a llama-cpp-python sdist")
    tree = _llama_tree(top)
    if tree is None:
        raise UserError(f"{source or top} holds no llama.cpp tree (CMakeLists.txt and "
                        "tools/llama-bench, or vendor/llama.cpp of a llama-cpp-python sdist)")
    origin = f"{sdist.name} (vendor/llama.cpp)" if sdist else str(tree.resolve())
    return Source(tree=tree, origin=origin, source_id=tree_id(tree), sdist=sdist)


# --- building --------------------------------------------------------------------------------

def _compiler_id() -> str:
    cxx = shutil.which(os.environ.get("CXX", "c++")) or "c++"
    result = proc.run([cxx, "--version"], check=False)
    return result.stdout.splitlines()[0] if result.stdout else "unknown"


def _cpu_id() -> str:
    """Model name and flags: GGML_NATIVE builds for this CPU, so the cache key must include it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    wanted = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "flags") and key not in wanted:
            wanted[key] = value.strip()
    return json.dumps(wanted, sort_keys=True)


def build_key(source: Source, flags: tuple[str, ...] = CMAKE_FLAGS) -> str:
    identity = {"source": source.source_id, "flags": list(flags), "compiler": _compiler_id(),
                "machine": platform.machine()}
    if "-DGGML_NATIVE=OFF" not in flags:  # a native build is for this CPU only
        identity["cpu"] = _cpu_id()
    return _sha256_bytes(json.dumps(identity, sort_keys=True).encode())[:20]


def build(source: Source, *, jobs: int | None = None, force: bool = False,
          flavour: str = "native") -> LlamaBench:
    """Build llama-bench (for this CPU, or portable) into the cache, or reuse the cached
    build of this key."""
    proc.require_tool("cmake", "apt-get install cmake (Debian) / pacman -S cmake (Arch)")
    flags = FLAVOURS[flavour]
    key = build_key(source, flags)
    target = builds_dir() / key
    binary = target / "bin" / "llama-bench"
    if binary.is_file() and not force:
        return locate(binary)
    builds_dir().mkdir(parents=True, exist_ok=True)
    work = builds_dir() / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    build_tree = work / "cmake-build"
    n_jobs = jobs or os.cpu_count() or 1
    started = time.time()
    try:
        proc.run(["cmake", "-S", str(source.tree), "-B", str(build_tree), *flags],
                 timeout=600)
        proc.run(["cmake", "--build", str(build_tree), "--target", "llama-bench",
                  "--config", "Release", "-j", str(n_jobs)], timeout=7200)
        built = build_tree / "bin" / "llama-bench"
        if not built.is_file():
            raise OperationError(f"the CMake build finished but {built} does not exist")
        (work / "bin").mkdir(parents=True)
        shutil.copy2(built, work / "bin" / "llama-bench")
        info = {
            "origin": "synapse-cmake",
            "source": source.origin,
            "source_id": source.source_id,
            "cmake_flags": list(flags),
            "flavour": flavour,
            "compiler": _compiler_id(),
            "build_key": key,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.time() - started, 1),
        }
        (work / "build-info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(build_tree)
        if force and target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return locate(binary)
