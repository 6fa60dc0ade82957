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

from .features import MAX_NATS, _segment_sums

MAX_REFERENCE = 20_000   # reference values kept per calibrator / feature-tail column


def _side_logp(ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """-log P(X >= x) for each column, from sorted references ref (m, d) and x (n, d).

    Inside the reference range it is the smoothed empirical tail; beyond the largest reference
    value the tail is extrapolated exponentially, with the decay fitted to the top 10% of the
    reference, so that "far beyond anything seen" scores higher than "just beyond". Without the
    extrapolation every value past the training maximum would tie.
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
    """-log tail probability of x (n, d) against per-column sorted references (m, d).

    Two-sided: the smaller of both tails, doubled (capped at probability 1).
    """
    right = _side_logp(ref_sorted, x)
    if not two_sided:
        return right
    left = _side_logp(-ref_sorted[::-1], -x)
    return np.maximum(0.0, np.maximum(right, left) - np.log(2.0))


class Calibrator:
    """Raw score -> [0, 1]: one minus the (extrapolated) share of reference raw scores at or above it."""

    def __init__(self, reference: np.ndarray | None = None):
        self.reference = None if reference is None else np.sort(np.asarray(reference, np.float64))

    @classmethod
    def fit(cls, raw: np.ndarray) -> Calibrator:
        raw = np.asarray(raw, np.float64)
        if len(raw) > MAX_REFERENCE:
            raw = np.quantile(raw, np.linspace(0, 1, MAX_REFERENCE))
        return cls(raw)

    def nats(self, raw: np.ndarray) -> np.ndarray:
        """-log P(reference >= raw), extrapolated past the largest reference value."""
        return _side_logp(self.reference[:, None], np.asarray(raw, np.float64)[:, None])[:, 0]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return 1.0 - np.exp(-self.nats(raw))


def _average_path_length(n: np.ndarray) -> np.ndarray:
    """Expected path length of an unsuccessful search in a binary tree of n points (Liu et al. 2008)."""
    n = np.asarray(n, np.float64)
    safe = np.maximum(n, 3.0)
    c = 2.0 * (np.log(safe - 1.0) + np.euler_gamma) - 2.0 * (safe - 1.0) / safe
    return np.where(n <= 1, 0.0, np.where(n <= 2, 1.0, c))


class FlatForest:
    """An Isolation Forest as plain padded (trees, nodes) arrays: what the bundle stores (no pickle,
    no scikit-learn needed to score) and what scores, level by level for all trees and rows at once
    (a dozen numpy calls per batch instead of one ``tree_.apply`` per tree, ~1.6 ms each online).
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
            # sklearn: nodes on the path (depth + 1) + c(leaf samples) - 1
            leaf_depth[t, :n] = depth + _average_path_length(tr.n_node_samples[:n])
            levels = max(levels, int(tr.max_depth))
        denom = T * float(_average_path_length([forest.max_samples_])[0])
        return cls(left, right, feature, threshold, leaf_depth, levels=levels, denom=denom)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}{a}": getattr(self, a) for a in self.ARRAYS}
        out[f"{prefix}levels_denom"] = np.array([self.levels, self.denom])
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> FlatForest:
        levels, denom = arrays[f"{prefix}levels_denom"]
        return cls(*(arrays[f"{prefix}{a}"] for a in cls.ARRAYS), levels=int(levels), denom=float(denom))

    def __call__(self, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Anomaly score (n,), higher = more anomalous."""
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


def combine(p: np.ndarray) -> np.ndarray:
    """Combine calibrated detector scores p (n, d) in [0, 1] into one raw score (n,).

    Mean of -log(1 - p): one detector that is sure counts, several that agree count more.
    """
    return np.mean(-np.log(np.clip(1.0 - p, np.exp(-MAX_NATS), 1.0)), axis=1)


def _robust_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    med = np.median(x, axis=0)
    iqr = np.quantile(x, 0.75, axis=0) - np.quantile(x, 0.25, axis=0)
    std = x.std(axis=0)
    scale = np.where(iqr > 1e-9, iqr / 1.349, np.where(std > 1e-9, std, 1.0))
    return med, scale


MAX_KNN_REFERENCE = 5_000  # reference users kept for the kNN distance (a random sample beyond)
KNN_GROUP_SIZE = 50        # reference users per leave-cluster-out group (k-means clusters)
MAX_KNN_GROUPS = 100


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


# The ensemble: Isolation Forest, kNN distance (mean distance to the nearest 5% of the reference
# users, at most 50, taken from the other k-means clusters of ~50 reference users:
# leave-cluster-out) and the encoder's surprisal. Leave-cluster-out, 2026-12-01: alike attackers
# left in a poisoned reference (campaigns of fake profiles, bot farms) were each other's near
# neighbours. Measured with a neighbour-similarity feature added the same day (since replaced by
# neighbour_lift), detectors refitted on bench/quality.py's logs, user ROC/PR and injected / clean
# events removed: MovieLens 0.996/0.969, 0.929/0.026 -> 0.996/0.970, 0.930/0.029; held-out types
# 0.992/0.956, 0.684/0.015 -> 0.993/0.967, 0.859/0.013; generator 0.962/0.803, 0.793/0.018 ->
# 0.966/0.838, 0.805/0.016; generator held-out 0.916/0.711, 0.491/0.017 -> 0.930/0.759,
# 0.523/0.013. An ECOD-style detector (the sum of every feature's two-sided tail) held kNN's
# place until 2026-11-30: summing 28 tails lets heavy but
# ordinary users, odd in many small ways, outrank attackers odd in a few. Its per-feature tails
# still explain each verdict (feature_tails). bench/quality.py, ECOD at trim 0.05 -> kNN at trim
# 0.075, user ROC/PR, injected / clean events removed: MovieLens 0.987/0.902, 0.878/0.025 ->
# 0.996/0.967, 0.927/0.024; held-out types 0.983/0.907, 0.689/0.014 -> 0.992/0.956, 0.684/0.014;
# generator 0.938/0.721, 0.746/0.006 -> 0.962/0.803, 0.793/0.018; generator held-out
# 0.914/0.708, 0.445/0.008 -> 0.916/0.711, 0.491/0.017 (more of its bursty normal users and
# click-farm victims are quarantined). kNN at the old trim 0.05 flagged fewer attackers: MovieLens
# 0.898 / 0.016, held-out 0.576 / 0.012, generator 0.685 / 0.011, generator held-out 0.442 / 0.007.
# All four detectors together ranked worse on the generator than either three. Shrinking each
# user's features toward the median by n / (n + 5) (n: the user's events; short histories are weak
# evidence) ranked better on three logs (generator PR 0.803 -> 0.852, held-out 0.711 -> 0.783) and
# removed more injected events on all four (held-out MovieLens 0.684 -> 0.832) but more clean ones
# too (generator 0.018 -> 0.036: the false positives move to long histories); left out.
DETECTORS = ("iforest", "knn", "encoder", "copy", "part_copy", "replay")
# Detectors whose evidence stands on its own, outside the combination: a copied account (replayed
# traffic, a clone) is an ordinary history that exists twice, and a history that replays its own
# stretches (the same items in the same order with the same gaps) is one that happened twice;
# the other detectors see little of either. Each gets DECISIVE_SHARE of the false-positive budget
# and the user score is the largest of the verdicts. Measured on MovieLens with 20 whole and 20
# 70% copies of real users (shifted by 1-60 days) among other new attack types: inside the
# combination 15% / 25% of them were flagged. Replays, 2026-12-01, detectors refitted on cached
# encoders: inside the combination the generator's replayed users were flagged 20% (every type
# at 2%: 45%) although their replay share was above every real user's; as a decisive detector
# 90% (100%), injected events removed 0.813 -> 0.854 (0.797 -> 0.809), user PR-AUC 0.836 -> 0.881
# (0.875 -> 0.885), false positives and clean events removed unchanged; MovieLens (whose real
# users replay nothing) unchanged.
DECISIVE = ("copy", "part_copy", "replay")
# Detectors that judge an account as a whole; what is left of a history once a part is explained
# is no account, so they do not judge it (a replay, by contrast, must be gone from what is left)
ACCOUNT = ("copy", "part_copy")
DECISIVE_SHARE = 0.1
# Item-set Jaccard similarity at which two histories are copies rather than shared taste: such
# users are left out of the copy detector's calibration (or the copies in a training log would
# calibrate it), and the copy detector sees the overlap as -log(1 - J), so that a whole copy lies
# far beyond people's overlaps rather than just past them. People's largest overlaps: 0.84 on
# MovieLens-100k (one user of 943; the next 0.67), 0.56 on the generator. Tukey's fence in its
# place left MovieLens' three most alike users out and flagged them.
COPY_CERTAIN = 0.8
COPY_LEAST = 0.5          # the copy detector never fires below this overlap: "most of an earlier account's items"
MIN_COPY_REFERENCE = 20   # users with some overlap needed to calibrate the copy detector; fewer: it stays silent
# Partial copies (part_copy, features.part_copy_nats: nearly all of a history's items inside one
# other account of at most a few times its size, against the share people of that size miss): at
# this much evidence (nats) a training user is a copy rather than a person and is left out of the
# part_copy detector's calibration. People's largest: 19 nats on MovieLens-100k, 10-13 on the
# generator; half-copies of MovieLens' heaviest raters (bench/unseen.py): 35-48.
PART_COPY_CERTAIN = 35.0
# ... and what people reach by shared taste alone is taken to be at least this much, so that in a
# log where nobody shows any evidence the first history that does is not flagged for it: the
# calibration reference always holds one such user.
PART_COPY_PEOPLE = 20.0
# Share of a history's events that replay its earlier stretches at which it is replayed traffic
# rather than habit: such users are left out of the replay detector's calibration, unless more than
# REPLAY_HABIT of the users are (a domain where people repeat themselves, e.g. playlists: then
# everyone calibrates it). People's largest shares: 0 on MovieLens, 0.10 on the generator (its
# replayed users: median 0.26); 0.3 in its place let the replays in a training log calibrate it
# (generator: flagged 90% -> 70%).
REPLAY_CERTAIN = 0.15
REPLAY_HABIT = 0.1
REPLAY_LEAST = 0.05       # the replay detector never fires below this share

_COMBINED = [i for i, d in enumerate(DETECTORS) if d not in DECISIVE]


def _copy_raw(jaccard: np.ndarray) -> np.ndarray:
    """The copy detector's raw score: -log(1 - J), J capped at 0.999."""
    return -np.log1p(-np.clip(jaccard, 0.0, 0.999))


@dataclass
class UserDetectors:
    """The per-user detector ensemble over per-user features (which include the encoder's surprisal).

    Fit is robust to poisoned training logs: after a first fit the clearest outliers (Tukey's
    far-out fence on the combined score) are left out and everything is refitted, twice.
    """

    # Tukey's fence (in interquartile ranges above the third quartile) that keeps far-out outliers
    # out of the calibration. Wider lets a poisoned log's attackers set the threshold: 6 halved the
    # users flagged on clean logs (MovieLens 6.3% -> 2.9%, generator 5.3% -> 2.8%) but injected events
    # removed fell 0.941 -> 0.666 on MovieLens and 0.797 -> 0.376 on the every-type generator.
    FENCE = 3.0
    target_fpr: float = 0.01
    trim_share: float = 0.05  # most anomalous share of the other training users left out of the references
    seed: int = 0
    encoder_columns: tuple[int, ...] = ()   # feature columns that carry the encoder's surprisal
    copy_column: int | None = None          # feature column of the copy overlap (high side); None: no copy detector
    part_copy_column: int | None = None     # feature column of the partial-copy evidence (nats); None: no such detector
    replay_column: int | None = None        # feature column of the replay share (high side); None: no replay detector
    # learned state
    center_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    tail_ref_: np.ndarray | None = None     # per-feature sorted reference: feature tails, the encoder detector
    knn_ref_: np.ndarray | None = None      # reference users (scaled features) for the kNN distance
    knn_centroids_: np.ndarray | None = None  # (K, F) k-means centroids of knn_ref_; None: no groups
    knn_groups_: np.ndarray | None = None   # (m,) each reference user's cluster
    iforest_: FlatForest | None = None
    calibrators_: dict[str, Calibrator] = field(default_factory=dict)
    combined_: Calibrator | None = None
    threshold_: float = 0.0
    n_trimmed_: int = 0

    def fit(self, feats: np.ndarray, presumed: np.ndarray | None = None) -> UserDetectors:
        """feats: (U, F) user features of the training users (possibly poisoned); presumed: (U,)
        bool, users presumed anomalous on other evidence, left out of every reference and of the
        calibration (they are scored like everyone else)."""
        if not 0 < self.target_fpr < 0.5:
            raise ValueError(f"target_fpr must be in (0, 0.5), got {self.target_fpr}")
        if not 0 <= self.trim_share < 0.5:
            raise ValueError(f"trim_share must be in [0, 0.5), got {self.trim_share}")
        presumed = np.zeros(len(feats), bool) if presumed is None else np.asarray(presumed, bool)
        if presumed.shape != (len(feats),):
            raise ValueError(f"presumed must be a bool per user ({len(feats)}), got shape {presumed.shape}")
        if len(feats) - presumed.sum() < 5:
            raise ValueError(f"need at least 5 users not presumed anomalous to fit the detectors, got "
                             f"{len(feats) - presumed.sum()} of {len(feats)}")
        # 1. references: leave out the presumed and the most anomalous trim_share of the others,
        #    iteratively, so that attackers in the training log do not make later attackers look ordinary
        keep = ~presumed
        for _ in range(3):
            self._fit_reference(feats[keep])
            self._fit_calibration(feats[keep])
            raw = self._combined_raw(feats)
            new_keep = ~presumed & (raw <= np.quantile(raw[~presumed], 1.0 - self.trim_share))
            if new_keep.sum() < 5 or (new_keep == keep).all():
                break
            keep = new_keep
        self._fit_reference(feats[keep])
        # 2. calibration: every training user except far-out outliers (Tukey's fence), so the
        #    threshold's false-positive rate is measured on the whole normal population
        self._fit_calibration(feats[keep])
        raw = self._combined_raw(feats)
        q1, q3 = np.quantile(raw[keep], [0.25, 0.75])
        normal = (raw <= q3 + self.FENCE * (q3 - q1)) & ~presumed
        if normal.sum() < 5:
            normal = keep
        self.n_trimmed_ = int((~normal).sum())
        self._fit_calibration(feats[normal])
        self.combined_ = Calibrator.fit(self._combined_raw(feats[normal]))
        self.threshold_ = 1.0 - self.target_fpr
        return self

    def _fit_reference(self, feats: np.ndarray) -> None:
        self.center_, self.scale_ = _robust_scale(feats)
        z = self._z(feats)
        self.tail_ref_ = np.sort(z, axis=0)[:: max(1, len(z) // MAX_REFERENCE)]
        z = z[:, self.ensemble_columns]
        rng = np.random.default_rng(self.seed)
        self.knn_ref_ = z if len(z) <= MAX_KNN_REFERENCE else z[rng.choice(len(z), MAX_KNN_REFERENCE, replace=False)]
        # fit only: scoring needs no scikit-learn
        from sklearn.cluster import KMeans
        from sklearn.ensemble import IsolationForest

        n_groups = min(MAX_KNN_GROUPS, len(self.knn_ref_) // KNN_GROUP_SIZE)
        if n_groups >= 2:
            km = KMeans(n_clusters=n_groups, n_init=3, random_state=self.seed).fit(self.knn_ref_)
            self.knn_centroids_, self.knn_groups_ = km.cluster_centers_, km.labels_.astype(np.int64)
        else:
            self.knn_centroids_, self.knn_groups_ = None, None
        self.iforest_ = FlatForest.from_sklearn(IsolationForest(n_estimators=200, random_state=self.seed).fit(z))

    def _fit_calibration(self, feats: np.ndarray) -> None:
        raw = self._raw(feats)
        ref = {d: raw[:, i] for i, d in enumerate(DETECTORS)}
        if self.copy_column is not None:
            # calibrated on the users it can judge (long enough to overlap at all) that are no copies;
            # too few of them: a reference at the largest overlap there is, which nothing exceeds
            j = feats[:, self.copy_column]
            ordinary = (j > 0) & (j < COPY_CERTAIN)
            ref["copy"] = ref["copy"][ordinary] if ordinary.sum() >= MIN_COPY_REFERENCE else _copy_raw(np.ones(1))
        if self.part_copy_column is not None:
            # calibrated on everyone who is no certain copy (most people: no evidence at all), and one
            # user with the evidence people reach by shared taste alone
            ordinary = feats[:, self.part_copy_column] < PART_COPY_CERTAIN
            ref["part_copy"] = (np.r_[ref["part_copy"][ordinary], PART_COPY_PEOPLE]
                                if ordinary.sum() >= MIN_COPY_REFERENCE else np.array([MAX_NATS]))
        if self.replay_column is not None:
            share = feats[:, self.replay_column]
            ordinary = share < REPLAY_CERTAIN
            if ordinary.mean() >= 1.0 - REPLAY_HABIT:
                ref["replay"] = ref["replay"][ordinary]
        self.calibrators_ = {d: Calibrator.fit(r) for d, r in ref.items()}

    def _z(self, feats: np.ndarray) -> np.ndarray:
        return np.clip((feats - self.center_) / self.scale_, -50, 50)

    def _raw(self, feats: np.ndarray) -> np.ndarray:
        """(n, len(DETECTORS)) raw scores, higher = more anomalous."""
        z = self._z(feats)
        ze = z[:, self.ensemble_columns]
        iforest = self.iforest_(ze)
        if self.knn_centroids_ is None:
            knn = knn_distance(self.knn_ref_, ze, self.knn_k)
        else:
            knn = knn_distance(self.knn_ref_, ze, self.knn_k, ref_groups=self.knn_groups_,
                               groups=nearest_centroid(self.knn_centroids_, ze))
        cols = list(self.encoder_columns)  # the encoder's surprisal columns, high side
        enc = tail_logp(self.tail_ref_[:, cols], z[:, cols], two_sided=False).sum(1) if cols else np.zeros(len(z))
        copy = _copy_raw(feats[:, self.copy_column]) if self.copy_column is not None else np.zeros(len(z))
        part = feats[:, self.part_copy_column] if self.part_copy_column is not None else np.zeros(len(z))
        replay = feats[:, self.replay_column] if self.replay_column is not None else np.zeros(len(z))
        return np.stack([iforest, knn, enc, copy, part, replay], axis=1)

    @property
    def decisive_columns(self) -> tuple[int, ...]:
        """Feature columns the decisive detectors (copy, partial copy, replay) read."""
        return tuple(c for c in (self.copy_column, self.part_copy_column, self.replay_column) if c is not None)

    @property
    def ensemble_columns(self) -> list[int]:
        """Feature columns the Isolation Forest and the kNN distance see: all but the copy detectors'."""
        return [j for j in range(len(self.center_)) if j not in (self.copy_column, self.part_copy_column)]

    @property
    def knn_k(self) -> int:
        """Neighbours for the kNN distance: 5% of the reference users, 1 to 50."""
        return int(np.clip(len(self.knn_ref_) // 20, 1, 50))

    def _combined_raw(self, feats: np.ndarray) -> np.ndarray:
        """(n,) the combination of the calibrated detectors other than the decisive ones."""
        return combine(self._calibrated(feats)[:, _COMBINED])

    def _calibrated(self, feats: np.ndarray) -> np.ndarray:
        raw = self._raw(feats)
        p = np.stack([self.calibrators_[d](raw[:, i]) for i, d in enumerate(DETECTORS)], axis=1)
        if self.copy_column is not None:
            p[feats[:, self.copy_column] < COPY_LEAST, DETECTORS.index("copy")] = 0.0
        if self.part_copy_column is not None:
            p[feats[:, self.part_copy_column] <= 0, DETECTORS.index("part_copy")] = 0.0
        if self.replay_column is not None:
            p[feats[:, self.replay_column] < REPLAY_LEAST, DETECTORS.index("replay")] = 0.0
        return p

    def score(self, feats: np.ndarray, *, whole: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated ensemble score (n,) in [0, 1] (higher = more anomalous) and per-detector (n, D);
        without ``whole``, for parts of histories, which are no accounts: the ACCOUNT detectors do
        not judge them."""
        if self.combined_ is None:
            raise RuntimeError("UserDetectors is not fitted")
        p = self._calibrated(feats)
        combined = self.combined_(combine(p[:, _COMBINED]))
        verdict = self.decisive(p, DECISIVE if whole else tuple(d for d in DECISIVE if d not in ACCOUNT))
        return np.maximum(combined, verdict), p

    @staticmethod
    def decisive(p: np.ndarray, names: tuple[str, ...] = DECISIVE) -> np.ndarray:
        """(n,) the verdict of the decisive detectors ``names`` on the ensemble's scale: 1 - tail /
        DECISIVE_SHARE, so that it crosses the threshold at DECISIVE_SHARE of the target
        false-positive rate."""
        tail = 1.0 - p[:, [DETECTORS.index(d) for d in names]].max(1)
        return np.clip(1.0 - tail / DECISIVE_SHARE, 0.0, 1.0)

    def feature_tails(self, feats: np.ndarray) -> np.ndarray:
        """(n, F) -log two-sided tail probability of each feature: what makes a user unusual."""
        return tail_logp(self.tail_ref_, self._z(feats), two_sided=True)


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


class ResidualCheck:
    """Are the events a partial explanation leaves as ordinary as a normal user's?

    Removing the oddest half of a fake profile leaves a history the user detectors may call
    normal: that is selection, not an explanation. What gives it away is that the events left
    are still odd on average. The statistic is the mean local score of a history's events below
    ``cut``; on normal training users it grows with their count (heavy users' events are odder:
    MovieLens 0.33 at 20 events, 0.51 at 400), so it is fitted as ``a + b log(count)`` and a
    history is judged by its z-score against that line.
    """

    MIN_EVENTS = 10  # fewer events below the cut than this: too few to tell, never refused

    def __init__(self, coef: np.ndarray | None = None):
        # (a, b, sd, cut); sd = inf disables the check (too little training data to fit it)
        self.coef = np.array([0.0, 0.0, np.inf, 1.0]) if coef is None else np.asarray(coef, np.float64)
        if self.coef.shape != (4,) or not np.isfinite(self.coef[[0, 1, 3]]).all() or not self.coef[2] > 0:
            raise ValueError(f"residual check needs (intercept, slope, sd > 0, cut), got {self.coef.tolist()}")

    @staticmethod
    def _stat(local: np.ndarray, offsets: np.ndarray, cut: float) -> tuple[np.ndarray, np.ndarray]:
        """(U,) mean local score of each history's events below ``cut`` and (U,) their count."""
        low = local < cut
        n = _segment_sums(low.astype(np.int64), offsets)
        return _segment_sums(np.where(low, local, 0.0), offsets) / np.maximum(n, 1), n

    @classmethod
    def fit(cls, local: np.ndarray, offsets: np.ndarray, normal: np.ndarray, *, cut: float) -> ResidualCheck:
        """local (N,) event scores, offsets (U + 1,), normal (U,) bool: the users to learn from."""
        m, n = cls._stat(local, offsets, cut)
        use = normal & (n >= cls.MIN_EVENTS)
        if use.sum() < 5:
            return cls(np.array([0.0, 0.0, np.inf, cut]))
        x = np.c_[np.ones(use.sum()), np.log(n[use])]
        ab, *_ = np.linalg.lstsq(x, m[use], rcond=None)
        sd = max(float(np.std(m[use] - x @ ab, ddof=1)), 1e-3)
        return cls(np.array([ab[0], ab[1], sd, cut]))

    def z(self, local: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(U,) how many spreads above the normal line each history's ordinary events lie;
        -inf where a history has too few events below the cut to tell."""
        a, b, sd, cut = self.coef
        m, n = self._stat(local, offsets, cut)
        z = (m - (a + b * np.log(np.maximum(n, 1)))) / sd
        return np.where(n >= self.MIN_EVENTS, z, -np.inf)


class LengthTrend:
    """How normal users' features drift with their history length, to judge a flagged history at a
    typical length before deleting it.

    Heavy users are odd in ways that come with their length: their items go deeper into the
    catalogue (lower popularity, higher surprisal), resemble any one other person's less
    (neighbour_lift falls ~0.3 per e-fold of events on MovieLens-100k) and they rate faster. Judged
    against everyone, a few heavy real raters score like attackers. The trend is Tukey's resistant
    line of each feature on log(events) over the normal training users (the slope between the
    medians of the shortest and longest thirds); :meth:`adjust` moves a history's features to
    what they would be at the median length (``pivot``). Features with no trend get slope 0.
    """

    MIN_USERS = 30  # fewer normal training users than this: no trend (every slope 0)

    def __init__(self, coef: np.ndarray | None = None, n_features: int | None = None):
        # (pivot log-length, slope per feature); all slopes 0: the trend is off
        if coef is None:
            coef = np.zeros(1 + int(n_features or 0))
        self.coef = np.asarray(coef, np.float64)
        if self.coef.ndim != 1 or len(self.coef) < 1 or not np.isfinite(self.coef).all():
            raise ValueError(f"length trend needs a finite (pivot, slopes...) vector, got shape {self.coef.shape}")

    @classmethod
    def fit(cls, feats: np.ndarray, n_events: np.ndarray, normal: np.ndarray, *, columns: list[int]) -> LengthTrend:
        """feats (U, F), n_events (U,), normal (U,) bool: the users to learn from; ``columns``: the
        features that may drift (the others keep slope 0)."""
        x = np.log(np.maximum(np.asarray(n_events, np.float64), 1.0))
        use = np.asarray(normal, bool)
        out = np.zeros(1 + feats.shape[1])
        if use.sum() < cls.MIN_USERS:
            return cls(out)
        xs = x[use]
        lo, hi = np.quantile(xs, [1 / 3, 2 / 3])
        short, long_ = use & (x <= lo), use & (x >= hi)
        dx = np.median(x[long_]) - np.median(x[short])
        out[0] = np.median(xs)
        if dx > 1e-9:
            for j in columns:
                out[1 + j] = (np.median(feats[long_, j]) - np.median(feats[short, j])) / dx
        return cls(out)

    @property
    def pivot_events(self) -> float:
        return float(np.exp(self.coef[0]))

    def adjust(self, feats: np.ndarray, n_events: np.ndarray) -> np.ndarray:
        """(n, F) the features moved along the trend to the median training length."""
        if feats.shape[1] != len(self.coef) - 1:
            raise ValueError(f"length trend has {len(self.coef) - 1} feature slopes, features have {feats.shape[1]} columns")
        x = np.log(np.maximum(np.asarray(n_events, np.float64), 1.0))
        return feats - self.coef[None, 1:] * (x - self.coef[0])[:, None]
