"""apply / rollback / history on real temp root trees (real systemctl --root, real files)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.apply.helpers import STATE, mount, synapse, tree_snapshot
from tests.conftest import REPO


def apply_ok(profile: Path, root: Path) -> dict[str, object]:
    res = synapse("apply", profile, "--root", root, "--yes", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_dry_run_shows_plan_and_changes_nothing(gpu_profile: Path, root: Path) -> None:
    before = tree_snapshot(root, include_state=True)
    res = synapse("apply", gpu_profile, "--root", root, "--dry-run")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "-debian\n+synapse-gpu\n" in out  # unified diff of /etc/hostname
    assert "+++ b/etc/sysctl.d/90-synapse.conf" in out
    assert "symlink -> ../sysctl.conf" in out  # the replaced symlink, described
    assert "vm.swappiness: (unset) -> 150" in out
    assert "enable synapse-runtime.service" in out and "mask cups.service" in out
    # the machine's own root= is kept: it has no partition labelled synapse-root
    assert "wanted: root=/dev/sda1 rw nowatchdog" in out
    assert "reboot needed:" in out and "kernel command line changed" in out
    assert tree_snapshot(root, include_state=True) == before


def test_dry_run_json(gpu_profile: Path, root: Path) -> None:
    res = synapse("apply", gpu_profile, "--root", root, "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    paths = {f["path"]: f["action"] for f in plan["files"]}
    assert paths["/etc/hostname"] == "modify"
    assert paths["/etc/systemd/zram-generator.conf"] == "create"
    assert plan["reboot_needed"] is True and plan["live"] is False
    assert plan["activations"] == []  # not the running system: files only
    assert "+synapse-gpu" in plan["diffs"]["/etc/hostname"]


def test_apply_then_idempotent(gpu_profile: Path, root: Path) -> None:
    first = apply_ok(gpu_profile, root)
    assert first["changed"] is True and first["transaction"]
    assert (root / "etc/hostname").read_text() == "synapse-gpu\n"
    assert os.readlink(root / "etc/systemd/system/cups.service") == "/dev/null"
    link = root / "etc/systemd/system/multi-user.target.wants/synapse-runtime.service"
    assert os.readlink(link) == "/etc/systemd/system/synapse-runtime.service"
    lock = f"{STATE}/lock"  # holds the pid of the last apply
    after_first = tree_snapshot(root, include_state=True)
    del after_first[lock]
    stats = {p: os.lstat(root / p).st_mtime_ns for p in after_first}

    res = synapse("apply", gpu_profile, "--root", root, "--yes")
    assert res.returncode == 0, res.stderr
    assert "nothing to do" in res.stdout
    after_second = tree_snapshot(root, include_state=True)
    del after_second[lock]
    assert after_second == after_first  # not even a new journal
    assert {p: os.lstat(root / p).st_mtime_ns for p in after_first} == stats
    history = json.loads(synapse("history", "--root", root, "--json").stdout)
    assert [h["state"] for h in history] == ["applied"]


def test_rollback_restores_byte_for_byte(gpu_profile: Path, root: Path) -> None:
    original = tree_snapshot(root)
    apply_ok(gpu_profile, root)
    assert tree_snapshot(root) != original
    res = synapse("rollback", "--root", root, "--yes")
    assert res.returncode == 0, res.stderr
    assert tree_snapshot(root) == original  # content, modes, owners, symlinks, absence
    res = synapse("rollback", "--root", root, "--yes")
    assert res.returncode == 0 and "nothing to roll back" in res.stdout


def test_rollback_after_two_transactions(gpu_profile: Path, variant_profile: Path,
                                         root: Path) -> None:
    s0 = tree_snapshot(root)
    apply_ok(gpu_profile, root)
    s1 = tree_snapshot(root)
    second = apply_ok(variant_profile, root)
    s2 = tree_snapshot(root)
    changed = {f["path"]: f["action"] for f in second["files"]}
    # zram dropped from the profile: the file synapse created goes away again
    assert changed["/etc/systemd/zram-generator.conf"] == "remove"
    assert not (root / "etc/systemd/zram-generator.conf").exists()
    assert {"op": "disable", "unit": "avahi-daemon.service", "current": "enabled"} \
        in second["units"]
    assert not (root / "etc/systemd/system/multi-user.target.wants/avahi-daemon.service"
                ).is_symlink()
    assert "vm.swappiness = 100" in (root / "etc/sysctl.d/90-synapse.conf").read_text()

    assert synapse("rollback", "--root", root, "--yes").returncode == 0
    assert tree_snapshot(root) == s1
    assert synapse("rollback", "--root", root, "--yes").returncode == 0
    assert tree_snapshot(root) == s0

    # again, then one rollback to the first transaction undoes both
    apply_ok(gpu_profile, root)
    apply_ok(variant_profile, root)
    assert tree_snapshot(root) == s2
    history = json.loads(synapse("history", "--root", root, "--json").stdout)
    third = history[2]["id"]
    res = synapse("rollback", third.split("-")[0], "--root", root, "--yes", "--json")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["rolled_back"]) == 2
    assert tree_snapshot(root) == s0
    states = [h["state"] for h in json.loads(synapse("history", "--root", root,
                                                     "--json").stdout)]
    assert states == ["rolled-back"] * 4


def test_rollback_refuses_to_clobber_later_edits(gpu_profile: Path, root: Path) -> None:
    original = tree_snapshot(root)
    apply_ok(gpu_profile, root)
    (root / "etc/hostname").write_text("edited-by-admin\n")
    res = synapse("rollback", "--root", root, "--yes")
    assert res.returncode == 2
    assert "/etc/hostname changed after it was applied" in res.stderr and "--force" in res.stderr
    assert (root / "etc/hostname").read_text() == "edited-by-admin\n"
    res = synapse("rollback", "--root", root, "--yes", "--force")
    assert res.returncode == 0, res.stderr
    assert tree_snapshot(root) == original


def test_history_lists_time_profile_hash_result(gpu_profile: Path, root: Path) -> None:
    assert "no transactions" in synapse("history", "--root", root).stdout
    apply_ok(gpu_profile, root)
    res = synapse("history", "--root", root)
    assert res.returncode == 0
    profile_hash = json.loads(synapse("validate", gpu_profile, "--json").stdout)["hash"]
    line = res.stdout.strip()
    assert "nvidia-gpu" in line and profile_hash[:12] in line and "applied" in line
    entry = json.loads(synapse("history", "--root", root, "--json").stdout)[0]
    assert entry["profile_hash"] == profile_hash and entry["files"] == 19
    assert entry["started"].endswith("Z") and entry["reboot_needed"] is True


def test_lock_contention_refused(gpu_profile: Path, root: Path) -> None:
    before = tree_snapshot(root)
    lock_dir = root / STATE
    lock_dir.mkdir(parents=True)
    fd = os.open(lock_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        res = synapse("apply", gpu_profile, "--root", root, "--yes")
        assert res.returncode == 1
        assert "another synapse apply or rollback (pid 4242) holds" in res.stderr
        assert synapse("rollback", "--root", root, "--yes").returncode == 1
    finally:
        os.close(fd)
    assert tree_snapshot(root) == before
    apply_ok(gpu_profile, root)  # free again once the holder is gone


def test_read_only_target(gpu_profile: Path, root: Path, mounts: list[Path]) -> None:
    before = tree_snapshot(root, include_state=True)
    mount(mounts, "--bind", str(root), str(root))
    mount(mounts, "-o", "remount,bind,ro", str(root))
    res = synapse("apply", gpu_profile, "--root", root, "--yes")
    assert res.returncode == 1
    assert "Read-only file system" in res.stderr and "target must be writable" in res.stderr
    assert tree_snapshot(root, include_state=True) == before


def test_read_only_etc_undoes_partial_apply(gpu_profile: Path, root: Path,
                                            mounts: list[Path]) -> None:
    """The journal is writable but /etc is not: files under /boot land first, then the
    first write under /etc fails; everything is undone and recorded as failed."""
    before = tree_snapshot(root)
    mount(mounts, "--bind", str(root / "etc"), str(root / "etc"))
    mount(mounts, "-o", "remount,bind,ro", str(root / "etc"))
    res = synapse("apply", gpu_profile, "--root", root, "--yes")
    assert res.returncode == 1
    assert "Read-only file system" in res.stderr
    assert "every change was undone" in res.stderr
    assert tree_snapshot(root) == before  # boot/ created and removed again
    history = json.loads(synapse("history", "--root", root, "--json").stdout)
    assert history[0]["state"] == "failed" and "Read-only" in history[0]["error"]


def test_disk_full(gpu_profile: Path, tmp_path: Path, mounts: list[Path]) -> None:
    """A 64 KiB tmpfs holds the original but not the whole new tree (a page per file)."""
    from tests.apply.helpers import build_root

    small = tmp_path / "small"
    small.mkdir()
    mount(mounts, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small))
    root = build_root(small / "root")
    before = tree_snapshot(root)
    res = synapse("apply", gpu_profile, "--root", root, "--yes")
    assert res.returncode == 1
    assert "No space left on device" in res.stderr, res.stderr
    assert "every change was undone" in res.stderr
    assert tree_snapshot(root) == before
    assert not list(root.rglob("*.synapse-*.tmp"))


def test_bad_input_exit_2(root: Path, tmp_path: Path) -> None:
    res = synapse("apply", tmp_path / "missing.yaml", "--root", root, "--yes")
    assert res.returncode == 2
    res = synapse("apply", REPO / "profiles/nvidia-gpu.yaml", "--root", tmp_path / "nope",
                  "--yes")
    assert res.returncode == 2 and "no such directory" in res.stderr
    res = synapse("rollback", "99", "--root", root, "--yes")
    assert res.returncode == 2 and "transaction '99' not found" in res.stderr


def test_live_root_refused_without_root_privileges(gpu_profile: Path) -> None:
    # import as root (the interpreter lives under /root), then drop to nobody and run
    script = (
        "import os, sys\n"
        "import synapse_os.apply.cli, synapse_os.apply.plan, synapse_os.apply.transaction\n"
        "import synapse_os.profile, synapse_os.render\n"
        "from synapse_os.cli import main\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "main(sys.argv[1:])\n"
    )
    for command in (["apply", str(gpu_profile), "--yes"], ["rollback", "--yes"]):
        res = subprocess.run([sys.executable, "-c", script, *command], cwd=REPO,
                             capture_output=True, text=True, check=False, timeout=120)
        assert res.returncode == 2, res.stderr
        assert "changing the running system (--root /) needs root" in res.stderr


def test_confirmation_prompt(gpu_profile: Path, root: Path) -> None:
    before = tree_snapshot(root, include_state=True)
    res = subprocess.run([sys.executable, "-m", "synapse_os.cli", "apply", str(gpu_profile),
                          "--root", str(root)], input="n\n", cwd=REPO, capture_output=True,
                         text=True, check=False, timeout=120)
    assert res.returncode == 1 and "apply these changes?" in res.stderr
    assert "aborted" in res.stderr
    snapshot = tree_snapshot(root, include_state=True)
    snapshot.pop(f"{STATE}/lock")
    for rel in (STATE, "var/lib/synapse/transactions"):  # the lock's directory may remain
        snapshot.pop(rel, None)
    assert snapshot == before
    res = subprocess.run([sys.executable, "-m", "synapse_os.cli", "apply", str(gpu_profile),
                          "--root", str(root)], input="y\n", cwd=REPO, capture_output=True,
                         text=True, check=False, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (root / "etc/hostname").read_text() == "synapse-gpu\n"


def test_planted_journal_and_lock_symlink_refused(gpu_profile: Path, root: Path,
                                                  tmp_path: Path) -> None:
    """/var/lib/synapse belongs to the runtime user: what it plants there is not trusted."""
    apply_ok(gpu_profile, root)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    lock = root / STATE / "lock"
    lock.unlink()
    lock.symlink_to(victim)
    res = synapse("apply", gpu_profile, "--root", root, "--yes")
    assert res.returncode == 1 and "is a symlink; refusing" in res.stderr
    assert victim.read_text() == "precious\n"
    lock.unlink()

    transactions = root / STATE / "transactions"
    os.chown(transactions, 65534, 65534)
    res = synapse("rollback", "--root", root, "--yes")
    assert res.returncode == 1 and "refusing to trust" in res.stderr
    os.chown(transactions, 0, 0)
    assert synapse("rollback", "--root", root, "--yes").returncode == 0


def test_kernel_cmdline_keeps_the_machines_root_or_the_install_label(
        gpu_profile: Path, root: Path) -> None:
    """A machine synapse did not install keeps its root= (kernel-install writes entries
    from this file); a target without one gets the label partition.sh gives the root."""
    apply_ok(gpu_profile, root)
    words = (root / "etc/kernel/cmdline").read_text().split()
    assert [w for w in words if w.startswith("root=")] == ["root=/dev/sda1"]
    assert "nowatchdog" in words
    verify = synapse("verify", gpu_profile, "--root", root, "--json")
    assert verify.returncode == 0, verify.stdout  # verify expects the same fitted file
    fresh = root.parent / "fresh"
    (fresh / "etc").mkdir(parents=True)
    res = synapse("apply", gpu_profile, "--root", fresh, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "wanted: root=PARTLABEL=synapse-root rw" in res.stdout


def test_a_hostile_root_word_on_the_target_is_refused(gpu_profile: Path, root: Path) -> None:
    cmdline = root / "etc/kernel/cmdline"
    cmdline.write_text("root=/dev/sda1;reboot quiet\n")
    before = tree_snapshot(root)
    res = synapse("apply", gpu_profile, "--root", root, "--yes")
    assert res.returncode == 2
    assert "root= word is not a plain root file system specification" in res.stderr
    assert tree_snapshot(root) == before


def test_an_entry_whose_kernel_is_missing_is_left_out_with_a_note(gpu_profile: Path,
                                                                  root: Path) -> None:
    (root / "boot/vmlinuz-linux").unlink()
    res = synapse("apply", gpu_profile, "--root", root, "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert "/boot/loader/entries/synapse.conf" not in {f["path"] for f in plan["files"]}
    assert any("/boot/vmlinuz-linux is not on this machine; install linux first" in n
               for n in plan["notes"])
    apply_ok(gpu_profile, root)
    assert not (root / "boot/loader/entries/synapse.conf").exists()
    assert synapse("verify", gpu_profile, "--root", root).returncode == 0
    (root / "boot/vmlinuz-linux").write_bytes(b"installed now\n")
    apply_ok(gpu_profile, root)
    assert "linux   /vmlinuz-linux" in (root / "boot/loader/entries/synapse.conf").read_text()


def test_the_boot_loader_files_go_to_the_esp_the_target_mounts(gpu_profile: Path,
                                                               root: Path) -> None:
    """A target whose fstab mounts its ESP at /efi (kernels in /boot, not on the ESP) gets
    loader.conf there; the entries naming /vmlinuz-linux on the ESP are left out."""
    (root / "etc/fstab").write_text(
        "# a hand-made fstab\nUUID=1234 / ext4 rw 0 1\n"
        "UUID=ABCD-1234  /efi  vfat  umask=0077 0 2\n/dev/sdb1 /boot/efi ext4 rw 0 0\n")
    res = synapse("apply", gpu_profile, "--root", root, "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    paths = {f["path"] for f in plan["files"]}
    assert "/efi/loader/loader.conf" in paths
    assert not any(p.startswith("/boot/loader/") for p in paths)
    assert any("EFI system partition is /efi" in n for n in plan["notes"])
    assert any("/efi/vmlinuz-linux is not on this machine" in n for n in plan["notes"])
    apply_ok(gpu_profile, root)
    assert (root / "efi/loader/loader.conf").is_file()
    assert not (root / "boot/loader").exists()
    assert synapse("verify", gpu_profile, "--root", root).returncode == 0
    # an fstab that is not a regular file is not read: the distribution's place is kept
    (root / "etc/fstab").unlink()
    os.symlink("/proc/self/mounts", root / "etc/fstab")
    res = synapse("apply", gpu_profile, "--root", root, "--dry-run", "--json")
    assert "/boot/loader/loader.conf" in {f["path"] for f in json.loads(res.stdout)["files"]}


def test_boot_loader_files_on_a_fat_esp_are_applied_once(gpu_profile: Path, root: Path,
                                                          tmp_path: Path,
                                                          mounts: list[Path]) -> None:
    """The ESP is FAT: its files show the mount's fixed modes, never the rendered 0644.
    A second apply changes nothing, verify passes, and rollback needs no --force."""
    from tests.conftest import need_tool

    need_tool("mkfs.fat", "apt-get install dosfstools")
    image = tmp_path / "esp.img"
    subprocess.run(["mkfs.fat", "-C", str(image), "8192"], check=True, capture_output=True)
    kernel = (root / "boot/vmlinuz-linux").read_bytes()
    (root / "boot/vmlinuz-linux").unlink()
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                          text=True, check=True).stdout.strip()
    try:
        mount(mounts, "-t", "vfat", "-o", "fmask=0077,dmask=0077", loop, str(root / "boot"))
        _apply_onto_fat(gpu_profile, root, kernel)
    finally:
        # the FUSE mount.vfat of kernels without vfat stacks two mounts: undo both
        for _ in range(2):
            subprocess.run(["umount", "-l", str(root / "boot")], check=False,
                           capture_output=True)
        subprocess.run(["losetup", "-d", loop], check=False)


def _apply_onto_fat(gpu_profile: Path, root: Path, kernel: bytes) -> None:
    (root / "boot/vmlinuz-linux").write_bytes(kernel)
    before = tree_snapshot(root)
    apply_ok(gpu_profile, root)
    loader = root / "boot/loader/loader.conf"
    assert loader.is_file() and (loader.stat().st_mode & 0o777) != 0o644
    again = apply_ok(gpu_profile, root)
    assert again["files"] == [] and again["transaction"] is None
    assert synapse("verify", gpu_profile, "--root", root).returncode == 0
    res = synapse("rollback", "--root", root, "--yes")
    assert res.returncode == 0, res.stderr
    assert tree_snapshot(root) == before


def test_a_unit_the_new_profile_drops_is_disabled_with_its_file(gpu_profile: Path, root: Path,
                                                                tmp_path: Path) -> None:
    backed = tmp_path / "backed.yaml"
    backed.write_text(f"extends: {gpu_profile}\nmemory:\n  zram:\n"
                      "    writeback_device: /dev/disk/by-id/nvme-Scratch_SSD_S1\n")
    apply_ok(backed, root)
    wants = root / "etc/systemd/system/timers.target.wants/synapse-zram-writeback.timer"
    assert os.readlink(wants) == "/etc/systemd/system/synapse-zram-writeback.timer"
    after_backed = tree_snapshot(root)
    apply_ok(gpu_profile, root)
    assert not (root / "etc/systemd/system/synapse-zram-writeback.timer").exists()
    assert not os.path.lexists(wants)  # no dangling link left behind
    res = synapse("rollback", "--root", root, "--yes")
    assert res.returncode == 0, res.stderr
    assert tree_snapshot(root) == after_backed
