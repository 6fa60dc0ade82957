"""Many users' event sequences as flat arrays, and the per-user reductions the features share.

Everything in :mod:`seqguard_ray.core.features` is numpy over flat event arrays cut by
``offsets`` (user ``u`` owns rows ``offsets[u]:offsets[u+1]``), so a subset of events (a residual
history) is featurised the same way as a whole log.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        counts = segment_sums(keep.astype(np.int64), self.offsets)
        return self.take(np.flatnonzero(keep), np.r_[0, np.cumsum(counts)])

    def take(self, rows: np.ndarray, offsets: np.ndarray) -> Seqs:
        """The events ``rows`` (N',) as histories cut by ``offsets`` (U' + 1,): each history's rows
        in time order and all of one user's (e.g. a user's history less some events)."""
        return Seqs(np.asarray(offsets, np.int64), self.ts[rows], self.item[rows], self.action[rows], self.value[rows],
                    self.surprisal[rows], None if self.key is None else self.key[rows])


def segment_sums(x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
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


def prev_occurrences(uix: np.ndarray, key: np.ndarray) -> np.ndarray:
    """(N,) how many earlier events of the same user have the same key.

    ``uix`` (N,): each event's user; ``key`` (N,): what is compared (e.g. :attr:`Seqs.item_key`).
    """
    order = np.lexsort((np.arange(len(key)), key, uix))
    k, u = key[order], uix[order]
    new = np.r_[True, (k[1:] != k[:-1]) | (u[1:] != u[:-1])]
    grp_start = np.maximum.accumulate(np.where(new, np.arange(len(k)), 0))
    out = np.empty(len(key), np.int64)
    out[order] = np.arange(len(k)) - grp_start
    return out


def prev_index(uix: np.ndarray, key: np.ndarray) -> np.ndarray:
    """(N,) row of the latest earlier event of the same user with the same key, -1 if none."""
    order = np.lexsort((np.arange(len(key)), key, uix))
    k, u = key[order], uix[order]
    new = np.r_[True, (k[1:] != k[:-1]) | (u[1:] != u[:-1])]
    out = np.empty(len(key), np.int64)
    out[order] = np.where(new, -1, np.r_[-1, order[:-1]])
    return out


def user_spans(seqs: Seqs) -> np.ndarray:
    """(U, 2) first and last event time of each user (0, 0 for empty users)."""
    off, n = seqs.offsets, np.diff(seqs.offsets)
    span = np.zeros((seqs.n_users, 2))
    has = n > 0
    span[has, 0] = seqs.ts[off[:-1][has]]
    span[has, 1] = seqs.ts[off[1:][has] - 1]
    return span
