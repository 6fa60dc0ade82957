"""Tail probabilities as evidence in nats (-log P), vectorised and capped at MAX_NATS: the item-side
tests of the campaign stage are binomial, Poisson and Gamma tails.

The binomial and Gamma tests count at most N_CAP members: every null is an approximation (taste,
activity and popularity correlate in real logs), and over hundreds of adopters a small departure
from it would read as overwhelming evidence; a campaign's departure is large, not only many.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from ..features import MAX_NATS

N_CAP = 30.0


def _cap(logsf: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(-logsf, nan=0.0, posinf=MAX_NATS), 0.0, MAX_NATS)


def _shrink(c: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c, n) scaled down to at most N_CAP trials, the share c / n kept."""
    r = np.minimum(1.0, N_CAP / np.maximum(n, 1.0))
    return c * r, n * r


def binom_nats(c: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """-log P(Binomial(n, p) >= c), n counted up to N_CAP (the share c / n kept); 0 where c <= 0.
    Real-valued c and n through the regularised incomplete beta function."""
    c, n = _shrink(np.asarray(c, np.float64), np.asarray(n, np.float64))
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1.0)
    ok = c > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = special.betainc(np.where(ok, c, 1.0), np.maximum(n - c + 1.0, 1e-9), p)
        out = _cap(np.log(tail))
    return np.where(ok & (p < 1.0), out, 0.0)


def poisson_nats(k: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """-log P(Poisson(mu) >= k); 0 where k <= 0."""
    k = np.asarray(k, np.float64)
    mu = np.maximum(np.asarray(mu, np.float64), 1e-12)
    return np.where(k > 0, _cap(stats.poisson.logsf(k - 1, mu)), 0.0)


def gamma_nats(total: np.ndarray, k: np.ndarray, mean: np.ndarray, var: float) -> np.ndarray:
    """-log P(sum of k values >= total) for values of this mean and variance (a Gamma with their
    moments), k counted up to N_CAP (the mean total / k kept); 0 where k <= 0."""
    total, k = _shrink(np.asarray(total, np.float64), np.asarray(k, np.float64))
    mean = np.maximum(np.asarray(mean, np.float64), 1e-6)
    shape, scale = k * mean * mean / var, var / mean
    out = _cap(stats.gamma.logsf(total, np.maximum(shape, 1e-12), scale=scale))
    return np.where(k > 0, out, 0.0)
