"""Arch's own makepkg, run here the only way it runs: as an unprivileged user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import need_tool


def makepkg(recipe: Path, *args: str, srcdest: Path | None = None,
            packages_to: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Arch's own makepkg (Debian's package) on a copy of `recipe`, as an unprivileged user
    (makepkg refuses root), with sources taken from `srcdest`, no network, and the packages
    it builds copied to `packages_to`."""
    need_tool("makepkg", "apt-get install makepkg pacman-package-manager libarchive-tools")
    need_tool("pacman", "apt-get install pacman-package-manager")
    need_tool("bsdtar", "apt-get install libarchive-tools")
    work = Path(tempfile.mkdtemp(prefix="makepkg-"))
    shutil.copytree(recipe, work / "recipe")
    (work / "sources").mkdir()  # makepkg wants its SRCDEST writable: link the files in
    for source in srcdest.iterdir() if srcdest else ():
        os.link(source, work / "sources" / source.name)
    subprocess.run(["chown", "-R", "nobody:nogroup", work], check=True)
    work.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "LC_ALL": "C.UTF-8",
           "SRCDEST": str(work / "sources"), "BUILDDIR": str(work / "build"),
           "PKGEXT": ".pkg.tar.zst"}  # Arch's (Debian's makepkg.conf says .pkg.tar.gz)
    try:
        result = subprocess.run(["unshare", "--net", "runuser", "-u", "nobody", "--",
                                 "makepkg", *args], cwd=work / "recipe", env=env,
                                capture_output=True, text=True)
        for built in (work / "recipe").glob("*.pkg.tar.*") if packages_to else ():
            shutil.copy2(built, packages_to / built.name)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)

