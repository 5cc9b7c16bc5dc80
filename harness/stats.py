"""Statistics for reading a leaderboard: confidence intervals, paired tests and win rates.

Pure functions over per-item values (numpy only, seeded), so the same numbers come out of the dashboard, a test and a
notebook. A score difference is only worth reporting when it is larger than what resampling the items produces.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Resamples per bootstrap: at 10,000 the Monte-Carlo error of a 95% bound is far below a score's own uncertainty.
N_RESAMPLES = 10_000
# Resample in blocks so a large task (items x resamples index matrix) never needs more than ~20 MB at once.
_BLOCK_CELLS = 2_500_000


@dataclass(frozen=True)
class Interval:
    """A point estimate (the plain mean) and its percentile-bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedComparison:
    """Mean difference A - B over paired items, its bootstrap interval, and a two-sided p-value."""

    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    p_value: float
    test: str
    n: int


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired 0/1 outcomes: a_only = items only A got right, b_only = only B."""

    a_only: int
    b_only: int
    p_value: float


def _as_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a flat sequence of per-item values, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: no values")
    if np.isnan(array).any():
        raise ValueError(f"{name}: contains NaN (drop items without a value first)")
    return array


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_resamples` bootstrap resamples (items drawn with replacement) of `values`."""
    n = values.size
    block = max(1, _BLOCK_CELLS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def bootstrap_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> Interval:
    """Percentile-bootstrap confidence interval of the mean of per-item values."""
    array = _as_vector(values, "bootstrap_ci")
    means = _resampled_means(array, n_resamples, np.random.default_rng(seed))
    alpha = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return Interval(float(array.mean()), float(low), float(high), int(array.size))


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95,
                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedComparison:
    """A - B on the same items: bootstrap interval of the mean difference, p-value from a sign-flip permutation test.

    Resampling items (not runs) keeps each item's pair together, so item difficulty cancels out. The p-value tests
    "no difference": under it, each item's difference is as likely to have either sign.
    """
    first, second = _as_vector(a, "paired_bootstrap a"), _as_vector(b, "paired_bootstrap b")
    if first.size != second.size:
        raise ValueError(f"paired_bootstrap: {first.size} values for A but {second.size} for B (pair items first)")
    diffs = first - second
    rng = np.random.default_rng(seed)
    means = _resampled_means(diffs, n_resamples, rng)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return PairedComparison(float(first.mean()), float(second.mean()), float(diffs.mean()), float(low), float(high),
                            sign_flip_p_value(diffs, n_resamples, seed), "paired permutation (sign flip)",
                            int(diffs.size))


def sign_flip_p_value(diffs: Sequence[float] | np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of a mean paired difference: how often random sign flips give a mean at least as extreme.

    Exact (all 2^n sign patterns) up to 16 items; otherwise Monte-Carlo with the +1 correction, so p is never 0.
    """
    array = _as_vector(diffs, "sign_flip_p_value")
    observed = abs(array.mean())
    # A tolerance so that flips giving the same mean up to rounding count as "as extreme".
    tolerance = 1e-12 * max(1.0, float(np.abs(array).max()))
    n = array.size
    if n <= 16:
        patterns = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        flipped = np.abs((patterns * array).mean(axis=1))
        return float((flipped >= observed - tolerance).mean())
    rng = np.random.default_rng(seed)
    hits = 0
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
        hits += int((np.abs((signs * array).mean(axis=1)) >= observed - tolerance).sum())
    return (hits + 1) / (n_resamples + 1)


def is_binary(values: Sequence[float] | np.ndarray) -> bool:
    """Every value is 0 or 1 (accuracy-like): such pairs are compared with McNemar's test."""
    array = np.asarray(values, dtype=float)
    return bool(array.size) and bool(np.isin(array, (0.0, 1.0)).all())


def mcnemar(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> McNemar:
    """McNemar's exact test on paired 0/1 outcomes (two-sided binomial test on the discordant pairs).

    Only items where A and B disagree carry information; under "no difference" each is equally likely to favour
    either run, so the count favouring A is Binomial(discordant, 1/2).
    """
    first, second = _as_vector(a, "mcnemar a"), _as_vector(b, "mcnemar b")
    if first.size != second.size:
        raise ValueError(f"mcnemar: {first.size} values for A but {second.size} for B (pair items first)")
    if not (is_binary(first) and is_binary(second)):
        raise ValueError("mcnemar: values must be 0 or 1 (use paired_bootstrap for graded scores)")
    a_only = int(((first == 1) & (second == 0)).sum())
    b_only = int(((first == 0) & (second == 1)).sum())
    discordant = a_only + b_only
    if discordant == 0:
        return McNemar(a_only, b_only, 1.0)
    tail = sum(math.comb(discordant, k) for k in range(min(a_only, b_only) + 1))
    # Python integer division is exactly rounded, so this stays accurate for thousands of discordant pairs.
    return McNemar(a_only, b_only, min(1.0, 2 * tail / 2 ** discordant))


def win_rate(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Mean win rate per row of a rows x tasks score matrix (NaN = task not run; higher is better).

    Per task, a row's win rate is the share of the other rows with a score there that it beats (a tie counts half);
    the mean runs over the tasks where the row and at least one other row have scores. NaN when there are none.
    """
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"win_rate: expected a rows x tasks matrix, got shape {matrix.shape}")
    n_rows, n_tasks = matrix.shape
    totals = np.zeros(n_rows)
    counted = np.zeros(n_rows)
    for task in range(n_tasks):
        column = matrix[:, task]
        present = ~np.isnan(column)
        others = present.sum() - 1
        if others < 1:
            continue
        values = column[present]
        for row in np.flatnonzero(present):
            # the row ties with itself once: take that out of the tie count
            wins = (column[row] > values).sum() + 0.5 * ((column[row] == values).sum() - 1)
            totals[row] += wins / others
            counted[row] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, totals / np.maximum(counted, 1), np.nan)
