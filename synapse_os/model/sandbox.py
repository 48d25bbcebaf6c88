"""Run probe.py on an untrusted GGUF in a locked-down child process.

Where systemd is the init system (and we are root) the probe runs as a transient unit
(`systemd-run`) with the runtime unit's own hardening plus no network, a dynamic user and
the limits below (`unit_properties`). Elsewhere, what the child gets, set up by the
parent before the probe runs (preexec, so the probe cannot forget any of it):
- no network: a new, empty network namespace (unshare(CLONE_NEWNET); as a non-root user
  together with a new user namespace where the kernel allows it);
- no writes: the file arrives as an already-open read-only descriptor; the child runs in
  an empty directory it cannot write, with RLIMIT_FSIZE small and no_new_privs; when we are
  root, in its own mount namespace where every file system is read-only, then as `nobody`
  (no supplementary groups) when nobody can run this interpreter, else as root with every
  capability dropped;
- limits: RLIMIT_AS (address space), RLIMIT_CPU, RLIMIT_NOFILE, no core dumps, and a
  wall-clock timeout after which the whole process group is killed;
- a seccomp filter (x86_64) refusing the system calls a parser never needs (DENIED_SYSCALLS)
  and every socket family but AF_UNIX;
- a clean environment and `python -I -B` (no user site, no PYTHON* variables, no .pyc).

The child's output is capped and treated as untrusted (inspect.py checks every field).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import pwd
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from synapse_os.errors import OperationError

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 share the generic number
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MS_PRIVATE = 1 << 18
CAP_VERSION_3 = 0x20080522
ADDRESS_SPACE = 2 << 30
CPU_SECONDS = 60
# Not 0: libffi writes the trampolines of ctypes callbacks (llama-cpp-python makes one at
# import) into a memfd where it may not map anonymous memory writable and executable, as
# for `nobody`; the read-only mounts already keep every file system from being written.
FILE_SIZE = 16 << 20
TIMEOUT_S = 120.0
OUTPUT_CAP = 1 << 20
INSTALL = "pip install -e '.[runtime,model]'  (llama-cpp-python reads the GGUF)"


@dataclass
class ProbeResult:
    data: dict[str, Any] | None  # the child's JSON object, or None when it printed none
    returncode: int
    stderr_tail: str
    seconds: float
    sandbox: dict[str, Any] = field(default_factory=dict)


def _world_usable(path: str) -> bool:
    """Whether any user can reach `path` (every directory above it searchable by others)."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(2, len(parts) + 1):
        try:
            st = os.stat("/".join(parts[:i]) or "/")
        except OSError:
            return False
        need = 0o005 if i == len(parts) else 0o001
        if st.st_mode & need != need:
            return False
    return True


def _nobody() -> tuple[int, int] | None:
    """nobody's uid/gid when we are root and nobody can run this Python and import the
    probe and llama-cpp-python; None otherwise (the probe then runs as root without
    capabilities). Either way, as root, every file system is read-only in its view."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    import synapse_os

    spec = importlib.util.find_spec("llama_cpp")
    needed = [sys.executable, os.path.dirname(synapse_os.__file__),
              os.path.dirname(spec.origin) if spec and spec.origin else "/nonexistent"]
    return (pw.pw_uid, pw.pw_gid) if all(map(_world_usable, needed)) else None


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _read_only_mounts(libc: ctypes.CDLL) -> str:
    """In a new mount namespace, make every mount read-only (recursively, and private so
    nothing propagates back). Needs CAP_SYS_ADMIN: called as root, before dropping it."""
    if libc.unshare(CLONE_NEWNS) != 0:
        return f"writable (unshare: {os.strerror(ctypes.get_errno())})"
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, MS_PRIVATE, 0)
    if libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr),
                    ctypes.sizeof(attr)) != 0:
        return f"writable (mount_setattr: {os.strerror(ctypes.get_errno())})"
    return "read-only mount namespace"


def _drop_capabilities(libc: ctypes.CDLL) -> str:
    """Give up every capability (bounding, effective, permitted, inheritable), so a root
    child can neither remount anything writable nor override file permissions."""
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(_CapHeader(CAP_VERSION_3, 0)), data) != 0:
        return f"root, capabilities kept (capset: {os.strerror(ctypes.get_errno())})"
    return "root without capabilities"


# x86_64 system calls a GGUF parser never needs and an exploit would: kernel attack surface
# (bpf, io_uring, userfaultfd, perf_event_open, keyrings), namespaces and mounts, modules,
# tracing and other processes' memory. They fail with EPERM; so does socket() for any family
# but AF_UNIX (glibc's name service lookups use that one).
DENIED_SYSCALLS = {
    "ptrace": 101, "chroot": 161, "pivot_root": 155, "mount": 165, "umount2": 166,
    "swapon": 167, "swapoff": 168, "reboot": 169, "init_module": 175, "delete_module": 176,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
    "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
    "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}
SOCKET_SYSCALL = 41
AF_UNIX = 1
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO_EPERM = 0x00050000 | 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_program() -> list[tuple[int, int, int, int]]:
    """The classic-BPF filter over seccomp_data (nr at offset 0, arch at 4, args[0] at 16):
    another architecture is killed, x32 calls and DENIED_SYSCALLS fail with EPERM, socket()
    only for AF_UNIX."""
    denied = sorted(DENIED_SYSCALLS.values())
    n = len(denied)
    prog = [(BPF_LD_W_ABS, 0, 0, 4), (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
            (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS), (BPF_LD_W_ABS, 0, 0, 0)]
    # every jump lands on the EPERM return after the socket check (index n + 7)
    prog.append((BPF_JGE_K, n + 2, 0, X32_SYSCALL_BIT))
    prog += [(BPF_JEQ_K, n - i + 1, 0, nr) for i, nr in enumerate(denied)]
    prog += [(BPF_JEQ_K, 2, 0, SOCKET_SYSCALL),  # -> the family check
             (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
             (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO_EPERM),
             (BPF_LD_W_ABS, 0, 0, 16), (BPF_JEQ_K, 0, 1, AF_UNIX),
             (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO_EPERM)]
    return prog


def _seccomp(libc: ctypes.CDLL) -> str:
    """Install seccomp_program() (after no_new_privs); what it did, for the record."""
    if os.uname().machine != "x86_64":
        return f"unfiltered (no seccomp table for {os.uname().machine})"
    prog = seccomp_program()
    filters = (_SockFilter * len(prog))(*(_SockFilter(*ins) for ins in prog))
    fprog = _SockFprog(len(prog), filters)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        return f"unfiltered (seccomp: {os.strerror(ctypes.get_errno())})"
    return f"seccomp: {len(DENIED_SYSCALLS)} calls and non-AF_UNIX sockets refused"


def _preexec(drop_to: tuple[int, int] | None, status_fd: int) -> Any:
    def setup() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
        network = "new namespace" if libc.unshare(flags) == 0 else \
            f"shared (unshare: {os.strerror(ctypes.get_errno())})"
        for res, value in ((resource.RLIMIT_AS, ADDRESS_SPACE),
                           (resource.RLIMIT_CPU, CPU_SECONDS),
                           (resource.RLIMIT_FSIZE, FILE_SIZE),
                           (resource.RLIMIT_NOFILE, 64),
                           (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(res, (value, value))
        user, files = "unchanged", "unchanged"
        if os.geteuid() == 0:
            files = _read_only_mounts(libc)
            if drop_to is not None:
                os.setgroups([])
                os.setgid(drop_to[1])
                os.setuid(drop_to[0])
                user = "nobody"
            else:
                user = _drop_capabilities(libc)
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        syscalls = _seccomp(libc)
        os.write(status_fd, json.dumps({"network": network, "user": user, "files": files,
                                        "syscalls": syscalls}).encode())
        os.close(status_fd)
    return setup


def _read_capped(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes, bool]:
    """stdout and stderr of proc, each capped at OUTPUT_CAP; True when the deadline passed."""
    assert proc.stdout is not None and proc.stderr is not None
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    open_fds = set(bufs)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), True
        ready, _, _ = select.select(list(open_fds), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
            elif len(bufs[fd]) < OUTPUT_CAP:
                bufs[fd] += chunk[: OUTPUT_CAP - len(bufs[fd])]
    return bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]), False


def _wait_capped(proc: subprocess.Popen[bytes], deadline: float,
                 on_timeout: Callable[[], object] | None = None
                 ) -> tuple[bytes, bytes, bool, int]:
    """(stdout, stderr, timed out, exit code) of proc; past the deadline `on_timeout` runs
    and the whole process group is killed, as it is on any error."""
    try:
        out, err, timed_out = _read_capped(proc, deadline)
        if timed_out:
            if on_timeout is not None:
                on_timeout()
            os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out, err, timed_out, returncode


def run_probe(fd: int) -> ProbeResult:
    """Inspect the file open read-only at `fd`: in a transient systemd unit with the runtime
    unit's hardening where systemd is the init system and we are root, else in the
    namespace, rlimit and seccomp sandbox."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise OperationError(f"llama-cpp-python is needed to inspect a GGUF; run: {INSTALL}") \
            from None
    probe = [sys.executable, "-I", "-B", "-m", "synapse_os.model.probe"]
    runner = systemd_run()
    if runner is not None:
        return in_transient_unit(runner, [*probe, "0"], fd)
    return sandboxed([*probe, str(fd)], fd)


def systemd_run() -> str | None:
    if os.geteuid() != 0 or not os.path.isdir("/run/systemd/system"):
        return None
    return shutil.which("systemd-run")


def unit_properties() -> list[str]:
    """The runtime unit's strict hardening (render/hardening.py) with no state directory and
    local sockets only, plus what a parser of untrusted files needs on top: no network, a
    user of its own, the same limits as the fallback sandbox, and a run-time limit."""
    from synapse_os.render.hardening import hardening

    props = [f"{key}={' '.join(words)}" for key, words in hardening("strict", state_dir=None)
             if key != "RestrictAddressFamilies"]
    return props + [
        "RestrictAddressFamilies=AF_UNIX", "PrivateNetwork=yes", "IPAddressDeny=any",
        "DynamicUser=yes", f"MemoryMax={ADDRESS_SPACE}", f"LimitAS={ADDRESS_SPACE}",
        f"LimitCPU={CPU_SECONDS}", f"LimitFSIZE={FILE_SIZE}", "LimitNOFILE=64", "LimitCORE=0",
        f"RuntimeMaxSec={int(TIMEOUT_S)}"]


def in_transient_unit(runner: str, argv: list[str], fd: int) -> ProbeResult:
    """Run argv as a transient service with `fd` as its standard input (systemd-run --pipe
    hands the descriptor itself over, so the probe reads fd 0)."""
    unit = f"synapse-model-probe-{os.getpid()}-{time.monotonic_ns()}.service"
    started = time.monotonic()
    cmd = [runner, "--pipe", "--wait", "--collect", "--quiet", "--service-type=exec",
           f"--unit={unit}", *(f"--property={p}" for p in unit_properties()), "--", *argv]
    proc = subprocess.Popen(cmd, stdin=fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, close_fds=True,
                            start_new_session=True)
    out, err, timed_out, returncode = _wait_capped(
        proc, started + TIMEOUT_S + 10,
        lambda: subprocess.run(["systemctl", "kill", "--signal=SIGKILL", unit], check=False,
                               capture_output=True))
    text = err.decode("utf-8", "replace")
    if "Failed to start transient service unit" in text:
        raise OperationError(f"the inspection sandbox could not be started (systemd-run: "
                             f"{text.strip().splitlines()[-1]}); nothing was copied")
    sandbox = {"runner": "systemd-run", "unit": unit, "network": "PrivateNetwork=yes",
               "user": "DynamicUser=yes", "files": "ProtectSystem=strict",
               "syscalls": "SystemCallFilter=@system-service",
               "address_space_bytes": ADDRESS_SPACE, "cpu_seconds": CPU_SECONDS,
               "file_size_limit": FILE_SIZE, "timeout_s": TIMEOUT_S}
    return _result(out, text, returncode, timed_out, started, sandbox)


def sandboxed(argv: list[str], fd: int, timeout_s: float = TIMEOUT_S) -> ProbeResult:
    """Run argv in the sandbox with `fd` (read-only; -1 for none) as its only inherited
    file besides stdout and stderr."""
    drop_to = _nobody()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="synapse-probe-") as cwd:
        os.chmod(cwd, 0o555)  # empty and not writable, even by its owner
        status_r, status_w = os.pipe()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd}
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd, env=env, pass_fds=(status_w,) if fd < 0 else (fd, status_w), close_fds=True,
            preexec_fn=_preexec(drop_to, status_w), start_new_session=True)
        os.close(status_w)
        out, err, timed_out, returncode = _wait_capped(proc, started + timeout_s)
        with os.fdopen(status_r, "rb") as fh:
            status = fh.read(4096)
    try:
        sandbox = json.loads(status) if status else {}
    except ValueError:
        sandbox = {}
    sandbox.update({"runner": "namespaces", "address_space_bytes": ADDRESS_SPACE,
                    "cpu_seconds": CPU_SECONDS, "file_size_limit": FILE_SIZE,
                    "timeout_s": timeout_s})
    return _result(out, err.decode("utf-8", "replace"), returncode, timed_out, started, sandbox)


def _result(out: bytes, err: str, returncode: int, timed_out: bool, started: float,
            sandbox: dict[str, Any]) -> ProbeResult:
    """The child's last stdout line as its JSON object (None when it printed none)."""
    data: dict[str, Any] | None = None
    lines = out.decode("utf-8", "replace").strip().splitlines()
    if lines and not timed_out:
        try:
            parsed = json.loads(lines[-1])
            data = parsed if isinstance(parsed, dict) else None
        except ValueError:
            data = None
    if timed_out:
        returncode = -int(signal.SIGKILL)
        sandbox["timed_out"] = True
    return ProbeResult(data, returncode, err[-400:], time.monotonic() - started, sandbox)
