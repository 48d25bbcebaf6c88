"""The tuned kernel as Debian packages, for a Debian bundle.

The bundle host resolves the profile's kernel settings against the pinned kernel.org
release (trimmed to `kernel.localmodconfig`'s hardware capture), refuses a resolution that
did not apply every setting or cannot boot the profile's machine, and builds it with the
recipe `synapse kernel pkgbuild` writes (build-deb.sh: `make bindeb-pkg`). The packages
are cached under everything that goes into the build: the tarball, the recipe (its
resolved .config included) and the compiler, so an unchanged kernel is built once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from synapse_os.errors import OperationError, UserError
from synapse_os.image.cache import LayerCache, layer_key
from synapse_os.image.progress import Progress
from synapse_os.kernel.fragment import kernel_section_hash
from synapse_os.kernel.pkgbuild import check_resolution, pkgbase_for, render_recipes
from synapse_os.kernel.report import plain_report
from synapse_os.kernel.resolve_profile import resolve_profile
from synapse_os.kernel.trees import extracted_tree
from synapse_os.models import sha256_file
from synapse_os.proc import require_tool, run
from synapse_os.profile.model import Profile

# Packages the install takes from a bindeb-pkg build (not linux-libc-dev, for building
# programs, nor a -dbg package of debug symbols)
PACKAGES = ("linux-image-", "linux-headers-")
BUILD_TOOLS = (("make", "make"), ("gcc", "build-essential"), ("flex", "flex"),
               ("bison", "bison"), ("bc", "bc"), ("dpkg-buildpackage", "dpkg-dev"),
               ("rsync", "rsync"), ("pahole", "dwarves"), ("fakeroot", "fakeroot"))
# headers the build compiles against (objtool, module signing)
BUILD_HEADERS = (("/usr/include/gelf.h", "libelf-dev"),
                 ("/usr/include/openssl/opensslv.h", "libssl-dev"))
# A cold build takes ~20 min on 2 cores; a build stuck for hours is an error.
BUILD_TIMEOUT = 6 * 3600


def kernel_debs(profile: Profile, profile_dir: Path, tarball: Path, cache: LayerCache,
                progress: Progress) -> Path:
    """A directory with the kernel's linux-image and linux-headers packages and the
    resolution that made them (resolution.txt/.json, config)."""
    for tool, package in BUILD_TOOLS:
        require_tool(tool, f"apt-get install {package}")
    for header, package in BUILD_HEADERS:
        if not Path(header).is_file():
            raise UserError(f"building the kernel needs {header}; install it with: "
                            f"apt-get install {package}")
    with progress.step(f"unpacking {tarball.name} (once per tarball)"):
        tree = extracted_tree(tarball, tarball.name.removesuffix(".tar.xz"), cache.root)
    with progress.step("resolving the kernel config with the kernel's kconfig"):
        resolution = resolve_profile(profile, tree, profile_dir=profile_dir)
    check_resolution(profile, resolution, kernel_section_hash(profile),
                     f"the kernel config resolved against {tarball.name}")
    recipe = render_recipes(profile, resolution)
    key = layer_key("kernel-debs", {
        "tarball": sha256_file(tarball),
        "recipe": {name: text for name, text in sorted(recipe.files.items())},
        "compiler": run(["gcc", "-dumpfullversion"]).stdout.strip(),
    })
    cached = cache.complete_dir("kernel-debs", key)
    if cached is not None:
        progress.note(f"kernel: {pkgbase_for(profile)} {resolution.kernel_version} (cached build)")
        return cached
    what = (f"building Linux {resolution.kernel_version} ({pkgbase_for(profile)}) with "
            "make bindeb-pkg (~20 min on 2 cores)")
    with cache.put_dir("kernel-debs", key) as tmp, progress.step(what):
        recipes, work = tmp / "recipe", tmp / "work"
        recipes.mkdir()
        for name, text in recipe.files.items():
            (recipes / name).write_text(text)
            os.chmod(recipes / name, 0o755 if name in recipe.executable else 0o644)
        run(["bash", recipes / "build-deb.sh", tree],
            env={"SYNAPSE_WORKDIR": str(work)}, timeout=BUILD_TIMEOUT)
        built = sorted(p for p in work.glob("*.deb")
                       if p.name.startswith(PACKAGES) and "-dbg_" not in p.name)
        if not any(p.name.startswith("linux-image-") for p in built):
            raise OperationError(f"make bindeb-pkg left no linux-image package in {work}")
        for deb in built:
            deb.rename(tmp / deb.name)
        (tmp / "config").write_text(resolution.config)
        (tmp / "resolution.json").write_text(resolution.to_json())
        (tmp / "resolution.txt").write_text(plain_report(resolution))
        shutil.rmtree(work)
        shutil.rmtree(recipes)
    return cache.path("kernel-debs", key, suffix="")
