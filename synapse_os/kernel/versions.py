"""The supported kernel lines and kconfig's behaviour per version (kernel-config/versions.toml)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache

from synapse_os.resources import data_dir


def version_key(version: str) -> tuple[int, ...]:
    """(6, 12, 117) from '6.12.117' or '6.12.0-rc3'; missing parts count as 0."""
    numbers = [int(n) for n in re.findall(r"\d+", version.split("-", 1)[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def series_of(version: str) -> str:
    """'6.12' from '6.12.117'."""
    major, minor, _ = version_key(version)
    return f"{major}.{minor}"


@dataclass(frozen=True)
class Series:
    series: str
    debian_package: str
    note: str = ""


@dataclass(frozen=True)
class KconfigBehaviour:
    since: str
    choice_member_dependency: str  # "dir_dep" or "member_dep"


@dataclass(frozen=True)
class VersionTable:
    series: tuple[Series, ...]
    kconfig: tuple[KconfigBehaviour, ...]

    def supported(self, version: str) -> Series | None:
        wanted = series_of(version)
        return next((s for s in self.series if s.series == wanted), None)

    def behaviour(self, version: str) -> KconfigBehaviour:
        key = version_key(version)
        rows = sorted(self.kconfig, key=lambda b: version_key(b.since))
        chosen = rows[0]
        for row in rows:
            if version_key(row.since) <= key:
                chosen = row
        return chosen


@lru_cache(maxsize=1)
def load_versions() -> VersionTable:
    with (data_dir("kernel-config") / "versions.toml").open("rb") as f:
        data = tomllib.load(f)
    series = tuple(Series(s["series"], s["debian_package"], s.get("note", ""))
                   for s in data.get("series", []))
    kconfig = tuple(KconfigBehaviour(str(k["since"]), k["choice_member_dependency"])
                    for k in data.get("kconfig", []))
    return VersionTable(series, kconfig)
