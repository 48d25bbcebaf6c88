"""What to run after files land on a live root, derived from which files changed: each
tunable's own activations (synapse_os.tunables), around the users, tmpfiles, units, the
engine and the boot loader.

Each activation runs only when its inputs changed, and only on the running system
(`--root /`); with `--root DIR` the files (and unit symlinks) are the whole effect.
Changes the running kernel cannot take (command line, boot entries) are reported as
reboot reasons instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from synapse_os import proc
from synapse_os.profile.model import RUNTIME_SOCKET
from synapse_os.tunables import REGISTRY, SystemState, zram
from synapse_os.tunables.base import Activation

RUNTIME_CONFIG = "etc/synapse/runtime.yaml"


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def reboot_reasons(changed: Iterable[str]) -> list[str]:
    reasons: list[str] = []
    for rel in sorted(changed):
        if rel == "etc/kernel/cmdline":
            reasons.append("the kernel command line changed (etc/kernel/cmdline)")
        elif rel.startswith("boot/"):
            reasons.append(f"the boot loader configuration changed ({rel})")
        elif rel.startswith("etc/default/grub"):
            reasons.append(f"the GRUB configuration changed ({rel})")
        elif rel.startswith("etc/systemd/system.conf.d/"):
            reasons.append(f"systemd's own configuration changed ({rel}): it is read at boot")
    return reasons


def plan_activations(changed: Iterable[str], enabled: Iterable[str], disabled: Iterable[str],
                     masked: Iterable[str], state: SystemState,
                     removed: Iterable[str] = ()) -> list[Activation]:
    """Commands for the running system, in dependency order (users before tmpfiles, ...).

    `changed`: paths (relative to /) written or removed; `removed`: those absent after."""
    changed = sorted(set(changed))
    gone = set(removed)
    enabled, disabled, masked = list(enabled), list(disabled), list(masked)
    out: list[Activation] = []
    for rel in changed:
        if rel.startswith("etc/sysusers.d/") and rel not in gone:
            out.append(Activation("sysusers", ("systemd-sysusers", f"/{rel}"), rel))
    with_systemd = systemd_running()
    unit_files = [r for r in changed if r.startswith("etc/systemd/system/") or r == zram.CONFIG]
    if with_systemd and (unit_files or enabled or disabled):
        out.append(Activation("daemon-reload", ("systemctl", "daemon-reload"),
                              ", ".join(unit_files or enabled + disabled)))
    for rel in changed:
        if rel.startswith("etc/tmpfiles.d/") and rel not in gone:
            out.append(Activation("tmpfiles", ("systemd-tmpfiles", "--create", f"/{rel}"), rel))
    for tunable in REGISTRY:
        out.extend(tunable.activate(changed, gone, with_systemd))
    if with_systemd:
        for unit in masked + disabled:
            out.append(Activation("stop", ("systemctl", "stop", unit), f"{unit} masked/disabled",
                                  required=False))
        for unit in enabled:
            # the engine's start or restart starts its socket first (its unit's Requires= and
            # After=), once the engine that listened itself has let the port go
            if unit in state.active and unit != RUNTIME_SOCKET:
                out.append(Activation("start", ("systemctl", "start", unit), f"{unit} enabled",
                                      required=False))
        socket_file = f"etc/systemd/system/{RUNTIME_SOCKET}"
        if socket_file in gone:  # isolation switched off: the engine listens itself again
            out.append(Activation("stop", ("systemctl", "stop", RUNTIME_SOCKET), socket_file,
                                  required=False))
        # a running engine takes a new model or unit on restart; not waited for (it is
        # "activating" until its models are loaded, which verify reports as such)
        engine = state.service_unit
        if engine is not None and engine not in masked + disabled + enabled:
            inputs = [r for r in changed if r == RUNTIME_CONFIG
                      or r.startswith((f"etc/systemd/system/{engine}",
                                       f"etc/systemd/system/{engine}.d/"))]
            if inputs:
                out.append(Activation("restart",
                                      ("systemctl", "try-restart", "--no-block", engine),
                                      ", ".join(inputs)))
    out.extend(_boot_activations(changed))
    return out


def _boot_activations(changed: list[str]) -> list[Activation]:
    """Refresh the boot loader from the changed files, where its tool is installed."""
    out: list[Activation] = []
    if any(r.startswith("etc/default/grub") for r in changed):
        if shutil.which("update-grub"):
            out.append(Activation("grub", ("update-grub",), "etc/default/grub.d"))
        elif shutil.which("grub-mkconfig"):
            out.append(Activation("grub", ("grub-mkconfig", "-o", "/boot/grub/grub.cfg"),
                                  "etc/default/grub.d"))
    if any(r.startswith(("boot/loader/", "boot/efi/loader/", "efi/loader/"))
           or r == "etc/kernel/cmdline"
           for r in changed) \
            and shutil.which("bootctl") \
            and proc.run(["bootctl", "is-installed"], check=False).returncode == 0:
        out.append(Activation("bootctl", ("bootctl", "update", "--graceful"), "boot/loader"))
        release = os.uname().release
        kernel = Path(f"/boot/vmlinuz-{release}")
        if "etc/kernel/cmdline" in changed and shutil.which("kernel-install") and kernel.exists():
            out.append(Activation("kernel-install",
                                  ("kernel-install", "add", release, str(kernel)),
                                  "etc/kernel/cmdline"))
    return out


def run_activations(activations: list[Activation]) -> tuple[list[dict[str, object]], list[str]]:
    """Run each; returns (records, errors). Optional ones that fail become warnings."""
    records: list[dict[str, object]] = []
    errors: list[str] = []
    for act in activations:
        result = proc.run(act.argv, check=False, timeout=120)
        ok = result.returncode == 0
        detail = proc.tail(result.stderr or result.stdout, 5)
        records.append(act.as_dict() | {"ok": ok, "returncode": result.returncode,
                                        "detail": detail, "required": act.required})
        if not ok and act.required:
            errors.append(f"{' '.join(act.argv)} exited {result.returncode}: {detail}")
    return records, errors


# --- live values: kernel settings are not files; remember them so rollback can restore ---

def _sysfs_read(path: str) -> str | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    if "[" in text:  # a choice file: "always [madvise] never" -> "madvise"
        for word in text.split():
            if word.startswith("[") and word.endswith("]"):
                return word[1:-1]
    return text


def live_paths(state: SystemState) -> list[str]:
    return [path for tunable in REGISTRY for path in tunable.live_paths(state)]


def read_live_values(state: SystemState) -> dict[str, str]:
    values: dict[str, str] = {}
    for path in live_paths(state):
        value = _sysfs_read(path)
        if value is not None:
            values[path] = value
    return values


def restore_live_values(values: dict[str, str]) -> list[str]:
    """Write remembered kernel values back; returns warnings for those that would not take."""
    warnings: list[str] = []
    for path, value in values.items():
        if _sysfs_read(path) == value:
            continue
        try:
            with open(path, "w") as fh:
                fh.write(value)
        except OSError as exc:
            warnings.append(f"could not restore {path} to {value!r}: {exc.strerror}")
    return warnings
