"""Bad input: one clear sentence, exit code 2, and no output directory left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synapse_os.kernel.kbuild import KCONFIG_SOURCES
from tests.conftest import PROFILES
from tests.kernel.conftest import REPO, synapse, write_profile

AVX2 = PROFILES / "cpu-avx2.yaml"


def assert_user_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    # progress lines may precede it on stderr; the error is one line, the last one
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], result.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    assert "Traceback" not in result.stderr


def test_missing_source_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = synapse("kernel", "config", AVX2, "--source", tmp_path / "nope", "-o", out)
    assert_user_error(r, "does not exist", "Linux source tree")
    assert not out.exists()


def test_non_kernel_source_dir(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Makefile").write_text("all:\n")
    out = tmp_path / "out"
    r = synapse("kernel", "config", AVX2, "--source", tmp_path / "src", "-o", out)
    assert_user_error(r, "is not a Linux kernel source tree", "no Kconfig")
    assert not out.exists()


@pytest.mark.parametrize("missing", ["flex", "bison", "gcc"])
def test_missing_build_tool_names_it_and_how_to_install(
        missing: str, kernel_tree: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "gcc", "flex", "bison", "sh", "perl"):
        if tool != missing and (path := shutil.which(tool)):
            os.symlink(path, bin_dir / tool)
    out = tmp_path / "out"
    r = synapse("kernel", "config", AVX2, "--source", kernel_tree, "-o", out,
                env={**os.environ, "PATH": str(bin_dir)})
    assert_user_error(r, f"'{missing}' is needed", f"apt-get install {missing}")
    assert not out.exists()


def test_unreadable_base_config(kernel_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = synapse("kernel", "config", AVX2, "--source", kernel_tree, "--base",
                tmp_path / "missing.config", "-o", out)
    assert_user_error(r, "base config", "does not exist")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\xff\xfe not a config")
    r = synapse("kernel", "config", AVX2, "--source", kernel_tree, "--base", garbage, "-o", out)
    assert_user_error(r, "base config", "not a text .config")
    assert not out.exists()


def test_every_bad_fragment_line_in_one_message(kernel_tree: Path, tmp_path: Path) -> None:
    fragment = tmp_path / "extra.config"
    fragment.write_text("CONFIG_NUMA=y\n# a comment\nCONFIG_SCHED_EEVDF=y\n"
                        "CONFIG_MITIGATION_CALL_DEPTH_TRACKING=y\nCONFIG_HZ_300=\n"
                        "CONFIG_NR_CPUS=lots\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "resolution.json").write_text("{}\n")  # a previous run's output
    r = synapse("kernel", "config", AVX2, "--source", kernel_tree, "--fragment", fragment,
                "-o", out)
    assert_user_error(
        r, "4 fragment line(s) cannot be applied to Linux 6.1",
        f"{fragment}:3: CONFIG_SCHED_EEVDF is not a symbol in Linux 6.1", "EEVDF replaced CFS",
        f"{fragment}:4: CONFIG_MITIGATION_CALL_DEPTH_TRACKING is not a symbol",
        "was renamed CONFIG_MITIGATION_CALL_DEPTH_TRACKING in 6.9",
        f"{fragment}:5: CONFIG_HZ_300 is a bool; accepted values are y and n, not ''",
        f"{fragment}:6: CONFIG_NR_CPUS is an integer")
    assert f"{fragment}:1" not in r.stderr
    # the previous output is untouched and no temporary directory is left next to it
    assert [p.name for p in out.iterdir()] == ["resolution.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.config", "out"]


def test_renamed_symbol_in_user_fragment_merges_with_the_profile(kernel_tree: Path,
                                                                 tmp_path: Path) -> None:
    """The profile asks CPU_MITIGATIONS=y, the fragment the old name =n: one symbol, the
    fragment (later) wins, the profile's request is reported overridden, not unexplained."""
    fragment = tmp_path / "extra.config"
    fragment.write_text("# CONFIG_SPECULATION_MITIGATIONS is not set\n")
    profile = write_profile(tmp_path / "p.yaml", "source: custom\nhz: 250\nmitigations: true")
    out = tmp_path / "out"
    r = synapse("kernel", "config", profile, "--source", kernel_tree, "--fragment", fragment,
                "-o", out, "--strict")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# CONFIG_CPU_MITIGATIONS is not set" in (out / ".config").read_text()
    report = json.loads((out / "resolution.json").read_text())
    status = {s["symbol"]: s for s in report["symbols"]}
    assert status["CPU_MITIGATIONS"]["status"] == "overridden"
    assert f"{fragment}:1" in status["CPU_MITIGATIONS"]["reason"]
    assert status["SPECULATION_MITIGATIONS"]["status"] == "applied"
    assert report["summary"]["unexplained"] == 0


def test_unbootable_config_is_an_error_unless_allowed(kernel_tree: Path,
                                                      tmp_path: Path) -> None:
    """kernel.extra turns off what the profile's machine needs: the requirement check
    names each missing symbol with its reason and its explanation; exit 1, output kept."""
    profile = write_profile(
        tmp_path / "p.yaml",
        # (a tarball pin for the tree's release, which the version table does not pin)
        f"source: custom\ntarball_sha256: '{'5' * 64}'\nextra:\n  CONFIG_IKCONFIG: n\n"
        "  CONFIG_CGROUPS: n",
        extra_top="runtime:\n  memory_high: 4G\n  models:\n    main:\n"
                  "      path: /var/lib/synapse/models/m.gguf\n")
    out = tmp_path / "out"
    r = synapse("kernel", "config", profile, "--source", kernel_tree, "-o", out)
    assert r.returncode == 1, r.stdout + r.stderr
    error = r.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the config cannot boot the profile's machine")
    assert "CONFIG_IKCONFIG=y is needed by synapse verify" in error
    assert "kernel.extra asks for n" in error
    # MEMCG was requested (runtime.memory_high) and explained like any other symbol
    assert "CONFIG_MEMCG=y is needed by runtime.memory_high" in error
    assert "depends on CGROUPS [=n]" in error
    report = json.loads((out / "resolution.json").read_text())
    assert report["summary"]["unbootable"] == len(report["unbootable"]) >= 3
    assert "CANNOT BOOT" in (out / "resolution.txt").read_text()
    # the recipes refuse such a resolution too, unless told
    recipes = tmp_path / "recipes"
    r = synapse("kernel", "pkgbuild", profile, "--resolved", out, "-o", recipes,
                "--allow-unapplied")
    assert_user_error(r, "cannot boot the profile's machine", "CONFIG_IKCONFIG=y is needed",
                      "--allow-unbootable")
    r = synapse("kernel", "pkgbuild", profile, "--resolved", out, "-o", recipes,
                "--allow-unapplied", "--allow-unbootable")
    assert r.returncode == 0, r.stderr
    assert "# CONFIG_IKCONFIG is not set" in (recipes / "expected.config").read_text()


def test_stock_profile_and_bad_fragment_line(tmp_path: Path, kernel_tree: Path) -> None:
    out = tmp_path / "out"
    r = synapse("kernel", "config", PROFILES / "stock-baseline.yaml", "--source", kernel_tree,
                "-o", out)
    assert_user_error(r, "kernel.source is 'stock'")
    fragment = tmp_path / "bad.config"
    fragment.write_text("CONFIG_NUMA=y\nNUMA y\n")
    r = synapse("kernel", "config", AVX2, "--source", kernel_tree, "--fragment", fragment,
                "-o", out)
    assert_user_error(r, f"{fragment}:2", "is not a kernel config line")
    assert not out.exists()


def test_output_path_that_is_a_file(tmp_path: Path, kernel_tree: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    r = synapse("kernel", "config", AVX2, "--source", kernel_tree, "-o", target)
    assert_user_error(r, "is not a directory")
    assert target.read_text() == "x"


def test_a_directory_synapse_did_not_write_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    r = synapse("kernel", "pkgbuild", AVX2, "--resolved", tmp_path, "-o", out)
    assert_user_error(r, "synapse did not write (no PKGBUILD)")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def fake_tree(root: Path, *, kconfig_files: tuple[str, ...] = KCONFIG_SOURCES,
              arch: bool = True) -> Path:
    """The top of a source tree: enough files to look like one, nothing to build."""
    (root / "scripts" / "kconfig").mkdir(parents=True)
    (root / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 0\n")
    (root / "Kconfig").write_text("")
    for name in ("conf.c", *kconfig_files):
        (root / "scripts" / "kconfig" / name).write_text("")
    if arch:
        (root / "arch" / "x86").mkdir(parents=True)
    return root


def test_tree_without_arch_or_with_partial_kconfig(tmp_path: Path) -> None:
    out = tmp_path / "out"
    no_arch = fake_tree(tmp_path / "no-arch", arch=False)
    r = synapse("kernel", "config", AVX2, "--source", no_arch, "-o", out)
    assert_user_error(r, "has no arch/ directory", "unpack the whole kernel source")
    partial = fake_tree(tmp_path / "partial", kconfig_files=("conf.c", "Makefile"))
    r = synapse("kernel", "config", AVX2, "--source", partial, "-o", out)
    assert_user_error(r, "incomplete scripts/kconfig", "no confdata.c")
    no_x86 = fake_tree(tmp_path / "no-x86")
    r = synapse("kernel", "config", AVX2, "--source", no_x86, "-o", out)
    assert_user_error(r, "--arch x86 is not an architecture", "none (arch/ has no Kconfig")
    assert not out.exists()


def test_base_config_that_is_not_a_whole_config(kernel_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    junk = tmp_path / "junk.config"
    junk.write_text("hello there\nCONFIG_NUMA=y\nmore junk\n")
    r = synapse("kernel", "config", AVX2, "--source", kernel_tree, "--base", junk, "-o", out)
    assert_user_error(r, f"base config {junk}:1", "is not a .config line")
    few = tmp_path / "few.config"
    few.write_text("# my options\nCONFIG_NUMA=y\n# CONFIG_SMP is not set\n")
    r = synapse("kernel", "config", AVX2, "--source", kernel_tree, "--base", few, "-o", out)
    assert_user_error(r, "sets only 2 CONFIG_ options", "--fragment")
    assert not out.exists()


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if text in cmdline or text in cwd:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 128 + signal.SIGTERM),
                                      (signal.SIGINT, 1)])
def test_interrupted_resolution_leaves_no_tree_and_no_make(
        sig: signal.Signals, code: int, kernel_tree: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-m", "synapse_os.cli", "kernel", "config", AVX2, "--source",
         kernel_tree, "-o", out], cwd=REPO, env={**os.environ, "TMPDIR": str(scratch)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p for p in processes_mentioning(str(scratch)) if " make " in f" {p} "
                  or "make -s" in p):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.2)
    child.send_signal(sig)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == code, stderr
    assert "Traceback" not in stderr
    time.sleep(0.5)
    assert processes_mentioning(str(scratch)) == []
    assert list(scratch.iterdir()) == [] and not out.exists()
