"""The data table of Kconfig symbol renames (kernel-config/renames.toml)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache

from synapse_os.resources import data_dir


@dataclass(frozen=True)
class Rename:
    old: str
    new: str
    version: str
    note: str = ""
    kind: str = "rename"  # or "successor": a different symbol that took over the job

    def describe(self) -> str:
        if self.kind == "successor":
            text = f"CONFIG_{self.new} took over from CONFIG_{self.old} in {self.version}"
        else:
            text = f"CONFIG_{self.old} was renamed CONFIG_{self.new} in {self.version}"
        return f"{text} ({self.note})" if self.note else text


@dataclass(frozen=True)
class RenameTable:
    renames: tuple[Rename, ...]
    notes: dict[str, str]  # symbols some versions lack, with what to do instead

    def aliases(self, name: str) -> list[tuple[str, Rename]]:
        """Other names of the same symbol (following chains), each with the rename that
        links it; the nearest first."""
        found: list[tuple[str, Rename]] = []
        seen = {name}
        frontier = [name]
        while frontier:
            current = frontier.pop(0)
            for rename in self.renames:
                for this, other in ((rename.old, rename.new), (rename.new, rename.old)):
                    if this == current and other not in seen:
                        seen.add(other)
                        found.append((other, rename))
                        frontier.append(other)
        return found


@lru_cache(maxsize=1)
def load_renames() -> RenameTable:
    with (data_dir("kernel-config") / "renames.toml").open("rb") as f:
        data = tomllib.load(f)
    renames = tuple(
        Rename(r["old"], r["new"], str(r["version"]), r.get("note", ""), kind)
        for kind in ("rename", "successor")
        for r in data.get(kind, [])
    )
    notes = {u["name"]: u["note"] for u in data.get("unknown", [])}
    return RenameTable(renames, notes)
