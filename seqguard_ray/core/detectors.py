"""The user detectors, in PyOD's form: ``fit(X)`` learns, ``decision_function(X)`` gives a raw score
(n,), higher = more anomalous. None of them calibrates: :class:`~.ensemble.UserDetectors` turns raw
scores into [0, 1] in one shared post-fit step (:mod:`.calibration`).

Each detector also says which raw scores its calibration is fitted on (``reference``: by default
all the training users'), and where it never fires (``silent``: by default nowhere). ``scaled``
detectors read the robustly scaled user features, the others the features as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .calibration import sorted_reference, tail_logp
from .features import MAX_NATS
from .stage import check_is_fitted

# The ensemble's detectors, in the column order of its (n, len(DETECTORS)) score matrices.
DETECTORS = ("iforest", "knn", "encoder", "copy", "part_copy", "replay")
# Evidence that stands on its own, outside the combination: a copied account or a history that
# replays its own stretches looks ordinary to every other detector. Each spends its share of the
# false-positive budget (calibration.BUDGET); the user score is the largest of the verdicts.
DECISIVE = ("copy", "part_copy", "replay")
# Decisive detectors that judge an account as a whole: what is left of a history once a part is
# explained is no account (a replay, by contrast, must be gone from what is left).
ACCOUNT = ("copy", "part_copy")
# Item-set Jaccard similarity at which two histories are copies rather than shared taste: such
# users do not calibrate the copy detector (people's largest: 0.84 on MovieLens-100k).
COPY_CERTAIN = 0.8
COPY_LEAST = 0.5          # the copy detector never fires below this overlap: "most of an earlier account's items"
MIN_COPY_REFERENCE = 20   # users with some overlap needed to calibrate the copy detector; fewer: it stays silent
# Partial-copy evidence (nats) at which a training user is a copy rather than a person, left out
# of the part_copy calibration (people's largest: 19 on MovieLens-100k; half-copies: 35-48) ...
PART_COPY_CERTAIN = 35.0
# ... and what people reach by shared taste alone, always in the calibration reference, so that
# where nobody else shows any evidence the first history that does is not flagged for it.
PART_COPY_PEOPLE = 20.0
# Share of a history's events replaying its earlier stretches at which it is replayed traffic
# rather than habit (left out of the replay calibration), unless more than REPLAY_HABIT of the
# users are (a domain where people repeat themselves: then everyone calibrates it).
REPLAY_CERTAIN = 0.15
REPLAY_HABIT = 0.1
REPLAY_LEAST = 0.05       # the replay detector never fires below this share

MAX_KNN_REFERENCE = 5_000  # reference users kept for the kNN distance (a random sample beyond)
KNN_GROUP_SIZE = 50        # reference users per leave-cluster-out group (k-means clusters)
MAX_KNN_GROUPS = 100


class Detector:
    """The shape every user detector has (PyOD's ``BaseDetector``, less the thresholding)."""

    scaled = True  # reads the robustly scaled features (else the features as they are)

    def fit(self, X: np.ndarray) -> Detector:
        raise NotImplementedError

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(n,) raw score, higher = more anomalous."""
        raise NotImplementedError

    def reference(self, raw: np.ndarray, X: np.ndarray) -> np.ndarray:
        """The raw scores its calibration is fitted on, from those of the reference users X: all."""
        return raw

    def silent(self, X: np.ndarray) -> np.ndarray:
        """(n,) bool: rows it never flags (their calibrated score is 0): none."""
        return np.zeros(len(X), bool)


def _columns(cols: Sequence[int] | None) -> list[int] | None:
    return None if cols is None else [int(c) for c in cols]


def knn_distance(ref: np.ndarray, x: np.ndarray, k: int, *, ref_groups: np.ndarray | None = None,
                 groups: np.ndarray | None = None, chunk: int = 1024) -> np.ndarray:
    """(n,) mean Euclidean distance from each row of x to its k nearest rows of ref.

    Without groups, one exact match is skipped (the row itself, when it is one of the
    reference's), so a reference user is judged against the others exactly as a new user would
    be. With ``ref_groups`` (m,) and ``groups`` (n,), a row's neighbours come only from the other
    groups: leave-cluster-out, so that a crowd of alike users (a campaign of fake profiles, a bot
    farm) does not make its members each other's near neighbours.
    """
    grouped = ref_groups is not None and groups is not None
    k = int(min(k, len(ref) - 1)) if not grouped else int(min(k, len(ref)))
    out = np.empty(len(x))
    rr = (ref ** 2).sum(1)
    for a in range(0, len(x), chunk):
        xb = x[a:a + chunk]
        xx = (xb ** 2).sum(1)
        d2 = np.maximum(xx[:, None] + rr[None, :] - 2.0 * xb @ ref.T, 0.0)
        if grouped:
            d2[groups[a:a + chunk, None] == ref_groups[None, :]] = np.inf
            near = np.partition(d2, k - 1, axis=1)[:, :k]
            finite = np.isfinite(near)  # a group may leave fewer than k others
            near = np.sqrt(np.where(finite, near, 0.0))
            out[a:a + chunk] = near.sum(1) / np.maximum(finite.sum(1), 1)
            continue
        near = np.sort(np.partition(d2, k, axis=1)[:, :k + 1], axis=1)
        self_match = near[:, 0] <= 1e-9 * (1.0 + xx)
        near = np.where(self_match[:, None], near[:, 1:], near[:, :-1])
        out[a:a + chunk] = np.sqrt(near).mean(1)
    return out


def nearest_centroid(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n,) index of the nearest row of centroids (K, F) for each row of x (n, F)."""
    d2 = (x ** 2).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids ** 2).sum(1)[None, :]
    return d2.argmin(1)


class KNN(Detector):
    """Mean distance to the nearest 5% of the reference users (1 to 50), taken from the other
    k-means clusters of ~KNN_GROUP_SIZE reference users (leave-cluster-out; plain kNN when there
    are too few users for two clusters).

    Parameters: ``columns`` (of X it reads; None: all), ``seed``. Fitted: ``ref_`` (m, F) reference
    users, ``centroids_`` (K, F) and ``groups_`` (m,) their clusters, or None.
    """

    def __init__(self, *, columns: Sequence[int] | None = None, seed: int = 0) -> None:
        self.columns = columns
        self.seed = seed

    def _x(self, X: np.ndarray) -> np.ndarray:
        return X if self.columns is None else X[:, list(self.columns)]

    def fit(self, X: np.ndarray) -> KNN:
        Z = self._x(X)
        if len(Z) < 2:
            raise ValueError(f"the kNN detector needs at least 2 reference users, got {len(Z)}")
        rng = np.random.default_rng(self.seed)
        self.ref_ = Z if len(Z) <= MAX_KNN_REFERENCE else Z[rng.choice(len(Z), MAX_KNN_REFERENCE, replace=False)]
        n_groups = min(MAX_KNN_GROUPS, len(self.ref_) // KNN_GROUP_SIZE)
        self.centroids_, self.groups_ = None, None
        if n_groups >= 2:
            from sklearn.cluster import KMeans  # fit only: scoring needs no scikit-learn

            km = KMeans(n_clusters=n_groups, n_init=3, random_state=self.seed).fit(self.ref_)
            self.centroids_, self.groups_ = km.cluster_centers_, km.labels_.astype(np.int64)
        return self

    @property
    def k_(self) -> int:
        """Neighbours averaged: 5% of the reference users, 1 to 50."""
        return int(np.clip(len(self.ref_) // 20, 1, 50))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, ["ref_"])
        z = self._x(X)
        if self.centroids_ is None:
            return knn_distance(self.ref_, z, self.k_)
        return knn_distance(self.ref_, z, self.k_, ref_groups=self.groups_, groups=nearest_centroid(self.centroids_, z))

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        check_is_fitted(self, ["ref_"])
        arrays = {"ref": self.ref_}
        if self.centroids_ is not None:
            arrays.update(centroids=self.centroids_, groups=self.groups_)
        return arrays, {"columns": _columns(self.columns), "seed": self.seed}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> KNN:
        det = cls(columns=meta.get("columns"), seed=meta.get("seed", 0))
        ref = np.asarray(arrays["ref"])
        width = len(det.columns) if det.columns is not None else ref.shape[-1]
        if ref.ndim != 2 or ref.shape[1] != width or len(ref) < 2:
            raise ValueError(f"its kNN reference has shape {ref.shape}, not (users >= 2, {width})")
        det.ref_, det.centroids_, det.groups_ = ref, None, None
        if "centroids" in arrays:
            c, g = np.asarray(arrays["centroids"]), np.asarray(arrays["groups"])
            K = len(c)
            if c.shape != (K, width) or g.shape != (len(ref),) or K < 2 or g.min() < 0 or g.max() >= K:
                raise ValueError(f"its kNN groups do not fit its kNN reference ({c.shape} centroids, {g.shape} labels)")
            det.centroids_, det.groups_ = c, g
        return det


class SurprisalDetector(Detector):
    """The encoder's own evidence: the summed high-side tail (nats) of the surprisal feature columns.

    Parameters: ``columns`` (the features that carry the encoder's surprisal). Fitted: ``ref_``
    (m, len(columns)) sorted reference.
    """

    def __init__(self, *, columns: Sequence[int] = ()) -> None:
        self.columns = columns

    def fit(self, X: np.ndarray) -> SurprisalDetector:
        self.ref_ = sorted_reference(X[:, list(self.columns)])
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, ["ref_"])
        cols = list(self.columns)
        return tail_logp(self.ref_, X[:, cols], two_sided=False).sum(1) if cols else np.zeros(len(X))

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        check_is_fitted(self, ["ref_"])
        return {"ref": self.ref_}, {"columns": _columns(self.columns)}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> SurprisalDetector:
        det = cls(columns=tuple(meta.get("columns") or ()))
        ref = np.asarray(arrays["ref"])
        if ref.ndim != 2 or ref.shape[1] != len(det.columns):
            raise ValueError(f"its surprisal reference has shape {ref.shape}, not (users, {len(det.columns)})")
        det.ref_ = ref
        return det


class ColumnDetector(Detector):
    """A decisive detector that reads one feature column as it is (None: no column, never fires).

    Fitted: ``n_features_in_``. Nothing else is learned: its evidence needs no reference beyond
    its calibration.
    """

    scaled = False

    def __init__(self, *, column: int | None = None) -> None:
        self.column = column

    def fit(self, X: np.ndarray) -> ColumnDetector:
        if self.column is not None and not 0 <= self.column < X.shape[1]:
            raise ValueError(f"column must index one of the {X.shape[1]} feature columns, got {self.column!r}")
        self.n_features_in_ = X.shape[1]
        return self

    def _raw(self, x: np.ndarray) -> np.ndarray:
        return x

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, ["n_features_in_"])
        return np.zeros(len(X)) if self.column is None else self._raw(X[:, self.column])

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        check_is_fitted(self, ["n_features_in_"])
        return {}, {"column": self.column, "n_features_in": self.n_features_in_}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> ColumnDetector:
        det = cls(column=meta.get("column"))
        det.n_features_in_ = int(meta["n_features_in"])
        return det


def _copy_raw(jaccard: np.ndarray) -> np.ndarray:
    """-log(1 - J), J capped at 0.999: a whole copy lies far beyond people's overlaps, not just past them."""
    return -np.log1p(-np.clip(jaccard, 0.0, 0.999))


class CopyDetector(ColumnDetector):
    """Copied accounts (replayed traffic, clones): raw -log(1 - J) of the copy-overlap column (the
    item-set Jaccard similarity to an account that started earlier)."""

    def _raw(self, x: np.ndarray) -> np.ndarray:
        return _copy_raw(x)

    def reference(self, raw: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Users it can judge (some overlap) that are no copies; too few: the largest overlap there is."""
        if self.column is None:
            return raw
        j = X[:, self.column]
        ordinary = (j > 0) & (j < COPY_CERTAIN)
        return raw[ordinary] if ordinary.sum() >= MIN_COPY_REFERENCE else _copy_raw(np.ones(1))

    def silent(self, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(X), bool) if self.column is None else X[:, self.column] < COPY_LEAST


class PartCopyDetector(ColumnDetector):
    """Partial copies (nearly all of a history's items inside one other account): raw the
    part-copy evidence column (nats)."""

    def reference(self, raw: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Everyone who is no certain copy, and one user with the evidence people reach by taste alone."""
        if self.column is None:
            return raw
        ordinary = X[:, self.column] < PART_COPY_CERTAIN
        return np.r_[raw[ordinary], PART_COPY_PEOPLE] if ordinary.sum() >= MIN_COPY_REFERENCE else np.array([MAX_NATS])

    def silent(self, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(X), bool) if self.column is None else X[:, self.column] <= 0


class ReplayDetector(ColumnDetector):
    """Replayed traffic: raw the share of a history's events that replay its earlier stretches."""

    def reference(self, raw: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Users who are no replays, unless replaying is a habit of the domain (then everyone)."""
        if self.column is None:
            return raw
        ordinary = X[:, self.column] < REPLAY_CERTAIN
        return raw[ordinary] if ordinary.mean() >= 1.0 - REPLAY_HABIT else raw

    def silent(self, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(X), bool) if self.column is None else X[:, self.column] < REPLAY_LEAST
