"""A QEMU guest driven like the NixOS test driver.

The test image runs a root shell on a virtio serial port (no tty: no echo, no line
limit). Every command is sent base64-encoded and its output comes back base64-encoded in
one framed line, `@@SYN <id> <exit code> <base64>`, so guest output can never be
mistaken for protocol. Infrastructure failures (QEMU exits, the guest never boots, the
console goes silent) raise `InfraError` with the last serial console lines; a command
that runs and fails raises `CommandFailed`. QEMU dies with us: it is killed on close, at
interpreter exit, on SIGTERM, and by the kernel (PR_SET_PDEATHSIG) if we are killed.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from synapse_os.errors import OperationError
from synapse_os.image import disk
from synapse_os.vm.qemu import QemuConfig, find_ovmf_flash, kvm_works

READY = b"@@SYNAPSE-SHELL-READY@@"
FRAME = re.compile(rb"@@SYN (\d+) (\d+) ([A-Za-z0-9+/=]*)\n")
CONSOLE_TAIL = 30

_LIVE: set[Machine] = set()


class InfraError(OperationError):
    """The VM itself failed: no boot, QEMU died, console lost (not an assertion failure)."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        self.console_tail = console_tail
        text = message
        if console_tail:
            text += "\n--- last serial console lines ---\n" + console_tail
        super().__init__(text)


class CommandFailed(OperationError):
    """A guest command did not give the result the test required."""

    def __init__(self, command: str, returncode: int, output: str, why: str = "") -> None:
        self.command = command
        self.returncode = returncode
        self.output = output
        super().__init__(
            f"guest command {why or f'exited {returncode}'}: {command}"
            + (f"\n{output.rstrip()[-2000:]}" if output.strip() else "")
        )


def _die_with_parent() -> None:
    """preexec_fn: the kernel kills the child when this process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill_all() -> None:
    for machine in list(_LIVE):
        machine.close()


atexit.register(_kill_all)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP become SystemExit so `with Machine(...)` blocks clean up."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


class Machine:
    def __init__(
        self,
        image: Path,
        *,
        uefi: bool = False,
        kvm: bool | None = None,
        memory_mb: int = 2048,
        cpus: int = 2,
        extra_append: str = "",
        append_override: str | None = None,
        workdir: Path | None = None,
        keep_log: Path | None = None,
        forwards: dict[int, int] | None = None,
        nvme: bool = True,
        readonly_disks: dict[str, Path] | None = None,
        host_cpus: str | None = None,
        hugepages: bool = False,
        snapshot: bool = True,
        reboots: bool = False,
    ) -> None:
        """snapshot=False: the guest writes to the image itself (a test that reboots it by
        starting another Machine on the same image, e.g. after `power_cut`). reboots=True
        (UEFI only): the guest may reboot itself, and keeps its firmware variables across
        reboots; wait for the test shell again after each."""
        self.image = Path(image)
        self.meta = disk.read_metadata(self.image)
        if not self.meta.get("test"):
            raise OperationError(
                f"{self.image}: is not a test image (no driver shell); rebuild it with "
                "`synapse image build --test`"
            )
        self.kvm = kvm_works() if kvm is None else kvm
        self.uefi = uefi
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="synapse-vm."))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log = self.workdir / "serial.log"
        self.keep_log = keep_log
        self.socket_path = self.workdir / "shell.sock"
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.forwards = dict(forwards or {})
        self.nvme = nvme
        self.readonly_disks = dict(readonly_disks or {})
        self.host_cpus = host_cpus
        self.hugepages = hugepages
        self.snapshot = snapshot
        if reboots and not uefi:
            raise ValueError("a guest that reboots itself boots through UEFI")
        self.reboots = reboots
        cmdline = append_override if append_override is not None else str(self.meta["cmdline"])
        self.append = " ".join(w for w in (cmdline, extra_append) if w)
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buf = b""
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._eof = False
        self._next_id = 0
        self._ready_count = 0
        self.boot_seconds: float | None = None

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> Machine:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        config = QemuConfig(image=self.image, serial_log=self.serial_log,
                            shell_socket=self.socket_path, memory_mb=self.memory_mb,
                            cpus=self.cpus, kvm=self.kvm, forwards=self.forwards,
                            readonly_disks=self.readonly_disks, host_cpus=self.host_cpus,
                            hugepages=self.hugepages, snapshot=self.snapshot,
                            reboot=self.reboots)
        if self.reboots:
            config.efi_vars = self.workdir / "efi-vars.fd"
            shutil.copyfile(find_ovmf_flash()[1], config.efi_vars)
        if self.nvme:  # sparse: an empty namespace (udev's queue rules, zram's backing device)
            config.nvme_disk = self.workdir / "nvme-scratch.img"
            with config.nvme_disk.open("wb") as fh:
                fh.truncate(64 * 1024 * 1024)
        if not self.uefi:
            disk.extract(self.image, [str(self.meta["kernel"]), str(self.meta["initrd"])],
                         self.workdir)
            config.kernel = self.workdir / Path(str(self.meta["kernel"])).name
            config.initrd = self.workdir / Path(str(self.meta["initrd"])).name
            config.append = self.append
        self.serial_log.touch()
        self._started = time.monotonic()
        qemu_log = (self.workdir / "qemu.log").open("wb")
        _LIVE.add(self)
        self.proc = subprocess.Popen(config.argv(), stdin=subprocess.DEVNULL, stdout=qemu_log,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        qemu_log.close()
        self._connect()

    def _connect(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive("before its console socket appeared")
            if self.socket_path.exists():
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(str(self.socket_path))
                except OSError:
                    sock.close()
                else:
                    self._sock = sock
                    self._reader = threading.Thread(target=self._read_loop, daemon=True)
                    self._reader.start()
                    return
            time.sleep(0.05)
        raise InfraError("QEMU did not open the test shell socket within "
                         f"{timeout:.0f} s", self.console_tail())

    def _read_loop(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._buf += data
                self._cond.notify_all()

    def close(self) -> None:
        _LIVE.discard(self)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.keep_log is not None and self.serial_log.exists():
            try:
                self.keep_log.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.serial_log, self.keep_log)
            except OSError:
                pass
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def power_cut(self) -> None:
        """Stop the guest like a power cut: QEMU is killed, so what the guest had not yet
        written to its disk is lost and nothing is unmounted."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def console_tail(self, lines: int = CONSOLE_TAIL) -> str:
        try:
            text = self.serial_log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def _check_alive(self, when: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            qemu_out = ""
            with contextlib.suppress(OSError):
                qemu_out = (self.workdir / "qemu.log").read_text(errors="replace").strip()
            raise InfraError(
                f"QEMU exited with code {self.proc.returncode} {when}"
                + (f" ({qemu_out.splitlines()[-1]})" if qemu_out else ""),
                self.console_tail(),
            )

    # -- boot ------------------------------------------------------------------------
    def wait_for_shell(self, timeout: float = 600) -> float:
        """Wait until the guest's test shell announces itself; return seconds since start."""
        self._wait_bytes(lambda: self._buf.count(READY) >= 1, timeout,
                         "the guest did not boot to its test shell")
        with self._cond:
            self._ready_count = self._buf.count(READY)
            self._buf = self._buf[self._buf.rfind(READY) + len(READY):]
        self.boot_seconds = time.monotonic() - self._started
        return self.boot_seconds

    def _wait_bytes(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise InfraError(f"{what} within {timeout:.0f} s", self.console_tail())
                if self._eof:
                    self._cond.release()
                    try:
                        if self.proc is not None:  # the socket closes just before QEMU exits
                            with contextlib.suppress(subprocess.TimeoutExpired):
                                self.proc.wait(timeout=5)
                        self._check_alive(f"while waiting: {what}")
                    finally:
                        self._cond.acquire()
                    raise InfraError(f"the console connection closed: {what}",
                                     self.console_tail())
                self._cond.wait(timeout=min(remaining, 1.0))
                if self.proc is not None and self.proc.poll() is not None:
                    self._cond.release()
                    try:
                        self._check_alive(f"({what})")
                    finally:
                        self._cond.acquire()

    # -- commands --------------------------------------------------------------------
    def execute(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """Run `command` with bash in the guest: (exit code, stdout+stderr)."""
        if self._sock is None:
            raise InfraError("the VM is not running (start() it first)")
        self._next_id += 1
        cid = self._next_id
        payload = base64.b64encode(command.encode()).decode()
        limit = max(1, int(timeout))
        line = (
            f"echo {payload} | base64 -d > /run/synapse-cmd; "
            f"timeout -s KILL {limit} bash /run/synapse-cmd < /dev/null > /run/synapse-out 2>&1; "
            f"printf '\\n@@SYN %d %d %s\\n' {cid} \"$?\" \"$(base64 -w0 < /run/synapse-out)\"\n"
        )
        try:
            self._sock.sendall(line.encode())
        except OSError as exc:
            raise InfraError(f"lost the guest console while sending a command ({exc})",
                             self.console_tail()) from None
        found: list[re.Match[bytes]] = []

        def done() -> bool:
            if self._buf.count(READY) > 0:
                raise InfraError("the guest's test shell restarted (it crashed or was killed)",
                                 self.console_tail())
            for m in FRAME.finditer(self._buf):
                if int(m.group(1)) == cid:
                    found.append(m)
                    return True
            return False

        self._wait_bytes(done, timeout + 30, f"no answer from the guest to: {command[:200]}")
        m = found[0]
        with self._cond:
            self._buf = self._buf[m.end():]
        output = base64.b64decode(m.group(3)).decode("utf-8", "replace")
        return int(m.group(2)), output

    def succeed(self, command: str, timeout: float = 120) -> str:
        rc, out = self.execute(command, timeout)
        if rc != 0:
            raise CommandFailed(command, rc, out)
        return out

    def fail(self, command: str, timeout: float = 120) -> str:
        rc, out = self.execute(command, timeout)
        if rc == 0:
            raise CommandFailed(command, rc, out, why="succeeded but was expected to fail")
        return out

    def wait_until_succeeds(self, command: str, timeout: float = 300,
                            interval: float = 1.0) -> str:
        deadline = time.monotonic() + timeout
        rc, out = 1, ""
        while time.monotonic() < deadline:
            rc, out = self.execute(command, timeout=max(5.0, deadline - time.monotonic()))
            if rc == 0:
                return out
            time.sleep(interval)
        raise CommandFailed(command, rc, out, why=f"did not succeed within {timeout:.0f} s")

    def wait_for_unit(self, unit: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        q = shlex.quote(unit)
        state = ""
        while time.monotonic() < deadline:
            _, state = self.execute(f"systemctl is-active {q}", timeout=30)
            state = state.strip()
            if state == "active":
                return
            if state == "failed":
                _, status = self.execute(
                    f"systemctl status --no-pager -n 30 {q}; journalctl -b --no-pager -n 30 -u {q}",
                    timeout=30)
                raise CommandFailed(f"systemctl is-active {unit}", 3, status,
                                    why=f"found unit {unit} failed")
            time.sleep(1.0)
        _, jobs = self.execute("systemctl list-jobs --no-pager | head -n 20", timeout=30)
        raise InfraError(
            f"unit {unit} did not become active within {timeout:.0f} s (state: {state or '?'}); "
            f"pending jobs:\n{jobs.rstrip()}",
            self.console_tail(),
        )

    def wait_for_open_port(self, port: int, timeout: float = 300) -> None:
        self.wait_until_succeeds(f"ss -Hltn 'sport = :{int(port)}' | grep -q .", timeout)

    def shutdown(self, timeout: float = 120) -> None:
        """Power the guest off and wait for QEMU to exit (killed if it does not)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(b"systemctl poweroff --no-block\n")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise InfraError(f"the guest did not power off within {timeout:.0f} s",
                             self.console_tail()) from None
