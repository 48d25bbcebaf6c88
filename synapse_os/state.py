"""The desired system state a profile declares, and how each piece is checked live.

This is the single source of truth between the profile and everything downstream:
`render` writes files from `SystemState`, and `checks()` derives one live check per
setting from the very same values, so `synapse verify` and the VM assertions cover a
new setting without new code. A check is a POSIX shell probe that prints the live value
(exit 100 = this machine cannot show it, reported as "unknown") plus how to compare it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from synapse_os.profile.model import (
    ENGINE_UNITS,
    HZ_CHOICES,
    NVME_QUEUE_SYSFS,
    OWNED_SYSCTL,
    RUNTIME_SOCKET,
    SYSFS_FIELDS,
    Profile,
    parse_size,
)
from synapse_os.profile.types import cpu_list_text, cpu_set

Match = Literal["equal", "selected", "token", "one_of", "contains"]
UNKNOWN_RC = 100

RUNTIME_UNIT = ENGINE_UNITS["synapse-runtime"]
LLAMA_SERVER_UNIT = ENGINE_UNITS["llama-server"]
NVME_QUEUE_GLOB = NVME_QUEUE_SYSFS
SYSFS_CHOICE = {f.path: f.choice for f in SYSFS_FIELDS}
FSTRIM_TIMER = "fstrim.timer"
# Whether a unit is active can only be read where systemd is PID 1 (not in a chroot/container).
SYSTEMD_UP = f"[ -d /run/systemd/system ] || exit {UNKNOWN_RC};"


@dataclass(frozen=True)
class Check:
    """One live assertion: run `probe` (sh), compare its output with `expected`."""

    id: str
    kind: str
    source: str  # the profile key that declared it
    expected: str
    probe: str
    match: Match = "equal"
    after_reboot: bool = False  # only true once the machine has booted with it

    def evaluate(self, returncode: int, output: str) -> tuple[str, str]:
        """(status, actual) where status is pass | fail | unknown."""
        actual = output.strip()
        if returncode == UNKNOWN_RC:
            return "unknown", actual or "not readable on this machine"
        if returncode != 0:
            return "fail", actual or f"probe exited {returncode}"
        return ("pass" if matches(self.match, self.expected, actual) else "fail"), actual

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def matches(how: Match, expected: str, actual: str) -> bool:
    if how == "equal":
        return actual == expected
    if how == "selected":  # sysfs choice files: "always [madvise] never"
        return f"[{expected}]" in actual.split()
    if how == "token":
        return expected in actual.split()
    if how == "one_of":
        return actual in expected.split("|")
    return expected in actual


def _guarded(path: str, command: str) -> str:
    """Probe that reports 'unknown' when `path` (a glob allowed) does not exist here."""
    return f"ls -d {path} >/dev/null 2>&1 || exit {UNKNOWN_RC}; {command}"


@dataclass(frozen=True)
class ZramState:
    size: str
    algorithm: str
    priority: int


@dataclass(frozen=True)
class SystemState:
    sysctl: dict[str, str] = field(default_factory=dict)
    sysfs: dict[str, str] = field(default_factory=dict)  # path (glob) -> value, via tmpfiles
    cmdline: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    enable: tuple[str, ...] = ()
    active: tuple[str, ...] = ()
    journald: dict[str, str] = field(default_factory=dict)
    zram: ZramState | None = None
    zswap_enabled: bool | None = None
    hostname: str = "synapse"
    timezone: str = "UTC"
    service_unit: str | None = None
    service: dict[str, str] = field(default_factory=dict)  # live property -> expected value
    system_cpus: str | None = None  # systemd's CPUAffinity (the housekeeping CPUs)
    sources: dict[str, str] = field(default_factory=dict)  # setting id -> profile key

    @property
    def is_stock(self) -> bool:
        return not (self.sysctl or self.sysfs or self.cmdline or self.mask or self.disable
                    or self.journald or self.zram)


def _starting(unit: str) -> str:
    """Shell that exits unknown while UNIT (shell-quoted) starts up: a Type=notify engine
    loading its models is activating/start, which is not yet what it will be; the
    activating/auto-restart of a crash loop is not excused."""
    return (f'[ "$(systemctl show -P ActiveState {unit} 2>/dev/null)'
            f'$(systemctl show -P SubState {unit} 2>/dev/null)" = activatingstart ] && '
            f'{{ echo "starting (loading its models)"; exit {UNKNOWN_RC}; }};')

# How the engine's process shows each unit property it was started with: the live value,
# not the unit file (whose hash the file checks already compare).
POLICY_CLASS = {"other": "TS", "batch": "B", "idle": "IDL", "fifo": "FF", "rr": "RR"}
PAGE_SIZE = 4096  # cgroup memory.high is kept in pages and read back rounded down
_SERVICE_PROBES = {
    "Nice": 'ps -o ni= -p "$pid"',
    "CPUSchedulingPolicy": 'ps -o cls= -p "$pid"',
    "OOMScoreAdjust": 'cat "/proc/$pid/oom_score_adj"',
    "User": 'ps -o user:64= -p "$pid"',  # wide enough that ps never shows a uid instead
    # the process's locked memory (VmLck) covers its mappings of .gguf files (smaps, whose
    # own Locked: is shared out between mappings of one file); unknown before a model loads
    "LockedModels": (_starting('"$unit"') + " m=$(awk "
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


def _service_probe(unit: str, prop: str) -> str:
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
            f"{_SERVICE_PROBES[prop]}")


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def _size_for_journald(value: str) -> str:
    return str(parse_size(value))


def desired_state(profile: Profile) -> SystemState:
    """Everything the profile asks of a running system, in rendering order."""
    sources: dict[str, str] = {}
    mem = profile.memory

    sysctl: dict[str, str] = {}
    for key, src in OWNED_SYSCTL.items():
        value = getattr(mem, src.removeprefix("memory."))
        if value is not None:
            sysctl[key] = str(parse_size(value) if isinstance(value, str) else value)
            sources[f"sysctl {key}"] = src
    for extra_key, extra_value in sorted(profile.sysctl.items()):
        sysctl[extra_key] = str(extra_value)
        sources[f"sysctl {extra_key}"] = f"sysctl.{extra_key}"

    sysfs: dict[str, str] = {}
    for setting in SYSFS_FIELDS:
        section, name = setting.key.split(".")
        value = getattr(getattr(profile, section), name)
        if value is not None:
            sysfs[setting.path] = setting.value_text(value)
            sources[f"sysfs {setting.path}"] = setting.key

    partition = profile.cpu_partition()
    cmdline: list[str] = []
    for word in profile.boot.cmdline:
        cmdline.append(word)
        sources[f"cmdline {word}"] = "boot.cmdline"
    owned: tuple[tuple[str | None, str], ...] = (
        ("mitigations=off" if profile.boot.mitigations == "off" else None, "boot.mitigations"),
        (f"transparent_hugepage={mem.thp}" if mem.thp else None, "memory.thp"),
        (f"nohz_full={profile.kernel.nohz_full_cpus}" if profile.kernel.nohz_full_cpus
         else None, "kernel.nohz_full_cpus"),
        ("zswap.enabled=0" if mem.zswap is False else
         "zswap.enabled=1" if mem.zswap else None, "memory.zswap"),
        (f"irqaffinity={partition[1]}" if partition else None, "cpu.inference_cpus"),
    )
    for owned_word, src in owned:
        if owned_word:
            cmdline.append(owned_word)
            sources[f"cmdline {owned_word}"] = src

    enable = list(profile.services.enable)
    disable = list(profile.services.disable)
    active: list[str] = []
    if profile.runtime is not None:
        unit = ENGINE_UNITS[profile.runtime.engine]
        enable.append(unit)
        active.append(unit)
        sources[f"unit {unit}"] = "runtime.engine"
        if profile.runtime.isolation == "nspawn":
            enable.append(RUNTIME_SOCKET)
            active.append(RUNTIME_SOCKET)
            sources[f"unit {RUNTIME_SOCKET}"] = "runtime.isolation"
    for unit in profile.services.mask:
        sources[f"unit {unit}"] = "services.mask"
    for unit in profile.services.disable:
        sources[f"unit {unit}"] = "services.disable"
    for unit in profile.services.enable:
        sources[f"unit {unit}"] = "services.enable"
    if profile.disk.fstrim is not None:
        (enable if profile.disk.fstrim else disable).append(FSTRIM_TIMER)
        sources[f"unit {FSTRIM_TIMER}"] = "disk.fstrim"

    journald: dict[str, str] = {}
    jd = profile.journald
    journald_values: tuple[tuple[str, str | None, str], ...] = (
        ("Storage", jd.storage, "journald.storage"),
        ("SystemMaxUse", jd.system_max_use and _size_for_journald(jd.system_max_use),
         "journald.system_max_use"),
        ("RuntimeMaxUse", jd.runtime_max_use and _size_for_journald(jd.runtime_max_use),
         "journald.runtime_max_use"),
        ("MaxRetentionSec", jd.max_retention, "journald.max_retention"),
    )
    for jkey, jvalue, src in journald_values:
        if jvalue is not None:
            journald[jkey] = jvalue
            sources[f"journald {jkey}"] = src

    service: dict[str, str] = {}
    rt = profile.runtime
    if rt is not None:
        high = profile.memory_high_bytes()
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

    zram = None
    if mem.zram is not None and mem.zram.enabled:
        zram = ZramState(mem.zram.size, mem.zram.algorithm, mem.zram.priority)

    if partition:
        sources["systemd CPUAffinity"] = "cpu.inference_cpus"
    return SystemState(
        system_cpus=partition[1] if partition else None,
        sysctl=sysctl,
        sysfs=sysfs,
        cmdline=tuple(cmdline),
        mask=tuple(profile.services.mask),
        disable=tuple(disable),
        enable=tuple(enable),
        active=tuple(active),
        journald=journald,
        zram=zram,
        zswap_enabled=mem.zswap,
        hostname=profile.hostname,
        timezone=profile.timezone,
        service_unit=ENGINE_UNITS[rt.engine] if rt is not None else None,
        service=service,
        sources=sources,
    )


def checks(state: SystemState) -> list[Check]:
    """One live check per declared setting (files are checked from the manifest elsewhere)."""
    out: list[Check] = []
    src = state.sources
    for key, value in state.sysctl.items():
        path = shlex.quote(sysctl_path(key))
        # the kernel prints some sysctls with tabs between fields: normalise whitespace
        out.append(Check(f"sysctl {key}", "sysctl", src[f"sysctl {key}"], " ".join(value.split()),
                         _guarded(path, f"tr -s '\\t ' '  ' < {path}")))
    for path, value in state.sysfs.items():
        choice = SYSFS_CHOICE[path]  # "always [madvise] never"
        probe = (f"cat {path}" if choice else f"cat {path} | sort -u | tr '\\n' ' ' | sed 's/ $//'")
        out.append(Check(f"sysfs {path}", "sysfs", src[f"sysfs {path}"], value,
                         _guarded(path, probe), "selected" if choice else "equal"))
    if state.system_cpus is not None:
        out.append(Check("systemd CPUAffinity", "unit", src["systemd CPUAffinity"],
                         state.system_cpus, "awk '/^Cpus_allowed_list:/ {print $2}' /proc/1/status",
                         after_reboot=True))
    for word in state.cmdline:
        out.append(Check(f"cmdline {word}", "cmdline", src[f"cmdline {word}"], word,
                         "cat /proc/cmdline", "token", after_reboot=True))
    if state.zswap_enabled is not None:
        path = "/sys/module/zswap/parameters/enabled"
        out.append(Check("zswap enabled", "sysfs", "memory.zswap",
                         "Y" if state.zswap_enabled else "N", _guarded(path, f"cat {path}"),
                         after_reboot=True))
    for unit in state.mask:
        out.append(Check(f"unit {unit} masked", "unit", src[f"unit {unit}"], "masked",
                         f"systemctl is-enabled {shlex.quote(unit)} 2>/dev/null; true"))
        out.append(Check(f"unit {unit} inactive", "unit", src[f"unit {unit}"],
                         "inactive|failed|unknown",
                         f"{SYSTEMD_UP} systemctl is-active {shlex.quote(unit)} 2>/dev/null; true",
                         "one_of"))
    for unit in state.disable:
        out.append(Check(f"unit {unit} disabled", "unit", src[f"unit {unit}"],
                         "disabled|masked|static|not-found|",
                         f"systemctl is-enabled {shlex.quote(unit)} 2>/dev/null; true",
                         "one_of"))
    for unit in state.enable:
        out.append(Check(f"unit {unit} enabled", "unit", src[f"unit {unit}"], "enabled",
                         f"systemctl is-enabled {shlex.quote(unit)} 2>/dev/null; true"))
    for unit in state.active:
        out.append(Check(f"unit {unit} active", "unit", src[f"unit {unit}"], "active",
                         f"{SYSTEMD_UP} {_starting(shlex.quote(unit))} "
                         f"systemctl is-active {shlex.quote(unit)} 2>/dev/null; true"))
    for key, value in state.journald.items():
        out.append(Check(
            f"journald {key}", "journald", src[f"journald {key}"], value,
            "systemd-analyze cat-config systemd/journald.conf 2>/dev/null"
            f" | sed -n 's/^{key}=//p' | tail -n 1",
        ))
    if state.zram is not None:
        z = state.zram
        out.append(Check("zram0 swap active", "zram", "memory.zram.enabled", "/dev/zram0",
                         "swapon --noheadings --show=NAME", "token"))
        out.append(Check("zram0 algorithm", "zram", "memory.zram.algorithm", z.algorithm,
                         _guarded("/sys/block/zram0", "cat /sys/block/zram0/comp_algorithm"),
                         "selected"))
        out.append(Check("zram0 priority", "zram", "memory.zram.priority", str(z.priority),
                         "swapon --noheadings --show=NAME,PRIO"
                         " | awk '$1==\"/dev/zram0\"{print $2}'"))
    for prop, value in state.service.items():
        assert state.service_unit is not None
        # locked weights need the models loaded: asserted with the service's own checks
        kind = "service" if prop == "LockedModels" else "unit"
        out.append(Check(f"service {state.service_unit} {prop}", kind, src[f"service {prop}"],
                         value, _service_probe(state.service_unit, prop)))
    out.append(Check("hostname", "file", "hostname", state.hostname, "cat /etc/hostname"))
    # Aliases (UTC, Etc/UTC) are one zone: compare the zone data, show the link otherwise.
    zone = shlex.quote(f"/usr/share/zoneinfo/{state.timezone}")
    out.append(Check("timezone", "file", "timezone", state.timezone,
                     f'[ "$(sha256sum < /etc/localtime)" = "$(sha256sum < {zone})" ] '
                     f"&& echo {shlex.quote(state.timezone)} "
                     "|| readlink /etc/localtime | sed 's|^.*/zoneinfo/||'"))
    return out


# Reads the running kernel's config: its own (/proc/config.gz, IKCONFIG_PROC), else the
# file its package installed (Debian's /boot/config-*); prints the value of the first of
# {names} (a symbol, then its other names on other kernel lines) the config lists, "n" for
# "is not set" or when none is listed; exit UNKNOWN_RC where no config can be read.
_KCONFIG = (
    "f=/boot/config-$(uname -r); "
    "if [ -r /proc/config.gz ]; then c=$(zcat /proc/config.gz); "
    "elif [ -r \"$f\" ]; then c=$(cat \"$f\"); "
    f"else exit {UNKNOWN_RC}; fi; "
    "for s in {names}; do "
    "v=$(printf '%s\\n' \"$c\" | sed -n \"s/^$s=//p; s/^# $s is not set\\$/n/p\" | tail -n 1); "
    '[ -n "$v" ] && {{ printf \'%s\\n\' "$v"; exit 0; }}; done; echo n'
)


def kernel_checks(profile: Profile, state: SystemState) -> list[Check]:
    """CONFIG_* values the running kernel must have for the profile to be honoured."""
    out: list[Check] = []
    # symbol -> (accepted values, source, only true once the built kernel is booted)
    wanted: dict[str, tuple[str, str, bool]] = {}
    if state.zram is not None:
        wanted["CONFIG_ZRAM"] = ("y|m", "memory.zram", False)
    if profile.memory.thp is not None:
        wanted["CONFIG_TRANSPARENT_HUGEPAGE"] = ("y", "memory.thp", False)
    if profile.memory.zswap is not None:
        wanted["CONFIG_ZSWAP"] = ("y", "memory.zswap", False)
    from synapse_os.kernel.fragment import requested_entries  # imports the kernel tables
    from synapse_os.kernel.renames import load_renames

    for e in requested_entries(profile):  # a custom kernel's build options, by the key behind
        source = "kernel.source" if e.origin.startswith("required by") else e.origin.split()[0]
        wanted[f"CONFIG_{e.symbol}"] = (e.value.strip('"'), source, True)
    renames = load_renames()
    for symbol, (accepted, source, after_reboot) in wanted.items():
        bare = symbol.removeprefix("CONFIG_")
        names = [symbol, *(f"CONFIG_{name}" for name, _ in renames.aliases(bare))]
        out.append(Check(f"kernel {symbol}", "kernel", source, accepted,
                         _KCONFIG.format(names=" ".join(names)), "one_of", after_reboot))
    if profile.kernel.source == "custom":
        out += _boot_behaviour_checks(profile, state)
    return out


def _boot_behaviour_checks(profile: Profile, state: SystemState) -> list[Check]:
    """What the booted custom kernel does, beyond its config: that it is the one running,
    its preemption model, its tick rate (measured) and the CPUs it runs tickless."""
    from synapse_os.kernel.pkgbuild import localversion_for, pkgbase_for

    k = profile.kernel
    pkgbase = pkgbase_for(profile)
    suffix = shlex.quote(localversion_for(profile))
    out = [Check("kernel running", "kernel", "kernel.source", pkgbase,
                 f'case "$(uname -r)" in *{suffix}) echo {shlex.quote(pkgbase)} ;; '
                 '*) uname -r ;; esac', after_reboot=True)]
    if k.preempt is not None:
        chosen = [w.split("=", 1)[1] for w in state.cmdline if w.startswith("preempt=")]
        mode = (chosen[-1] if chosen else "voluntary") if k.preempt == "dynamic" else k.preempt
        out.append(Check("kernel preemption model", "kernel", "kernel.preempt", mode,
                         _PREEMPT_PROBE, after_reboot=True))
    if k.hz is not None:
        out.append(Check("kernel tick rate (measured HZ)", "kernel", "kernel.hz", str(k.hz),
                         _HZ_PROBE, after_reboot=True))
    if k.tick == "full" and k.nohz_full_cpus:
        path = "/sys/devices/system/cpu/nohz_full"
        out.append(Check("kernel nohz_full CPUs", "kernel", "kernel.nohz_full_cpus",
                         cpulist_text(k.nohz_full_cpus), _guarded(path, f"cat {path}"),
                         after_reboot=True))
    return out


# The running preemption model: debugfs names it on PREEMPT_DYNAMIC kernels ("none
# (voluntary) full"); a static build is named by `uname -v` (PREEMPT, PREEMPT_RT) or, for
# none and voluntary, which `uname -v` does not tell apart, by its config.
_PREEMPT_PROBE = (
    "m=$(sed -n 's/.*(\\([a-z]*\\)).*/\\1/p' /sys/kernel/debug/sched/preempt 2>/dev/null); "
    '[ -n "$m" ] && { echo "$m"; exit 0; }; '
    'case "$(uname -v)" in '
    "*PREEMPT_DYNAMIC*) echo 'dynamic, and /sys/kernel/debug/sched/preempt is not readable'; "
    f"exit {UNKNOWN_RC} ;; "
    "*PREEMPT_RT*) echo rt ;; *'PREEMPT '*|*PREEMPT) echo full ;; "
    f"*) v=$({_KCONFIG.format(names='CONFIG_PREEMPT_VOLUNTARY')}) || exit $?; "
    '[ "$v" = y ] && echo voluntary || echo none ;; esac'
)

# jiffies counted over about a second, named as the nearest HZ choice when within 5 %. The
# clock ("now at N nsecs") and the jiffies come from one read of /proc/timer_list: reading
# them in separate processes skewed the ratio by their start-up time on a loaded guest.
_HZ_PROBE = (
    f"[ -r /proc/timer_list ] || exit {UNKNOWN_RC}; "
    "j() { awk '/^now at / {n = $3} /^jiffies:/ {print n, $2; exit}' /proc/timer_list; }; "
    "a=$(j); sleep 1; b=$(j); "
    "awk -v a=\"$a\" -v b=\"$b\" 'BEGIN { split(a, x, \" \"); split(b, y, \" \"); "
    "hz = (y[2] - x[2]) / ((y[1] - x[1]) / 1e9); "
    f"n = split(\"{' '.join(str(hz) for hz in HZ_CHOICES)}\", c, \" \"); "
    "for (i = 1; i <= n; i++) "
    "if (hz > c[i] * 0.95 && hz < c[i] * 1.05) { print c[i]; exit } "
    "printf \"%.0f (no HZ choice)\\n\", hz }'"
)


def cpulist_text(spec: str) -> str:
    """A CPU list as the kernel prints one (sorted, ranges merged): "3,1-2" -> "1-3"."""
    return cpu_list_text(cpu_set(spec))


# Mount options the kernel never lists among a mount's options (they steer mount(8),
# systemd's fstab generator or fsck).
_UNLISTED_MOUNT_OPTIONS = ("defaults", "auto", "noauto", "nofail", "user", "nouser", "users",
                           "owner", "group", "_netdev", "x-", "comment=")


def install_checks(profile: Profile) -> list[Check]:
    """What only a machine installed from the profile has (`apply` neither re-mounts the
    root, installs packages or touches networking): the root file system, its mount
    options as the kernel reports them, the locale, the wired network, and the extra
    packages."""
    from synapse_os.distro import distro_for

    read_only = profile.system.root == "read-only"
    out = [Check("root file system", "mount", "disk.root_fs", profile.disk.root_fs,
                 "findmnt -no FSTYPE /", after_reboot=True),
           Check("root mounted", "mount", "system.root", "ro" if read_only else "rw",
                 "findmnt -no OPTIONS / | cut -d, -f1", after_reboot=True)]
    if profile.disk.root_size is not None:
        out.append(Check("/var partition", "mount", "disk.root_size",
                         f"{profile.disk.root_fs} rw synapse-var",
                         "findmnt -no FSTYPE,OPTIONS,PARTLABEL /var"
                         " | awk '{split($2, o, \",\"); print $1, o[1], $3}'", after_reboot=True))
    if read_only:
        out.append(Check("/tmp in memory", "mount", "system.root", "tmpfs",
                         "findmnt -no FSTYPE /tmp", after_reboot=True))
    for opt in profile.disk.mount_options:
        if opt.startswith(_UNLISTED_MOUNT_OPTIONS):
            continue
        out.append(Check(f"root mount option {opt}", "mount", "disk.mount_options", opt,
                         "findmnt -no OPTIONS / | tr ',' ' '", "token", after_reboot=True))
    # LANG as login sessions get it, and only when glibc has that locale (else programs
    # silently fall back to C): "<locale> (not generated)" otherwise.
    locale_file = shlex.quote("/" + distro_for(profile).locale_file)
    out.append(Check("locale", "file", "locale", profile.locale,
                     f"l=$(sed -n 's/^LANG=//p' {locale_file} | tail -n 1); "
                     'if [ -n "$(LC_ALL="$l" locale 2>&1 >/dev/null)" ]; '
                     'then echo "$l (not generated)"; else echo "$l"; fi'))
    if profile.network.wired == "dhcp":
        out.append(Check("network wired link configured", "network", "network.wired",
                         "configured", "networkctl list --no-legend 2>/dev/null"
                         " | awk '$3 == \"ether\" {print $5; exit}'", after_reboot=True))
        out.append(Check("network resolver active", "network", "network.wired", "active",
                         f"{SYSTEMD_UP} systemctl is-active systemd-resolved.service"
                         " 2>/dev/null; true", after_reboot=True))
    for name in profile.packages.extra:
        pkg = shlex.quote(name)
        out.append(Check(f"package {name}", "package", "packages.extra", "installed",
                         f"if command -v pacman >/dev/null; then pacman -Q {pkg} >/dev/null 2>&1;"
                         f" else dpkg-query -W -f='${{Status}}' {pkg} 2>/dev/null"
                         " | grep -q ' installed$'; fi && echo installed || echo missing"))
    return out


def live_checks(profile: Profile) -> list[Check]:
    """Every live check of a profile: what `synapse verify` runs and the VM asserts."""
    state = desired_state(profile)
    return [*checks(state), *kernel_checks(profile, state)]


def keeps_permission_bits(rel: str) -> bool:
    """False under boot/: the ESP is FAT, whose files show the mount's fmask, not a mode."""
    return not rel.startswith("boot/")


def file_checks(files: Mapping[str, tuple[int, str, str | None]],
                root: str = "/") -> list[Check]:
    """One check per file placed on the target: `files` maps a path relative to the root
    ("etc/hostname") to (mode, sha256, symlink target or None), as in the render manifest.
    Permission bits are compared only where the file system keeps them."""
    out: list[Check] = []
    for rel, (mode, sha256, link) in sorted(files.items()):
        path = shlex.quote(root.rstrip("/") + "/" + rel)
        with_mode = keeps_permission_bits(rel)
        expected = (f"-> {link}" if link is not None
                    else f"{mode:o} {sha256}" if with_mode else sha256)
        show_mode = f'"$(stat -c %a {path})" ' if with_mode else ""
        probe = (f"if [ -L {path} ]; then printf -- '-> %s\\n' \"$(readlink {path})\"; "
                 f"elif [ -f {path} ]; then printf '%s\\n' {show_mode}"
                 f"\"$(sha256sum < {path} | cut -d' ' -f1)\" | tr '\\n' ' ' | sed 's/ $//'; "
                 "else echo missing; exit 1; fi")
        out.append(Check(f"file /{rel}", "file", "render", expected, probe))
    return out


def cmdline_string(words: tuple[str, ...] | list[str]) -> str:
    for word in words:
        if not re.match(r'^[^\s"]+$', word):
            raise ValueError(f"kernel parameter {word!r} contains whitespace or quotes")
    return " ".join(words)
