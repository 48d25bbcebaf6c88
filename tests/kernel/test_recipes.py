"""The linux-synapse PKGBUILD and the Debian bindeb-pkg script, checked with real tools."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from synapse_os.kernel.hw import capture, lsmod_text
from synapse_os.kernel.kbuild import kernel_version
from synapse_os.kernel.pkgbuild import pkgbuild_files, upstream_version
from synapse_os.models import sha256_file
from synapse_os.profile import load_profile
from tests.conftest import PROFILES, need_tool
from tests.kernel.conftest import synapse, write_profile
from tests.makepkg import makepkg


@pytest.fixture(scope="module")
def recipes(kernel_tree: Path, local_kernel_tarball: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cpu-avx2's kernel resolved against the 6.1 tree and turned into recipes; the profile
    pins the sha256 of the local tarball, as a user building a release Synapse does not
    pin would pin kernel.org's."""
    tmp = tmp_path_factory.mktemp("recipes")
    profile = tmp / "cpu-avx2-local.yaml"
    profile.write_text(f"extends: {PROFILES / 'cpu-avx2.yaml'}\nname: cpu-avx2\n"
                       f"kernel:\n  tarball_sha256: {sha256_file(local_kernel_tarball)}\n")
    resolved = tmp / "resolved"
    r = synapse("kernel", "config", profile, "--source", kernel_tree, "-o", resolved)
    assert r.returncode == 0, r.stderr
    out = tmp / "linux-synapse"
    r = synapse("kernel", "pkgbuild", profile, "--resolved", resolved, "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def bash_vars(pkgbuild: Path, *names: str) -> list[str]:
    script = f"source {pkgbuild}; " + "; ".join(f'echo "${{{n}[*]}}"' for n in names)
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          check=True, cwd=pkgbuild.parent).stdout.splitlines()


def test_pkgbuild_has_its_own_pkgbase_and_checksums_of_what_it_ships(recipes: Path) -> None:
    assert sorted(p.name for p in recipes.iterdir()) == [
        "PKGBUILD", "build-deb.sh", "config", "expected.config", "linux-synapse.install"]
    pkgbase, pkgname, pkgver, sums, sources = bash_vars(
        recipes / "PKGBUILD", "pkgbase", "pkgname", "pkgver", "sha256sums", "source")
    assert pkgbase == "linux-synapse"
    assert pkgname == "linux-synapse linux-synapse-headers"
    assert pkgver.startswith("6.1.")
    assert f"linux-{pkgver}.tar.xz" in sources
    files = sources.split()[2:]
    assert files == ["config", "expected.config", "linux-synapse.install"]
    expected = [hashlib.sha256((recipes / f).read_bytes()).hexdigest() for f in files]
    assert sums.split()[2:] == expected
    functions = subprocess.run(
        ["bash", "-c", f"source {recipes / 'PKGBUILD'}; declare -F"],
        capture_output=True, text=True, check=True).stdout
    for fn in ("prepare", "build", "package_linux-synapse", "package_linux-synapse-headers"):
        assert f"declare -f {fn}\n" in functions


def srcinfo(text: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep:
            fields.setdefault(key, []).append(value)
    return fields


def test_makepkg_reads_every_rendered_pkgbuild(recipes: Path, tmp_path: Path) -> None:
    """makepkg --printsrcinfo on each PKGBUILD Synapse writes: the kernel of every Arch
    profile with a custom kernel (rendered with the release Synapse pins), the resolved
    recipe, and llama.cpp's."""
    from synapse_os.bench import arch
    from synapse_os.kernel.versions import load_versions
    from synapse_os.render import render_profile

    default = next(s for s in load_versions().series
                   if s.series == load_versions().default_series)
    rendered = 0
    for path in sorted(PROFILES.glob("*.yaml")):
        profile = load_profile(path)
        if profile.base != "arch" or profile.kernel.source != "custom":
            continue
        recipe = tmp_path / path.stem
        recipe.mkdir()
        for rel, entry in render_profile(profile).files.items():
            if rel.startswith("kernel/"):
                (recipe / rel.removeprefix("kernel/")).write_bytes(entry.content)
        r = makepkg(recipe, "--printsrcinfo")
        assert r.returncode == 0, r.stderr
        info = srcinfo(r.stdout)
        assert info["pkgbase"] == ["linux-synapse"] and info["pkgver"] == [default.release]
        assert info["source"][0].endswith(f"/linux-{default.release}.tar.xz")
        assert info["sha256sums"][0] == default.tarball_sha256  # pinned, not SKIP
        assert info["pkgname"] == ["linux-synapse", "linux-synapse-headers"]
        rendered += 1
    assert rendered >= 1
    r = makepkg(recipes, "--printsrcinfo")
    assert r.returncode == 0, r.stderr
    assert srcinfo(r.stdout)["sha256sums"][0] != "SKIP"
    llama = tmp_path / "llama.cpp"
    llama.mkdir()
    sdist = tmp_path / "llama_cpp_python-0.3.16.tar.gz"
    sdist.write_bytes(b"stand-in sdist: only its sha256 is read")
    (llama / "PKGBUILD").write_text(arch.render_pkgbuild(sdist))
    r = makepkg(llama, "--printsrcinfo")
    assert r.returncode == 0, r.stderr
    info = srcinfo(r.stdout)
    assert info["pkgname"] == [arch.PKGNAME] and info["pkgver"] == ["0.3.16"]
    assert info["sha256sums"] == [sha256_file(sdist)]


def test_makepkg_prepares_the_kernel_from_the_pinned_tarball(recipes: Path,
                                                             local_kernel_tarball: Path) -> None:
    """makepkg --nobuild: the tarball's sha256 checked against the pin, the source
    extracted, prepare() run on the real tree (version check, the resolved .config,
    olddefconfig, every expected setting kept). The signature needs kernel.org's keys and
    file, which this machine cannot fetch: only that check is skipped."""
    r = makepkg(recipes, "--nobuild", "--nodeps", "--skippgpcheck", srcdest=local_kernel_tarball.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{local_kernel_tarball.name} ... Passed" in r.stdout + r.stderr
    version = upstream_version(local_kernel_tarball.name.removeprefix("linux-").removesuffix(".tar.xz"))
    assert f"Prepared linux-synapse version {version}-1-synapse" in r.stdout
    # a tarball that is not the pinned one is refused before anything is extracted
    tampered = recipes.parent / "tampered"
    shutil.copytree(recipes, tampered)
    text = (tampered / "PKGBUILD").read_text()
    pinned = sha256_file(local_kernel_tarball)
    (tampered / "PKGBUILD").write_text(text.replace(pinned, "0" * 64, 1))
    r = makepkg(tampered, "--nobuild", "--nodeps", "--skippgpcheck", srcdest=local_kernel_tarball.parent)
    assert r.returncode != 0
    assert f"{local_kernel_tarball.name} ... FAILED" in r.stdout + r.stderr
    assert "Prepared" not in r.stdout


def test_recipes_pass_shellcheck(recipes: Path) -> None:
    shellcheck = need_tool("shellcheck", "apt-get install shellcheck")
    # PKGBUILD variables are read by makepkg (SC2034) and srcdir/pkgdir come from it (SC2154)
    for name, extra in (("PKGBUILD", ["-e", "SC2034,SC2154"]),
                        ("linux-synapse.install", ["-e", "SC2034"]),
                        ("build-deb.sh", [])):
        r = subprocess.run([shellcheck, "-s", "bash", *extra, recipes / name],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{name}:\n{r.stdout}"


def test_expected_config_lists_resolved_values(recipes: Path) -> None:
    expected = (recipes / "expected.config").read_text().splitlines()
    assert "CONFIG_HZ_300=y" in expected
    assert "# CONFIG_CPU_MITIGATIONS is not set" in expected
    assert "CONFIG_PREEMPT_VOLUNTARY=y" in expected


def test_deb_script_configures_the_real_tree_and_checks_every_setting(
        recipes: Path, kernel_tree: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SYNAPSE_WORKDIR": str(tmp_path / "work"), "SYNAPSE_STOP_AFTER": "config"}
    r = subprocess.run([recipes / "build-deb.sh", kernel_tree], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    settings = [line for line in (recipes / "expected.config").read_text().splitlines()
                if line.startswith(("CONFIG_", "# CONFIG_"))]
    assert len(settings) >= 39  # the profile's concerns and what its machine needs
    assert f"config checked: {len(settings)} settings kept" in r.stdout
    assert not (kernel_tree / ".config").exists()
    # a setting olddefconfig cannot keep makes the script refuse to build
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("build-deb.sh", "config"):
        (tampered / name).write_bytes((recipes / name).read_bytes())
    (tampered / "build-deb.sh").chmod(0o755)
    (tampered / "expected.config").write_text("CONFIG_NUMA=y\n")
    r = subprocess.run([tampered / "build-deb.sh", kernel_tree], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 1
    assert "changed: want CONFIG_NUMA=y" in r.stderr


def test_deb_script_refuses_another_kernel_tree(recipes: Path, kernel_tree_612: Path,
                                               tmp_path: Path) -> None:
    env = {**os.environ, "SYNAPSE_WORKDIR": str(tmp_path / "work"), "SYNAPSE_STOP_AFTER": "config"}
    r = subprocess.run([recipes / "build-deb.sh", kernel_tree_612], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    other = kernel_version(kernel_tree_612)  # whatever 6.12 point release Debian ships now
    assert other.startswith("6.12.")
    assert f"is Linux {other}, but this config was resolved for Linux 6.1." in r.stderr
    assert not (tmp_path / "work" / "build" / ".config").exists()


def test_pkgbuild_refuses_a_resolution_of_another_profile(recipes: Path,
                                                          tmp_path: Path) -> None:
    resolved = recipes.parent / "resolved"
    other = tmp_path / "other.yaml"
    text = (PROFILES / "cpu-avx2.yaml").read_text()
    for old, new in (("hz: 300", "hz: 1000"), ("root_fs: xfs", "root_fs: ext4")):
        assert old in text
        changed = tmp_path / f"{new.split(':')[0]}.yaml"
        changed.write_text(text.replace(old, new))
        r = synapse("kernel", "pkgbuild", changed, "--resolved", resolved, "-o",
                    tmp_path / "out")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "was resolved for another profile" in r.stderr, r.stderr
        assert not (tmp_path / "out").exists()
    # the resolution names its tree's version; a profile pinning another one is refused
    from synapse_os.errors import UserError
    from synapse_os.kernel.pkgbuild import check_resolution
    from synapse_os.kernel.resolve import load_resolution

    resolution = load_resolution(resolved / "resolution.json")
    other.write_text(text.replace("package: linux-synapse", "package: linux-synapse\n  version: '6.12'"))
    with pytest.raises(UserError, match=r"resolved against Linux 6\.1\.\d+, but kernel.version pins 6\.12"):
        check_resolution(load_profile(other), resolution, resolution.profile_hash, "x")


def test_renderer_recipes_pin_the_release_and_its_tarball(tmp_path: Path) -> None:
    """Every custom kernel renders its recipes: the release the profile pins (a line means
    the release Synapse pins for it; none, the default line's) with the tarball's sha256."""
    from synapse_os.errors import UserError
    from synapse_os.kernel.versions import load_versions

    table = {s.series: s for s in load_versions().series}
    default = table[load_versions().default_series]

    def pkgbuild(kernel_yaml: str) -> str:
        path = write_profile(tmp_path / "p.yaml", "source: custom\nhz: 300\n" + kernel_yaml)
        return pkgbuild_files(load_profile(path))["PKGBUILD"][0]

    shipped = pkgbuild_files(load_profile(PROFILES / "cpu-avx2.yaml"))
    assert f"pkgver={default.release}\n" in shipped["PKGBUILD"][0]
    assert f"sha256sums=(\n  {default.tarball_sha256}\n" in shipped["PKGBUILD"][0]
    for line, series in table.items():
        text = pkgbuild(f"version: '{line}'")
        assert f"pkgver={series.release}\n" in text
        assert f"sha256sums=(\n  {series.tarball_sha256}\n" in text
    with pytest.raises(UserError, match=r"no sha256 is known for linux-6\.12\.10\.tar\.xz; "
                                        r"set kernel\.tarball_sha256"):
        pkgbuild("version: 6.12.10")
    assert f"sha256sums=(\n  {'ab' * 32}\n" in pkgbuild(f"version: 6.12.10\ntarball_sha256: {'ab' * 32}")
    with pytest.raises(UserError, match="is not the sha256 of linux-6.12.64.tar.xz"):
        pkgbuild(f"version: 6.12.64\ntarball_sha256: {'ab' * 32}")
    files = pkgbuild_files(load_profile(write_profile(tmp_path / "q.yaml",
                                                      "source: custom\nversion: '6.12'\nhz: 300")))
    assert files["build-deb.sh"][1] == 0o755 and files["PKGBUILD"][1] == 0o644
    assert "CONFIG_HZ_300=y" in files["synapse.config"][0]
    assert "merge_config.sh" in files["PKGBUILD"][0]
    assert upstream_version("6.12.0") == "6.12" and upstream_version("6.1.192") == "6.1.192"
    assert upstream_version("6.13") == "6.13"
    shellcheck = need_tool("shellcheck", "apt-get install shellcheck")
    for name, extra in (("PKGBUILD", ["-e", "SC2034,SC2154"]), ("build-deb.sh", [])):
        (tmp_path / name).write_text(files[name][0])
        r = subprocess.run([shellcheck, "-s", "bash", *extra, tmp_path / name],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{name}:\n{r.stdout}"


def test_pkgbuild_refuses_the_stock_package_name(tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "p.yaml", "source: custom\npackage: linux\nversion: '6.12'")
    r = synapse("kernel", "pkgbuild", profile, "--resolved", tmp_path, "-o", tmp_path / "o")
    assert r.returncode == 2 and "no resolution.json" in r.stderr
    from synapse_os.errors import UserError

    with pytest.raises(UserError, match="alongside the stock one"):
        pkgbuild_files(load_profile(profile))


def test_hw_capture_reads_modules_and_pci_drivers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "proc" / "sys" / "kernel").mkdir(parents=True)
    (root / "proc" / "modules").write_text(
        "e1000e 331776 0 - Live 0x0000000000000000\nzram 36864 2 - Live 0x0000000000000000\n")
    (root / "proc" / "sys" / "kernel" / "osrelease").write_text("6.12.10-arch1-1\n")
    dev = root / "sys" / "bus" / "pci" / "devices" / "0000:00:1f.6"
    dev.mkdir(parents=True)
    for name, value in (("vendor", "0x8086"), ("device", "0x15bc"), ("class", "0x020000")):
        (dev / name).write_text(value + "\n")
    driver = root / "sys" / "bus" / "pci" / "drivers" / "nvme"
    (driver.parent.parent / "module" / "nvme").mkdir(parents=True)
    driver.mkdir(parents=True)
    os.symlink(driver, dev / "driver")
    os.symlink(driver.parent.parent / "module" / "nvme", driver / "module")
    data = capture(root)
    assert data["modules"] == ["e1000e", "zram"]
    assert data["kernel"] == "6.12.10-arch1-1"
    assert data["pci"][0]["vendor"] == "0x8086" and data["pci"][0]["module"] == "nvme"
    assert [line.split()[0] for line in lsmod_text(data).splitlines()[1:]] == [
        "e1000e", "nvme", "zram"]
    out = tmp_path / "hw.json"
    r = synapse("hw", "capture", "-o", out, "--root", root)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == data


def test_hw_capture_on_this_machine(tmp_path: Path) -> None:
    out = tmp_path / "hw.json"
    r = synapse("hw", "capture", "-o", out)
    if Path("/proc/modules").exists():
        assert r.returncode == 0, r.stderr
        assert json.loads(out.read_text())["modules"]
    else:  # containers without /proc/modules: a clear failure, no file
        assert r.returncode == 1 and "/proc/modules" in r.stderr
        assert not out.exists()
