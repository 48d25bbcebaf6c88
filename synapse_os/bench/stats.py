"""Benchmark statistics: medians, bootstrap ratio CIs, Mann-Whitney U, verdicts, geometric means.

The conventions follow criterion and the Phoronix Test Suite: the median of per-repetition
samples is the primary statistic, a change is only called when the 95 % bootstrap interval of
the median ratio lies wholly outside a +/-1 % noise band AND Mann-Whitney U gives p < 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NOISE_BAND = 0.01  # +/- 1 %
ALPHA = 0.05
CV_RERUN_THRESHOLD = 0.03  # add repetitions when the coefficient of variation is >= 3 %
BOOTSTRAP_RESAMPLES = 10_000
SEED = 20240611  # fixed: the same records always give the same interval


def median(samples: Sequence[float]) -> float:
    return float(np.median(np.asarray(samples, dtype=float)))


def cv(samples: Sequence[float]) -> float:
    """Coefficient of variation (sample standard deviation / mean); 0 for fewer than 2 samples."""
    values = np.asarray(samples, dtype=float)
    if values.size < 2 or values.mean() == 0:
        return 0.0
    return float(values.std(ddof=1) / values.mean())


def bootstrap_ratio_ci(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap CI of median(candidate) / median(baseline), resampling each side."""
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    rng = np.random.default_rng(seed)
    base_medians = np.median(rng.choice(base, size=(resamples, base.size), replace=True), axis=1)
    cand_medians = np.median(rng.choice(cand, size=(resamples, cand.size), replace=True), axis=1)
    ratios = cand_medians / base_medians
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return float(low), float(high)


def mann_whitney_p(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value; 1.0 when every sample is identical (no evidence)."""
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    if np.ptp(np.concatenate([base, cand])) == 0:
        return 1.0
    from scipy import stats as sps  # here: the runtime's install (a boot A/B) has no scipy

    return float(sps.mannwhitneyu(cand, base, alternative="two-sided").pvalue)


def verdict(ci: tuple[float, float], p: float, band: float = NOISE_BAND,
            alpha: float = ALPHA) -> str:
    """'improved' / 'regressed' when the CI clears the noise band and p < alpha, else no change.

    Higher is better (tokens per second).
    """
    low, high = ci
    if p < alpha and low > 1.0 + band:
        return "improved"
    if p < alpha and high < 1.0 - band:
        return "regressed"
    return "no difference"


def geometric_mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("geometric mean of no values")
    return float(math.exp(sum(math.log(v) for v in values) / len(values)))


@dataclass(frozen=True)
class Comparison:
    baseline_median: float
    candidate_median: float
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str
    baseline_cv: float
    candidate_cv: float

    def as_dict(self) -> dict[str, float | str]:
        return dict(self.__dict__)


def compare_samples(baseline: Sequence[float], candidate: Sequence[float]) -> Comparison:
    if len(baseline) == 0 or len(candidate) == 0:
        raise ValueError("both sides need at least one sample")
    ci = bootstrap_ratio_ci(baseline, candidate)
    p = mann_whitney_p(baseline, candidate)
    base_median = median(baseline)
    cand_median = median(candidate)
    return Comparison(
        baseline_median=base_median,
        candidate_median=cand_median,
        ratio=cand_median / base_median,
        ci_low=ci[0],
        ci_high=ci[1],
        p_value=p,
        verdict=verdict(ci, p),
        baseline_cv=cv(baseline),
        candidate_cv=cv(candidate),
    )


@dataclass(frozen=True)
class Interleaved:
    """An A/B run measured in alternating rounds (A B A B …): the whole comparison and its
    two halves in time. A change is only called when both halves call it the same way, so
    drift over the run (thermal, a neighbour's load) cannot make a win on its own."""

    whole: Comparison
    first_half: Comparison
    second_half: Comparison

    @property
    def verdict(self) -> str:
        calls = {self.whole.verdict, self.first_half.verdict, self.second_half.verdict}
        return calls.pop() if len(calls) == 1 else "no difference"

    def as_dict(self) -> dict[str, object]:
        return {"verdict": self.verdict, "whole": self.whole.as_dict(),
                "first_half": self.first_half.as_dict(),
                "second_half": self.second_half.as_dict()}


def compare_interleaved(rounds: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Interleaved:
    """`rounds`: (baseline samples, candidate samples) of each A/B round, in the order they
    ran; at least two rounds, so that each half has one."""
    if len(rounds) < 2:
        raise ValueError("an interleaved comparison needs at least two A/B rounds")
    middle = len(rounds) // 2

    def pooled(part: Sequence[tuple[Sequence[float], Sequence[float]]]) -> Comparison:
        return compare_samples([s for base, _ in part for s in base],
                               [s for _, cand in part for s in cand])

    return Interleaved(pooled(rounds), pooled(rounds[:middle]), pooled(rounds[middle:]))
