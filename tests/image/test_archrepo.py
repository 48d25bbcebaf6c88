"""The Arch bundle's pacman repository, with Arch's own tools from Debian's packages:
packages built by makepkg, indexed by archrepo.write_repository (repo-add), installed by
pacman through the rendered install/pacman-bundle.conf filled in as install.sh fills it.
(Downloading the packages needs Arch's mirrors: that step runs on an Arch host only.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

from synapse_os.image import archrepo
from synapse_os.profile import load_profile
from synapse_os.render import render_profile
from tests.conftest import PROFILES, need_tool
from tests.makepkg import makepkg

PROBE = """\
pkgbase=synapse-probe
pkgname=(synapse-probe synapse-probe-lib)
pkgver=1.0
pkgrel=1
arch=(any)
license=(MIT)

package_synapse-probe() {
  depends=(synapse-probe-lib)
  install -Dm644 /dev/stdin "$pkgdir/usr/share/synapse-probe/hello" <<<"hello from the bundle"
}

package_synapse-probe-lib() {
  install -Dm644 /dev/stdin "$pkgdir/usr/share/synapse-probe/lib" <<<"a dependency"
}
"""


def pacman_install(tree: Path, root: Path, *packages: str) -> subprocess.CompletedProcess[str]:
    """pacman -Sy into `root` with the profile's rendered pacman-bundle.conf for `tree`."""
    need_tool("pacman", "apt-get install pacman-package-manager")
    template = render_profile(load_profile(PROFILES / "cpu-avx2.yaml")).files[
        "install/pacman-bundle.conf"].content.decode()
    conf = tree.parent / "pacman.conf"
    conf.write_text(template.replace("@TREE@", str(tree)))
    (root / "var/lib/pacman").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        ["pacman", "--root", root, "--dbpath", root / "var/lib/pacman", "--config", conf,
         "--cachedir", root / "var/cache/pacman/pkg", "--logfile", "/dev/null", "--noconfirm",
         "--noscriptlet", "-Sy", *packages],
        capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                             "LC_ALL": "C.UTF-8"})


def test_the_bundle_repository_installs_with_pacman(tmp_path: Path) -> None:
    need_tool("repo-add", "apt-get install pacman-package-manager")
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "PKGBUILD").write_text(PROBE)
    built = tmp_path / "built"
    built.mkdir()
    r = makepkg(recipe, "--nodeps", packages_to=built)
    assert r.returncode == 0, r.stdout + r.stderr
    tree = tmp_path / "tree"
    assert archrepo.write_repository(built, tree / "bundle/pkgs") == 2
    repo = tree / "bundle/pkgs"
    assert (repo / "synapse-bundle.db").is_file() and not any(
        p.is_symlink() for p in repo.iterdir())  # every file can be listed in SHA256SUMS
    r = pacman_install(tree, tmp_path / "root", "synapse-probe")
    assert r.returncode == 0, r.stdout + r.stderr
    share = tmp_path / "root/usr/share/synapse-probe"
    assert (share / "hello").read_text() == "hello from the bundle\n"
    assert (share / "lib").read_text() == "a dependency\n"  # resolved from the bundle too
    # the database pins each package's sha256: a changed package is refused
    lib = next(repo.glob("synapse-probe-lib-*.pkg.tar.*"))
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    lib.write_bytes(bytes(data))
    r = pacman_install(tree, tmp_path / "other-root", "synapse-probe")
    assert r.returncode != 0
    assert "invalid or corrupted package (checksum)" in r.stdout + r.stderr
    assert not (tmp_path / "other-root/usr/share/synapse-probe").exists()


def test_an_arch_bundle_needs_an_arch_host() -> None:
    from synapse_os.errors import UserError

    profile = load_profile(PROFILES / "cpu-avx2.yaml")
    if archrepo.is_arch_host():  # pragma: no cover - an Arch build host makes the bundle
        return
    try:
        archrepo.require_arch_host(profile)
    except UserError as exc:
        assert "on an Arch Linux build host" in str(exc)
    else:
        raise AssertionError("a non-Arch host was taken for an Arch build host")
