"""Journals read back from a target root are untrusted input confined to that root: a
planted or edited journal is refused whole (exit 2, one sentence) before rollback or
apply acts on any of it, and nothing outside the root is ever written."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from synapse_os.apply.fsops import write_all
from tests.apply.helpers import STATE, synapse, tree_snapshot
from tests.apply.test_apply import apply_ok, mount
from tests.conftest import REPO


def _journal(root: Path) -> Path:
    (tx,) = sorted((root / STATE / "transactions").iterdir())
    return tx / "journal.json"


def _tamper(root: Path, change: Callable[[dict[str, Any], Path], None], outside: Path) -> None:
    path = _journal(root)
    data = json.loads(path.read_text())
    change(data, outside)
    path.write_text(json.dumps(data))


def _file_entry(data: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in data["entries"] if e["kind"] == "file" and e["backup"])


def _units_entry(data: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in data["entries"] if e["kind"] == "units")


MUTATIONS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "absolute path": lambda d, o: _file_entry(d).update(path=str(o / "victim")),
    "dot-dot path": lambda d, o: _file_entry(d).update(path="../outside/victim"),
    "backup escapes backups/": lambda d, o: _file_entry(d).update(backup="../../../../../victim"),
    "foreign temporary path": lambda d, o: _file_entry(d).update(tmp="../outside/victim"),
    "created dir outside": lambda d, o: _file_entry(d).update(created_dirs=["../outside"]),
    "in-progress with absolute path": lambda d, o: (
        d.update(state="in-progress"), _file_entry(d).update(path=str(o / "victim"))),
    "live values under another root": lambda d, o: d.update(
        live=True, live_values={"/proc/sys/vm/swappiness": "60"}),
    "units change outside the unit dir": lambda d, o: _units_entry(d).update(
        changes={"../outside/victim": ["absent", "link:/dev/null"]}),
    "unit op that is not a unit": lambda d, o: _units_entry(d).update(
        ops=[["enable", "../../outside/victim"]]),
    "id of another directory": lambda d, o: d.update(id="0001-20200101T000000Z"),
    "unit links that chain out of the root": lambda d, o: _units_entry(d).update(changes={
        "etc/systemd/system/a": [f"link:{o}", "absent"],
        "etc/systemd/system/a/pwned.service": ["link:/dev/null", "absent"],
        "etc/systemd/system/a/newdir": ["dir", "absent"]}),
    "a state that is not text": lambda d, o: d.update(state=["applied"]),
    "extra field": lambda d, o: d.update(run="rm -rf /"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_planted_journal_is_refused_whole(mutation: str, gpu_profile: Path, root: Path,
                                          tmp_path: Path) -> None:
    apply_ok(gpu_profile, root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    _tamper(root, MUTATIONS[mutation], outside)
    before_root = tree_snapshot(root, include_state=True)
    before_outside = tree_snapshot(tmp_path / "outside")
    for command in (["rollback", "--root", root, "--yes"], ["apply", gpu_profile, "--root", root,
                                                           "--yes"], ["history", "--root", root]):
        res = synapse(*command)
        assert res.returncode == 2, (mutation, res.stderr)
        assert "refusing the whole journal" in res.stderr or "through a symlink" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert tree_snapshot(tmp_path / "outside") == before_outside
    after = tree_snapshot(root, include_state=True)
    after.pop(f"{STATE}/lock", None)
    before_root.pop(f"{STATE}/lock", None)
    assert after == before_root


def test_state_dir_symlinked_out_of_the_root(gpu_profile: Path, root: Path,
                                             tmp_path: Path) -> None:
    """var/lib/synapse as a symlink to elsewhere: neither apply nor rollback follows it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, root / STATE)
    for command in (["apply", gpu_profile, "--root", root, "--yes"],
                    ["rollback", "--root", root, "--yes"]):
        res = synapse(*command)
        assert res.returncode == 2, res.stderr
        assert "through a symlink" in res.stderr
    assert list(elsewhere.iterdir()) == []


def test_journal_path_through_a_symlinked_directory(gpu_profile: Path, root: Path,
                                                    tmp_path: Path) -> None:
    """After apply, etc/sysctl.d is swapped for a symlink out of the root: rollback would
    restore the original file there; it refuses instead."""
    apply_ok(gpu_profile, root)
    outside = tmp_path / "outside"
    shutil.copytree(root / "etc/sysctl.d", outside, symlinks=True)
    shutil.rmtree(root / "etc/sysctl.d")
    os.symlink(outside, root / "etc/sysctl.d")
    before = tree_snapshot(outside)
    res = synapse("rollback", "--root", root, "--yes")
    assert res.returncode == 2 and "through a symlink" in res.stderr, res.stderr
    assert tree_snapshot(outside) == before


def test_short_write_raises_instead_of_truncating() -> None:
    """os.write may write less than asked (a full disk, a pipe): write_all never returns
    having written part of the data."""
    read_end, write_end = os.pipe()
    try:
        flags = fcntl.fcntl(write_end, fcntl.F_GETFL)
        fcntl.fcntl(write_end, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        assert os.write(write_end, b"x" * 300_000) < 300_000  # the kernel does short writes
        with pytest.raises(OSError):
            write_all(write_end, b"y" * 300_000)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_journal_cut_short_by_the_file_size_limit_undoes_the_apply(
        gpu_profile: Path, root: Path) -> None:
    """RLIMIT_FSIZE makes the kernel cut a write at the limit and return a short count, as
    a nearly full disk does: the journal (about 11 KB) cannot be written whole, so apply
    fails and undoes everything instead of reporting success with a truncated journal."""
    before = tree_snapshot(root)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    res = subprocess.run([sys.executable, "-m", "synapse_os.cli", "apply", str(gpu_profile),
                          "--root", str(root), "--yes"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, preexec_fn=limit)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "every change was undone" in res.stderr, res.stderr
    assert tree_snapshot(root) == before


def test_every_disk_full_point_leaves_a_complete_journal_or_nothing(
        gpu_profile: Path, tmp_path: Path, mounts: list[Path]) -> None:
    """Grow a tmpfs until apply fits, then try every page size just below that: at each,
    apply either succeeds with a complete, parseable journal whose rollback works, or
    fails with the target as before (a short journal write is never taken for success)."""
    from tests.apply.helpers import build_root

    def attempt(kib: int) -> bool:
        disk = tmp_path / f"disk{kib}"
        disk.mkdir()
        mount(mounts, "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(disk))
        root = build_root(disk / "root")
        before = tree_snapshot(root)
        res = synapse("apply", gpu_profile, "--root", root, "--yes")
        if res.returncode == 0:
            journal = json.loads(_journal(root).read_text())
            assert journal["state"] == "applied"
            assert synapse("rollback", "--root", root, "--yes").returncode == 0
            assert tree_snapshot(root) == before
            return True
        assert res.returncode == 1, res.stderr
        assert tree_snapshot(root) == before, f"{kib} KiB: target changed after a failure"
        return False

    fits = next((kib for kib in range(64, 513, 16) if attempt(kib)), None)
    assert fits is not None, "apply never fit; raise the sizes tried"
    for kib in range(fits - 12, fits, 4):  # every page between the last failure and success
        attempt(kib)
