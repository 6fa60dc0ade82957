"""Raw detector scores -> the public [0, 1] anomaly score: the one place the conversion happens.

Score convention: an anomaly score is in [0, 1] and higher means more anomalous. A detector's raw
score (any scale, higher = more anomalous) becomes one through :class:`Calibrator`: one minus its
(extrapolated) tail probability among reference raw scores of the normal training population.
:func:`combine` merges calibrated scores (n_samples, n_detectors) into one raw score, which is
calibrated in turn; the decision threshold is then ``1 - target_fpr``.

One false-positive budget: every signal that can flag a user on its own (the ensemble, each
decisive detector, the campaign stage) spends its :data:`BUDGET` share of ``target_fpr``, measured
against a null fitted to the log's own scores (:class:`NullCalibrator`: Efron's empirical null, the
tail shape fitted on the bulk of the training users and extrapolated), so that a log without
attacks sees about ``target_fpr`` of its users flagged however its scores are distributed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .features import MAX_NATS
from .stage import check_is_fitted

MAX_REFERENCE = 20_000   # reference values kept per calibrator / feature-tail column
# Shares of the one false-positive budget (TrainConfig.target_fpr) each signal that can flag a user
# on its own may spend on a log without attacks; the ensemble's combination spends the rest
# (:func:`ensemble_share`), so the shares add up to 1 (docs/decisions.md).
BUDGET = {"copy": 0.1, "part_copy": 0.1, "replay": 0.1, "takeover": 0.1, "campaign": 0.2}
# Quantiles of a log's own scores between which a null's tail is fitted: above the median (the
# tail's shape) and below the top tenth (where a poisoned log's attackers are).
NULL_BAND = (0.5, 0.9)


def side_logp(ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """-log P(X >= x) for each column, from sorted references ref (m, d) and x (n, d).

    Inside the reference range it is the smoothed empirical tail; beyond the largest reference
    value the tail is extrapolated exponentially, with the decay fitted to the top 10% of the
    reference, so that "far beyond anything seen" scores higher than "just beyond" (without it,
    every value past the training maximum would tie).
    """
    m = ref.shape[0]
    q90 = ref[min(m - 1, int(0.9 * m))]
    top = ref[-1]
    scale = (top - q90) / np.log(max(0.1 * (m + 1), 1.0 + 1e-9))
    # a column whose top 10% are all equal: fall back to a scale from the whole reference
    spread = ref[-1] - ref[0]
    scale = np.where(scale > 1e-12, scale, np.where(spread > 1e-12, spread / max(np.log(m + 1), 1.0), 1e-6))
    below = np.empty(x.shape, np.int64)  # reference values below x, column by column
    for j in range(x.shape[1]):
        below[:, j] = np.searchsorted(ref[:, j], x[:, j], side="left")
    out = -np.log((m - below + 1) / (m + 1))
    beyond = x > top
    if beyond.any():
        out = np.where(beyond, np.log(m + 1) + (x - top) / scale, out)
    return np.minimum(out, MAX_NATS)


def tail_logp(ref_sorted: np.ndarray, x: np.ndarray, *, two_sided: bool) -> np.ndarray:
    """(n, d) -log tail probability of x (n, d) against per-column sorted references (m, d).

    Two-sided: the smaller of both tails, doubled (capped at probability 1).
    """
    right = side_logp(ref_sorted, x)
    if not two_sided:
        return right
    left = side_logp(-ref_sorted[::-1], -x)
    return np.maximum(0.0, np.maximum(right, left) - np.log(2.0))


def sorted_reference(x: np.ndarray) -> np.ndarray:
    """(m, d) each column of x (n, d) sorted, thinned to at most about MAX_REFERENCE rows."""
    return np.sort(x, axis=0)[:: max(1, len(x) // MAX_REFERENCE)]


class Calibrator:
    """Raw score -> [0, 1]: one minus the (extrapolated) share of reference raw scores at or above it.

    Parameters: ``max_reference`` (int, default MAX_REFERENCE): reference values kept (quantiles
    beyond). Fitted: ``reference_`` (m,) sorted float64.
    """

    def __init__(self, *, max_reference: int = MAX_REFERENCE) -> None:
        self.max_reference = max_reference

    def fit(self, raw: np.ndarray) -> Calibrator:
        """raw (n,): raw scores of the reference (normal) population."""
        if not isinstance(self.max_reference, (int, np.integer)) or self.max_reference < 2:
            raise ValueError(f"max_reference must be an integer >= 2, got {self.max_reference!r}")
        raw = np.asarray(raw, np.float64)
        if len(raw) == 0:
            raise ValueError("need at least one reference score to calibrate")
        if len(raw) > self.max_reference:
            raw = np.quantile(raw, np.linspace(0, 1, self.max_reference))
        self.reference_ = np.sort(raw)
        return self

    def nats(self, raw: np.ndarray) -> np.ndarray:
        """(n,) -log P(reference >= raw), extrapolated past the largest reference value."""
        check_is_fitted(self, ["reference_"])
        return side_logp(self.reference_[:, None], np.asarray(raw, np.float64)[:, None])[:, 0]

    def score(self, raw: np.ndarray) -> np.ndarray:
        """(n,) calibrated score in [0, 1], higher = more anomalous."""
        return 1.0 - np.exp(-self.nats(raw))

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        check_is_fitted(self, ["reference_"])
        return {"reference": self.reference_}, {"max_reference": self.max_reference}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Calibrator:
        cal = cls(max_reference=meta.get("max_reference", MAX_REFERENCE))
        ref = np.asarray(arrays["reference"], np.float64)
        if ref.ndim != 1 or len(ref) == 0:
            raise ValueError(f"a calibrator needs a non-empty 1-d reference, got shape {ref.shape}")
        cal.reference_ = np.sort(ref)
        return cal


class NullCalibrator(Calibrator):
    """Raw score -> [0, 1] against the null of a log's own scores (Efron's empirical null).

    Fitted on every training user, attackers included: up to the ``band``'s upper quantile the
    tail is the empirical share of users at or above a score; beyond it the tail decays
    exponentially at the rate the band itself shows (log tail over score between its two
    quantiles), so the top of the log, where a poisoned log's attackers lie, never sets its own
    null, and a log whose bulk is spread (common near-copies, heavy users) widens the null to match.
    A band without spread (most users tied) says nothing about a tail: beyond it every score is
    extreme (tail e^-MAX_NATS).

    Parameters: ``band`` (lo, hi) quantiles (default NULL_BAND), ``max_reference``.
    Fitted: ``reference_`` (m,) sorted raw scores of the training users.
    """

    def __init__(self, *, band: tuple[float, float] = NULL_BAND, max_reference: int = MAX_REFERENCE) -> None:
        super().__init__(max_reference=max_reference)
        self.band = band

    def fit(self, raw: np.ndarray) -> NullCalibrator:
        """raw (n,): raw scores of all the training users (possibly poisoned)."""
        lo, hi = self.band
        if not 0 < lo < hi < 1:
            raise ValueError(f"band must be two quantiles 0 < lo < hi < 1, got {self.band!r}")
        super().fit(raw)
        return self

    def _knots(self) -> tuple[float, float, float]:
        """The band's upper score, its empirical nats there, and the tail's scale (nats per score; 0: flat band)."""
        ref = self.reference_
        m = len(ref)
        x_lo, x_hi = ref[int(round(self.band[0] * (m - 1)))], ref[int(round(self.band[1] * (m - 1)))]
        n_lo, n_hi = side_logp(ref[:, None], np.array([[x_lo], [x_hi]]))[:, 0]
        if x_hi - x_lo <= 1e-12 * max(1.0, abs(x_hi)) or n_hi <= n_lo:
            return float(x_hi), float(n_hi), 0.0
        return float(x_hi), float(n_hi), float((x_hi - x_lo) / (n_hi - n_lo))

    def nats(self, raw: np.ndarray) -> np.ndarray:
        """(n,) -log P_null(score >= raw): empirical up to the band, extrapolated beyond it."""
        check_is_fitted(self, ["reference_"])
        raw = np.asarray(raw, np.float64)
        x_hi, n_hi, scale = self._knots()
        out = side_logp(self.reference_[:, None], raw[:, None])[:, 0]
        beyond = raw > x_hi
        if scale > 0:
            out = np.where(beyond, n_hi + (raw - x_hi) / scale, out)
        else:
            out = np.where(beyond, MAX_NATS, out)
        return np.minimum(out, MAX_NATS)

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super().to_state()
        return arrays, {**meta, "band": list(self.band)}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> NullCalibrator:
        band = tuple(float(b) for b in meta.get("band", NULL_BAND))
        if len(band) != 2 or not 0 < band[0] < band[1] < 1:
            raise ValueError(f"a null calibrator's band must be two quantiles 0 < lo < hi < 1, got {band!r}")
        cal = cls(band=band, max_reference=meta.get("max_reference", MAX_REFERENCE))
        cal.reference_ = Calibrator.from_state(arrays, meta).reference_
        return cal


def ensemble_share(campaign_share: float = BUDGET["campaign"]) -> float:
    """The combination's share of the budget: what the decisive detectors and the campaign stage
    (``campaign_share``; 0 when the stage is off) leave."""
    rest = 1.0 - sum(v for k, v in BUDGET.items() if k != "campaign")
    if not 0 <= campaign_share < rest:
        raise ValueError(f"campaign_share must be in [0, {rest:g}) to leave the ensemble a share of the "
                         f"false-positive budget, got {campaign_share!r}")
    return rest - campaign_share


def budget_scale(tail: np.ndarray, share: float, target_fpr: float) -> np.ndarray:
    """(n,) a signal's tail probabilities under its null on the verdict scale: a score in [0, 1]
    that crosses ``1 - target_fpr`` where the tail is ``share * target_fpr`` (1 - tail ** g), so the
    signal spends ``share`` of the budget and keeps its ranking everywhere."""
    g = np.log(target_fpr) / np.log(share * target_fpr)
    return 1.0 - np.clip(tail, 0.0, 1.0) ** g


def combine(p: np.ndarray) -> np.ndarray:
    """Combine calibrated detector scores p (n, d) in [0, 1] into one raw score (n,).

    Mean of -log(1 - p): one detector that is sure counts, several that agree count more.
    """
    return np.mean(-np.log(np.clip(1.0 - p, np.exp(-MAX_NATS), 1.0)), axis=1)


def verdict(p: np.ndarray, share: float) -> np.ndarray:
    """(n,) the largest of calibrated scores p (n, d) put on an ensemble's scale where it crosses
    ``1 - target_fpr`` at ``share`` of the target false-positive rate: 1 - tail / share."""
    tail = 1.0 - p.max(1)
    return np.clip(1.0 - tail / share, 0.0, 1.0)
