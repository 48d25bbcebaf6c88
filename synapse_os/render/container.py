"""The engine's container (`runtime.isolation: nspawn`), declared once: the unit renders
these words and the live check knows the engine by its systemd-nspawn parent.

systemd-nspawn --volatile=yes on / gives a tmpfs root holding only the host's /usr
(read-only); what the engine needs beyond it is bound in, read-only but for its state
directory. --private-network leaves it the loopback device alone: the API socket is
opened by systemd (the .socket unit) and reaches the engine as LISTEN_FDS through nspawn.
--keep-unit keeps the container in the service's cgroup (MemoryHigh, the unit's
processes); the engine runs as the runtime's user, not as root.
"""

from __future__ import annotations

from synapse_os.profile.model import RUNTIME_CONFIG_DIR, RUNTIME_STATE, Runtime

NSPAWN = "/usr/bin/systemd-nspawn"
SYSTEMD_NOTIFY = "/run/systemd/notify"  # the socket systemd reads its services' READY=1 on
CONTAINER_NOTIFY = "/run/host/systemd-notify"


def nspawn_words(rt: Runtime, threads: int | None, synapse_bin: str) -> list[str]:
    """systemd-nspawn and its options, up to the `--` before the engine's command
    (`synapse_bin`, in the venv that is bound in)."""
    venv = synapse_bin.rsplit("/bin/", 1)[0]
    words = [NSPAWN, "--quiet", "--keep-unit", "--register=no", "--volatile=yes",
             "--directory=/", "--private-network", "--console=pipe", "--notify-ready=yes",
             "--kill-signal=SIGTERM", f"--user={rt.user}",
             # the host's setuid programs are in /usr: they cannot raise the engine again
             "--no-new-privileges=yes",
             # READY=1 goes straight to systemd (NotifyAccess=all): nspawn's own notify
             # socket takes only the container's root, and the engine is not root
             f"--bind-ro={SYSTEMD_NOTIFY}:{CONTAINER_NOTIFY}",
             f"--setenv=NOTIFY_SOCKET={CONTAINER_NOTIFY}"]
    # the user's name resolves inside (nspawn --user), the venv and the config are read
    for path in ("/etc/passwd", "/etc/group", RUNTIME_CONFIG_DIR, venv, *rt.container_binds()):
        words.append(f"--bind-ro={path}")
    words.append(f"--bind={RUNTIME_STATE}")
    if rt.mlock:  # nspawn's own seccomp filter refuses mlock to a container without it
        words += ["--rlimit=RLIMIT_MEMLOCK=infinity", "--system-call-filter=@memlock"]
    if threads:
        words.append(f"--setenv=OMP_NUM_THREADS={threads}")
    return [*words, "--"]

