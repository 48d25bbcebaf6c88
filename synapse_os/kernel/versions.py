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
    release: str  # the kernel.org release built when a profile pins only the line
    tarball_sha256: str  # of linux-<release>.tar.xz
    note: str = ""


@dataclass(frozen=True)
class KconfigBehaviour:
    since: str
    choice_member_dependency: str  # "dir_dep" or "member_dep"


@dataclass(frozen=True)
class VersionTable:
    series: tuple[Series, ...]
    kconfig: tuple[KconfigBehaviour, ...]
    default_series: str

    def release_for(self, pinned: str | None) -> tuple[str, str | None]:
        """(kernel.org release, its tarball sha256 when the table pins it) for a profile's
        kernel.version: none = the default line's release, "X.Y" of a supported line = that
        line's release, anything else as written (sha256 known only for a table release)."""
        wanted = pinned or self.default_series
        for s in self.series:
            if wanted in (s.series, s.release):
                return s.release, s.tarball_sha256
        return wanted, None

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
    series = tuple(Series(s["series"], s["debian_package"], s["release"], s["tarball_sha256"],
                          s.get("note", ""))
                   for s in data.get("series", []))
    kconfig = tuple(KconfigBehaviour(str(k["since"]), k["choice_member_dependency"])
                    for k in data.get("kconfig", []))
    return VersionTable(series, kconfig, data["default_series"])
