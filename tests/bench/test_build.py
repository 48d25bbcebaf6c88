"""Finding and building llama-bench; the rendered Arch PKGBUILD."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from synapse_os.bench import arch, build
from tests.bench.conftest import error_text, invoke
from tests.conftest import need_tool
from tests.makepkg import makepkg


def _fake_tree(root: Path) -> Path:
    (root / "tools" / "llama-bench").mkdir(parents=True)
    (root / "CMakeLists.txt").write_text("project(x)\n")
    (root / "tools" / "llama-bench" / "llama-bench.cpp").write_text("int main() {}\n")
    return root


def test_tree_id_follows_the_sources(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path / "llama.cpp")
    first = build.tree_id(tree)
    assert build.tree_id(tree) == first
    (tree / "README.md").write_text("docs do not change the binary\n")
    assert build.tree_id(tree) == first
    (tree / "tools" / "llama-bench" / "llama-bench.cpp").write_text("int main() { return 1; }\n")
    assert build.tree_id(tree) != first


def test_an_sdist_layout_is_recognised(tmp_path: Path) -> None:
    _fake_tree(tmp_path / "llama_cpp_python-9.9" / "vendor" / "llama.cpp")
    source = build.resolve_source(tmp_path / "llama_cpp_python-9.9")
    assert source.tree == tmp_path / "llama_cpp_python-9.9" / "vendor" / "llama.cpp"
    assert source.sdist is None


def test_the_build_key_covers_flags_and_source(tmp_path: Path) -> None:
    source = build.resolve_source(_fake_tree(tmp_path / "t"))
    key = build.build_key(source)
    assert key == build.build_key(source)
    assert key != build.build_key(source, flags=(*build.CMAKE_FLAGS, "-DGGML_AVX512=ON"))
    assert "-DGGML_NATIVE=ON" in build.CMAKE_FLAGS
    assert key != build.build_key(source, build.PORTABLE_FLAGS)  # kept apart in the cache


def test_a_directory_without_llama_cpp_is_refused(tmp_path: Path) -> None:
    result = invoke(["bench", "llama-bench", "--build", "--source", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds no llama.cpp tree" in error_text(result)


def test_a_corrupt_sdist_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNAPSE_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "llama_cpp_python-0.0.1.tar.gz"
    bad.write_bytes(b"not a tarball")
    result = invoke(["bench", "llama-bench", "--build", "--source", str(bad)])
    assert result.exit_code == 2
    assert "not a readable source archive" in error_text(result)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing half-written


def test_a_missing_explicit_binary_is_refused(tmp_path: Path) -> None:
    result = invoke(["bench", "llama-bench", "--llama-bench", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in error_text(result)


def test_no_llama_bench_anywhere_says_how_to_build(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNAPSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    result = invoke(["bench", "llama-bench"])
    assert result.exit_code == 2
    assert "synapse bench llama-bench --build" in error_text(result)


def test_the_built_llama_bench_is_portable_and_cached(llama_bench: Path) -> None:
    info = build.locate(llama_bench).build_info
    assert info["binary_sha256"] == hashlib.sha256(llama_bench.read_bytes()).hexdigest()
    assert info["origin"] == "synapse-cmake" and info["flavour"] == "portable"
    assert "-DGGML_NATIVE=OFF" in info["cmake_flags"] and "-DGGML_AVX512=OFF" in info["cmake_flags"]
    # no OpenMP: it runs on a stock system without libgomp; and no AVX-512 instruction in it
    libs = subprocess.run(["ldd", llama_bench], capture_output=True, text=True).stdout
    assert "libgomp" not in libs and "libstdc++" in libs
    assert build.locate(None, "portable").path == llama_bench
    # a second --build --portable reuses the cache instead of rebuilding
    again = invoke(["bench", "llama-bench", "--build", "--portable", "--json"])
    assert again.exit_code == 0, error_text(again)
    assert str(llama_bench) in again.output

    help_text = subprocess.run([llama_bench, "--help"], capture_output=True, text=True)
    assert "-o, --output" in help_text.stdout + help_text.stderr


@pytest.fixture(scope="module")
def sdist() -> Path:
    return build.fetch_sdist()


def test_pkgbuild_pins_the_sdist_and_builds_natively(sdist: Path, tmp_path: Path) -> None:
    text = arch.render_pkgbuild(sdist)
    version = arch.sdist_version(sdist)
    assert f"pkgver={version}\n" in text
    assert f"sha256sums=({hashlib.sha256(sdist.read_bytes()).hexdigest()})" in text
    assert "-DGGML_NATIVE=ON" in text
    assert "--target llama-bench" in text
    pkgbuild = tmp_path / "PKGBUILD"
    pkgbuild.write_text(text)
    syntax = subprocess.run(["bash", "-n", pkgbuild], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    # the variables a PKGBUILD sets are read by makepkg, not by the script itself
    need_tool("shellcheck", "apt-get install shellcheck")
    lint = subprocess.run(["shellcheck", "--shell=bash", "--exclude=SC2034,SC2154", pkgbuild],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    # the build() function, run by bash, names exactly the flags the CMake path uses
    flags = subprocess.run(
        ["bash", "-c", f'source {pkgbuild}; cmake() {{ printf "%s\\n" "$@"; }}; '
         'nproc() { echo 1; }; build'], capture_output=True, text=True, cwd=tmp_path)
    assert flags.returncode == 0, flags.stderr
    for flag in build.CMAKE_FLAGS:
        assert flag in flags.stdout.splitlines()


def test_makepkg_is_not_run_as_root(sdist: Path) -> None:
    result = invoke(["bench", "llama-bench", "--build", "--force", "--method", "pkgbuild",
                     "--source", str(sdist)])
    assert result.exit_code == 2
    if os.geteuid() == 0:
        assert "makepkg refuses to run as root" in error_text(result)
    else:  # Debian: no makepkg, and the error says how to get it
        assert "makepkg" in error_text(result)


def test_makepkg_builds_the_pkgbuild_for_real(sdist: Path, small_model: tuple[Path, str],
                                              tmp_path: Path) -> None:
    """What an Arch host runs (`synapse bench llama-bench --build`): Arch's own makepkg, as
    an unprivileged user and without network, checks the sdist against the pinned sha256,
    builds llama-bench with the flags of the CMake path and packages it; the packaged
    binary measures the real model."""
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "PKGBUILD").write_text(arch.render_pkgbuild(sdist))
    sources = tmp_path / "sources"
    sources.mkdir()
    os.link(sdist, sources / sdist.name)
    built = tmp_path / "built"
    built.mkdir()
    r = makepkg(recipe, "--nodeps", srcdest=sources, packages_to=built)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"{sdist.name} ... Passed" in r.stdout + r.stderr
    [package] = built.glob(f"{arch.PKGNAME}-*.pkg.tar.zst")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["bsdtar", "-xf", package, "-C", root], check=True)
    binary = root / "usr/bin/llama-bench"
    assert (root / f"usr/share/licenses/{arch.PKGNAME}/LICENSE").is_file()
    model, _ = small_model
    run = subprocess.run([binary, "-m", model, "-p", "8", "-n", "4", "-r", "1", "-t", "2",
                          "-o", "json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout)
    assert {r["n_gen"] for r in results} == {0, 4} and all(r["avg_ts"] > 0 for r in results)
