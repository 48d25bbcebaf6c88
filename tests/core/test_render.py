"""Rendering: deterministic bytes, golden files, atomic output, manifest integrity."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synapse_os.errors import UserError
from synapse_os.profile import load_profile
from synapse_os.render import MANIFEST, render_profile, render_to
from tests.conftest import PROFILES, REPO

GOLDEN = REPO / "tests" / "golden"
SHIPPED = sorted(PROFILES.glob("*.yaml"))


def tree_bytes(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            out[rel] = (b"->" + os.readlink(path).encode()) if path.is_symlink() else path.read_bytes()
    return out


@pytest.mark.parametrize("profile", SHIPPED, ids=lambda p: p.stem)
def test_render_twice_in_separate_processes_is_byte_identical(profile: Path, tmp_path: Path) -> None:
    for name, seed in (("a", "0"), ("b", "12345")):
        env = dict(os.environ, PYTHONHASHSEED=seed, TZ="Pacific/Auckland" if seed != "0" else "UTC")
        subprocess.run([sys.executable, "-m", "synapse_os.cli", "render", str(profile),
                        "-o", str(tmp_path / name)], check=True, env=env, cwd=tmp_path)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


@pytest.mark.parametrize("profile", SHIPPED, ids=lambda p: p.stem)
def test_golden_files(profile: Path, tmp_path: Path) -> None:
    """Rendered trees equal the reviewed golden copies (SYNAPSE_UPDATE_GOLDEN=1 rewrites them)."""
    render_to(load_profile(profile), tmp_path / "out")
    got = tree_bytes(tmp_path / "out")
    got.pop(MANIFEST)  # carries the version; its consistency is tested below
    golden = GOLDEN / f"{profile.stem}.json"
    if os.environ.get("SYNAPSE_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps({k: v.decode() for k, v in sorted(got.items())}, indent=1) + "\n")
    expected = json.loads(golden.read_text())
    assert sorted(got) == sorted(expected)
    for path, content in got.items():
        assert content.decode() == expected[path], f"{path} differs from the golden copy"


@pytest.mark.parametrize("profile", SHIPPED, ids=lambda p: p.stem)
def test_manifest_matches_every_file(profile: Path, tmp_path: Path) -> None:
    loaded = load_profile(profile)
    render_to(loaded, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["profile_hash"] == loaded.hash()
    files = tree_bytes(tmp_path / "out")
    files.pop(MANIFEST)
    assert sorted(manifest["files"]) == sorted(files)
    for rel, entry in manifest["files"].items():
        path = tmp_path / "out" / rel
        data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        if not path.is_symlink():
            assert f"{path.stat().st_mode & 0o7777:04o}" == entry["mode"], rel


def test_tuned_profile_renders_every_declared_setting() -> None:
    tree = render_profile(load_profile(PROFILES / "cpu-avx2.yaml"))
    sysctl = tree.files["rootfs/etc/sysctl.d/90-synapse.conf"].content.decode()
    assert "vm.swappiness = 180" in sysctl and "vm.page-cluster = 0" in sysctl
    cmdline = tree.files["rootfs/etc/kernel/cmdline"].content.decode().split()
    for word in ("mitigations=off", "transparent_hugepage=madvise", "nohz_full=2-15",
                 "zswap.enabled=0", "nowatchdog", "audit=0", "root=PARTLABEL=synapse-root"):
        assert word in cmdline
    assert tree.files["rootfs/etc/systemd/system/bluetooth.service"].link == "/dev/null"
    packages = tree.files["install/packages.x86_64"].content.decode().split()
    assert "intel-ucode" in packages and "amd-ucode" not in packages
    assert "zram-generator" in packages and "xfsprogs" in packages
    assert "rootfs/boot/loader/entries/synapse-fallback.conf" in tree.files


def test_microcode_follows_cpu_vendor() -> None:
    tree = render_profile(load_profile(PROFILES / "nvidia-gpu.yaml"))
    packages = tree.files["install/packages.x86_64"].content.decode().split()
    assert "amd-ucode" in packages and "intel-ucode" not in packages
    entry = tree.files["rootfs/boot/loader/entries/synapse.conf"].content.decode()
    assert "initrd  /amd-ucode.img" in entry


def test_output_replaces_previous_render_but_refuses_foreign_dirs(tmp_path: Path) -> None:
    profile = load_profile(PROFILES / "stock-baseline.yaml")
    out = tmp_path / "out"
    render_to(profile, out)
    (out / "stale-file").write_text("old")
    render_to(profile, out)
    assert not (out / "stale-file").exists()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="synapse did not write"):
        render_to(profile, foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "out"]  # no temp dirs left


def test_memory_high_auto_needs_ram(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("synapse: 1\nname: t\nruntime:\n  models:\n    main: {path: /m.gguf}\n"
                    "  memory_high: auto\n")
    res = subprocess.run([sys.executable, "-m", "synapse_os.cli", "render", str(path), "-o",
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert res.returncode == 2
    assert "set hardware.ram" in res.stderr
    assert not (tmp_path / "out").exists()


def test_custom_arch_kernel_installs_its_build_tools_and_keeps_the_stock_fallback() -> None:
    files = render_profile(load_profile(PROFILES / "cpu-avx2.yaml")).files
    packages = files["install/packages.x86_64"].content.decode().split("\n")
    assert {"base-devel", "bc", "pahole", "linux"} <= set(packages)
    assert "linux-synapse" not in packages  # built by makepkg from kernel/, not downloaded
    fallback = files["rootfs/boot/loader/entries/synapse-fallback.conf"].content.decode()
    assert "linux   /vmlinuz-linux\n" in fallback


@pytest.mark.parametrize("base,path", [("arch", "rootfs/etc/default/grub"),
                                       ("debian", "rootfs/etc/default/grub.d/90-synapse.cfg")])
def test_grub_command_line_lands_where_grub_mkconfig_reads_it(base: str, path: str,
                                                              tmp_path: Path) -> None:
    profile = tmp_path / "grub.yaml"
    profile.write_text(f"synapse: 1\nname: g\nbase: {base}\nboot:\n  loader: grub\n"
                       "  cmdline: [nowatchdog, nmi_watchdog=0]\nmemory: {thp: madvise}\n")
    files = render_profile(load_profile(profile)).files
    assert path in files
    (tmp_path / "grub").write_bytes(files[path].content)
    res = subprocess.run(["bash", "-c", 'source "$1"; printf "%s" "$GRUB_CMDLINE_LINUX_DEFAULT"',
                          "bash", str(tmp_path / "grub")], capture_output=True, text=True)
    assert res.stdout == "nowatchdog nmi_watchdog=0 transparent_hugepage=madvise"
