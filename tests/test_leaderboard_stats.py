"""harness.stats against reference computations: scipy.stats.bootstrap / permutation_test / binomtest, statsmodels."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from harness import stats

# 0/1 outcomes of two runs on the same 40 items, and graded (0-100-like) per-item scores on 30 items.
RNG = np.random.default_rng(42)
RIGHT_A = (RNG.random(40) < 0.75).astype(float)
RIGHT_B = np.where(RNG.random(40) < 0.8, RIGHT_A, 1 - RIGHT_A)
GRADED_A = RNG.normal(55, 12, 30)
GRADED_B = GRADED_A - RNG.normal(3, 6, 30)


@pytest.mark.parametrize("values", [RIGHT_A, GRADED_A], ids=["binary", "graded"])
def test_bootstrap_ci_matches_scipy_percentile_bootstrap(values: np.ndarray) -> None:
    ours = stats.bootstrap_ci(values, n_resamples=20_000, seed=1)
    ref = sps.bootstrap((values,), np.mean, n_resamples=20_000, confidence_level=0.95, method="percentile",
                        random_state=np.random.default_rng(7)).confidence_interval
    spread = values.max() - values.min()
    # Two independent Monte-Carlo runs agree to a small share of the data's range (standard error ~0.2% here).
    assert ours.low == pytest.approx(ref.low, abs=0.01 * spread)
    assert ours.high == pytest.approx(ref.high, abs=0.01 * spread)
    assert ours.estimate == pytest.approx(values.mean())
    assert ours.n == values.size


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    first = stats.bootstrap_ci(GRADED_A, seed=3)
    assert first == stats.bootstrap_ci(GRADED_A, seed=3)
    assert first.low < first.estimate < first.high
    assert stats.bootstrap_ci(GRADED_A, seed=4) != first


def test_bootstrap_ci_of_constant_values_is_a_point() -> None:
    ci = stats.bootstrap_ci([1.0, 1.0, 1.0])
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_interval_matches_scipy_paired_bootstrap() -> None:
    ours = stats.paired_bootstrap(GRADED_A, GRADED_B, n_resamples=20_000, seed=2)
    ref = sps.bootstrap((GRADED_A, GRADED_B), lambda a, b: np.mean(a - b), paired=True, vectorized=False,
                        n_resamples=20_000, method="percentile", random_state=np.random.default_rng(5))
    spread = np.ptp(GRADED_A - GRADED_B)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.01 * spread)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.01 * spread)
    assert ours.diff == pytest.approx(np.mean(GRADED_A - GRADED_B))
    assert (ours.mean_a, ours.mean_b) == (pytest.approx(GRADED_A.mean()), pytest.approx(GRADED_B.mean()))


def test_sign_flip_p_value_is_exact_for_small_samples() -> None:
    diffs = np.array([3.0, 1.5, -0.5, 2.0, 4.0, -1.0, 2.5, 0.5, 1.0, 3.5, -2.0, 1.25])
    ref = sps.permutation_test((diffs,), np.mean, permutation_type="samples", alternative="two-sided",
                               n_resamples=np.inf)  # 2^12 sign patterns: scipy enumerates them all
    assert stats.sign_flip_p_value(diffs) == pytest.approx(ref.pvalue, rel=1e-12)


def test_sign_flip_p_value_matches_scipy_monte_carlo() -> None:
    diffs = GRADED_A - GRADED_B  # 30 items: Monte-Carlo on both sides
    ours = stats.sign_flip_p_value(diffs, n_resamples=50_000, seed=0)
    ref = sps.permutation_test((diffs,), np.mean, permutation_type="samples", alternative="two-sided",
                               n_resamples=50_000, random_state=np.random.default_rng(9))
    assert ours == pytest.approx(ref.pvalue, abs=0.01)
    assert stats.paired_bootstrap(GRADED_A, GRADED_B, n_resamples=50_000, seed=0).p_value == ours


def test_sign_flip_without_any_difference_is_one() -> None:
    assert stats.sign_flip_p_value(np.zeros(30)) == 1.0
    assert stats.sign_flip_p_value(np.zeros(5)) == 1.0


def test_mcnemar_matches_statsmodels_and_scipy_binomtest() -> None:
    result = stats.mcnemar(RIGHT_A, RIGHT_B)
    a_only = int(((RIGHT_A == 1) & (RIGHT_B == 0)).sum())
    b_only = int(((RIGHT_A == 0) & (RIGHT_B == 1)).sum())
    both = int(((RIGHT_A == 1) & (RIGHT_B == 1)).sum())
    neither = int(((RIGHT_A == 0) & (RIGHT_B == 0)).sum())
    table = [[both, a_only], [b_only, neither]]
    assert (result.a_only, result.b_only) == (a_only, b_only) and a_only + b_only > 0
    assert result.p_value == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-12)
    assert result.p_value == pytest.approx(sps.binomtest(a_only, a_only + b_only, 0.5).pvalue, rel=1e-12)


@pytest.mark.parametrize("a_only,b_only", [(3, 0), (0, 9), (7, 7), (12, 30), (600, 540)])
def test_mcnemar_discordant_counts(a_only: int, b_only: int) -> None:
    # Build pairs with exactly these discordant counts plus 5 items both got right and 4 both got wrong.
    a = [1] * a_only + [0] * b_only + [1] * 5 + [0] * 4
    b = [0] * a_only + [1] * b_only + [1] * 5 + [0] * 4
    table = [[5, a_only], [b_only, 4]]
    assert stats.mcnemar(a, b).p_value == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9)


def test_mcnemar_without_discordant_pairs_is_one() -> None:
    assert stats.mcnemar([1, 0, 1], [1, 0, 1]).p_value == 1.0


def test_mcnemar_refuses_graded_scores_and_unpaired_lengths() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        stats.mcnemar([0.5, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="pair items first"):
        stats.mcnemar([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="pair items first"):
        stats.paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        stats.bootstrap_ci([1.0, float("nan")])


def test_is_binary() -> None:
    assert stats.is_binary([0, 1, 1.0]) and not stats.is_binary([0, 0.5]) and not stats.is_binary([])


def test_win_rate_by_hand() -> None:
    nan = float("nan")
    scores = [[90, 80, nan],   # row 0
              [80, 70, 40],    # row 1
              [80, nan, 60],   # row 2
              [50, 90, nan]]   # row 3
    # task 0: 90 > all 3 -> 1; row1 beats row3, ties row2 -> 1.5/3; row2 same 1.5/3; row3 0/3.
    # task 1 (rows 0,1,3): row0 beats row1 -> 1/2; row1 0/2; row3 2/2.
    # task 2 (rows 1,2): row1 0/1; row2 1/1.
    expected = [(1 + 0.5) / 2, (0.5 + 0 + 0) / 3, (0.5 + 1) / 2, (0 + 1) / 2]
    assert stats.win_rate(scores) == pytest.approx(expected)


def test_win_rate_of_a_lone_row_is_nan() -> None:
    assert np.isnan(stats.win_rate([[50.0, 60.0]])).all()
    assert np.isnan(stats.win_rate([[50.0, float("nan")], [float("nan"), 60.0]])).all()
