"""Calibrated detector ensemble.

Score convention (the one public convention): an anomaly score is in [0, 1] and higher means
more anomalous. Each detector produces a raw score (higher = more anomalous); it is turned into
a calibrated score, the share of the (trimmed) training population it exceeds, in exactly one
place: :class:`Calibrator`. The combination is a pure function over an (n_samples,
n_detectors) matrix: :func:`combine`. The decision threshold comes from a target false-positive
rate on the trimmed training population, not a contamination guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors

MAX_REFERENCE = 20_000   # reference values kept per calibrator / ECOD column
EPS = 1e-6


class Calibrator:
    """Raw score -> [0, 1]: the smoothed share of reference raw scores below it."""

    def __init__(self, reference: np.ndarray | None = None):
        self.reference = None if reference is None else np.sort(np.asarray(reference, np.float64))

    @classmethod
    def fit(cls, raw: np.ndarray, *, seed: int = 0) -> Calibrator:
        raw = np.asarray(raw, np.float64)
        if len(raw) > MAX_REFERENCE:
            raw = np.quantile(raw, np.linspace(0, 1, MAX_REFERENCE))
        return cls(raw)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        ref = self.reference
        # mid-rank with +1 smoothing: never exactly 0 or 1, ties count half
        below = np.searchsorted(ref, raw, side="left")
        upto = np.searchsorted(ref, raw, side="right")
        return (0.5 * (below + upto) + 0.5) / (len(ref) + 1)


def tail_logp(ref_sorted: np.ndarray, x: np.ndarray, *, two_sided: bool) -> np.ndarray:
    """-log tail probability of x (n, d) against per-column sorted references ref_sorted (m, d)."""
    m = ref_sorted.shape[0]
    out = np.zeros_like(x, dtype=np.float64)
    for j in range(x.shape[1]):
        r = ref_sorted[:, j]
        ge = m - np.searchsorted(r, x[:, j], side="left")    # reference values >= x
        right = (ge + 1) / (m + 1)
        if two_sided:
            le = np.searchsorted(r, x[:, j], side="right")    # reference values <= x
            left = (le + 1) / (m + 1)
            out[:, j] = -np.log(np.minimum(1.0, 2 * np.minimum(left, right)))
        else:
            out[:, j] = -np.log(right)
    return out


def combine(p: np.ndarray) -> np.ndarray:
    """Combine calibrated detector scores p (n, d) in [0, 1] into one raw score (n,).

    Mean of -log(1 - p): one detector that is sure counts, several that agree count more.
    """
    return np.mean(-np.log(np.clip(1.0 - p, EPS, 1.0)), axis=1)


def _robust_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    med = np.median(x, axis=0)
    iqr = np.quantile(x, 0.75, axis=0) - np.quantile(x, 0.25, axis=0)
    std = x.std(axis=0)
    scale = np.where(iqr > 1e-9, iqr / 1.349, np.where(std > 1e-9, std, 1.0))
    return med, scale


DETECTORS = ("ecod", "iforest", "knn", "encoder")


@dataclass
class UserDetectors:
    """The per-user detector ensemble, fitted on per-user features and sequence embeddings.

    Fit is robust to poisoned training logs: after a first fit the clearest outliers (Tukey's
    far-out fence on the combined score) are left out and everything is refitted, twice.
    """

    target_fpr: float = 0.01
    n_neighbors: int = 10
    seed: int = 0
    encoder_columns: tuple[int, ...] = ()   # feature columns that carry the encoder's surprisal
    # learned state
    center_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    ecod_ref_: np.ndarray | None = None
    knn_ref_: np.ndarray | None = None
    iforest_: IsolationForest | None = None
    calibrators_: dict[str, Calibrator] = field(default_factory=dict)
    combined_: Calibrator | None = None
    threshold_: float = 0.0
    n_trimmed_: int = 0

    def fit(self, feats: np.ndarray, emb: np.ndarray) -> UserDetectors:
        """feats: (U, F) user features; emb: (U, H) sequence embeddings."""
        if not 0 < self.target_fpr < 0.5:
            raise ValueError(f"target_fpr must be in (0, 0.5), got {self.target_fpr}")
        if len(feats) < 5:
            raise ValueError(f"need at least 5 users to fit the detectors, got {len(feats)}")
        keep = np.ones(len(feats), bool)
        for _ in range(3):
            self._fit_once(feats[keep], emb[keep])
            raw = combine(self._calibrated(feats, emb, exclude_self=keep))
            ref = raw[keep]
            q1, q3 = np.quantile(ref, [0.25, 0.75])
            new_keep = raw <= q3 + 3.0 * (q3 - q1)
            if new_keep.sum() < max(5, 0.5 * len(feats)) or (new_keep == keep).all():
                break
            keep = new_keep
        self.n_trimmed_ = int((~keep).sum())
        self._fit_once(feats[keep], emb[keep])
        p = self._calibrated(feats[keep], emb[keep], exclude_self=np.ones(keep.sum(), bool))
        self.combined_ = Calibrator.fit(combine(p))
        self.threshold_ = 1.0 - self.target_fpr
        return self

    def _fit_once(self, feats: np.ndarray, emb: np.ndarray) -> None:
        self.center_, self.scale_ = _robust_scale(feats)
        z = self._z(feats)
        self.ecod_ref_ = np.sort(z, axis=0)[:: max(1, len(z) // MAX_REFERENCE)]
        self.iforest_ = IsolationForest(n_estimators=200, random_state=self.seed).fit(z)
        self.knn_ref_ = self._knn_space(z, emb)
        self._nn = NearestNeighbors(n_neighbors=min(self.n_neighbors + 1, len(z))).fit(self.knn_ref_)
        raw = self._raw(feats, emb, exclude_self=np.ones(len(feats), bool))
        self.calibrators_ = {d: Calibrator.fit(raw[:, i]) for i, d in enumerate(DETECTORS)}

    def _z(self, feats: np.ndarray) -> np.ndarray:
        return np.clip((feats - self.center_) / self.scale_, -50, 50)

    @staticmethod
    def _knn_space(z: np.ndarray, emb: np.ndarray) -> np.ndarray:
        e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        # embeddings weigh as much as a few features
        return np.hstack([np.clip(z, -10, 10) / np.sqrt(z.shape[1]), 2.0 * e / np.sqrt(2.0)])

    def _raw(self, feats: np.ndarray, emb: np.ndarray, *, exclude_self: np.ndarray | None = None) -> np.ndarray:
        """(n, len(DETECTORS)) raw scores, higher = more anomalous.

        exclude_self: for rows that are themselves in the kNN reference (training rows), drop
        the zero distance to themselves.
        """
        z = self._z(feats)
        ecod = tail_logp(self.ecod_ref_, z, two_sided=True).sum(1)
        iforest = -self.iforest_.score_samples(z)
        k = min(self.n_neighbors, len(self.knn_ref_) - 1) or 1
        dist, _ = self._nn.kneighbors(self._knn_space(z, emb), n_neighbors=min(k + 1, len(self.knn_ref_)))
        if exclude_self is not None and exclude_self.any():
            knn = np.where(exclude_self, dist[:, 1:k + 1].mean(1) if dist.shape[1] > 1 else dist[:, 0], dist[:, :k].mean(1))
        else:
            knn = dist[:, :k].mean(1)
        if self.encoder_columns:
            enc = tail_logp(self.ecod_ref_[:, list(self.encoder_columns)], z[:, list(self.encoder_columns)], two_sided=False).sum(1)
        else:
            enc = np.zeros(len(z))
        return np.stack([ecod, iforest, knn, enc], axis=1)

    def _calibrated(self, feats, emb, *, exclude_self=None) -> np.ndarray:
        raw = self._raw(feats, emb, exclude_self=exclude_self)
        return np.stack([self.calibrators_[d](raw[:, i]) for i, d in enumerate(DETECTORS)], axis=1)

    def score(self, feats: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated ensemble score (n,) in [0, 1] (higher = more anomalous) and per-detector (n, D)."""
        if self.combined_ is None:
            raise RuntimeError("UserDetectors is not fitted")
        p = self._calibrated(feats, emb)
        return self.combined_(combine(p)), p

    def feature_tails(self, feats: np.ndarray) -> np.ndarray:
        """(n, F) -log two-sided tail probability of each feature: what makes a user unusual."""
        return tail_logp(self.ecod_ref_, self._z(feats), two_sided=True)


@dataclass
class EventDetector:
    """Per-event local anomaly: ECOD-style sum of one-sided feature tails, calibrated to [0, 1]."""

    ref_: np.ndarray | None = None
    calibrator_: Calibrator | None = None

    def fit(self, ef: np.ndarray, *, seed: int = 0) -> EventDetector:
        """ef: (N, E) event features of (presumed mostly normal) training events."""
        if len(ef) == 0:
            raise ValueError("need at least one event to fit the event detector")
        rng = np.random.default_rng(seed)
        sample = ef if len(ef) <= MAX_REFERENCE else ef[rng.choice(len(ef), MAX_REFERENCE, replace=False)]
        self.ref_ = np.sort(sample, axis=0)
        self.calibrator_ = Calibrator.fit(self.raw(ef))
        return self

    def raw(self, ef: np.ndarray) -> np.ndarray:
        return tail_logp(self.ref_, ef, two_sided=False).sum(1)

    def tails(self, ef: np.ndarray) -> np.ndarray:
        return tail_logp(self.ref_, ef, two_sided=False)

    def score(self, ef: np.ndarray) -> np.ndarray:
        """(N,) calibrated local event score in [0, 1], higher = more anomalous."""
        return self.calibrator_(self.raw(ef))
