"""The systemd sandboxing of the inference service, declared once: the engine units render
it (service-tuning.j2) and the GGUF inspection runs under the same options in a transient
unit (`systemd-run`, model/sandbox.py) where systemd is the init system."""

from __future__ import annotations

from typing import Literal

STATE_DIR = "/var/lib/synapse/runtime"


def hardening(sandboxing: Literal["strict", "basic", "none"], gpu: bool = False,
              realtime: bool = False,
              state_dir: str | None = STATE_DIR) -> list[tuple[str, tuple[str, ...]]]:
    """(setting, value words) of a service's [Service] section, in unit-file order."""
    return [(key, tuple(value.split())) for key, value in _settings(sandboxing, gpu, realtime,
                                                                   state_dir)]


def _settings(sandboxing: str, gpu: bool, realtime: bool,
              state_dir: str | None) -> list[tuple[str, str]]:
    if sandboxing == "none":
        return []
    out = [("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
           ("ProtectSystem", "strict" if sandboxing == "strict" else "full")]
    if state_dir is not None:
        out.append(("ReadWritePaths", state_dir))
    out += [("ProtectKernelModules", "yes"), ("ProtectControlGroups", "yes"),
            ("RestrictSUIDSGID", "yes"), ("LockPersonality", "yes")]
    if sandboxing != "strict":
        return out
    out += [("ProtectKernelTunables", "yes"), ("ProtectKernelLogs", "yes"),
            ("ProtectClock", "yes"), ("ProtectHostname", "yes"), ("ProtectProc", "invisible"),
            ("PrivateDevices", "no" if gpu else "yes"), ("RestrictNamespaces", "yes")]
    if not realtime:
        out.append(("RestrictRealtime", "yes"))
    out += [("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
            ("SystemCallArchitectures", "native"), ("SystemCallFilter", "@system-service"),
            ("CapabilityBoundingSet", "")]
    return out
