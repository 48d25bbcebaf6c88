"""`synapse build-iso`: the archiso profile directory, checked with real tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROFILES, REPO, need_tool

RELENG_REQUIRED = ("profiledef.sh", "packages.x86_64", "pacman.conf", "airootfs",
                   "efiboot/loader/loader.conf", "syslinux/syslinux.cfg",
                   "airootfs/etc/mkinitcpio.conf.d/archiso.conf",
                   "airootfs/etc/mkinitcpio.d/linux.preset")


def build_iso(profile: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synapse_os.cli", "build-iso", str(profile),
                           "-o", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def iso_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iso")
    res = build_iso(PROFILES / "cpu-avx2.yaml", out)
    if shutil.which("mkarchiso") is None:  # this host: profile written, exit 2 + install hint
        assert res.returncode == 2, res.stderr
        assert "pacman -S archiso" in res.stderr and "mkarchiso -v" in res.stderr
    else:
        assert res.returncode == 0, res.stderr
    return out / "profile"


def test_releng_layout_is_complete(iso_profile: Path) -> None:
    for rel in RELENG_REQUIRED:
        assert (iso_profile / rel).exists(), rel
    tree = iso_profile / "airootfs/root/synapse"
    for rel in ("install/install.sh", "install/partition.sh", "install/packages.x86_64",
                "rootfs/etc/kernel/cmdline", "manifest.json"):
        assert (tree / rel).is_file(), rel


def test_profiledef_passes_shellcheck_and_names_existing_files(iso_profile: Path) -> None:
    need_tool("shellcheck", "apt-get install shellcheck")
    subprocess.run(["shellcheck", "-s", "bash", str(iso_profile / "profiledef.sh"),
                    str(iso_profile / "airootfs/usr/local/bin/synapse-autoinstall")], check=True)
    # mkarchiso declares file_permissions associative before sourcing the profile
    script = (f'declare -A file_permissions=(); source {iso_profile}/profiledef.sh; printf "%s\\n" "${{bootmodes[@]}}"; '
              'printf "P %s\\n" "${!file_permissions[@]}"; echo "L $iso_label"')
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert {"bios.syslinux", "uefi.systemd-boot"} <= set(out)
    label = next(line[2:] for line in out if line.startswith("L "))
    assert len(label) <= 32 and label.isupper()  # ISO 9660 volume label
    for line in out:
        if line.startswith("P "):
            assert (iso_profile / "airootfs" / line[2:].lstrip("/")).exists(), line


def test_install_runs_only_from_the_entry_that_says_it_erases(iso_profile: Path) -> None:
    entries = iso_profile / "efiboot/loader/entries"
    live = (entries / "01-synapse-live.conf").read_text()
    install = (entries / "02-synapse-install.conf").read_text()
    assert "synapse.autoinstall=1" not in live and "synapse.autoinstall=1" in install
    assert "ERASES /dev/disk/by-id/nvme-Samsung" in install
    unit = (iso_profile / "airootfs/etc/systemd/system/synapse-autoinstall.service").read_text()
    assert "ConditionKernelCommandLine=synapse.autoinstall=1" in unit
    wants = iso_profile / "airootfs/etc/systemd/system/multi-user.target.wants"
    assert (wants / "synapse-autoinstall.service").is_symlink()
    # the script itself refuses to do anything without the word (run for real, no disk touched)
    res = subprocess.run(["bash", "-c", f"sed 's|/proc/cmdline|/dev/null|' "
                          f"{iso_profile}/airootfs/usr/local/bin/synapse-autoinstall | bash"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "nothing to do" in res.stdout


def test_live_packages_and_target_packages(iso_profile: Path) -> None:
    live = set((iso_profile / "packages.x86_64").read_text().split())
    assert {"mkinitcpio-archiso", "syslinux", "arch-install-scripts", "gptfdisk",
            "xfsprogs"} <= live
    target = (iso_profile / "airootfs/root/synapse/install/packages.x86_64").read_text()
    assert "zram-generator" in target.split()


def test_rebuild_replaces_the_profile_but_never_a_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_iso(PROFILES / "cpu-avx2.yaml", out)
    (out / "profile" / "stale").write_text("x")
    build_iso(PROFILES / "cpu-avx2.yaml", out)
    assert not (out / "profile" / "stale").exists()
    foreign = tmp_path / "foreign"
    (foreign / "profile").mkdir(parents=True)
    (foreign / "profile" / "mine").write_text("keep")
    res = build_iso(PROFILES / "cpu-avx2.yaml", foreign)
    assert res.returncode == 2 and "synapse did not write (no .synapse-archiso)" in res.stderr
    assert (foreign / "profile" / "mine").read_text() == "keep"


def test_debian_profiles_are_refused(tmp_path: Path) -> None:
    res = build_iso(PROFILES / "cpu-avx2-debian.yaml", tmp_path / "o")
    assert res.returncode == 2 and "base: debian" in res.stderr
    assert not (tmp_path / "o").exists()


def test_the_tree_in_the_iso_passes_the_scripts_bundle_check(iso_profile: Path) -> None:
    tree = iso_profile / "airootfs/root/synapse"
    subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "bundle/SHA256SUMS"],
                   cwd=tree, check=True)
    listed = {line.split("  ", 1)[1] for line in
              (tree / "bundle/SHA256SUMS").read_text().splitlines()}
    assert {"install/install.sh", "install/partition.sh", "manifest.json"} <= listed
