"""The statistics against known distributions (seeded, so every run sees the same samples)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from synapse_os.bench import stats


def draws(mean: float, cv: float, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(rng.normal(mean, mean * cv, n))


def test_a_five_percent_speedup_is_detected() -> None:
    base = draws(100.0, 0.01, 15, seed=1)
    cand = draws(105.0, 0.01, 15, seed=2)
    result = stats.compare_samples(base, cand)
    assert result.verdict == "improved"
    assert result.ci_low > 1.01
    assert result.ci_low <= 1.05 <= result.ci_high
    assert result.p_value < 0.001


def test_a_five_percent_slowdown_is_detected() -> None:
    result = stats.compare_samples(draws(100.0, 0.01, 15, seed=3), draws(95.0, 0.01, 15, seed=4))
    assert result.verdict == "regressed"
    assert result.ci_high < 0.99
    assert result.ci_low <= 0.95 <= result.ci_high


def test_identical_samples_are_no_difference() -> None:
    samples = draws(100.0, 0.02, 12, seed=5)
    result = stats.compare_samples(samples, list(samples))
    assert result.verdict == "no difference"
    assert result.ratio == 1.0
    assert result.p_value == pytest.approx(1.0)
    assert result.ci_low <= 1.0 <= result.ci_high


def test_constant_samples_are_no_difference() -> None:
    result = stats.compare_samples([50.0] * 10, [50.0] * 10)
    assert (result.ratio, result.ci_low, result.ci_high, result.p_value) == (1.0, 1.0, 1.0, 1.0)
    assert result.verdict == "no difference"


def test_two_draws_of_one_distribution_are_almost_never_called_different() -> None:
    calls = [stats.compare_samples(draws(100.0, 0.02, 10, seed=s), draws(100.0, 0.02, 10,
                                                                         seed=1000 + s)).verdict
             for s in range(40)]
    assert calls.count("no difference") >= 38


def test_a_real_shift_drowned_in_noise_is_not_called() -> None:
    # 5 % shift, 15 % jitter, 5 samples: the evidence does not support a verdict.
    result = stats.compare_samples(draws(100.0, 0.15, 5, seed=7), draws(105.0, 0.15, 5, seed=8))
    assert result.verdict == "no difference"


def test_a_shift_inside_the_noise_band_is_not_called() -> None:
    # 0.5 % shift measured very precisely: significant, but inside the +/-1 % band.
    base = draws(100.0, 0.001, 30, seed=9)
    cand = draws(100.5, 0.001, 30, seed=10)
    result = stats.compare_samples(base, cand)
    assert result.p_value < 0.05
    assert result.verdict == "no difference"


def test_the_bootstrap_is_deterministic() -> None:
    base, cand = draws(100.0, 0.03, 10, seed=11), draws(103.0, 0.03, 10, seed=12)
    assert stats.bootstrap_ratio_ci(base, cand) == stats.bootstrap_ratio_ci(base, cand)
    assert stats.bootstrap_ratio_ci(base, cand, seed=1) != stats.bootstrap_ratio_ci(base, cand)


def test_ci_covers_the_true_ratio_most_of_the_time() -> None:
    covered = 0
    for s in range(40):
        low, high = stats.bootstrap_ratio_ci(draws(100.0, 0.03, 15, seed=s),
                                             draws(104.0, 0.03, 15, seed=500 + s),
                                             resamples=2000)
        covered += low <= 1.04 <= high
    assert covered >= 32  # nominal 95 %; percentile bootstrap of medians runs a little narrow


def test_cv_median_and_geometric_mean() -> None:
    assert stats.cv([10.0, 10.0, 10.0]) == 0.0
    assert stats.cv([9.0, 11.0]) == pytest.approx(math.sqrt(2) / 10)
    assert stats.cv([5.0]) == 0.0
    assert stats.median([3.0, 1.0, 2.0, 10.0]) == 2.5
    assert stats.geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        stats.geometric_mean([])


def test_verdict_needs_both_the_interval_and_the_p_value() -> None:
    assert stats.verdict((1.02, 1.08), 0.01) == "improved"
    assert stats.verdict((1.02, 1.08), 0.2) == "no difference"
    assert stats.verdict((1.005, 1.08), 0.001) == "no difference"
    assert stats.verdict((0.90, 0.98), 0.01) == "regressed"
    assert stats.verdict((0.90, 0.995), 0.01) == "no difference"


def _round(rng: np.random.Generator, base: float, cand: float, n: int = 5) -> tuple[list[float], list[float]]:
    return list(rng.normal(base, base * 0.005, n)), list(rng.normal(cand, cand * 0.005, n))


def test_an_interleaved_win_holds_in_both_halves() -> None:
    rng = np.random.default_rng(1)
    rounds = [_round(rng, 100.0, 105.0) for _ in range(4)]
    result = stats.compare_interleaved(rounds)
    assert result.verdict == "improved"
    assert result.first_half.verdict == result.second_half.verdict == "improved"
    assert result.as_dict()["verdict"] == "improved"


def test_drift_that_favours_one_arm_in_one_half_is_not_a_win() -> None:
    """The pooled samples look like a win, but only because the candidate's second-half
    rounds ran on a faster machine state: the first half says no difference."""
    rng = np.random.default_rng(2)
    rounds = [_round(rng, 100.0, 100.0) for _ in range(3)] + \
             [_round(rng, 100.0, 112.0) for _ in range(3)]
    result = stats.compare_interleaved(rounds)
    assert result.second_half.verdict == "improved"
    assert result.first_half.verdict == "no difference"
    assert result.verdict == "no difference"


def test_an_interleaved_comparison_needs_two_rounds() -> None:
    with pytest.raises(ValueError, match="two A/B rounds"):
        stats.compare_interleaved([([1.0, 2.0], [1.0, 2.0])])
