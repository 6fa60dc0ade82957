"""Per-event and per-user features from token ids, timing, values and the encoder's surprisal.

Everything here is numpy over flat event arrays cut by ``offsets`` (user ``u`` owns rows
``offsets[u]:offsets[u+1]``), so a subset of events (a residual history) is featurised the same
way as a whole log.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from .tokens import N_SPECIAL, UNK

TASTE_DIM = 32
MAX_NEIGHBOUR_REFERENCE = 5_000  # training users whose item sets the neighbour similarity compares with
NEIGHBOURS = 10       # most similar reference users averaged by the neighbour similarity
NULL_DRAWS = 20       # random item sets per size for the neighbour similarity's null curve
NULL_SIZES = 25       # sizes (log-spaced) the null curve is tabulated at
COPY_MIN_ITEMS = 10   # item sets smaller than this are too common to call copies
# A partial copy (an obfuscated copy: a part of an account's items, e.g. half of a power user's
# ratings with the values jittered) is an item set nearly all inside one other account's. Such a
# source has at most PART_SOURCE_RATIO times the query's items (a crawler's sweep contains every
# history and is no source) and holds at least PART_LEAST of the query's items. People in tight
# taste clusters come close: 56 of a generated user's 58 items are inside another's 127 (35.7 nats,
# more than some half-copies of MovieLens' power users), so 0.9 in place of 0.97 flagged them.
PART_SOURCE_RATIO = 3.0
PART_LEAST = 0.97
MAX_NATS = 50.0       # cap on any evidence in nats (-log tail probability), here and in the detectors
REPLAY_N = 3          # an event sequence of this many items seen before in the same history is a replay ...
REPLAY_GAP_S = 5.0    # ... when its gaps match the earlier ones within this many seconds
REPLAY_GAP_SHARE = 0.25  # ... or within this share of the gap (replayed traffic keeps its timing)
BURST_WINDOW_S = 60.0  # events within this many seconds count toward local density


@dataclass
class Seqs:
    """Flat per-event arrays of many users' sequences (all aligned, sorted by user then time)."""

    offsets: np.ndarray   # (U + 1,) int64
    ts: np.ndarray        # (N,) float64 seconds
    item: np.ndarray      # (N,) int64 vocab ids
    action: np.ndarray    # (N,) int64 action ids
    value: np.ndarray     # (N,) float64, NaN where absent
    surprisal: np.ndarray  # (N, 3) float32 item/action/gap surprisal in nats
    # (N,) int64 which item each event is: its vocab id, or for items outside the vocabulary (the
    # unknown bucket) a negative number per distinct item id, so that two new items are not one
    # item repeated; None: the vocab ids (no unknown item is told apart)
    key: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def item_key(self) -> np.ndarray:
        return self.item if self.key is None else self.key

    def user_index(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_users), np.diff(self.offsets))

    def subset(self, keep: np.ndarray) -> Seqs:
        """The same users with only the events where ``keep`` (N,) is True."""
        counts = _segment_sums(keep.astype(np.int64), self.offsets)
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        return Seqs(offsets, self.ts[keep], self.item[keep], self.action[keep], self.value[keep], self.surprisal[keep],
                    None if self.key is None else self.key[keep])


@dataclass
class ItemStats:
    """What the training data says about items, indexed by vocab id (V = vocab size)."""

    log_count: np.ndarray   # (V,) log1p(training count); 0 for specials and the unknown bucket
    value_mean: np.ndarray  # (V,) mean value per item (global mean where unknown)
    value_std: float        # global std of values (1.0 when no values)
    taste: np.ndarray       # (V, TASTE_DIM) float32 unit vectors from the user-item matrix; 0 for unknown
    main_action: int        # the most common action id
    value_lo: float = 0.0   # smallest training value (0 when no values)
    value_hi: float = 0.0   # largest training value
    id_rank: np.ndarray | None = None  # (V,) each item's rank in catalogue (item id) order; see catalogue_rank
    neighbours: Neighbours | None = None  # item sets of a sample of training users; see Neighbours

    @cached_property
    def typical_log_count(self) -> float:
        """The median training event's item log count (what an item nothing is known of is taken for)."""
        lc = self.log_count[N_SPECIAL:]
        w = np.expm1(lc)
        if w.sum() <= 0:
            return 0.0
        order = np.argsort(lc, kind="stable")
        return float(lc[order][np.searchsorted(np.cumsum(w[order]), 0.5 * w.sum())])

    @classmethod
    def fit(cls, seqs: Seqs, n_items: int, *, seed: int = 0, items: list[str] | None = None) -> ItemStats:
        counts = np.bincount(seqs.item, minlength=n_items).astype(np.float64)
        log_count = np.log1p(counts)
        log_count[:N_SPECIAL] = 0.0
        v = seqs.value
        has_v = np.isfinite(v)
        gmean = float(v[has_v].mean()) if has_v.any() else 0.0
        sums = np.bincount(seqs.item[has_v], weights=v[has_v], minlength=n_items)
        nv = np.bincount(seqs.item[has_v], minlength=n_items)
        value_mean = np.where(nv > 0, sums / np.maximum(nv, 1), gmean)
        value_std = float(v[has_v].std()) if has_v.sum() > 1 else 1.0
        main_action = int(np.bincount(seqs.action).argmax()) if len(seqs.action) else UNK
        lo, hi = (float(v[has_v].min()), float(v[has_v].max())) if has_v.any() else (0.0, 0.0)
        id_rank = catalogue_rank(items, n_items)
        sweep = _catalogue_order(seqs, id_rank, seqs.user_index())
        return cls(log_count, value_mean, value_std or 1.0, _taste_vectors(seqs, n_items, seed), main_action, lo, hi,
                   id_rank, Neighbours.fit(item_sets(seqs, n_items), _user_spans(seqs), seed=seed, sweep=sweep))


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


def item_sets(seqs: Seqs, n_items: int) -> sp.csr_matrix:
    """(U, V) binary matrix: the known items of each user."""
    uix = seqs.user_index()
    known = seqs.item >= N_SPECIAL
    m = sp.csr_matrix((np.ones(int(known.sum())), (uix[known], seqs.item[known])), shape=(seqs.n_users, n_items))
    m.data[:] = 1.0
    return m


def _user_spans(seqs: Seqs) -> np.ndarray:
    """(U, 2) first and last event time of each user (0, 0 for empty users)."""
    off, n = seqs.offsets, np.diff(seqs.offsets)
    span = np.zeros((seqs.n_users, 2))
    has = n > 0
    span[has, 0] = seqs.ts[off[:-1][has]]
    span[has, 1] = seqs.ts[off[1:][has] - 1]
    return span


def _compare(sets: sp.csr_matrix, ref: sp.csr_matrix | None, *, k: int = NEIGHBOURS, span: np.ndarray | None = None,
             ref_span: np.ndarray | None = None, sources: np.ndarray | None = None, miss_rate: np.ndarray | None = None,
             chunk: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`neighbour_similarity`, :func:`copy_overlap` (0 without spans), the fewest items
    missing from a partial-copy source (the set's size where there is none, or without spans;
    see :func:`part_missing`; ``sources`` (m,): the reference users that may be one, default all)
    and, given ``miss_rate`` (n,) (the share people of each set's size miss), the partial-copy
    evidence (see :meth:`Neighbours.compare`) of each item set, from one pass of the query x
    reference products."""
    n = sets.shape[0]
    sim, copy, evidence = np.zeros(n), np.zeros(n), np.zeros(n)
    qn = np.diff(sets.indptr).astype(np.float64)
    missing = qn.copy()
    if ref is None or ref.shape[0] == 0 or n == 0:
        return sim, copy, missing, evidence
    may_source = np.ones(ref.shape[0], bool) if sources is None else np.asarray(sources, bool)
    k = min(k, ref.shape[0] - 1)
    rn = np.diff(ref.indptr).astype(np.float64)
    ref_t = ref.T.tocsc()
    for a in range(0, n, chunk):
        q = qn[a:a + chunk]
        inter = (sets[a:a + chunk] @ ref_t).toarray()  # (c, m) shared items
        jac = inter / np.maximum(q[:, None] + rn[None, :] - inter, 1.0)
        contains = inter >= q[:, None]
        if span is not None and ref_span is not None:
            s = span[a:a + chunk]
            own = contains & (ref_span[None, :, 0] <= s[:, None, 0]) & (ref_span[None, :, 1] >= s[:, None, 1])
            earlier = ref_span[None, :, 0] < s[:, None, 0]
            source = earlier & ~own
            copy[a:a + chunk] = np.where(q >= COPY_MIN_ITEMS, np.where(source, jac, 0.0).max(1), 0.0)
            part = ((earlier | (rn[None, :] > q[:, None])) & ~own & (rn[None, :] <= PART_SOURCE_RATIO * q[:, None])
                    & may_source[None, :])
            miss = q[:, None] - inter
            missing[a:a + chunk] = np.where(part, miss, q[:, None]).min(1)
            if miss_rate is not None:
                r, c = np.nonzero(part & _near_subset(q[:, None], miss))
                nats = part_copy_nats(q[r], miss[r, c], miss_rate[a:a + chunk][r])
                np.maximum.at(evidence, a + r, nats)
        if k >= 1:
            held = np.where(contains, jac, -1.0)
            own = held.argmax(1)
            rows = np.flatnonzero(held[np.arange(len(q)), own] >= 0)
            jac[rows, own[rows]] = -1.0
            top = np.partition(jac, jac.shape[1] - k, axis=1)[:, -k:]
            sim[a:a + chunk] = np.where(q > 0, np.maximum(top, 0.0).mean(1), 0.0)
    return sim, copy, missing, evidence


def neighbour_similarity(sets: sp.csr_matrix, ref: sp.csr_matrix | None, k: int = NEIGHBOURS, *,
                         chunk: int = 512) -> np.ndarray:
    """(n,) mean Jaccard similarity of each item set to its k most similar reference sets.

    People share tastes with other people; fake profiles built from random or average filler
    items resemble nobody, not even each other, so a crowd of them cannot make this look normal.
    The most similar reference set that contains the whole query is skipped: the user itself
    when it is in the reference, or its whole history when a part of it is scored. Empty sets
    (no known item) get 0.
    """
    return _compare(sets, ref, k=k, chunk=chunk)[0]


def copy_overlap(sets: sp.csr_matrix, span: np.ndarray, ref: sp.csr_matrix | None, ref_span: np.ndarray | None, *,
                 chunk: int = 512) -> np.ndarray:
    """(n,) the largest Jaccard similarity of each item set to a reference user who started earlier.

    Replayed traffic and cloned accounts copy an earlier account's history, shifted in time;
    two people rarely share most of their items. ``span`` / ``ref_span``: (n, 2) / (m, 2) first
    and last event time. A reference user starting at the same time or later is not a source
    (the user itself in the reference, or its copy), nor is one holding all of the query's items
    over a time span covering the query's (its own history, when a part of it or a later slice is
    scored). Sets with fewer than COPY_MIN_ITEMS items get 0.
    """
    return _compare(sets, ref, span=span, ref_span=ref_span, chunk=chunk)[1]


def part_missing(sets: sp.csr_matrix, span: np.ndarray, ref: sp.csr_matrix | None, ref_span: np.ndarray | None, *,
                 sources: np.ndarray | None = None, chunk: int = 512) -> np.ndarray:
    """(n,) the fewest of each item set's items missing from one partial-copy source.

    A source is a reference user who started earlier or holds more items, with at most
    PART_SOURCE_RATIO times the query's items, and is not the query's own history (see
    :func:`copy_overlap`); ``sources`` (m,) bool, default all: the reference users that may be one.
    A set with no source gets its size (nothing of it is inside one).
    """
    return _compare(sets, ref, span=span, ref_span=ref_span, sources=sources, chunk=chunk)[2]


def _near_subset(size: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Sets of at least COPY_MIN_ITEMS items with at most 1 - PART_LEAST of them missing from a
    source: the only ones whose partial-copy evidence counts."""
    return (size >= COPY_MIN_ITEMS) & (missing <= (1.0 - PART_LEAST) * size + 1e-9)


def part_copy_nats(size: np.ndarray, missing: np.ndarray, miss_rate: np.ndarray) -> np.ndarray:
    """(n,) evidence (nats) that a set of ``size`` items with only ``missing`` of them outside a
    source is a partial copy: -log P(Binomial(size, miss_rate) <= missing), where ``miss_rate`` is
    the share a person would miss; 0 below COPY_MIN_ITEMS items or under PART_LEAST inside."""
    from scipy.special import bdtr

    size, missing = np.asarray(size, np.int64), np.asarray(missing, np.int64)
    rate = np.clip(np.asarray(miss_rate, np.float64), 1e-3, 1 - 1e-3)
    with np.errstate(divide="ignore"):
        nats = -np.log(bdtr(np.minimum(missing, size), np.maximum(size, 1), rate))
    return np.where(_near_subset(size, missing), np.clip(nats, 0.0, MAX_NATS), 0.0)


@dataclass
class Neighbours:
    """Do a user's items resemble other people's more than chance would have them?

    People share tastes with other people; fake profiles built from random or average filler
    items resemble nobody, not even each other, so a crowd of them cannot make themselves look
    normal, and the test needs no guess of how many there are. ``lift`` compares a user's
    :func:`neighbour_similarity` with the median similarity of random item sets of the same size
    drawn by the reference's item popularity (the null curve). The same pass finds copies: whole
    ones (:func:`copy_overlap`) and partial ones, judged against the share of their items that
    reference users of about their size miss in their own closest source (:func:`part_missing`,
    :func:`part_copy_nats`; the miss-rate curve). A source is a person: a crawler's sweep over the
    catalogue, or a profile that resembles nobody, holds many people's items without being copied.
    """

    ref: sp.csr_matrix     # (m, V) binary item sets of a seeded sample of training users
    sizes: np.ndarray      # (S,) set sizes the null curve is tabulated at, increasing
    null: np.ndarray       # (S,) median neighbour similarity of random sets of each size
    span: np.ndarray | None = None  # (m, 2) first and last event time of each reference user; see copy_overlap
    miss_sizes: np.ndarray | None = None  # (K,) log set sizes the miss-rate curve is tabulated at, increasing
    miss_rate: np.ndarray | None = None   # (K,) median share of their items reference users miss in their source
    part_source: np.ndarray | None = None  # (m,) bool, reference users that may be partial-copy sources

    def __post_init__(self) -> None:
        if (self.sizes.ndim != 1 or self.sizes.shape != self.null.shape or len(self.sizes) < 1
                or (np.diff(self.sizes) <= 0).any() or self.sizes[0] < 1 or not np.isfinite(self.null).all()):
            raise ValueError(f"neighbour null curve needs increasing sizes >= 1 and finite values of the same "
                             f"length, got {self.sizes.shape} sizes and {self.null.shape} values")
        if self.span is not None and self.span.shape != (self.ref.shape[0], 2):
            raise ValueError(f"neighbour reference spans must be ({self.ref.shape[0]}, 2), got {self.span.shape}")
        if (self.miss_sizes is None) != (self.miss_rate is None) or (self.miss_sizes is not None and (
                self.miss_sizes.ndim != 1 or self.miss_sizes.shape != self.miss_rate.shape or len(self.miss_sizes) < 1
                or (np.diff(self.miss_sizes) <= 0).any() or not np.isfinite(self.miss_rate).all()
                or (self.miss_rate < 0).any() or (self.miss_rate > 1).any())):
            raise ValueError("neighbour miss-rate curve needs increasing sizes and rates in [0, 1] of the same length")
        if self.part_source is not None and self.part_source.shape != (self.ref.shape[0],):
            raise ValueError(f"neighbour partial-copy sources must be one bool per reference user ({self.ref.shape[0]}), "
                             f"got shape {self.part_source.shape}")

    @classmethod
    def fit(cls, sets: sp.csr_matrix, span: np.ndarray, *, seed: int = 0, sweep: np.ndarray | None = None) -> Neighbours | None:
        """From the training users' item sets (U, V), time spans (U, 2) and (U,) catalogue order
        (see _catalogue_order; default 0); None when fewer than 3 users have items."""
        has = np.diff(sets.indptr) > 0
        sweep = np.zeros(len(has)) if sweep is None else np.asarray(sweep, np.float64)
        sets, span, sweep = sets[has], span[has], sweep[has]
        if sets.shape[0] < 3:
            return None
        rng = np.random.default_rng([seed, 0x4E1])
        if sets.shape[0] > MAX_NEIGHBOUR_REFERENCE:
            pick = np.sort(rng.choice(sets.shape[0], MAX_NEIGHBOUR_REFERENCE, replace=False))
            sets, span, sweep = sets[pick], span[pick], sweep[pick]
        pop = np.asarray(sets.sum(0)).ravel()
        items = np.flatnonzero(pop > 0)
        top = int(min(np.diff(sets.indptr).max(), len(items)))
        sizes = np.unique(np.round(np.geomspace(1, max(top, 1), NULL_SIZES)).astype(np.int64))
        p = pop[items] / pop[items].sum()
        rows = [np.sort(rng.choice(items, size, replace=False, p=p)) for size in sizes for _ in range(NULL_DRAWS)]
        lens = np.array([len(r) for r in rows])
        draws = sp.csr_matrix((np.ones(lens.sum()), np.concatenate(rows), np.r_[0, np.cumsum(lens)]), shape=(len(rows), sets.shape[1]))
        sim = neighbour_similarity(draws, sets).reshape(len(sizes), NULL_DRAWS)
        span = np.asarray(span, np.float64)
        nb = cls(sets.tocsr(), sizes.astype(np.float64), np.median(sim, axis=1), span)
        # people: resemble others at least as random sets do, and walk no catalogue
        nb.part_source = (nb.compare(sets, span)[0] >= 0) & (sweep < SWEEP_LEAST)
        nb.miss_sizes, nb.miss_rate = _miss_rate_curve(sets, part_missing(sets, span, sets, span, sources=nb.part_source))
        return nb

    def compare(self, sets: sp.csr_matrix, span: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n,) lift, (n,) :func:`copy_overlap` and (n,) partial-copy evidence against the reference,
        from one pass. The lift is the log of the similarity over the null at the set's size (0 for
        empty sets): below 0, the user resembles other people less than random item sets do. The
        evidence is the largest :func:`part_copy_nats` over the set's partial-copy sources (see
        :func:`part_missing`) that hold at least PART_LEAST of its items, judged at the miss rate of
        people of the set's size (the miss-rate curve); 0 before the curve is fitted."""
        n = np.diff(sets.indptr).astype(np.float64)
        ls = np.log(self.sizes)
        null = np.interp(np.log(np.maximum(n, 1.0)), ls, self.null) if len(ls) > 1 else np.full(len(n), self.null[0])
        rate = None if self.miss_sizes is None else np.interp(np.log(np.maximum(n, 1.0)), self.miss_sizes, self.miss_rate)
        sim, copy, _, part = _compare(sets, self.ref, span=span, ref_span=self.span, sources=self.part_source, miss_rate=rate)
        return np.where(n > 0, np.log((sim + 1e-3) / (null + 1e-3)), 0.0), copy, part


MISS_BIN_USERS = 50   # reference users per bin of the miss-rate curve (at most NULL_SIZES bins)
SWEEP_LEAST = 0.5     # catalogue order (see _catalogue_order) from which a history is a crawler's sweep, no source


def _miss_rate_curve(sets: sp.csr_matrix, missing: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(K,) log sizes and (K,) median miss rates of the reference users with at least COPY_MIN_ITEMS
    items, in bins of about MISS_BIN_USERS users by size; (None, None) with fewer users than a bin.
    The median keeps a training log's own copies (which miss nothing) from setting the curve."""
    n = np.diff(sets.indptr).astype(np.float64)
    use = n >= COPY_MIN_ITEMS
    if use.sum() < MISS_BIN_USERS:
        return None, None
    ln, rate = np.log(n[use]), missing[use] / n[use]
    k = int(min(use.sum() // MISS_BIN_USERS, NULL_SIZES))
    order = np.argsort(ln, kind="stable")
    bins = np.array_split(order, k)
    xs = np.array([np.median(ln[b]) for b in bins])
    ys = np.array([np.median(rate[b]) for b in bins])
    keep = np.r_[True, np.diff(xs) > 0]  # equal sizes in neighbouring bins: one point
    return xs[keep], ys[keep]


# ---------------------------------------------------------------------------------------------
# per-event features: every column oriented so that larger = more anomalous

EVENT_FEATURES = (
    "item_surprisal",      # -log p(item | context) from the encoder
    "timing_surprisal",    # -log p(action, gap | context)
    "burst",               # log of events within +-60 s
    "rarity",              # -log training count of the item
    "taste_distance",      # 1 - cos(item, user's profile)
    "repeat",              # log1p(earlier occurrences of the item in this history)
    "replay",              # the event belongs to an item n-gram seen earlier in this history, with its timing
    "value_deviation",     # |value - item's mean value| / global std
)


def _segment_sums(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(U, ...) sums of x over each user's rows; empty users get 0. Each sum runs over the user's own
    rows only (not a difference of running totals over the batch), so it does not depend on where in
    a batch the user sits: a value that lands on a tie of a detector's reference must land there in
    any batch."""
    if x.dtype == bool:
        x = x.astype(np.int64)  # np.add over bools is a logical or
    n = len(offsets) - 1
    out = np.zeros((n,) + x.shape[1:], x.dtype)
    has = offsets[1:] > offsets[:-1]
    if has.any():
        out[has] = np.add.reduceat(x, offsets[:-1][has], axis=0)
    return out


def _prev_occurrences(uix: np.ndarray, key: np.ndarray) -> np.ndarray:
    """(N,) how many earlier events of the same user have the same key."""
    order = np.lexsort((np.arange(len(key)), key, uix))
    k, u = key[order], uix[order]
    new = np.r_[True, (k[1:] != k[:-1]) | (u[1:] != u[:-1])]
    grp_start = np.maximum.accumulate(np.where(new, np.arange(len(k)), 0))
    out = np.empty(len(key), np.int64)
    out[order] = np.arange(len(k)) - grp_start
    return out


def _prev_index(uix: np.ndarray, key: np.ndarray) -> np.ndarray:
    """(N,) row of the latest earlier event of the same user with the same key, -1 if none."""
    order = np.lexsort((np.arange(len(key)), key, uix))
    k, u = key[order], uix[order]
    new = np.r_[True, (k[1:] != k[:-1]) | (u[1:] != u[:-1])]
    out = np.empty(len(key), np.int64)
    out[order] = np.where(new, -1, np.r_[-1, order[:-1]])
    return out


def _known_or_user_mean(x: np.ndarray, known: np.ndarray, offsets: np.ndarray, fallback: float) -> np.ndarray:
    """(N,) x, where events on unknown items (``known`` False) take the mean of their user's known
    events (``fallback`` for a user with none). Nothing is known of an item outside the vocabulary:
    it may be new (catalogue churn) rather than rare, so its statistics count as missing, not as
    the most extreme value there is."""
    if known.all():
        return x
    k = known.astype(np.float64)
    n = _segment_sums(k, offsets)
    mean = np.where(n > 0, _segment_sums(np.where(known, x, 0.0), offsets) / np.maximum(n, 1), fallback)
    return np.where(known, x, np.repeat(mean, np.diff(offsets)))


def item_surprisal(seqs: Seqs, stats: ItemStats) -> np.ndarray:
    """(N,) the encoder's item surprisal; events on unknown items take their user's mean over known
    ones (see :func:`_known_or_user_mean`; a user without known items: the surprisal of a uniform
    guess over the catalogue). The unknown bucket's own probability says how many items were rare in
    training, not how odd a new item is."""
    known = seqs.item >= N_SPECIAL
    x = seqs.surprisal[:, 0].astype(np.float64)
    return _known_or_user_mean(x, known, seqs.offsets, float(np.log(max(len(stats.log_count) - N_SPECIAL, 2))))


def user_profiles(seqs: Seqs, stats: ItemStats) -> np.ndarray:
    """(U, TASTE_DIM) unit mean taste vector of each user's known items."""
    prof = _segment_sums(stats.taste[seqs.item].astype(np.float64), seqs.offsets)
    n = np.linalg.norm(prof, axis=1, keepdims=True)
    return prof / np.maximum(n, 1e-12)


def event_features(seqs: Seqs, stats: ItemStats) -> np.ndarray:
    """(N, len(EVENT_FEATURES)) per-event features."""
    n = len(seqs.ts)
    uix = seqs.user_index()
    first = np.zeros(n, bool)
    first[seqs.offsets[:-1][np.diff(seqs.offsets) > 0]] = True
    # events of the same user within +-BURST_WINDOW_S
    key = uix.astype(np.float64) * 1e12 + seqs.ts
    lo = np.searchsorted(key, key - BURST_WINDOW_S, side="left")
    hi = np.searchsorted(key, key + BURST_WINDOW_S, side="right")
    burst = np.log(hi - lo)
    known = seqs.item >= N_SPECIAL
    rarity = -_known_or_user_mean(stats.log_count[seqs.item], known, seqs.offsets, stats.typical_log_count)
    prof = user_profiles(seqs, stats)[uix]
    taste = np.where(known, 1.0 - np.einsum("nd,nd->n", stats.taste[seqs.item], prof), 0.0)
    ik = seqs.item_key
    ik = ik - min(int(ik.min(initial=0)), 0)  # >= 0: -1 below stands for "no event"
    repeat = np.log1p(_prev_occurrences(uix, ik))
    # replay: the n-gram ending here occurred earlier in the same history with the same gaps (people
    # come back to items, copies also keep the timing); mark its events
    gram = ik.copy()
    for j in range(1, REPLAY_N):
        prev = np.r_[np.full(j, -1), ik[:-j]][:n]  # [:n]: logs shorter than j
        same_user = np.r_[np.zeros(j, bool), uix[j:] == uix[:-j]][:n]
        gram = gram * 1_000_003 + np.where(same_user, prev, -1)
    full = np.r_[np.zeros(REPLAY_N - 1, bool), uix[REPLAY_N - 1:] == uix[:1 - REPLAY_N]] if n >= REPLAY_N else np.zeros(n, bool)
    # an n-gram of one repeated item is a burst, not a replay
    varied = np.ones(n, bool)
    if n >= REPLAY_N:
        varied[REPLAY_N - 1:] = ik[REPLAY_N - 1:] != ik[:1 - REPLAY_N]
    earlier = _prev_index(uix, gram)
    hit = full & varied & (earlier >= 0)
    gaps = np.diff(seqs.ts, prepend=seqs.ts[:1]) if n else seqs.ts
    for j in range(REPLAY_N - 1):  # the gaps inside the n-gram, now and then
        now = np.r_[np.zeros(j), gaps[:n - j]][:n]
        then = np.where(earlier >= j, gaps[np.maximum(earlier - j, 0)], np.inf)
        hit &= np.abs(now - then) <= np.maximum(REPLAY_GAP_S, REPLAY_GAP_SHARE * np.maximum(now, then))
    replay = hit.astype(np.float64)
    for j in range(1, REPLAY_N):
        replay[:-j] = np.maximum(replay[:-j], hit[j:] & (uix[:-j] == uix[j:]))
    has_v = np.isfinite(seqs.value)
    vdev = np.where(has_v, np.abs(np.nan_to_num(seqs.value) - stats.value_mean[seqs.item]) / stats.value_std, 0.0)
    vdev = _known_or_user_mean(vdev, known | ~has_v, seqs.offsets, 0.0)
    out = np.stack([
        item_surprisal(seqs, stats), seqs.surprisal[:, 1] + seqs.surprisal[:, 2], burst, rarity, taste, repeat, replay, vdev,
    ], axis=1)
    return out.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# per-user features (two-sided: the detectors decide which direction is unusual)

# Volume (number of events, span of time) is left out on purpose: heavy human users are
# common and legitimate; automation shows in rate, pace and regularity instead. With volume
# in, the false positives were the heaviest users, so quarantining them removed many clean
# events (MovieLens: ROC-AUC 0.980 -> 0.986 and PR-AUC 0.853 -> 0.887 without it).
USER_FEATURES = (
    "log_rate_per_active_hour", "median_log_gap", "gap_spread",
    "fast_gap_share", "gap_regularity", "hour_entropy", "mean_log_count", "std_log_count",
    "distinct_item_share", "top_item_share", "replay_share", "longest_replay_run",
    "main_action_share", "action_entropy", "unseen_action_share",
    "value_mean", "value_std", "value_extreme_share", "value_deviation", "value_item_corr",
    "mean_item_surprisal", "mean_timing_surprisal", "max_segment_surprisal",
    "taste_coherence", "neighbour_lift", "copy_overlap", "part_copy", "taste_shift", "segment_novelty", "catalogue_order",
)


def _entropy_by_user(uix: np.ndarray, key: np.ndarray, n_users: int) -> np.ndarray:
    """(U,) Shannon entropy (nats) of each user's key distribution."""
    if len(key) == 0:
        return np.zeros(n_users)
    pair = uix.astype(np.int64) * (int(key.max()) + 1) + key
    uniq, cnt = np.unique(pair, return_counts=True)
    u = uniq // (int(key.max()) + 1)
    tot = np.bincount(u, weights=cnt, minlength=n_users)[u]
    p = cnt / tot
    return np.bincount(u, weights=-p * np.log(p), minlength=n_users)


def _rolling_max_mean(x: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """(U,) max over each user of the mean of x over ``width`` consecutive events."""
    out = np.zeros(len(offsets) - 1)
    for u, (a, b) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        n = b - a
        if n == 0:
            continue
        w = min(width, n)
        c = np.r_[0.0, np.cumsum(x[a:b])]  # the user's own running total (see _segment_sums)
        out[u] = ((c[w:] - c[:n - w + 1]) / w).max()
    return out


def _catalogue_order(seqs: Seqs, id_rank: np.ndarray | None, uix: np.ndarray) -> np.ndarray:
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


def _longest_run(flag: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(U,) the longest run of consecutive True events inside each user's history."""
    out = np.zeros(len(offsets) - 1)
    for u in np.flatnonzero(_segment_sums(flag.astype(np.int64), offsets) > 0):
        f = np.r_[False, flag[offsets[u]:offsets[u + 1]], False].astype(np.int8)
        d = np.flatnonzero(np.diff(f))
        out[u] = (d[1::2] - d[::2]).max()
    return out


def best_segment(vecs: np.ndarray, *, grid: int = 24, min_frac: float = 0.1, max_frac: float = 0.7) -> tuple[float, int, int]:
    """The contiguous segment [a, b) whose mean differs most from the rest.

    vecs: (n, d). Returns (R^2, a, b): the share of the sequence's variance explained by splitting
    it into the segment and the rest (0 when the history is too short to tell). Where a prefix is
    best, its suffix is returned when that is a segment's length too.
    """
    n = len(vecs)
    if n < 8:
        return 0.0, 0, 0
    total = ((vecs - vecs.mean(0)) ** 2).sum()
    if total <= 1e-12:
        return 0.0, 0, 0
    cuts = np.unique(np.linspace(0, n, min(grid, n) + 1).round().astype(int))
    c = np.vstack([np.zeros(vecs.shape[1]), np.cumsum(vecs, 0)])
    lo, hi = max(3, int(min_frac * n)), int(max_frac * n)
    a, b = np.meshgrid(cuts, cuts, indexing="ij")       # every (start, end) pair, start-major
    ok = (b - a >= lo) & (b - a <= hi)
    if not ok.any():
        return 0.0, 0, 0
    a, b = a[ok], b[ok]
    seg = c[b] - c[a]                                    # (pairs, d) segment sums
    m = (b - a)[:, None].astype(float)
    rest = c[-1] - seg
    between = ((seg / m - (rest / (n - m))) ** 2).sum(1) * (m[:, 0] * (n - m[:, 0]) / n)
    j = int(between.argmax())                            # the first best pair, as a scan would find
    if not between[j] / total > 0.0:
        return 0.0, 0, 0
    a, b = int(a[j]), int(b[j])
    # a prefix and the suffix after it split the history alike; the later part is the one that
    # changed (an account is taken over after its owner used it)
    if a == 0 and lo <= n - b <= hi:
        a, b = b, n
    return float(between[j] / total), a, b


def segment_novelty(taste: np.ndarray, a: int, b: int, *, cap: int = 256) -> float:
    """How new the segment [a, b) is to the rest of the history: mean over its items of
    1 - the best cosine to any item outside it. People return to their tastes; an account taken
    over by someone else does not. taste: (n, d) unit vectors (0 for unknown items)."""
    inside = taste[a:b]
    outside = np.vstack([taste[:a], taste[b:]])
    inside = inside[np.linalg.norm(inside, axis=1) > 0]
    outside = outside[np.linalg.norm(outside, axis=1) > 0]
    if len(inside) == 0 or len(outside) == 0:
        return 0.0
    inside = inside[:: max(1, len(inside) // cap)]
    outside = outside[:: max(1, len(outside) // cap)]
    return float(1.0 - (inside @ outside.T).max(axis=1).mean())


def _neighbour_features(seqs: Seqs, stats: ItemStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U,) neighbour_lift, (U,) copy_overlap and (U,) part_copy against the training reference."""
    if stats.neighbours is None:
        return np.zeros(seqs.n_users), np.zeros(seqs.n_users), np.zeros(seqs.n_users)
    sets = item_sets(seqs, len(stats.log_count))
    return stats.neighbours.compare(sets, _user_spans(seqs))


def user_features(seqs: Seqs, stats: ItemStats, ef: np.ndarray, event_local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, len(USER_FEATURES)) per-user features and (U, 2) best taste segment [a, b) per user.

    ``ef``: (N, len(EVENT_FEATURES)) from :func:`event_features`; ``event_local``: (N,) per-event
    local anomaly (from the event detector), used for the segment-level surprisal.
    """
    U, off = seqs.n_users, seqs.offsets
    n_ev = np.diff(off).astype(np.float64)
    nz = np.maximum(n_ev, 1)
    uix = seqs.user_index()
    ts = seqs.ts
    gaps = np.diff(ts, prepend=ts[:1]) if len(ts) else ts
    not_first = np.ones(len(ts), bool)
    not_first[off[:-1][n_ev > 0]] = False
    lg = np.log1p(np.maximum(gaps, 0.0))
    ng = np.maximum(_segment_sums(not_first.astype(float), off), 1)
    hours = np.floor(ts / 3600.0).astype(np.int64)
    new_hour = np.r_[True, (hours[1:] != hours[:-1]) | (uix[1:] != uix[:-1])] if len(ts) else np.zeros(0, bool)
    active_hours = np.maximum(_segment_sums(new_hour.astype(float), off), 1)

    mean_lg = _segment_sums(lg * not_first, off) / ng
    med_lg = np.zeros(U)
    regular = np.zeros(U)
    # relative to the most a history of this length can reach, so heavy users are not odd by size
    hour_ent = _entropy_by_user(uix, (np.floor(ts / 3600.0) % 24).astype(np.int64), U) / np.log(np.clip(n_ev, 2, 24))
    for u in np.flatnonzero(n_ev >= 3):
        g = lg[off[u] + 1:off[u + 1]]
        med = np.median(g)
        med_lg[u] = med
        regular[u] = np.mean(np.abs(g - med) < 0.1)
    spread = np.sqrt(np.maximum(_segment_sums(lg ** 2 * not_first, off) / ng - mean_lg ** 2, 0.0))
    fast = _segment_sums(((gaps < 2.0) & not_first).astype(float), off) / ng

    # item statistics over known items only (see _known_or_user_mean)
    known = seqs.item >= N_SPECIAL
    n_known = _segment_sums(known.astype(float), off)
    lc = np.where(known, stats.log_count[seqs.item], 0.0)
    mean_lc = np.where(n_known > 0, _segment_sums(lc, off) / np.maximum(n_known, 1), stats.typical_log_count)
    std_lc = np.sqrt(np.maximum(_segment_sums(lc ** 2, off) / np.maximum(n_known, 1) - np.where(n_known > 0, mean_lc, 0.0) ** 2, 0.0))
    ik = seqs.item_key
    prev = _prev_occurrences(uix, ik)
    distinct = _segment_sums((prev == 0).astype(float), off) / nz
    top_share = np.zeros(U)
    replay = ef[:, EVENT_FEATURES.index("replay")] > 0
    replay_share = _segment_sums(replay.astype(float), off) / nz
    longest_run = _longest_run(replay, off)
    main_share = _segment_sums((seqs.action == stats.main_action).astype(float), off) / nz
    act_ent = _entropy_by_user(uix, seqs.action, U)
    # a non-main action on an item this user never touched before (e.g. purchase without a view)
    unseen_action = _segment_sums(((seqs.action != stats.main_action) & (prev == 0)).astype(float), off) / nz

    has_v = np.isfinite(seqs.value)
    v = np.nan_to_num(seqs.value)
    nv = np.maximum(_segment_sums(has_v.astype(float), off), 1)
    v_mean = _segment_sums(v, off) / nv
    v_std = np.sqrt(np.maximum(_segment_sums(v ** 2, off) / nv - v_mean ** 2, 0.0))
    # at the training range's ends (not this batch's: a user's score must not depend on batch-mates)
    vlo, vhi = stats.value_lo, stats.value_hi
    extreme = has_v & ((v <= vlo) | (v >= vhi)) & (vhi > vlo)
    v_extreme = _segment_sums(extreme.astype(float), off) / nv
    v_dev = _segment_sums(ef[:, EVENT_FEATURES.index("value_deviation")], off) / nv
    im = stats.value_mean[seqs.item]
    v_corr = np.zeros(U)

    s_item = _segment_sums(ef[:, EVENT_FEATURES.index("item_surprisal")], off) / nz
    s_time = _segment_sums((seqs.surprisal[:, 1] + seqs.surprisal[:, 2]).astype(np.float64), off) / nz
    seg_local = _rolling_max_mean(event_local, off, 8)
    # a history without known items is as coherent as a one-item history
    coherence = np.where(n_ev > 0, 1.0 - _segment_sums(ef[:, EVENT_FEATURES.index("taste_distance")], off) / np.maximum(n_known, 1), 0.0)
    shift = np.zeros(U)
    novelty = np.zeros(U)
    segments = np.zeros((U, 2), np.int64)
    # habits ride along with taste in the segment search: hour of day and pace
    hour = 2 * np.pi * (ts % 86400) / 86400
    habits = np.stack([0.5 * np.sin(hour), 0.5 * np.cos(hour), 0.1 * lg * not_first], axis=1) if len(ts) else np.zeros((0, 3))
    for u in np.flatnonzero(n_ev >= 3):
        a, b = off[u], off[u + 1]
        counts = np.unique(ik[a:b], return_counts=True)[1]
        top_share[u] = (counts.max() - 1) / (b - a)  # 0 when every item is distinct, at any length
        hv = has_v[a:b] & known[a:b]
        if hv.sum() >= 3:
            x, y = v[a:b][hv], im[a:b][hv]
            if x.std() > 1e-9 and y.std() > 1e-9:
                v_corr[u] = float(np.corrcoef(x, y)[0, 1])
        k = np.flatnonzero(known[a:b])  # the segment search sees known items only (new ones have no taste)
        if len(k) >= 8:
            it = seqs.item[a:b][k]
            r2, s0, s1 = best_segment(np.hstack([stats.taste[it], habits[a:b][k]]))
            shift[u] = r2
            if s1 > s0:  # back to positions in the whole history
                segments[u] = (k[s0], k[s1 - 1] + 1 if s1 < len(k) else b - a)
            novelty[u] = segment_novelty(stats.taste[it], s0, s1)
    feats = np.stack([
        np.log(nz / active_hours), med_lg, spread,
        fast, regular, hour_ent, mean_lc, std_lc,
        distinct, top_share, replay_share, np.log1p(longest_run),
        main_share, act_ent, unseen_action,
        v_mean, v_std, v_extreme, v_dev, v_corr,
        s_item, s_time, seg_local,
        coherence, *_neighbour_features(seqs, stats),
        shift, novelty, _catalogue_order(seqs, stats.id_rank, uix),
    ], axis=1)
    return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0), segments
