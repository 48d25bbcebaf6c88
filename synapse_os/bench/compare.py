"""Compare a baseline record file with a candidate: per-test statistics and a geometric mean."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from synapse_os.bench import stats
from synapse_os.bench.records import Record
from synapse_os.errors import UserError


@dataclass(frozen=True)
class TestComparison:
    name: str
    threads: int
    stats: stats.Comparison
    baseline_roofline: float | None
    candidate_roofline: float | None
    baseline_samples: list[float]
    candidate_samples: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {"test": self.name, "threads": self.threads, **self.stats.as_dict(),
                "baseline_roofline": self.baseline_roofline,
                "candidate_roofline": self.candidate_roofline,
                "baseline_n": len(self.baseline_samples),
                "candidate_n": len(self.candidate_samples)}


@dataclass(frozen=True)
class Result:
    baseline_label: str
    candidate_label: str
    tests: list[TestComparison]
    geomean_ratio: float
    only_baseline: list[str]
    only_candidate: list[str]
    warnings: list[str]
    baseline_bandwidth: float | None  # None: not measured (inside a guest)
    candidate_bandwidth: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline_label,
            "candidate": self.candidate_label,
            "tests": [t.as_dict() for t in self.tests],
            "geomean_ratio": self.geomean_ratio,
            "only_baseline": self.only_baseline,
            "only_candidate": self.only_candidate,
            "warnings": self.warnings,
            "baseline_bandwidth_gbps": self.baseline_bandwidth,
            "candidate_bandwidth_gbps": self.candidate_bandwidth,
        }


def _one(values: set[str], side: str, what: str) -> str:
    if len(values) != 1:
        listed = ", ".join(sorted(values))
        raise UserError(f"the {side} file mixes {len(values)} {what}s ({listed}); keep one run "
                        "per file")
    return next(iter(values))


def _check_real(records: list[Record]) -> None:
    for record in records:
        if record.synapse.get("real") is not True:
            raise UserError(f"{record.source} is not from a real model and real llama-bench run "
                            "(synapse.real is not true); compare only records written by "
                            "`synapse bench run`")


def _check_same(baseline: list[Record], candidate: list[Record], *, allow_model_mismatch: bool,
                allow_build_mismatch: bool) -> list[str]:
    warnings = []
    base_model = _one({r.model_sha256 for r in baseline}, "baseline", "model")
    cand_model = _one({r.model_sha256 for r in candidate}, "candidate", "model")
    if base_model != cand_model:
        message = (f"the records measure different models (baseline sha256 {base_model[:12]}…, "
                   f"candidate {cand_model[:12]}…)")
        if not allow_model_mismatch:
            raise UserError(f"{message}, so their speeds are not comparable; pass "
                            "--allow-model-mismatch to compare them anyway")
        warnings.append(message)
    base_build = _one({json.dumps(r.build_identity(), sort_keys=True) for r in baseline},
                      "baseline", "llama.cpp build")
    cand_build = _one({json.dumps(r.build_identity(), sort_keys=True) for r in candidate},
                      "candidate", "llama.cpp build")
    if base_build != cand_build:
        base, cand = json.loads(base_build), json.loads(cand_build)
        differing = ", ".join(f"{k} {base[k]!r} vs {cand[k]!r}" for k in base if base[k] != cand[k])
        message = f"the records come from different llama.cpp builds ({differing})"
        if not allow_build_mismatch:
            raise UserError(f"{message}, so a difference could be the build's, not the system's; "
                            "pass --allow-build-mismatch to compare them anyway")
        warnings.append(message)
    return warnings


def compare(baseline: list[Record], candidate: list[Record], *,
            allow_model_mismatch: bool = False, allow_build_mismatch: bool = False) -> Result:
    _check_real(baseline)
    _check_real(candidate)
    warnings = _check_same(baseline, candidate, allow_model_mismatch=allow_model_mismatch,
                           allow_build_mismatch=allow_build_mismatch)
    base_by_key = {r.key: r for r in baseline}
    cand_by_key = {r.key: r for r in candidate}
    common = [k for k in base_by_key if k in cand_by_key]
    if not common:
        raise UserError("the two record files share no test (same test and thread count); run "
                        "both systems with the same -p/-n/--pg/--threads settings")
    tests = []
    for key in common:
        base, cand = base_by_key[key], cand_by_key[key]
        tests.append(TestComparison(
            name=key[0], threads=key[1],
            stats=stats.compare_samples(base.samples, cand.samples),
            baseline_roofline=base.roofline_fraction, candidate_roofline=cand.roofline_fraction,
            baseline_samples=base.samples, candidate_samples=cand.samples))
    return Result(
        baseline_label=_one({r.label for r in baseline}, "baseline", "label"),
        candidate_label=_one({r.label for r in candidate}, "candidate", "label"),
        tests=tests,
        geomean_ratio=stats.geometric_mean([t.stats.ratio for t in tests]),
        only_baseline=[f"{n}@{t}t" for n, t in base_by_key if (n, t) not in cand_by_key],
        only_candidate=[f"{n}@{t}t" for n, t in cand_by_key if (n, t) not in base_by_key],
        warnings=warnings,
        baseline_bandwidth=_bandwidth(baseline[0]),
        candidate_bandwidth=_bandwidth(candidate[0]),
    )


def _bandwidth(record: Record) -> float | None:
    value = record.synapse["bandwidth"].get("read_gbps")
    return None if value is None else float(value)


def gbps_text(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f} GB/s"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def table_rows(result: Result) -> list[list[str]]:
    """Header and rows shared by the terminal table and RESULTS.md."""
    rows = [["test", "threads", "baseline t/s", "candidate t/s", "ratio", "95% CI", "p",
             "verdict", "CV base", "CV cand", "roofline base", "roofline cand"]]
    for t in result.tests:
        s = t.stats
        rows.append([
            t.name, str(t.threads), f"{s.baseline_median:.2f}", f"{s.candidate_median:.2f}",
            f"{s.ratio:.3f}", f"[{s.ci_low:.3f}, {s.ci_high:.3f}]", f"{s.p_value:.3g}",
            s.verdict, _pct(s.baseline_cv), _pct(s.candidate_cv), _pct(t.baseline_roofline),
            _pct(t.candidate_roofline),
        ])
    return rows
