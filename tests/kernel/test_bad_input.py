"""Bad input: one clear sentence, exit code 2, and no output directory left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import PROFILES
from tests.kernel.conftest import synapse, write_profile

AVX2 = PROFILES / "cpu-avx2.yaml"


def assert_user_error(result, *phrases: str) -> None:  # type: ignore[no-untyped-def]
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


def test_unknown_symbol_in_user_fragment(kernel_tree: Path, tmp_path: Path) -> None:
    fragment = tmp_path / "extra.config"
    fragment.write_text("CONFIG_NUMA=y\n# a comment\nCONFIG_SCHED_EEVDF=y\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "resolution.json").write_text("{}\n")  # a previous run's output
    r = synapse("kernel", "config", AVX2, "--source", kernel_tree, "--fragment", fragment,
                "-o", out)
    assert_user_error(r, f"{fragment}:3", "CONFIG_SCHED_EEVDF is not a symbol in Linux 6.1")
    # the previous output is untouched and no temporary directory is left next to it
    assert [p.name for p in out.iterdir()] == ["resolution.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra.config", "out"]


def test_renamed_symbol_in_user_fragment_is_accepted(kernel_tree: Path, tmp_path: Path) -> None:
    fragment = tmp_path / "extra.config"
    fragment.write_text("# CONFIG_SPECULATION_MITIGATIONS is not set\n")
    profile = write_profile(tmp_path / "p.yaml", "source: custom\nhz: 250")
    out = tmp_path / "out"
    r = synapse("kernel", "config", profile, "--source", kernel_tree, "--fragment", fragment,
                "-o", out, "--strict")
    assert r.returncode == 0, r.stderr
    assert "# CONFIG_CPU_MITIGATIONS is not set" in (out / ".config").read_text()


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
