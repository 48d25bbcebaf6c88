"""The value types of profile fields: each as narrow as the real consumer of the value.

A profile is data, never code: every string a profile carries ends up in a shell script,
a systemd unit, a tmpfiles/sysusers line, sysctl.d, a loader entry or a package manager's
argument list. Each type below accepts only what its consumer accepts as *one* value
(no whitespace where the consumer splits on it, no quotes, no `$`, no newline, no
control character), so escaping at the edge (synapse_os.render.escape) is a second wall,
not the only one. Every pattern is matched against the whole string (`fullmatch`):
`re.match(r"...$")` would accept a trailing newline.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Callable
from functools import cache
from typing import Annotated

from pydantic import AfterValidator, Field


def matching(pattern: re.Pattern[str], accepted: str,
             max_len: int = 4096) -> Callable[[str], str]:
    """A validator: the whole value matches `pattern`, else "'value' <accepted>"."""
    def check(value: str) -> str:
        if len(value) > max_len or not pattern.fullmatch(value):
            raise ValueError(f"{value!r} {accepted}")
        return value
    return check

# --- sizes ---------------------------------------------------------------------------

SIZE = re.compile(r"(\d{1,15}(?:\.\d{1,6})?)([KMGT]i?B?|[KMGT])?", re.IGNORECASE)


def parse_size(value: str) -> int:
    """Bytes in a size like '512M', '4GiB', '64K' or a bare byte count."""
    m = SIZE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a size")
    unit = (m.group(2) or "").upper()[:1]
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    return int(float(m.group(1)) * scale)


Size = Annotated[str, AfterValidator(matching(
                     SIZE, "is not a size; use a number with K, M, G or T (e.g. 512M)")),
                 Field(description="A size: number with K/M/G/T suffix, e.g. 512M")]

# --- systemd -------------------------------------------------------------------------

# systemd's unit_name_is_valid(): [A-Za-z0-9:_.\-] plus "\" escapes, at most one "@",
# a known suffix, 255 bytes at most.
UNIT_NAME = re.compile(
    r"[A-Za-z0-9:_.\\][A-Za-z0-9:_.\\-]*(@[A-Za-z0-9:_.\\-]*)?"
    r"\.(service|socket|timer|target|path|mount|automount|swap|device|slice|scope)"
)
UnitName = Annotated[str, AfterValidator(matching(
    UNIT_NAME, "is not a systemd unit name (e.g. bluetooth.service)", 255))]

# systemd time span as journald's MaxRetentionSec= reads it: "1week", "2d 12h", "3600".
TIMESPAN_UNIT = (r"(us|usec|ms|msec|s|sec|second|seconds|m|min|minute|minutes|h|hr|hour|"
                 r"hours|d|day|days|w|week|weeks|M|month|months|y|year|years)")
TIMESPAN = re.compile(rf"\d+{TIMESPAN_UNIT}?( ?\d+{TIMESPAN_UNIT})*")
TimeSpan = Annotated[str, AfterValidator(matching(
    TIMESPAN, "is not a systemd time span (e.g. 1week, 2d 12h, 3600)"))]

# A system account as systemd-sysusers and useradd accept it (NAME_REGEX of Debian's
# adduser, the portable subset): never root or another system account.
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
RESERVED_USERS = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "nogroup", "messagebus",
    "sshd", "polkitd", "dbus", "http", "ftp", "adm", "wheel", "sudo", "disk", "kmem", "tty",
    "shadow", "staff", "users", "utmp", "video", "render", "input", "audio", "kvm",
})


def _user(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a user name; use lowercase letters, digits, '_' "
                         "and '-', starting with a letter or '_', at most 31 characters")
    if name in RESERVED_USERS or name.startswith("systemd-"):
        raise ValueError(f"{name!r} is a system account; the inference service needs its own "
                         "unprivileged account (e.g. synapse)")
    return name


UserName = Annotated[str, AfterValidator(_user)]

# --- paths ---------------------------------------------------------------------------

# Characters a path may hold: no whitespace, quotes, '$', '%' (systemd specifiers), '\'.
PATH_CHARS = re.compile(r"[A-Za-z0-9._+@:/-]+")


def _path_chars(value: str, what: str) -> None:
    if not PATH_CHARS.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain {what}; use letters, digits and . _ + @ : - /"
                         " (no spaces, quotes, $, % or control characters)")
    if any(part in (".", "..") for part in value.split("/")) or "//" in value:
        raise ValueError(f"{value!r} is not a normalised {what} (no '.', '..' or '//' parts)")


def _abs_path(value: str) -> str:
    _path_chars(value, "absolute path")
    if not value.startswith("/") or value == "/" or value.endswith("/"):
        raise ValueError(f"{value!r} is not an absolute file path (e.g. /var/lib/synapse/x)")
    return value


AbsPath = Annotated[str, AfterValidator(_abs_path)]


def _rel_or_abs_path(value: str) -> str:
    _path_chars(value, "path")
    if value.endswith("/"):
        raise ValueError(f"{value!r} names a directory; give a file path")
    return value


FilePath = Annotated[str, AfterValidator(_rel_or_abs_path)]

BY_ID = "/dev/disk/by-id/"
# udev's by-id names: [A-Za-z0-9#+-.:=@_] and \xNN for anything else (util_replace_chars).
BY_ID_NAME = re.compile(r"([A-Za-z0-9#+.:=@_-]|\\x[0-9a-f]{2})+")


def _by_id(value: str) -> str:
    name = value[len(BY_ID):] if value.startswith(BY_ID) else ""
    if not BY_ID_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{value!r} is not a stable disk identity; use a path under {BY_ID} "
                         "(see `ls -l /dev/disk/by-id/`)")
    return value


DiskById = Annotated[str, AfterValidator(_by_id)]

# --- packages ------------------------------------------------------------------------

# pacman: [a-z0-9@._+-], not starting with '-' or '.'; Debian policy 5.6.1: [a-z0-9][a-z0-9+.-]+.
# A profile's packages must install on its base, so the base-specific check is in the model.
PACMAN_NAME = re.compile(r"[a-z0-9@_+][a-z0-9@._+-]{0,127}")
DEBIAN_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{1,127}")


def _package(name: str) -> str:
    if not (PACMAN_NAME.fullmatch(name) or DEBIAN_NAME.fullmatch(name)):
        raise ValueError(f"{name!r} is not a package name (lowercase letters, digits and "
                         "+ . - _ @, not starting with '-' or '.')")
    return name


PackageName = Annotated[str, AfterValidator(_package)]


def package_fits(name: str, base: str) -> bool:
    return bool((PACMAN_NAME if base == "arch" else DEBIAN_NAME).fullmatch(name))


# --- kernel --------------------------------------------------------------------------

# One kernel command line word: key[=value]. The kernel splits on spaces and strips
# double quotes; loader entries, GRUB and /etc/kernel/cmdline carry it verbatim.
KPARAM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(=[A-Za-z0-9_.,:/+@=-]*)?")
KernelParam = Annotated[str, AfterValidator(matching(
    KPARAM, "is not a single kernel parameter word (key or key=value; letters, digits and "
    "_ . , : / + @ = -)", 256))]

CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
CpuList = Annotated[str, AfterValidator(matching(
    CPU_LIST, "is not a CPU list; use forms like 2-7 or 1,3,5-7"))]


def cpu_set(spec: str) -> set[int]:
    """The CPUs of a CPU list: "1,3-5" -> {1, 3, 4, 5}."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def cpu_list_text(cpus: set[int]) -> str:
    """A CPU list as the kernel prints one (sorted, ranges merged): {1, 2, 3, 5} -> "1-3,5"."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)

KCONFIG_SYMBOL = re.compile(r"CONFIG_[A-Z0-9_]+")
# y/n/m, a number (decimal or hex) or a string without quotes, backslashes or control chars
# ($ is refused too: kbuild expands $(...) in strings it reads back into make)
KCONFIG_VALUE = re.compile(r'[ynm]|-?\d+|0x[0-9a-fA-F]+|"[^"\\$\x00-\x1f\x7f]*"')
KconfigValue = Annotated[str, AfterValidator(matching(
    KCONFIG_VALUE, 'is not a kernel config value; use y, n, m, a number, or a "quoted string" '
    "without quotes or backslashes inside"))]

# --- sysctl --------------------------------------------------------------------------

SYSCTL_KEY = re.compile(r"[a-z0-9_]+(\.[a-z0-9_-]+)+")
# sysctl.d values: words separated by single spaces or tabs (kernel.printk = 4 4 1 7)
SYSCTL_VALUE = re.compile(r"[A-Za-z0-9_.,:/+@=-]+([ \t][A-Za-z0-9_.,:/+@=-]+)*")


def check_sysctl(key: str, value: str) -> None:
    if not SYSCTL_KEY.fullmatch(key):
        raise ValueError(f"{key!r} is not a sysctl key (e.g. vm.max_map_count)")
    if not SYSCTL_VALUE.fullmatch(value):
        raise ValueError(f"sysctl {key}: {value!r} is not a sysctl value (numbers or words "
                         "separated by single spaces; no quotes, |, $, % or newlines)")


# --- identity of the system ----------------------------------------------------------


@cache
def _zone_exists(name: str) -> bool:
    """Loads only this zone (not the whole database): the tz files of the system or the
    tzdata package, whichever zoneinfo finds."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


TZ_NAME = re.compile(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*")


def _timezone(value: str) -> str:
    if not TZ_NAME.fullmatch(value) or not _zone_exists(value):
        raise ValueError(f"{value!r} is not a time zone of the tz database "
                         "(e.g. UTC, Europe/Berlin, America/New_York)")
    return value


TimeZone = Annotated[str, AfterValidator(_timezone)]

# language[_TERRITORY].UTF-8[@modifier], or C.UTF-8: what locale-gen and /etc/locale.conf take
LOCALE = re.compile(r"([a-z]{2,3}(_[A-Z]{2})?\.UTF-8(@[a-z]+)?|C\.UTF-8)")
Locale = Annotated[str, AfterValidator(matching(
    LOCALE, "is not a UTF-8 locale name (e.g. en_US.UTF-8, de_DE.UTF-8, C.UTF-8)"))]


def _ip(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (e.g. 127.0.0.1 or ::1)") from None
    if getattr(address, "scope_id", None):
        raise ValueError(f"{value!r} names an interface ('%'); give the address alone "
                         "(e.g. ::1)")
    return str(address)


IpAddress = Annotated[str, AfterValidator(_ip)]

SHA256 = re.compile(r"[0-9a-f]{64}")
Sha256 = Annotated[str, AfterValidator(matching(
    SHA256, "is not a sha256: 64 lowercase hexadecimal characters"))]

# Free text that only ever lands in comments and titles: one line, printable.
TEXT = re.compile(r"[^\x00-\x1f\x7f\u2028\u2029\x85]{0,200}")
Text = Annotated[str, AfterValidator(matching(
    TEXT, "is not one line of at most 200 characters without control characters"))]

# Compiler/linker flags for makepkg.conf (sourced by bash): words, no shell syntax.
FLAG_WORD = re.compile(r"[A-Za-z0-9_=.,:+/-]+")


# Flags that make the compiler, linker or make run another program or load code.
RUNS_PROGRAMS = re.compile(
    r"-B.*|-wrapper|-fplugin.*|-specs.*|--?sysroot.*|-iplugindir.*|-fuse-ld.*|.*plugin.*"
    r"|--?eval.*|-f|--file.*|--makefile.*|--include-dir.*|-e"
    r"|--environment-overrides|--old-file.*|--what-if.*|--new-file.*|SHELL.*|\.SHELLFLAGS.*"
    r"|(-C)?linker.*|(-C)?link-arg.*|(-C)?link-args.*|(-C)?link-self-contained.*|-Z.*|-L.*"
    r"|(-C)?llvm-args.*|(-C)?passes.*|(-C)?profile-use.*|(-C)?profile-generate.*"
    r"|-Wl,.*|-Xlinker|-Xassembler|-Xpreprocessor|-Wp,.*|-Wa,.*"
)


def _flags(value: str) -> str:
    words = value.split(" ")
    if not value or any(not FLAG_WORD.fullmatch(w) for w in words):
        raise ValueError(f"{value!r} is not a list of compiler flags; use words of letters, "
                         "digits and _ = . , : + / - separated by single spaces")
    bad = [w for w in words if RUNS_PROGRAMS.fullmatch(w)]
    if bad:
        raise ValueError(f"{bad[0]!r} is refused in compiler and make flags: it can make the "
                         "build run another program or load code")
    return value


Flags = Annotated[str, AfterValidator(_flags)]

