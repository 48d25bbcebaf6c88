"""The linux-synapse PKGBUILD and the Debian bindeb-pkg script, checked with real tools."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from synapse_os.kernel.hw import capture, lsmod_text
from synapse_os.kernel.pkgbuild import pkgbuild_files, upstream_version
from synapse_os.profile import load_profile
from tests.conftest import PROFILES, need_tool
from tests.kernel.conftest import synapse, write_profile


@pytest.fixture(scope="module")
def recipes(kernel_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("recipes")
    resolved = tmp / "resolved"
    r = synapse("kernel", "config", PROFILES / "cpu-avx2.yaml", "--source", kernel_tree,
                "-o", resolved)
    assert r.returncode == 0, r.stderr
    out = tmp / "linux-synapse"
    r = synapse("kernel", "pkgbuild", PROFILES / "cpu-avx2.yaml", "--resolved", resolved,
                "-o", out)
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
    assert "is Linux 6.12.117, but this config was resolved for Linux 6.1." in r.stderr
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


def test_renderer_recipes_need_a_pinned_version(tmp_path: Path) -> None:
    assert pkgbuild_files(load_profile(PROFILES / "cpu-avx2.yaml")) == {}
    profile = load_profile(write_profile(tmp_path / "p.yaml",
                                         "source: custom\nversion: '6.12'\nhz: 300"))
    files = pkgbuild_files(profile)
    assert files["build-deb.sh"][1] == 0o755 and files["PKGBUILD"][1] == 0o644
    assert "CONFIG_HZ_300=y" in files["synapse.config"][0]
    assert "pkgver=6.12\n" in files["PKGBUILD"][0]
    assert "merge_config.sh" in files["PKGBUILD"][0]
    assert upstream_version("6.12.0") == "6.12" and upstream_version("6.1.192") == "6.1.192"
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
