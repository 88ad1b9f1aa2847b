"""Interval statistics behind the metric modules: Wilson intervals and a block bootstrap."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

STATISTICS = ("mean", "exp_mean")


def wilson(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``hits / n``."""
    if n == 0:
        return math.nan, math.nan
    z, p = NormalDist().inv_cdf(0.5 + confidence / 2), hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def statistic_of(values: np.ndarray, statistic: str) -> float:
    """``mean`` of the values, or ``exp_mean`` (perplexity from token NLLs)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")
    if len(values) == 0:
        return math.nan
    mean = float(np.mean(values))
    return math.exp(mean) if statistic == "exp_mean" else mean


def block_bootstrap(values: np.ndarray, fn, block_size: int = 1, n_boot: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``fn(resample)``; resamples whole blocks of consecutive rows.

    Blocks keep correlated neighbours (tokens of one text) together, so the interval is not
    too narrow. ``values`` may be 2-D (paired rows resampled together).
    """
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    block_size = max(1, min(block_size, n))
    blocks = [np.arange(s, min(s + block_size, n)) for s in range(0, n, block_size)]
    picks = np.random.default_rng(seed).integers(0, len(blocks), size=(n_boot, len(blocks)))
    stats = np.array([fn(values[np.concatenate([blocks[k] for k in row])]) for row in picks])
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def mean_interval(values, statistic: str = "mean", block_size: int = 1, n_boot: int = 1000, seed: int = 0,
                  confidence: float = 0.95) -> dict:
    data = np.asarray(values, dtype=np.float64)
    low, high = block_bootstrap(data, lambda v: statistic_of(v, statistic), block_size, n_boot, seed, confidence)
    return {"value": statistic_of(data, statistic), "low": low, "high": high, "n": len(data)}


def paired_change(before, after, statistic: str = "mean", block_size: int = 1, n_boot: int = 1000, seed: int = 0,
                  confidence: float = 0.95) -> dict:
    """``statistic(after) - statistic(before)`` over the same units, with a paired bootstrap interval."""
    pairs = np.stack([np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)], axis=1)

    def change(rows):
        return statistic_of(rows[:, 1], statistic) - statistic_of(rows[:, 0], statistic)

    low, high = block_bootstrap(pairs, change, block_size, n_boot, seed, confidence)
    return {"change": change(pairs) if len(pairs) else math.nan, "low": low, "high": high, "n": len(pairs)}
