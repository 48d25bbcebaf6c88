"""On Arch, llama-bench is built through the rendered llama.cpp PKGBUILD with makepkg."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import jinja2

from synapse_os import __version__, proc
from synapse_os.bench import build
from synapse_os.errors import OperationError, UserError
from synapse_os.models import sha256_file
from synapse_os.render.escape import FILTERS
from synapse_os.resources import data_dir

PKGNAME = "llama.cpp-synapse-native"


def is_arch() -> bool:
    return Path("/etc/arch-release").exists()


def template_path() -> Path:
    return data_dir("build") / "llama.cpp" / "PKGBUILD.j2"


def sdist_version(sdist: Path) -> str:
    match = re.fullmatch(r"llama_cpp_python-(.+)\.tar\.gz", sdist.name)
    if match is None:
        raise UserError(f"{sdist.name} is not named like a llama-cpp-python sdist "
                        "(llama_cpp_python-VERSION.tar.gz)")
    return match.group(1)


def render_pkgbuild(sdist: Path) -> str:
    """The PKGBUILD for the sdist: pinned by its sha256, building llama-bench natively."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters.update(FILTERS)
    template = env.from_string(template_path().read_text())
    return template.render(version=sdist_version(sdist), sha256=sha256_file(sdist),
                           cmake_flags=list(build.CMAKE_FLAGS),
                           synapse_version=__version__)


def build_with_makepkg(source: build.Source, *, force: bool = False) -> build.LlamaBench:
    """makepkg the rendered PKGBUILD, then keep its llama-bench in the cache like a CMake build."""
    if source.sdist is None:
        raise UserError("the PKGBUILD builds from a llama-cpp-python sdist; pass --source "
                        "SDIST.tar.gz or --method cmake for a llama.cpp directory")
    if os.geteuid() == 0:
        raise UserError("makepkg refuses to run as root; run this as a normal user, or pass "
                        "--method cmake to build with CMake directly")
    proc.require_tool("makepkg", "pacman -S base-devel")
    key = build.build_key(source)
    target = build.builds_dir() / key
    binary = target / "bin" / "llama-bench"
    if binary.is_file() and not force:
        return build.locate(binary)
    work = build.builds_dir() / "pkgbuild" / key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "PKGBUILD").write_text(render_pkgbuild(source.sdist))
    shutil.copy2(source.sdist, work / source.sdist.name)
    started = time.time()
    proc.run(["makepkg", "--noconfirm", "--force", "--cleanbuild"], cwd=work, timeout=7200)
    built = work / "pkg" / PKGNAME / "usr" / "bin" / "llama-bench"
    if not built.is_file():
        raise OperationError(f"makepkg finished but {built} does not exist")
    staging = build.builds_dir() / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    shutil.copy2(built, staging / "bin" / "llama-bench")
    packages = sorted(str(p) for p in work.glob(f"{PKGNAME}-*.pkg.tar.*"))
    info = {"origin": "synapse-pkgbuild", "source": source.origin, "source_id": source.source_id,
            "cmake_flags": list(build.CMAKE_FLAGS), "build_key": key, "packages": packages,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.time() - started, 1)}
    (staging / "build-info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return build.locate(binary)
