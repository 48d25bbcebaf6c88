"""Reading and writing kernel .config text: `CONFIG_X=v` and `# CONFIG_X is not set`."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

from synapse_os.errors import UserError
from synapse_os.userfile import read_user_bytes

SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set\s*$")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ConfigLine:
    """One symbol assignment and where it came from (file:line)."""

    symbol: str  # without the CONFIG_ prefix
    value: str  # "n" for "is not set"
    origin: str


@dataclass(frozen=True)
class Requirement:
    """A symbol the profile's own machine needs to boot and be verified."""

    symbol: str  # without the CONFIG_ prefix
    value: str  # the least value that works: "y", or "m" when a module will do
    reason: str  # the profile key and what needs it, e.g. "disk.root_fs: xfs (root fs)"


def format_assignment(symbol: str, value: str) -> str:
    """The .config line for a symbol; "n" is written as `# CONFIG_X is not set`."""
    name = symbol.removeprefix("CONFIG_")
    if value == "n":
        return f"# CONFIG_{name} is not set"
    return f"CONFIG_{name}={value}"


def parse_line(line: str) -> tuple[str, str] | None:
    """(symbol, value) for an assignment line, None for blank lines and comments."""
    text = line.strip()
    m = SET.match(text)
    if m:
        return m.group(1), m.group(2)
    m = UNSET.match(text)
    if m:
        return m.group(1), "n"
    return None


def parse_config(text: str) -> dict[str, str]:
    """Symbol -> value for every assignment (last one wins, as in kconfig)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        parsed = parse_line(line)
        if parsed:
            values[parsed[0]] = parsed[1]
    return values


def parse_fragment(text: str, origin: str) -> list[ConfigLine]:
    """Assignments of a user fragment; anything else that is not a comment is an error."""
    lines: list[ConfigLine] = []
    for number, line in enumerate(text.splitlines(), start=1):
        parsed = parse_line(line)
        if parsed:
            lines.append(ConfigLine(parsed[0], parsed[1], f"{origin}:{number}"))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise UserError(
                f"{origin}:{number}: {line.strip()!r} is not a kernel config line; "
                "write CONFIG_NAME=value or '# CONFIG_NAME is not set'"
            )
    return lines


MIN_BASE_ASSIGNMENTS = 100


def check_base_config(text: str, path: Path, what: str = "base config") -> str:
    """A base config must be a whole .config (from make, /proc/config.gz, /boot/config-*):
    only assignments and comments, and enough of them to describe a kernel; a few lines
    would leave olddefconfig to pick everything else (SMP=n, no disk drivers...)."""
    count = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if parse_line(line):
            count += 1
        elif line.strip() and not line.lstrip().startswith("#"):
            raise UserError(
                f"{what} {path}:{number}: {line.strip()[:60]!r} is not a .config line; pass a "
                "whole kernel config (a .config, /proc/config.gz or /boot/config-*)"
            )
    if count < MIN_BASE_ASSIGNMENTS:
        raise UserError(
            f"{what} {path} sets only {count} CONFIG_ options, so it is not a whole kernel "
            f"config (those have thousands); pass a .config, /proc/config.gz or "
            "/boot/config-*, or put single options in a --fragment"
        )
    return text


def normalize_value(value: str) -> str:
    """Compare values the way kconfig means them: strings without quotes, hex lowercase."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if value.lower().startswith("0x"):
        return value.lower()
    return value


def read_config_file(path: Path, what: str = "kernel config") -> str:
    """Text of a .config (plain or gzip, e.g. /proc/config.gz), or a UserError."""
    data = read_user_bytes(path, what, "a readable .config file")
    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            raise UserError(f"{what} {path} is a damaged gzip file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(
            f"{what} {path} is not a text .config (nor gzip, as /proc/config.gz is)"
        ) from None
    if not parse_config(text):
        raise UserError(
            f"{what} {path} is not a kernel config: it has no CONFIG_ lines"
        )
    return text
