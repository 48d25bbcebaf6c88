"""Crash safety: SIGKILL apply (and rollback) at every step and in the middle of a write.

After each crash: every target file is either its original or its new version (never
half-written); re-running apply converges to exactly the tree a clean apply produces;
and, separately, rollback restores the original tree byte for byte.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from synapse_os.apply.faults import AFTER_STEP_ENV, MID_WRITE_ENV
from synapse_os.cli import cli
from tests.apply.helpers import STATE, build_root, copy_tree, synapse, tree_snapshot

Snapshot = dict[str, tuple[object, ...]]
MAX_STEPS = 400  # far above the real count: guards against a hook that never fires


def run_inprocess(*args: str | Path) -> str:
    """Recovery runs need no crash hook: run the CLI in this process (faster)."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def assert_whole_files(crashed: Snapshot, original: Snapshot, full: Snapshot) -> None:
    """Each path holds its original or its new version; stray temp files are allowed
    (recovery removes them) but never in place of a target."""
    for rel, entry in crashed.items():
        if ".synapse-" in rel and rel.endswith(".tmp"):
            continue
        assert entry in (original.get(rel), full.get(rel)), f"{rel} is neither old nor new"


@pytest.fixture
def reference(tmp_path: Path, gpu_profile: Path) -> tuple[Path, Snapshot, Snapshot]:
    original_root = build_root(tmp_path / "original")
    applied = copy_tree(original_root, tmp_path / "applied")
    run_inprocess("apply", gpu_profile, "--root", applied, "--yes")
    return original_root, tree_snapshot(original_root), tree_snapshot(applied)


def crash_then_recover(env: dict[str, str], gpu_profile: Path, tmp_path: Path,
                       reference: tuple[Path, Snapshot, Snapshot], tag: str) -> bool:
    """One crash at the point `env` names; False once the process no longer crashes."""
    original_root, original, full = reference
    work = copy_tree(original_root, tmp_path / f"crash-{tag}")
    res = synapse("apply", gpu_profile, "--root", work, "--yes", env=env)
    if res.returncode == 0:
        assert tree_snapshot(work) == full
        return False
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert_whole_files(tree_snapshot(work), original, full)
    second = copy_tree(work, tmp_path / f"crash-{tag}-b")

    run_inprocess("rollback", "--root", work, "--yes")
    assert tree_snapshot(work) == original, f"rollback after crash {tag}"
    assert not list(work.rglob("*.synapse-*.tmp"))

    run_inprocess("apply", gpu_profile, "--root", second, "--yes")
    assert tree_snapshot(second) == full, f"apply after crash {tag}"
    assert not list(second.rglob("*.synapse-*.tmp"))
    return True


@pytest.mark.slow
def test_kill_between_every_pair_of_steps(gpu_profile: Path, tmp_path: Path,
                                          reference: tuple[Path, Snapshot, Snapshot]) -> None:
    crashes = 0
    for step in range(1, MAX_STEPS):
        if not crash_then_recover({AFTER_STEP_ENV: str(step)}, gpu_profile, tmp_path,
                                  reference, f"step{step}"):
            break
        crashes += 1
    else:
        pytest.fail(f"apply still crashed after {MAX_STEPS} steps")
    # 19 files: journal + temp + rename checkpoints each, backups, dirs, systemctl
    assert crashes > 45


def test_kill_mid_write(gpu_profile: Path, tmp_path: Path,
                        reference: tuple[Path, Snapshot, Snapshot]) -> None:
    crashes = 0
    for n in range(1, MAX_STEPS):
        if not crash_then_recover({MID_WRITE_ENV: str(n)}, gpu_profile, tmp_path, reference,
                                  f"write{n}"):
            break
        crashes += 1
    # every regular file in nvidia-gpu's rootfs (the masks and a wants link are symlinks)
    assert crashes == 16


@pytest.mark.slow
def test_kill_rollback_at_every_step(gpu_profile: Path, tmp_path: Path,
                                     reference: tuple[Path, Snapshot, Snapshot]) -> None:
    """A crash during rollback: the next rollback finishes it."""
    original_root, original, full = reference
    applied = copy_tree(original_root, tmp_path / "base")
    run_inprocess("apply", gpu_profile, "--root", applied, "--yes")
    for step in range(1, MAX_STEPS):
        work = copy_tree(applied, tmp_path / f"rb{step}")
        res = synapse("rollback", "--root", work, "--yes", env={AFTER_STEP_ENV: str(step)})
        if res.returncode == 0:
            assert tree_snapshot(work) == original
            # journal "rolling back", one per entry (19 files + units), journal "rolled back"
            assert step == 23
            break
        assert res.returncode == -signal.SIGKILL, res.stderr
        assert_whole_files(tree_snapshot(work), original, full)
        run_inprocess("rollback", "--root", work, "--yes")
        assert tree_snapshot(work) == original, f"rollback after crash at step {step}"
        assert (work / STATE).is_dir()
    else:
        pytest.fail(f"rollback still crashed after {MAX_STEPS} steps")
