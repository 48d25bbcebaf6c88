"""The running kernel: the CONFIG_* values a profile needs (read from the kernel's own
config) and, for a kernel built from the profile, what it does once booted."""

from __future__ import annotations

import shlex

from synapse_os.profile.model import HZ_CHOICES, Profile
from synapse_os.profile.types import cpu_list_text, cpu_set
from synapse_os.tunables.base import UNKNOWN_RC, Check, guarded
from synapse_os.tunables.state import SystemState

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
                         cpulist_text(k.nohz_full_cpus), guarded(path, f"cat {path}"),
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
