"""What the training data says about items: counts, values, taste vectors, catalogue order, and the
neighbour reference (:class:`~seqguard_ray.core.features.neighbours.Neighbours`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..stage import check_is_fitted, nest, unnest
from ..tokens import N_SPECIAL, UNK
from .neighbours import MIN_REFERENCE_USERS, Neighbours, item_sets
from .seqs import Seqs, user_spans

TASTE_DIM = 32


class ItemStats:
    """Item statistics from the training sequences, indexed by vocab id (V = vocab size).

    Parameters: ``seed`` (int, default 0) for the taste vectors' SVD and the neighbour reference.
    Fitted attributes:

    - ``log_count_`` (V,) log1p(training count); 0 for specials and the unknown bucket
    - ``value_mean_`` (V,) mean value per item (the global mean where unknown)
    - ``value_std_`` float: global std of values (1.0 when no values)
    - ``value_lo_``, ``value_hi_`` float: smallest and largest training value (0 when no values)
    - ``taste_`` (V, TASTE_DIM) float32 unit vectors from the user-item matrix; 0 for unknown items
    - ``main_action_`` int: the most common action id
    - ``typical_log_count_`` float: the median training event's item log count (what an item
      nothing is known of is taken for)
    - ``id_rank_`` (V,) each item's rank in catalogue (item id) order; see :func:`catalogue_rank`
    - ``items_`` list[str] | None: the item ids the rank was computed from (vocabulary order)
    - ``neighbours_``: a fitted :class:`Neighbours` over a sample of training users, or None when
      fewer than MIN_REFERENCE_USERS users have items
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, seqs: Seqs, n_items: int, *, items: list[str] | None = None,
            counts: np.ndarray | None = None) -> ItemStats:
        """Learn from training sequences over a vocabulary of ``n_items`` ids; ``items``: the item ids
        of vocab ids N_SPECIAL.. (for the catalogue order; None: no catalogue rank); ``counts``
        (n_items,): each id's events in the whole log when ``seqs`` is a sample of its users (the
        popularity a scored log is judged by; None: counted on ``seqs``)."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if counts is None:
            counts = np.bincount(seqs.item, minlength=n_items)
        elif np.shape(counts) != (n_items,):
            raise ValueError(f"counts must have one entry per vocab id ({n_items}), got shape {np.shape(counts)}")
        counts = np.asarray(counts, np.float64)
        log_count = np.log1p(counts)
        log_count[:N_SPECIAL] = 0.0
        v = seqs.value
        has_v = np.isfinite(v)
        gmean = float(v[has_v].mean()) if has_v.any() else 0.0
        sums = np.bincount(seqs.item[has_v], weights=v[has_v], minlength=n_items)
        nv = np.bincount(seqs.item[has_v], minlength=n_items)
        self.log_count_ = log_count
        self.value_mean_ = np.where(nv > 0, sums / np.maximum(nv, 1), gmean)
        self.value_std_ = (float(v[has_v].std()) if has_v.sum() > 1 else 1.0) or 1.0
        self.value_lo_, self.value_hi_ = (float(v[has_v].min()), float(v[has_v].max())) if has_v.any() else (0.0, 0.0)
        self.taste_ = _taste_vectors(seqs, n_items, self.seed)
        self.main_action_ = int(np.bincount(seqs.action).argmax()) if len(seqs.action) else UNK
        self.typical_log_count_ = _typical_log_count(log_count)
        self.items_ = None if items is None else list(items)
        self.id_rank_ = catalogue_rank(items, n_items)
        sets = item_sets(seqs, n_items)
        enough = (np.diff(sets.indptr) > 0).sum() >= MIN_REFERENCE_USERS
        sweep = catalogue_order(seqs, self.id_rank_, seqs.user_index())
        self.neighbours_ = Neighbours(seed=self.seed).fit(sets, user_spans(seqs), sweep=sweep) if enough else None
        return self

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``log_count``, ``value_mean``, ``taste``, ``value_std`` (0-d), ``main_action`` (0-d),
        ``value_range`` (2,): lo and hi, and the neighbour reference's under ``neighbours.``; meta
        ``items`` (the catalogue rank is computed from them)."""
        check_is_fitted(self, ["log_count_"])
        arrays = {"log_count": self.log_count_, "value_mean": self.value_mean_, "taste": self.taste_,
                  "value_std": np.array(self.value_std_), "main_action": np.array(self.main_action_),
                  "value_range": np.array([self.value_lo_, self.value_hi_])}
        if self.neighbours_ is not None:
            arrays.update(nest("neighbours", self.neighbours_.to_state()[0]))
        return arrays, {"items": self.items_}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> ItemStats:
        """The stats written by :meth:`to_state`; ``meta["items"]`` may be left out (no catalogue rank).
        Raises ValueError naming what does not fit."""
        st = cls()
        st.log_count_, st.value_mean_, st.taste_ = arrays["log_count"], arrays["value_mean"], arrays["taste"]
        st.value_std_, st.main_action_ = float(arrays["value_std"]), int(arrays["main_action"])
        st.value_lo_, st.value_hi_ = map(float, arrays["value_range"])
        n_items = len(st.log_count_)
        if st.value_mean_.shape != (n_items,) or st.taste_.ndim != 2 or len(st.taste_) != n_items:
            raise ValueError(f"its item statistics do not fit its vocabulary of {n_items} ids")
        st.typical_log_count_ = _typical_log_count(st.log_count_)
        st.items_ = meta.get("items")
        st.id_rank_ = catalogue_rank(st.items_, n_items)
        nb = unnest("neighbours", arrays)
        st.neighbours_ = Neighbours.from_state(nb, {"n_items": n_items}) if nb else None
        return st


def _typical_log_count(log_count: np.ndarray) -> float:
    """The median training event's item log count (events weighted by count: items by popularity)."""
    lc = log_count[N_SPECIAL:]
    w = np.expm1(lc)
    if w.sum() <= 0:
        return 0.0
    order = np.argsort(lc, kind="stable")
    return float(lc[order][np.searchsorted(np.cumsum(w[order]), 0.5 * w.sum())])


def catalogue_rank(items: list[str] | None, n_items: int) -> np.ndarray:
    """(V,) each vocab item's rank when the catalogue is sorted by item id (numerically when
    every id is an integer), 0 for specials. Crawlers walk catalogues in such an order."""
    rank = np.zeros(n_items)
    if not items:
        return rank
    try:
        keys = np.array([int(x) for x in items])
    except ValueError:
        keys = np.array(items)
    rank[N_SPECIAL:N_SPECIAL + len(items)] = np.argsort(np.argsort(keys, kind="stable"), kind="stable") + 1
    return rank


def _taste_vectors(seqs: Seqs, n_items: int, seed: int) -> np.ndarray:
    """Item vectors from a truncated SVD of the tf-idf weighted user x item matrix (LSA)."""
    uix = seqs.user_index()
    m = sp.csr_matrix((np.ones(len(uix)), (uix, seqs.item)), shape=(seqs.n_users, n_items))
    m.data = np.log1p(m.data)
    idf = np.log((1 + seqs.n_users) / (1 + np.diff(m.tocsc().indptr)))
    m = m @ sp.diags(idf)
    out = np.zeros((n_items, TASTE_DIM), np.float32)
    k = min(TASTE_DIM, min(m.shape) - 1)
    if k >= 2:
        # fit only: scoring needs no scikit-learn
        from sklearn.decomposition import TruncatedSVD

        svd = TruncatedSVD(n_components=k, random_state=seed, n_iter=7)
        svd.fit(m)
        vecs = (svd.components_.T * svd.singular_values_).astype(np.float32)  # (V, k)
        out[:, :k] = vecs
    out[:N_SPECIAL] = 0.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.where(norms > 0, out / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def catalogue_order(seqs: Seqs, id_rank: np.ndarray | None, uix: np.ndarray) -> np.ndarray:
    """(U,) how strictly each history walks the catalogue in one direction, in item id order or in
    popularity order (vocab ids are by training count): |steps up - steps down| / (steps + 2),
    over consecutive known items. About 0 for people, near 1 for a crawler's sweep."""
    U = seqs.n_users
    it = seqs.item
    pair = (uix[1:] == uix[:-1]) & (it[1:] >= N_SPECIAL) & (it[:-1] >= N_SPECIAL)
    u = uix[1:][pair]
    best = np.zeros(U)
    orders = [it.astype(np.float64)]
    if id_rank is not None and len(it) and len(id_rank) > it.max():
        orders.append(id_rank[it])
    for o in orders:
        d = np.sign(np.diff(o))[pair]
        steps = np.bincount(u, np.abs(d), minlength=U)
        net = np.abs(np.bincount(u, d, minlength=U))
        best = np.maximum(best, net / (steps + 2.0))
    return best
