"""Kernel command line words and sysctls that weaken security or run code, as data.

Sources: the kernel's Documentation/admin-guide/kernel-parameters.txt and
Documentation/admin-guide/hw-vuln/*.rst (mitigation switches),
Documentation/admin-guide/sysctl/kernel.rst and fs.rst (sysctls),
systemd's kernel-command-line(7) and systemd-debug-generator(8) (systemd.run=,
systemd.debug_shell), dracut.cmdline(7) (rd.shell, rd.break).

Three classes:
- FORBIDDEN: a profile can never set these: they run a program or open a root shell
  (a shared profile must never execute code).
- MITIGATION words: switch off CPU vulnerability mitigations; they need the same
  acknowledgement as `boot.mitigations: off`.
- WEAKENING words and sysctl values: switch off another protection; they need
  `security_risk` to read exactly SECURITY_ACK.
"""

from __future__ import annotations

MITIGATIONS_ACK = "I accept that disabling CPU vulnerability mitigations exposes this machine"
SECURITY_ACK = "I accept that these settings weaken the security of this machine"

# Command-line parameters (the key before '=') that execute code or give a root shell.
FORBIDDEN_CMDLINE: dict[str, str] = {
    "init": "runs the given program as PID 1",
    "rdinit": "runs the given program from the initramfs as PID 1",
    "systemd.run": "runs the given command at boot (systemd-run-generator)",
    "systemd.run_success_action": "acts on the result of systemd.run",
    "systemd.run_failure_action": "acts on the result of systemd.run",
    "systemd.debug_shell": "opens a root shell on tty9",
    "systemd.setenv": "sets environment variables for every service",
    "systemd.unit": "boots into another target (emergency and rescue give a root shell)",
    "systemd.wants": "starts another unit at boot (debug-shell.service is a root shell)",
    "systemd.mask": "masks units at boot (security services among them)",
    "break": "drops to a root shell in the initramfs (mkinitcpio)",
    "1": "boots runlevel 1, the rescue shell",
    "systemd.confirm_spawn": "asks on the console before starting each unit",
    "rd.shell": "drops to a root shell in the initramfs",
    "rd.break": "drops to a root shell in the initramfs",
    "rd.emergency": "drops to a root shell in the initramfs",
    "emergency": "boots into the emergency root shell",
    "rescue": "boots into the rescue shell",
    "single": "boots into the rescue shell",
    "s": "boots into the rescue shell",
    "kgdbwait": "waits for a kernel debugger",
    "kgdboc": "attaches a kernel debugger to a console",
    "ekgdboc": "attaches a kernel debugger to a console",
    "modprobe.blacklist": "changes which modules load; use a module setting instead",
    "module_blacklist": "changes which modules load; use a module setting instead",
    "memmap": "reserves or rewrites physical memory ranges",
}

# key or key=value -> what it switches off (CPU vulnerability mitigations)
MITIGATION_CMDLINE: dict[str, str] = {
    "mitigations=off": "every CPU vulnerability mitigation",
    "nospectre_v1": "Spectre v1 mitigations",
    "nospectre_v2": "Spectre v2 mitigations",
    "spectre_v2=off": "Spectre v2 mitigations",
    "spectre_v2_user=off": "Spectre v2 user-space mitigations",
    "spectre_bhi=off": "Branch History Injection mitigations",
    "nospec_store_bypass_disable": "Speculative Store Bypass mitigations",
    "spec_store_bypass_disable=off": "Speculative Store Bypass mitigations",
    "pti=off": "kernel page-table isolation (Meltdown)",
    "nopti": "kernel page-table isolation (Meltdown)",
    "kpti=0": "kernel page-table isolation",
    "l1tf=off": "L1 Terminal Fault mitigations",
    "mds=off": "Microarchitectural Data Sampling mitigations",
    "tsx_async_abort=off": "TSX Async Abort mitigations",
    "mmio_stale_data=off": "MMIO Stale Data mitigations",
    "retbleed=off": "Retbleed mitigations",
    "srbds=off": "Special Register Buffer Data Sampling mitigations",
    "gather_data_sampling=off": "Gather Data Sampling mitigations",
    "spec_rstack_overflow=off": "Speculative Return Stack Overflow mitigations",
    "reg_file_data_sampling=off": "Register File Data Sampling mitigations",
    "l1d_flush=off": "L1D flush on context switch",
    "tsx=on": "the TSX disable that mitigates TAA on affected CPUs",
    "its=off": "Indirect Target Selection mitigations",
    "ssbd=force-off": "Speculative Store Bypass mitigations (arm64)",
}

# key or key=value -> what it switches off (other protections)
WEAKENING_CMDLINE: dict[str, str] = {
    "nokaslr": "kernel address space layout randomisation",
    "kaslr=off": "kernel address space layout randomisation",
    "nosmap": "supervisor mode access prevention",
    "nosmep": "supervisor mode execution prevention",
    "noexec=off": "non-executable memory (NX)",
    "selinux=0": "SELinux",
    "apparmor=0": "AppArmor",
    "security=none": "Linux security modules",
    "lockdown=none": "kernel lockdown",
    "module.sig_enforce=0": "module signature enforcement",
    "iommu=off": "DMA protection by the IOMMU",
    "intel_iommu=off": "DMA protection by the IOMMU",
    "amd_iommu=off": "DMA protection by the IOMMU",
    "randomize_kstack_offset=off": "kernel stack offset randomisation",
    "vsyscall=emulate": "the vsyscall page protection",
    "debugfs=on": "debugfs restrictions",
    "init_on_free=0": "memory zeroing on free",
    "page_poison=0": "page poisoning",
    "norandmaps": "address space layout randomisation",
    "sysrq_always_enabled": "magic SysRq restrictions",
    "hardened_usercopy=off": "hardened usercopy",
    "lsm": "the choice of Linux security modules",
}

# sysctls a profile can never set: the kernel runs the program they name, as root.
FORBIDDEN_SYSCTL: dict[str, str] = {
    "kernel.core_pattern": "a leading | runs a program as root on every crash",
    "kernel.modprobe": "the kernel runs this program as root to load modules",
    "kernel.poweroff_cmd": "the kernel runs this program as root",
    "kernel.hotplug": "the kernel runs this program as root on hotplug events",
    "kernel.usermodehelper.bset": "capabilities of programs the kernel starts",
    "kernel.usermodehelper.inheritable": "capabilities of programs the kernel starts",
    "fs.binfmt_misc.register": "registers interpreters the kernel runs",
}

# sysctl -> (values that keep the protection, what a weaker value switches off)
PROTECTIVE_SYSCTL: dict[str, tuple[frozenset[str], str]] = {
    "kernel.randomize_va_space": (frozenset({"2"}), "address space layout randomisation"),
    "kernel.kptr_restrict": (frozenset({"1", "2"}), "kernel pointer hiding"),
    "kernel.dmesg_restrict": (frozenset({"1"}), "kernel log access restriction"),
    "kernel.yama.ptrace_scope": (frozenset({"1", "2", "3"}), "ptrace restriction"),
    "kernel.unprivileged_bpf_disabled": (frozenset({"1", "2"}), "unprivileged BPF restriction"),
    "net.core.bpf_jit_harden": (frozenset({"1", "2"}), "BPF JIT hardening"),
    "kernel.perf_event_paranoid": (frozenset({"2", "3", "4"}), "perf event restriction"),
    "kernel.kexec_load_disabled": (frozenset({"1"}), "the kexec lock"),
    "kernel.sysrq": (frozenset({"0", "176", "16"}), "magic SysRq restriction"),
    "fs.protected_symlinks": (frozenset({"1"}), "symlink protection"),
    "fs.protected_hardlinks": (frozenset({"1"}), "hardlink protection"),
    "fs.protected_fifos": (frozenset({"1", "2"}), "FIFO protection"),
    "fs.protected_regular": (frozenset({"1", "2"}), "regular file protection"),
    "fs.suid_dumpable": (frozenset({"0"}), "no core dumps of setuid programs"),
    "vm.mmap_min_addr": (frozenset({"4096", "65536"}), "NULL-page mapping protection"),
    "vm.unprivileged_userfaultfd": (frozenset({"0"}), "unprivileged userfaultfd restriction"),
    "net.ipv4.conf.all.rp_filter": (frozenset({"1", "2"}), "reverse path filtering"),
    "net.ipv4.tcp_syncookies": (frozenset({"1"}), "SYN flood protection"),
}


# Units a profile may never enable (they give a root shell), and services whose masking or
# disabling switches off a protection.
FORBIDDEN_UNITS: dict[str, str] = {
    "debug-shell.service": "opens a root shell on tty9",
    "emergency.service": "is the emergency root shell",
    "rescue.service": "is the rescue shell",
    "emergency.target": "is the emergency root shell",
    "rescue.target": "is the rescue shell",
}
PROTECTIVE_UNITS: dict[str, str] = {
    "apparmor.service": "AppArmor", "auditd.service": "the audit daemon",
    "nftables.service": "the nftables firewall", "firewalld.service": "firewalld",
    "ufw.service": "the ufw firewall", "iptables.service": "the iptables firewall",
    "ip6tables.service": "the ip6tables firewall", "fail2ban.service": "fail2ban",
    "selinux-autorelabel.service": "SELinux", "systemd-journald.service": "the journal",
    "unattended-upgrades.service": "automatic security updates",
}

# Kernel config symbols a profile's kernel.extra may not set (they would bypass the checks
# on the command line) and those that switch off mitigations or protections.
FORBIDDEN_KCONFIG_PREFIXES = ("CONFIG_CMDLINE",)  # a built-in command line
MITIGATION_KCONFIG_PREFIXES = ("CONFIG_CPU_MITIGATIONS", "CONFIG_SPECULATION_MITIGATIONS",
                               "CONFIG_MITIGATION_", "CONFIG_PAGE_TABLE_ISOLATION",
                               "CONFIG_RETPOLINE", "CONFIG_CPU_SRSO", "CONFIG_CPU_UNRET_ENTRY",
                               "CONFIG_CPU_IBPB_ENTRY", "CONFIG_CPU_IBRS_ENTRY",
                               "CONFIG_SLS", "CONFIG_GDS_FORCE_MITIGATION")
WEAKENING_KCONFIG_PREFIXES = ("CONFIG_SECURITY", "CONFIG_MODULE_SIG", "CONFIG_STRICT_",
                              "CONFIG_RANDOMIZE_", "CONFIG_HARDENED_USERCOPY",
                              "CONFIG_STACKPROTECTOR", "CONFIG_LOCK_DOWN", "CONFIG_LSM",
                              "CONFIG_DEFAULT_SECURITY", "CONFIG_AUDIT", "CONFIG_SECCOMP",
                              "CONFIG_FORTIFY_SOURCE", "CONFIG_INIT_ON_", "CONFIG_DEVMEM",
                              "CONFIG_DEVKMEM", "CONFIG_IO_STRICT_DEVMEM", "CONFIG_KEXEC",
                              "CONFIG_BPF_UNPRIV", "CONFIG_BPF_JIT_ALWAYS_ON",
                              "CONFIG_X86_SMAP", "CONFIG_X86_UMIP", "CONFIG_PROC_KCORE",
                              "CONFIG_LEGACY_VSYSCALL", "CONFIG_COMPAT_VDSO",
                              "CONFIG_INIT_STACK", "CONFIG_ZERO_CALL_USED_REGS",
                              "CONFIG_VMAP_STACK", "CONFIG_SCHED_STACK_END_CHECK",
                              "CONFIG_DEBUG_WX", "CONFIG_BUG_ON_DATA_CORRUPTION")


def kconfig_class(symbol: str) -> tuple[str, str] | None:
    """('forbidden' | 'mitigation' | 'weakening', why) for a kernel.extra symbol, or None.
    Any value counts: these symbols are the profile's own typed fields or need the same
    acknowledgement."""
    if symbol.startswith(FORBIDDEN_KCONFIG_PREFIXES):
        return "forbidden", "builds a kernel command line that bypasses boot.cmdline's checks"
    if symbol.startswith(MITIGATION_KCONFIG_PREFIXES):
        return "mitigation", "CPU vulnerability mitigations"
    if symbol.startswith(WEAKENING_KCONFIG_PREFIXES):
        return "weakening", "a kernel hardening option"
    return None


def unit_class(unit: str, op: str) -> tuple[str, str] | None:
    """('forbidden' | 'weakening', why) for enabling / masking / disabling a unit."""
    if op == "enable" and unit in FORBIDDEN_UNITS:
        return "forbidden", FORBIDDEN_UNITS[unit]
    if op in ("mask", "disable") and unit in PROTECTIVE_UNITS:
        return "weakening", PROTECTIVE_UNITS[unit]
    return None


# the values with which the kernel's boolean and mode parsers switch a feature off
OFF_VALUES = {"off", "0", "n", "no", "false", "force-off", "disable", "disabled", "none"}


def _norm_key(key: str) -> str:
    """The kernel (parameq) and systemd treat '-' and '_' in parameter names alike."""
    return key.lower().replace("-", "_")


def _table_hit(table: dict[str, str], key: str, value: str | None) -> str | None:
    for entry, why in table.items():
        e_key, _, e_value = entry.partition("=")
        if _norm_key(e_key) != key:
            continue
        if not e_value or value is None and not e_value:
            return why
        if value is not None and (e_value in OFF_VALUES and
                                  OFF_VALUES & set(value.lower().split(","))
                                  or value.lower().lstrip("0") == e_value.lstrip("0")
                                  or e_value in value.lower().split(",")):
            return why
    return None


def cmdline_class(word: str) -> tuple[str, str] | None:
    """('forbidden' | 'mitigation' | 'weakening', why) for a command line word, or None."""
    raw_key, eq, raw_value = word.partition("=")
    key, value = _norm_key(raw_key), (raw_value if eq else None)
    forbidden = {_norm_key(k): v for k, v in FORBIDDEN_CMDLINE.items()}
    if key in forbidden or key.isdigit():
        return "forbidden", forbidden.get(key, "boots another runlevel (a rescue shell)")
    if key.startswith("systemd.") and key.endswith(("_action", ".run")):
        return "forbidden", "makes systemd run or act on a command"
    if key.startswith("sysctl.") and value is not None:  # the kernel sets sysctls from here
        sysctl = sysctl_class(key.removeprefix("sysctl.").replace("/", "."), value)
        if sysctl is not None:
            return sysctl
    for table, kind in ((MITIGATION_CMDLINE, "mitigation"), (WEAKENING_CMDLINE, "weakening")):
        why = _table_hit(table, key, value)
        if why is not None:
            return kind, why
    return None


def sysctl_class(key: str, value: str) -> tuple[str, str] | None:
    """('forbidden' | 'weakening', why) for a sysctl assignment, or None."""
    if key in FORBIDDEN_SYSCTL or key.startswith(("kernel.usermodehelper.", "fs.binfmt_misc.")):
        return "forbidden", FORBIDDEN_SYSCTL.get(key, "the kernel runs programs it names")
    if key in PROTECTIVE_SYSCTL:
        safe, what = PROTECTIVE_SYSCTL[key]
        if " ".join(value.split()) not in safe:
            return "weakening", what
    return None
