"""Per-event evidence: the local event detector, and the check that what a partial explanation
leaves of a history is as ordinary as a normal user's events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .calibration import MAX_REFERENCE, Calibrator, tail_logp
from .features import segment_sums
from .stage import check_is_fitted


class EventDetector:
    """Per-event local anomaly: ECOD-style sum of one-sided feature tails, calibrated to [0, 1].

    Parameters: ``seed`` (int, default 0): the reference sample. Fitted: ``ref_`` (m, E) sorted
    reference event features; ``calibrator_`` over the training events' raw scores.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, ef: np.ndarray) -> EventDetector:
        """ef: (N, E) event features of (presumed mostly normal) training events."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if len(ef) == 0:
            raise ValueError("need at least one event to fit the event detector")
        rng = np.random.default_rng(self.seed)
        sample = ef if len(ef) <= MAX_REFERENCE else ef[rng.choice(len(ef), MAX_REFERENCE, replace=False)]
        self.ref_ = np.sort(sample, axis=0)
        self.calibrator_ = Calibrator().fit(self.decision_function(ef))
        return self

    def tails(self, ef: np.ndarray) -> np.ndarray:
        """(N, E) -log high-side tail probability of each event feature."""
        check_is_fitted(self, ["ref_"])
        return tail_logp(self.ref_, ef, two_sided=False)

    def decision_function(self, ef: np.ndarray) -> np.ndarray:
        """(N,) raw score (summed tails, nats), higher = more anomalous."""
        return self.tails(ef).sum(1)

    def score(self, ef: np.ndarray) -> np.ndarray:
        """(N,) calibrated local event score in [0, 1], higher = more anomalous."""
        check_is_fitted(self, ["calibrator_"])
        return self.calibrator_.score(self.decision_function(ef))

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``ref`` and ``calibrator`` (its reference); meta the seed."""
        check_is_fitted(self, ["calibrator_"])
        return {"ref": self.ref_, "calibrator": self.calibrator_.reference_}, {"seed": self.seed}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> EventDetector:
        det = cls(seed=meta.get("seed", 0))
        det.ref_ = np.asarray(arrays["ref"])
        if det.ref_.ndim != 2 or len(det.ref_) == 0:
            raise ValueError(f"its event reference has shape {det.ref_.shape}, not (events >= 1, features)")
        det.calibrator_ = Calibrator.from_state({"reference": arrays["calibrator"]}, {})
        return det


class ResidualCheck:
    """Are the events a partial explanation leaves as ordinary as a normal user's?

    Removing the oddest half of a fake profile leaves a history the user detectors may call
    normal: that is selection, not an explanation. What gives it away is that the events left
    are still odd on average. The statistic is the mean local score of a history's events below
    ``cut``; on normal users it grows with their count (heavy users' events are odder), so it is
    fitted as ``a + b log(count)`` and a history is judged by its z-score against that line.

    Parameters: ``cut`` (float in (0, 1], default 0.9). Fitted: ``coef_`` (a, b, sd, cut); sd = inf
    when too few normal users could be fitted (the check never refuses then).
    """

    MIN_EVENTS = 10  # fewer events below the cut than this: too few to tell, never refused

    def __init__(self, *, cut: float = 0.9) -> None:
        self.cut = cut

    @staticmethod
    def _stat(local: np.ndarray, offsets: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray]:
        """(U,) mean local score of each history's events below ``cut`` and (U,) their count."""
        low = local < cut
        n = segment_sums(low.astype(np.int64), offsets)
        return segment_sums(np.where(low, local, 0.0), offsets) / np.maximum(n, 1), n

    def fit(self, local: np.ndarray, offsets: np.ndarray, normal: np.ndarray) -> ResidualCheck:
        """local (N,) event scores, offsets (U + 1,), normal (U,) bool: the users to learn from."""
        if not 0 < self.cut <= 1:
            raise ValueError(f"cut must be in (0, 1], got {self.cut!r}")
        m, n = self._stat(local, offsets, self.cut)
        use = normal & (n >= self.MIN_EVENTS)
        if use.sum() < 5:
            self.coef_ = np.array([0.0, 0.0, np.inf, self.cut])
            return self
        x = np.c_[np.ones(use.sum()), np.log(n[use])]
        ab, *_ = np.linalg.lstsq(x, m[use], rcond=None)
        sd = max(float(np.std(m[use] - x @ ab, ddof=1)), 1e-3)
        self.coef_ = np.array([ab[0], ab[1], sd, self.cut])
        return self

    def z(self, local: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(U,) how many spreads above the normal line each history's ordinary events lie;
        -inf where a history has too few events below the cut to tell."""
        check_is_fitted(self, ["coef_"])
        a, b, sd, cut = self.coef_
        m, n = self._stat(local, offsets, cut)
        z = (m - (a + b * np.log(np.maximum(n, 1)))) / sd
        return np.where(n >= self.MIN_EVENTS, z, -np.inf)

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One array, ``residual_check``: (a, b, sd, cut)."""
        check_is_fitted(self, ["coef_"])
        return {"residual_check": self.coef_}, {}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> ResidualCheck:
        coef = np.asarray(arrays["residual_check"], np.float64)
        if coef.shape != (4,) or not np.isfinite(coef[[0, 1, 3]]).all() or not coef[2] > 0:
            raise ValueError(f"residual check needs (intercept, slope, sd > 0, cut), got {coef.tolist()}")
        check = cls(cut=float(coef[3]))
        check.coef_ = coef
        return check
