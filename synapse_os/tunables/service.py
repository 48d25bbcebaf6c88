"""The engine's unit properties, read from its running process (not the unit file, whose
hash the file checks already compare). The unit itself is rendered by render's runtime
step; a change restarts the engine (apply.activate)."""

from __future__ import annotations

import shlex

from synapse_os.profile.model import ENGINE_UNITS, Profile
from synapse_os.tunables.base import SYSTEMD_UP, UNKNOWN_RC, Check, Tunable, starting
from synapse_os.tunables.state import SystemState

POLICY_CLASS = {"other": "TS", "batch": "B", "idle": "IDL", "fifo": "FF", "rr": "RR"}
PAGE_SIZE = 4096  # cgroup memory.high is kept in pages and read back rounded down
SERVICE_PROBES = {
    "Nice": 'ps -o ni= -p "$pid"',
    "CPUSchedulingPolicy": 'ps -o cls= -p "$pid"',
    "OOMScoreAdjust": 'cat "/proc/$pid/oom_score_adj"',
    "User": 'ps -o user:64= -p "$pid"',  # wide enough that ps never shows a uid instead
    # the process's locked memory (VmLck) covers its mappings of .gguf files (smaps, whose
    # own Locked: is shared out between mappings of one file); unknown before a model loads
    "LockedModels": (starting('"$unit"') + " m=$(awk "
                     "'/^[0-9a-f]+-[0-9a-f]+ / {g = ($6 ~ /[.]gguf$/)} "
                     "g && /^Size:/ {s += $2} END {print s + 0}' \"/proc/$pid/smaps\"); "
                     f'[ "$m" -gt 0 ] || {{ echo "no model loaded yet"; exit {UNKNOWN_RC}; }}; '
                     "l=$(awk '/^VmLck:/ {print $2}' \"/proc/$pid/status\"); "
                     '[ "${l:-0}" -ge "$m" ] && echo locked || echo "${l:-0} of $m kB locked"'),
    "CPUAffinity": "awk '/^Cpus_allowed_list:/ {print $2}' \"/proc/$pid/status\"",
    # the engine is in a container: a child of systemd-nspawn with its own PID and network
    # namespaces (nothing but loopback of its own)
    "Isolation": ('[ "$nspawn" = 1 ] '
                  '&& [ "$(readlink "/proc/$pid/ns/pid")" != "$(readlink /proc/1/ns/pid)" ] '
                  '&& [ "$(readlink "/proc/$pid/ns/net")" != "$(readlink /proc/1/ns/net)" ] '
                  '&& echo nspawn || echo none'),
    "MemoryHigh": (f'cg=$(systemctl show -p ControlGroup --value "$unit"); '
                   f'[ -r "/sys/fs/cgroup$cg/memory.high" ] || exit {UNKNOWN_RC}; '
                   'cat "/sys/fs/cgroup$cg/memory.high"'),
}


def probe(unit: str, prop: str) -> str:
    """Runs against the engine: the unit's main process, or the process systemd-nspawn (the
    main process of an isolated engine) runs; 'unknown' where it is not running."""
    return (f"{SYSTEMD_UP} unit={shlex.quote(unit)}; "
            'pid=$(systemctl show -p MainPID --value "$unit" 2>/dev/null); '
            f'[ "${{pid:-0}}" -gt 0 ] 2>/dev/null || {{ echo "$unit is not running"; '
            f"exit {UNKNOWN_RC}; }}; nspawn=0; "
            'if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd-nspawn ]; then nspawn=1; '
            # the container's PID 1, once it is the engine (not nspawn's child setting it up)
            'for c in $(pgrep -P "$pid"); do [ "$(awk \'/^NSpid:/ {print $NF}\' '
            '"/proc/$c/status" 2>/dev/null)" = 1 ] && engine=$c; done; pid=${engine:-}; '
            '{ [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != systemd-nspawn ]; } '
            f'|| {{ echo "its container is starting"; exit {UNKNOWN_RC}; }}; fi; '
            f"{SERVICE_PROBES[prop]}")


def desire(profile: Profile, sources: dict[str, str]) -> dict[str, object]:
    rt = profile.runtime
    if rt is None:
        return {}
    partition = profile.cpu_partition()
    high = profile.memory_high_bytes()
    service: dict[str, str] = {}
    for prop, value, src in (
        ("Nice", rt.nice, "runtime.nice"),
        ("CPUSchedulingPolicy", rt.cpu_scheduling_policy and
         POLICY_CLASS[rt.cpu_scheduling_policy], "runtime.cpu_scheduling_policy"),
        ("OOMScoreAdjust", rt.oom_score_adjust, "runtime.oom_score_adjust"),
        ("MemoryHigh", high and high // PAGE_SIZE * PAGE_SIZE, "runtime.memory_high"),
        ("User", None if rt.engine == "ollama" else rt.user, "runtime.user"),
        ("LockedModels", "locked" if rt.mlock else None, "runtime.mlock"),
        ("CPUAffinity", partition and partition[0], "cpu.inference_cpus"),
        ("Isolation", "nspawn" if rt.isolation == "nspawn" else None, "runtime.isolation"),
    ):
        if value is not None:
            service[prop] = str(value)
            sources[f"service {prop}"] = src
    return {"service_unit": ENGINE_UNITS[rt.engine], "service": service}


def checks(state: SystemState) -> list[Check]:
    out = []
    for prop, value in state.service.items():
        assert state.service_unit is not None
        # locked weights need the models loaded: asserted with the service's own checks
        kind = "service" if prop == "LockedModels" else "unit"
        out.append(Check(f"service {state.service_unit} {prop}", kind,
                         state.sources[f"service {prop}"], value,
                         probe(state.service_unit, prop)))
    return out


TUNABLE = Tunable("service", desire, checks)
