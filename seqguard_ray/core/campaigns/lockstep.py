"""Lockstep (CopyCatch's idea): the members of an item's audience adopting one other item far more
often than that item's other adopters do. Organic taste raises co-adoption too (series, genres):
up to ``taste_lift`` times chance is allowed before it counts.

:func:`pair_lockstep` counts co-adoption over the whole log (the item-item co-occurrence, a sparse
product computed by blocks of items so that its pairs are bounded; a map-reduce over users at
scale); :func:`window_lockstep` counts each windowed
audience's members' adoptions inside its period (a join by user, in bounded chunks).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .adoptions import Adoptions
from .tails import N_CAP, binom_nats

_CHUNK = 4_000_000  # expanded (member x adoption) rows per chunk of window_lockstep
_PAIR_CHUNK = 5_000_000  # (user x item) products per block of items in pair_lockstep (~130 MB a block)
# members of a window audience whose other adoptions are read: the tests count at most N_CAP
# members anyway, and a popular item's month holds hundreds (their histories are the cost)
SAMPLE = 2 * int(N_CAP)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges starts[k]..starts[k] + lengths[k]."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    before = np.r_[0, np.cumsum(lengths)[:-1]]
    return np.repeat(np.asarray(starts, np.int64) - before, lengths) + np.arange(total)


def lock_nats(count: np.ndarray, k: np.ndarray, n_other: np.ndarray, n_users: np.ndarray,
              taste_lift: float) -> np.ndarray:
    """-log P(at least ``count`` of ``k`` audience members adopt an item that ``n_other`` of the
    ``n_users - k`` other users adopt), chance raised ``taste_lift`` times."""
    p = (n_other + 1.0) / np.maximum(n_users - k + 1.0, 1.0)
    return binom_nats(count, k, np.minimum(1.0, taste_lift * p))


def _best_per(group: np.ndarray, nats: np.ndarray, count: np.ndarray, n_groups: int, tried_min: int = 2):
    """Per group (0..n_groups-1): the row with the most nats (ties: larger count), its nats less
    log(rows tried), and which rows were tried (count >= tried_min)."""
    tried = np.bincount(group[count >= tried_min], minlength=n_groups)
    order = np.lexsort((-count, -nats, group))
    first = order[np.r_[True, group[order][1:] != group[order][:-1]]] if len(order) else order
    return first, np.maximum(0.0, nats[first] - np.log(np.maximum(tried[group[first]], 1)))


def pair_lockstep(ad: Adoptions, taste_lift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each item's lockstep partner over the whole log, the item its adopters co-adopt most beyond
    chance: (I,) partner item (-1: no co-adoption), (I,) its co-adopters, (I,) the evidence in
    nats (less log(partners tried); 0 when none beats chance)."""
    n_items = ad.n_items
    partner, co_count, nats = np.full(n_items, -1, np.int64), np.zeros(n_items, np.int64), np.zeros(n_items)
    if len(ad.user) == 0:
        return partner, co_count, nats
    x = sp.csr_matrix((np.ones(len(ad.user)), (ad.user, ad.item)), shape=(ad.n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0  # users, not visits
    xt = x.T.tocsr()  # (items, users)
    n_i = np.diff(xt.indptr)
    # the item-item co-occurrence by blocks of items (rows): each item's partner depends on its
    # own row only, so the blocks give the same result as one product, with a block's pairs
    # held at a time (the pairs are what grow with the log: a user's adoptions squared)
    for lo, hi in _row_blocks(xt, x, _PAIR_CHUNK):
        co = (xt[lo:hi] @ x).tocsr()
        co.setdiag(0, k=lo)
        co.eliminate_zeros()
        co.sort_indices()  # ties between partners go to the first item code, whatever the blocks
        i = np.repeat(np.arange(lo, hi), np.diff(co.indptr))
        j, c = co.indices.astype(np.int64), co.data.astype(np.int64)
        pair = lock_nats(c, n_i[i], n_i[j] - c, np.full(len(c), ad.n_users), taste_lift)
        first, best = _best_per(i - lo, pair, c, hi - lo)
        # every item's partner, even where the evidence is none: its core is still an audience
        # of the kind, and the null of that kind is every item's, not only the odd ones'
        partner[i[first]] = j[first]
        co_count[i[first]] = c[first]
        nats[i[first]] = best
    return partner, co_count, nats


def _row_blocks(xt: sp.csr_matrix, x: sp.csr_matrix, budget: int) -> list[tuple[int, int]]:
    """Consecutive item ranges whose co-occurrence rows expand at most ``budget`` (user, item)
    products each (an upper bound on their pairs; an item alone may exceed it)."""
    deg = np.diff(x.indptr)  # adoptions per user
    work = np.add.reduceat(np.r_[deg[xt.indices], 0], xt.indptr[:-1]) if xt.nnz else np.zeros(xt.shape[0])
    work = np.where(np.diff(xt.indptr) > 0, work, 0)
    ends = np.cumsum(work)
    blocks, lo = [], 0
    while lo < xt.shape[0]:
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + budget, side="right")))
        blocks.append((lo, min(hi, xt.shape[0])))
        lo = blocks[-1][1]
    return blocks


def window_lockstep(ad: Adoptions, item: np.ndarray, members: list[np.ndarray] | tuple, lo: np.ndarray,
                    hi: np.ndarray, taste_lift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For audiences (C,) of ``item`` whose ``members`` are adoption rows given as (ptr (C + 1,),
    rows): the item most co-adopted by their users within ``lo..hi``, against its adopters in
    that period among the other users active then. Returns (C,) partner (-1), count, nats."""
    ptr, rows = members
    n_c = len(item)
    partner, count, nats = np.full(n_c, -1, np.int64), np.zeros(n_c, np.int64), np.zeros(n_c)
    if n_c == 0 or len(rows) == 0:
        return partner, count, nats
    full = np.diff(ptr)
    owner = np.repeat(np.arange(n_c), full)
    # at most SAMPLE members per audience, the same ones whatever the batch (a hash of the user)
    rank = np.lexsort(((ad.user[rows] * 2654435761) % 4294967296, owner))
    pos = np.arange(len(rows)) - np.repeat(ptr[:-1], full)
    rows = rows[np.sort(rank[pos < SAMPLE])] if (full > SAMPLE).any() else rows
    size = np.minimum(full, SAMPLE)
    by_user = np.argsort(ad.user, kind="stable")
    uptr = np.r_[0, np.cumsum(np.bincount(ad.user, minlength=ad.n_users))]
    span = (ad.t_max - ad.t_min) + 1.0
    key = ad.item * span + (ad.ts - ad.t_min)  # sorted: rows are in item, then time order
    first, last = np.sort(ad.user_first), np.sort(ad.user_last)
    mem_c = np.repeat(np.arange(n_c), size)
    deg = np.diff(uptr)[ad.user[rows]]
    cut = np.searchsorted(np.cumsum(deg), np.arange(_CHUNK, int(deg.sum()) + _CHUNK, _CHUNK), side="right")
    parts, start = [], 0
    for stop in np.r_[cut, len(rows)].astype(np.int64):
        if stop <= start:
            continue
        sl = slice(start, stop)
        start = stop
        ex_c = np.repeat(mem_c[sl], deg[sl])
        ex = by_user[_ranges(uptr[ad.user[rows[sl]]], deg[sl])]
        ok = (ad.ts[ex] >= lo[ex_c]) & (ad.ts[ex] <= hi[ex_c]) & (ad.item[ex] != item[ex_c])
        member = np.repeat(np.arange(sl.start, sl.stop), deg[sl])[ok]
        once = np.unique(member * ad.n_items + ad.item[ex][ok])  # a member counts once per item
        pair, c = np.unique(mem_c[once // ad.n_items] * ad.n_items + once % ad.n_items, return_counts=True)
        parts.append((pair // ad.n_items, pair % ad.n_items, c))
    if not parts:
        return partner, count, nats
    pc, pj, c = (np.concatenate(x) for x in zip(*parts))
    base = pj * span - ad.t_min
    n_in = np.searchsorted(key, base + hi[pc], side="right") - np.searchsorted(key, base + lo[pc], side="left")
    active = np.searchsorted(first, hi[pc], side="right") - np.searchsorted(last, lo[pc], side="left")
    # j's adopters then outside the sample: non-sampled members among them make the null's rate
    # higher, never lower (an estimate of their number from the sample could exceed n_in)
    pair_nats = lock_nats(c, size[pc], n_in - c, active - (full[pc] - size[pc]), taste_lift)
    best, best_nats = _best_per(pc, pair_nats, c, n_c)
    has = best_nats > 0
    partner[pc[best][has]] = pj[best][has]
    count[pc[best]] = c[best]
    nats[pc[best]] = best_nats
    return partner, count, nats
