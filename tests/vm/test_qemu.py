"""QEMU command lines, KVM detection and bad input that never needs a booted guest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from synapse_os.image import bundle
from synapse_os.vm import qemu
from tests.conftest import REPO, need_tool
from tests.image.tiny import make_tiny_image


def synapse(*args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synapse_os.cli", *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=timeout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def qemu_pids_for(marker: str) -> list[int]:
    out = []
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            try:
                cmd = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "qemu-system" in cmd and marker in cmd and alive(int(proc_dir.name)):
                out.append(int(proc_dir.name))
    return out


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    need_tool("sfdisk", "apt-get install fdisk")
    need_tool("mcopy", "apt-get install mtools")
    return make_tiny_image(tmp_path / "tiny.img")


def test_tcg_and_kvm_command_lines(tmp_path: Path) -> None:
    need_tool("qemu-system-x86_64", "apt-get install qemu-system-x86")
    cfg = qemu.QemuConfig(image=tmp_path / "a.img", serial_log=tmp_path / "s.log",
                          shell_socket=tmp_path / "sh.sock", kernel=tmp_path / "k",
                          initrd=tmp_path / "i", append="root=x")
    argv = cfg.argv()
    assert argv[argv.index("-machine") + 1] == "q35,accel=tcg"
    assert argv[argv.index("-cpu") + 1] == "max"  # AVX2 for llama.cpp under TCG
    assert f"virtserialport,chardev=shell,name={bundle.TEST_PORT}" in argv
    assert "snapshot=on" in argv[argv.index("-drive") + 1]
    assert argv[argv.index("-append") + 1] == "root=x"
    assert argv[0] != "taskset" and "memory-backend=ram0" not in argv
    cfg.kvm, cfg.kernel = True, None
    # bench ab's KVM arms: pinned to host CPUs, hugepage-backed RAM, the bench disk read-only
    cfg.host_cpus, cfg.hugepages = "2-5", True
    cfg.readonly_disks = {"synapse-bench": tmp_path / "bench.img"}
    argv = cfg.argv()
    assert argv[argv.index("-machine") + 1] == "q35,accel=kvm" and "-bios" in argv
    assert argv[:3] == ["taskset", "-c", "2-5"]
    assert any("mem-path=/dev/hugepages" in a and "size=2048M" in a for a in argv)
    assert "memory-backend=ram0" in argv
    assert f"file={tmp_path / 'bench.img'},if=none,id=ro0,format=raw,readonly=on" in argv
    assert "virtio-blk-pci,drive=ro0,serial=synapse-bench" in argv


def test_kvm_is_used_only_when_a_guest_actually_runs(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """KVM counts only when 64-bit firmware runs under it: OVMF's boot manager line on the
    serial console (a paused start proves nothing: on some nested hosts KVM starts guests
    that hang in long mode). The same firmware under TCG prints it, which shows the line is
    what a running guest prints."""
    need_tool("qemu-system-x86_64", "apt-get install qemu-system-x86")
    ovmf = qemu.find_ovmf()

    def prints_boot_manager(accel: str, cpu: str, seconds: float = 30) -> bool:
        """Whether the firmware prints its boot manager line within `seconds` (stopped as
        soon as it does: OVMF never exits on its own)."""
        log = tmp_path / f"{accel}.log"
        log.touch()
        proc = subprocess.Popen(["qemu-system-x86_64", "-machine", f"q35,accel={accel}",
                                 "-cpu", cpu, "-m", "256", "-nodefaults", "-display", "none",
                                 "-no-reboot", "-bios", ovmf, "-serial", f"file:{log}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and proc.poll() is None:
                if qemu.OVMF_BOOT_MANAGER in log.read_bytes():
                    return True
                time.sleep(0.2)
            return qemu.OVMF_BOOT_MANAGER in log.read_bytes()
        finally:
            proc.kill()
            proc.wait()

    assert prints_boot_manager("tcg", "max")
    qemu.kvm_works.cache_clear()
    works = qemu.kvm_works()
    assert works is (os.access("/dev/kvm", os.R_OK | os.W_OK)
                     and prints_boot_manager("kvm", "host", qemu.KVM_PROBE_SECONDS))
    qemu.kvm_works.cache_clear()
    monkeypatch.setenv("SYNAPSE_NO_KVM", "1")
    assert qemu.kvm_works() is False
    qemu.kvm_works.cache_clear()


def test_missing_image_is_bad_input(tmp_path: Path) -> None:
    res = synapse("vm", "test", str(tmp_path / "none.img"), "--profile",
                  str(REPO / "profiles/cpu-avx2-debian.yaml"))
    assert res.returncode == 2 and "no such image file" in res.stderr


def test_not_a_disk_image_is_bad_input(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    res = synapse("vm", "test", str(junk), "--profile",
                  str(REPO / "profiles/cpu-avx2-debian.yaml"))
    assert res.returncode == 2 and "not a bootable disk image" in res.stderr


def test_missing_qemu_names_the_package(tiny: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sfdisk", "mtype", "mcopy"):  # what reading the image needs, no QEMU
        os.symlink(need_tool(tool, "apt-get install fdisk mtools"), bin_dir / tool)
    env = {**os.environ, "PATH": str(bin_dir)}
    res = synapse("vm", "test", str(tiny), "--profile",
                  str(REPO / "profiles/stock-baseline-debian.yaml"), env=env)
    assert res.returncode == 2, res.stderr
    assert "apt-get install qemu-system-x86" in res.stderr


def test_unbootable_kernel_is_an_infrastructure_failure(tiny: Path) -> None:
    need_tool("qemu-system-x86_64", "apt-get install qemu-system-x86")
    res = synapse("vm", "test", str(tiny), "--profile",
                  str(REPO / "profiles/stock-baseline-debian.yaml"), "--boot-timeout", "60")
    assert res.returncode == 1, res.stderr
    assert "infrastructure failure, not an assertion failure" in res.stderr
    assert "QEMU exited" in res.stderr
    assert not qemu_pids_for(str(tiny))


@pytest.mark.slow
def test_firmware_that_finds_no_loader_times_out_with_the_console_tail(tiny: Path,
                                                                        tmp_path: Path) -> None:
    need_tool("qemu-system-x86_64", "apt-get install qemu-system-x86")
    junit = tmp_path / "junit.xml"
    res = synapse("vm", "test", str(tiny), "--uefi", "--profile",
                  str(REPO / "profiles/stock-baseline-debian.yaml"), "--boot-timeout", "20",
                  "--junit", str(junit))
    assert res.returncode == 1
    assert "did not boot to its test shell within 20 s" in res.stderr
    assert "last serial console lines" in res.stderr
    assert "errors=\"1\"" in junit.read_text()
    assert not qemu_pids_for(str(tiny))


def test_qemu_dies_with_the_driver_even_when_it_is_killed(tiny: Path) -> None:
    """SIGKILL leaves no chance to clean up: PR_SET_PDEATHSIG must take QEMU down."""
    need_tool("qemu-system-x86_64", "apt-get install qemu-system-x86")
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from synapse_os.vm.machine import Machine
        m = Machine(Path({str(tiny)!r}), uefi=True)
        m.start()
        print(m.pid, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    qemu_pid = int(child.stdout.readline())
    assert alive(qemu_pid)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    deadline = time.monotonic() + 10
    while alive(qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(qemu_pid)


def test_sigterm_cleans_up_qemu_and_its_temp_dir(tiny: Path) -> None:
    need_tool("qemu-system-x86_64", "apt-get install qemu-system-x86")
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from synapse_os.vm.machine import Machine, install_signal_handlers
        install_signal_handlers()
        with Machine(Path({str(tiny)!r}), uefi=True) as m:
            m.start()
            print(m.pid, m.workdir, flush=True)
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    pid_text, workdir = child.stdout.readline().split()
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=20)
    assert not alive(int(pid_text))
    assert not Path(workdir).exists()


def test_vm_run_puts_the_serial_console_on_the_terminal(tiny: Path) -> None:
    """`synapse vm run` streams the guest's serial console (here: firmware output)."""
    need_tool("qemu-system-x86_64", "apt-get install qemu-system-x86")
    proc = subprocess.Popen([sys.executable, "-m", "synapse_os.cli", "vm", "run", str(tiny),
                             "--uefi"], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(20)
    finally:
        proc.kill()
        out, err = proc.communicate(timeout=30)
    assert b"booting" in err and b"Ctrl-a x" in err
    assert out.strip(), "nothing arrived from the serial console"
    deadline = time.monotonic() + 10
    while qemu_pids_for(str(tiny)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not qemu_pids_for(str(tiny))


def test_paths_with_a_comma_reach_qemu_as_one_value(tmp_path: Path) -> None:
    """QEMU ends an option value at a comma: paths are passed with commas doubled, so a
    directory like `runs,2` cannot cut a -drive short or add options to it."""
    need_tool("qemu-system-x86_64", "apt-get install qemu-system-x86")
    where = tmp_path / "runs,readonly=off"
    where.mkdir()
    disk = where / "d.img"
    with disk.open("wb") as fh:
        fh.truncate(16 * 1024 * 1024)
    cfg = qemu.QemuConfig(image=disk, serial_log=where / "s.log", shell_socket=None,
                          readonly_disks={"synapse-bench": disk})
    argv = [a for a in cfg.argv() if a not in ("-bios", qemu.find_ovmf())]
    escaped = str(disk).replace(",", ",,")
    assert f"file={escaped},if=none,id=ro0,format=raw,readonly=on" in argv
    run = subprocess.run(["timeout", "5", *argv, "-S"], capture_output=True, text=True)
    assert run.returncode == 124, run.stderr  # still running when stopped: every value parsed
