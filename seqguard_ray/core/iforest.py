"""The Isolation Forest detector, stored and scored as plain arrays (no pickle, no scikit-learn to score)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .detectors import Detector
from .stage import check_is_fitted


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """Expected path length of an unsuccessful search in a binary tree of n points (Liu et al. 2008)."""
    n = np.asarray(n, np.float64)
    safe = np.maximum(n, 3.0)
    c = 2.0 * (np.log(safe - 1.0) + np.euler_gamma) - 2.0 * (safe - 1.0) / safe
    return np.where(n <= 1, 0.0, np.where(n <= 2, 1.0, c))


class FlatForest:
    """A fitted Isolation Forest as padded (trees, nodes) arrays, scored level by level for all
    trees and rows at once (a dozen numpy calls per batch instead of one ``tree_.apply`` per tree).
    Scores equal ``-IsolationForest.score_samples``."""

    ARRAYS = ("left", "right", "feature", "threshold", "leaf_depth")

    def __init__(self, left, right, feature, threshold, leaf_depth, *, levels: int, denom: float):
        self.left, self.right, self.feature = (np.asarray(a, np.int32) for a in (left, right, feature))
        self.threshold, self.leaf_depth = (np.asarray(a, np.float64) for a in (threshold, leaf_depth))
        self.levels, self.denom = int(levels), float(denom)
        T, M = self.left.shape
        if any(getattr(self, a).shape != (T, M) for a in self.ARRAYS) or T == 0 or not 0 <= self.levels <= M:
            raise ValueError(f"isolation forest arrays do not fit together ({T} trees x {M} nodes, {self.levels} levels)")
        if min(self.left.min(), self.right.min(), self.feature.min()) < 0 or max(self.left.max(), self.right.max()) >= M:
            raise ValueError("isolation forest arrays point outside the forest")
        self._tree = np.arange(T)[None, :]
        self._n_features = int(self.feature.max()) + 1

    @classmethod
    def from_sklearn(cls, forest) -> FlatForest:
        """Flatten a fitted ``sklearn.ensemble.IsolationForest`` (public attributes only)."""
        trees = [(e.tree_, np.asarray(f)) for e, f in zip(forest.estimators_, forest.estimators_features_)]
        T, M = len(trees), max(t.node_count for t, _ in trees)
        left = np.tile(np.arange(M, dtype=np.int32), (T, 1))  # padding and leaves point at themselves
        right, feature = left.copy(), np.zeros((T, M), np.int32)
        threshold, leaf_depth = np.zeros((T, M)), np.zeros((T, M))
        levels = 0
        for t, (tr, feats) in enumerate(trees):
            n = tr.node_count
            split = tr.children_left[:n] >= 0
            left[t, :n] = np.where(split, tr.children_left[:n], np.arange(n))
            right[t, :n] = np.where(split, tr.children_right[:n], np.arange(n))
            feature[t, :n] = np.where(split, feats[np.maximum(tr.feature[:n], 0)], 0)
            threshold[t, :n] = tr.threshold[:n]
            depth = np.zeros(n)
            for _ in range(int(tr.max_depth)):  # children come after their parent: one pass per level
                depth[left[t, :n][split]] = depth[split] + 1
                depth[right[t, :n][split]] = depth[split] + 1
            # as scikit-learn counts it: nodes on the path (depth + 1) + c(leaf samples) - 1
            leaf_depth[t, :n] = depth + _average_path_length(tr.n_node_samples[:n])
            levels = max(levels, int(tr.max_depth))
        denom = T * float(_average_path_length([forest.max_samples_])[0])
        return cls(left, right, feature, threshold, leaf_depth, levels=levels, denom=denom)

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The five (trees, nodes) arrays and ``levels_denom`` (2,)."""
        out = {a: getattr(self, a) for a in self.ARRAYS}
        out["levels_denom"] = np.array([self.levels, self.denom])
        return out, {}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> FlatForest:
        levels, denom = arrays["levels_denom"]
        return cls(*(arrays[a] for a in cls.ARRAYS), levels=int(levels), denom=float(denom))

    def __call__(self, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """(n,) anomaly score, higher = more anomalous."""
        X = np.ascontiguousarray(x, dtype=np.float32)  # scikit-learn compares float32 features
        if X.ndim != 2 or X.shape[1] < self._n_features:
            raise ValueError(f"isolation forest needs {self._n_features} feature columns, got shape {X.shape}")
        depths = np.empty(len(X))
        for r0 in range(0, len(X), chunk):
            xc = X[r0:r0 + chunk]
            rows = np.arange(len(xc))[:, None]
            node = np.zeros((len(xc), self._tree.shape[1]), np.int32)
            for _ in range(self.levels):
                f = self.feature[self._tree, node]
                go_left = xc[rows, f] <= self.threshold[self._tree, node]
                node = np.where(go_left, self.left[self._tree, node], self.right[self._tree, node])
            depths[r0:r0 + chunk] = self.leaf_depth[self._tree, node].sum(1)
        return 2.0 ** (-depths / self.denom) if self.denom > 0 else np.ones(len(X))


class IForest(Detector):
    """Isolation Forest in PyOD's form: ``fit(X)``, ``decision_function(X)`` raw, higher = more anomalous.

    Parameters: ``columns`` (the columns of X it reads; None: all), ``n_estimators`` (default
    200), ``seed``. Fitted: ``forest_`` (:class:`FlatForest`). Reads the scaled features.
    """

    def __init__(self, *, columns: Sequence[int] | None = None, n_estimators: int = 200, seed: int = 0) -> None:
        self.columns = columns
        self.n_estimators = n_estimators
        self.seed = seed

    def _x(self, X: np.ndarray) -> np.ndarray:
        return X if self.columns is None else X[:, list(self.columns)]

    def fit(self, X: np.ndarray) -> IForest:
        if not isinstance(self.n_estimators, (int, np.integer)) or self.n_estimators < 1:
            raise ValueError(f"n_estimators must be a positive integer, got {self.n_estimators!r}")
        from sklearn.ensemble import IsolationForest  # fit only: scoring needs no scikit-learn

        self.forest_ = FlatForest.from_sklearn(IsolationForest(n_estimators=self.n_estimators,
                                                               random_state=self.seed).fit(self._x(X)))
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(n,) raw score: 2^(-mean path length / c(n)), higher = more anomalous."""
        check_is_fitted(self, ["forest_"])
        return self.forest_(self._x(X))

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        check_is_fitted(self, ["forest_"])
        return self.forest_.to_state()[0], {"columns": None if self.columns is None else list(self.columns),
                                            "n_estimators": self.n_estimators, "seed": self.seed}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> IForest:
        det = cls(columns=meta.get("columns"), n_estimators=meta.get("n_estimators", 200), seed=meta.get("seed", 0))
        det.forest_ = FlatForest.from_state(arrays, {})
        return det
