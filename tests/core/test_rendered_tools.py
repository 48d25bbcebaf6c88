"""The rendered artifacts judged by the real tools: shellcheck, bash -n, systemd-analyze
verify, and the real zram-generator run on the rendered config."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from synapse_os.profile import load_profile
from synapse_os.profile.zram_expr import ZramExpressionError, check_zram_expression
from synapse_os.render import SYNAPSE_BIN, render_to
from tests.conftest import PROFILES, need_tool

SHIPPED = sorted(PROFILES.glob("*.yaml"))
ZRAM_GENERATOR = Path("/usr/lib/systemd/system-generators/zram-generator")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("rendered")
    return {p.stem: render_to(load_profile(p), base / p.stem) and base / p.stem for p in SHIPPED}


def scripts(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.sh") if p.is_file())


@pytest.mark.parametrize("profile", [p.stem for p in SHIPPED])
def test_shell_scripts_pass_shellcheck_and_bash_n(rendered: dict[str, Path], profile: str) -> None:
    shellcheck = need_tool("shellcheck", "apt-get install shellcheck")
    found = scripts(rendered[profile])
    assert {p.name for p in found} >= {"partition.sh", "install.sh"}
    for script in found:
        subprocess.run(["bash", "-n", str(script)], check=True)
        res = subprocess.run([shellcheck, "-x", "-S", "style", str(script)],
                             capture_output=True, text=True)
        assert res.returncode == 0, f"{script}:\n{res.stdout}"


@pytest.fixture(scope="module")
def synapse_at_unit_path() -> Iterator[None]:
    """The units run /opt/synapse/bin/synapse (the image's venv); point it at this install."""
    target = Path(SYNAPSE_BIN)
    created = not target.exists()
    if created:
        real = shutil.which("synapse")
        assert real, "synapse is not installed; run: pip install -e ."
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(real)
    yield
    if created:
        target.unlink()


@pytest.mark.parametrize("profile", [p.stem for p in SHIPPED])
def test_units_pass_systemd_analyze_verify(
    rendered: dict[str, Path], profile: str, synapse_at_unit_path: None, tmp_path: Path
) -> None:
    analyze = need_tool("systemd-analyze", "apt-get install systemd")
    units = [p for p in (rendered[profile] / "rootfs/etc/systemd/system").glob("*.service")
             if not p.is_symlink()] if (rendered[profile] / "rootfs/etc/systemd/system").exists() else []
    if load_profile(PROFILES / f"{profile}.yaml").runtime is not None:
        assert units, "a profile with a runtime section renders its inference unit"
    for unit in units:
        copy = tmp_path / unit.name
        shutil.copy(unit, copy)
        res = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                             env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
        assert res.returncode == 0, res.stderr
        problems = [line for line in res.stderr.splitlines() if unit.name in line or str(copy) in line]
        assert not problems, "\n".join(problems)


def run_zram_generator(root: Path, out: Path, ram_kib: int = 32 * 1024 * 1024) -> subprocess.CompletedProcess[str]:
    if not ZRAM_GENERATOR.exists():
        pytest.fail("zram-generator is required; install it with: apt-get install systemd-zram-generator",
                    pytrace=False)
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/meminfo").write_text(f"MemTotal:       {ram_kib} kB\n")
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(ZRAM_GENERATOR), str(out)], capture_output=True, text=True,
                          env=dict(os.environ, ZRAM_GENERATOR_ROOT=str(root)))


@pytest.mark.parametrize("profile", ["cpu-avx2", "nvidia-gpu"])
def test_real_zram_generator_makes_the_swap_unit(rendered: dict[str, Path], profile: str,
                                                  tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(rendered[profile] / "rootfs/etc", root / "etc", symlinks=True)
    res = run_zram_generator(root, tmp_path / "gen")
    assert res.returncode == 0, res.stderr
    swap = (tmp_path / "gen/dev-zram0.swap").read_text()
    expected_priority = load_profile(PROFILES / f"{profile}.yaml").memory.zram.priority  # type: ignore[union-attr]
    assert "What=/dev/zram0" in swap
    assert f"Priority={expected_priority}" in swap
    assert (tmp_path / "gen/swap.target.wants/dev-zram0.swap").is_symlink()


def test_stock_profile_gets_no_zram(rendered: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(rendered["stock-baseline"] / "rootfs/etc", root / "etc", symlinks=True)
    res = run_zram_generator(root, tmp_path / "gen")
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "gen/dev-zram0.swap").exists()


@pytest.mark.parametrize(
    "expr",
    ["min(ram / 2, 4096)", "ram * 1.0", "ram ^ 0.5", "floor(ram / 3)", "max(ram/4, 1024)",
     "ram % 7", "bogus(", "os.system(1)", "-ram", "ram - 100000", "ram / 0"],
)
def test_zram_expression_check_agrees_with_the_real_generator(expr: str, tmp_path: Path) -> None:
    """Whatever our validator accepts, the generator accepts; what it rejects, we reject.
    (We are stricter on purpose for division by zero, which the generator lets through.)"""
    try:
        check_zram_expression(expr)
        ours = True
    except ZramExpressionError:
        ours = False
    root = tmp_path / "root"
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/zram-generator.conf").write_text(f"[zram0]\nzram-size = {expr}\n")
    res = run_zram_generator(root, tmp_path / "gen")
    theirs = res.returncode == 0 and (tmp_path / "gen/dev-zram0.swap").exists()
    if ours:
        assert theirs, f"we accept {expr!r} but zram-generator rejects it: {res.stderr}"
    if not theirs:
        assert not ours


def test_isolated_runtime_units_pass_systemd_analyze_and_name_real_nspawn_options(
        synapse_at_unit_path: None, tmp_path: Path) -> None:
    """runtime.isolation: nspawn: the service and its socket verify together, and every
    option the service gives systemd-nspawn is one this systemd-nspawn lists."""
    analyze = need_tool("systemd-analyze", "apt-get install systemd")
    nspawn = need_tool("systemd-nspawn", "apt-get install systemd-container")
    profile = tmp_path / "isolated.yaml"
    profile.write_text(f"extends: {PROFILES / 'cpu-avx2.yaml'}\n"
                       "runtime: {isolation: nspawn, sandboxing: none}\n")
    out = tmp_path / "out"
    render_to(load_profile(profile), out)
    units = out / "rootfs/etc/systemd/system"
    service, socket_unit = units / "synapse-runtime.service", units / "synapse-runtime.socket"
    res = subprocess.run([analyze, "verify", str(service), str(socket_unit)],
                         capture_output=True, text=True,
                         env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    assert res.returncode == 0 and "synapse-runtime" not in res.stderr, res.stderr
    [exec_start] = [line for line in service.read_text().splitlines()
                    if line.startswith("ExecStart=")]
    words = exec_start.removeprefix("ExecStart=").split()
    assert words[0] == nspawn and "--" in words
    listed = subprocess.run([nspawn, "--help"], capture_output=True, text=True).stdout
    options = [w.split("=")[0] for w in words[1:words.index("--")]]
    assert options and all(f" {o}" in listed for o in options), options
    assert words[words.index("--") + 1] == SYNAPSE_BIN


def _run_generator(rendered: Path, tmp_path: Path, cmdline: str) -> Path:
    """The rendered synapse-stock generator, run as systemd would, in a private mount
    namespace whose /etc is the rendered one and whose /proc/cmdline is `cmdline`."""
    need_tool("unshare", "apt-get install util-linux")
    tmp_path.mkdir()
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    dirs = [tmp_path / d for d in ("normal", "early", "late")]
    for d in dirs:
        d.mkdir()
    script = (f"mount -t tmpfs none /etc && cp -a {rendered}/rootfs/etc/. /etc/ && "
              f"mount --bind {tmp_path}/cmdline /proc/cmdline && "
              f"/etc/systemd/system-generators/synapse-stock {' '.join(map(str, dirs))}")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert not [p for d in ("normal", "late") for p in (tmp_path / d).iterdir()]
    return tmp_path / "early"


def test_stock_generator_hides_the_profile_files_and_masks_its_units(
        rendered: dict[str, Path], tmp_path: Path) -> None:
    """On `synapse.stock` (the boot A/B's stock entry) every file the profile placed for a
    boot-time reader is bind-mounted over by /dev/null before that reader (units that
    systemd-analyze accepts, named as systemd names a path), and the engine and zram are
    masked; without the word the generator writes nothing."""
    from synapse_os.render.stock import READ_AT_BOOT
    from synapse_os.tunables.zram import UNITS as ZRAM_UNITS

    analyze = need_tool("systemd-analyze", "apt-get install systemd")
    tree = rendered["cpu-avx2-debian"]
    plain = _run_generator(tree, tmp_path / "plain", "root=/dev/vda ro quiet synapse.stockx")
    assert list(plain.iterdir()) == []
    early = _run_generator(tree, tmp_path / "stock", "root=/dev/vda ro synapse.stock")
    placed = [rel for rel in READ_AT_BOOT if (tree / "rootfs" / rel).exists()]
    assert len(placed) == 4, placed
    for rel in placed:
        name = subprocess.run(["systemd-escape", "--path", "--suffix=mount", f"/{rel}"],
                              capture_output=True, text=True, check=True).stdout.strip()
        unit = early / name
        assert f"Where=/{rel}\n" in unit.read_text() and "What=/dev/null" in unit.read_text()
        assert (early / "sysinit.target.wants" / name).resolve() == unit.resolve()
        res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                             env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
        assert res.returncode == 0 and name not in res.stderr, res.stderr
    for unit in ("synapse-runtime.service", "fstrim.timer", *ZRAM_UNITS):
        assert os.readlink(early / unit) == "/dev/null", unit
