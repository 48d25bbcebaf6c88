"""`synapse verify`: the live system (or a target tree's files) against a profile.

Every check comes from synapse_os.tunables (settings from `checks()`, files from
`file_checks()`); each probe runs with `sh -c` and `Check.evaluate` judges the output, the
same code the VM tests run inside a booted guest.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from synapse_os import proc
from synapse_os.apply.hostboot import fitted_tree
from synapse_os.apply.plan import rendered_file_checks
from synapse_os.profile.model import Profile
from synapse_os.tunables import Check, live_checks

PROBE_TIMEOUT_S = 20
PROBE_WORKERS = 4  # probes are independent reads; most of their time is process start-up


@dataclass(frozen=True)
class Result:
    check: Check
    status: str  # pass | fail | unknown
    actual: str

    def as_dict(self) -> dict[str, object]:
        c = self.check
        return {"id": c.id, "kind": c.kind, "source": c.source, "expected": c.expected,
                "actual": self.actual, "status": self.status, "after_reboot": c.after_reboot}


@dataclass(frozen=True)
class Report:
    root: Path
    live: bool
    results: list[Result]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "unknown": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    def as_dict(self) -> dict[str, object]:
        return {"root": str(self.root), "live": self.live, "ok": self.ok,
                "counts": self.counts(), "notes": self.notes,
                "checks": [r.as_dict() for r in self.results]}


def run_check(check: Check) -> Result:
    try:
        res = proc.run(["sh", "-c", check.probe], check=False, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # a hung probe is not a verdict on the setting
        return Result(check, "unknown", f"probe did not finish: {exc}")
    status, actual = check.evaluate(res.returncode, res.stdout)
    return Result(check, status, actual)


def profile_checks(profile: Profile, root: Path, settings_only: bool) -> tuple[list[Check],
                                                                                list[str]]:
    live = root.resolve() == Path("/")
    notes: list[str] = []
    out: list[Check] = []
    if live:
        out.extend(live_checks(profile))
    else:
        notes.append(f"{root} is not the running system: only the files placed there are "
                     "checked; run verify on the booted machine for live settings")
    if not settings_only:
        out.extend(rendered_file_checks(fitted_tree(profile, root, notes), str(root)))
    return out, notes


def run_checks(checks: list[Check]) -> list[Result]:
    with ThreadPoolExecutor(max_workers=PROBE_WORKERS) as pool:
        return list(pool.map(run_check, checks))


def verify(profile: Profile, root: Path, settings_only: bool = False) -> Report:
    check_list, notes = profile_checks(profile, root, settings_only)
    return Report(root, root.resolve() == Path("/"), run_checks(check_list), notes)


def _short(actual: str, width: int = 72) -> str:
    """Table cell for a live value (JSON keeps it whole: /proc/cmdline can be long)."""
    if not actual:
        return "(nothing)"
    return actual if len(actual) <= width else actual[: width - 3] + "..."


def report_text(report: Report) -> str:
    rows = [(r.status.upper(), r.check.id, r.check.expected, _short(r.actual)
             + ("  (takes effect after a reboot)" if r.check.after_reboot
                and r.status == "fail" else ""))
            for r in report.results]
    header = ("STATUS", "CHECK", "EXPECTED", "ACTUAL")
    widths = [max(len(header[i]), *(min(len(row[i]), 48) for row in rows)) if rows
              else len(header[i]) for i in range(3)]

    def line(cols: tuple[str, str, str, str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cols[:3], widths, strict=True)) \
            + "  " + cols[3]

    out = [line(header)] + [line(r) for r in rows]
    counts = report.counts()
    out.append(f"{counts['pass']} pass, {counts['fail']} fail, {counts['unknown']} unknown"
               + ("" if report.ok else " -- the system drifted from the profile"))
    out.extend(f"note: {n}" for n in report.notes)
    return "\n".join(out) + "\n"
