"""Adoptions: a log reduced to one row per visit of a user to an item (its events on the item with
no gap over EPISODE_GAP), the unit the campaign stage reasons about: a fake profile rates a target
once, a click farm hits it thirty times in minutes, both adopt it once; a real user who clicked
the item weeks before the farm used the account adopted it twice.

Rows are sorted by item, then by the pair's first event time, so each item's adopters are one
contiguous, time-ordered run (``item_offsets``): the item-side tests read one run at a time, and a
partitioned (Ray) pass can hand each item's run to one task.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

# Timestamps that span less than this carry no campaign timing (a one-day log, row numbers as
# seconds): windows of hours to a week need a log that is longer than they are.
MIN_TIME_SPAN = 2 * 86_400.0
EPISODE_GAP = 86_400.0  # a user's events on one item further apart than this are separate visits


@dataclass
class Adoptions:
    """One row per visit of a user to an item, sorted by item then first event time (P rows).

    - ``user`` (P,) int64 user index (into the log's users), ``item`` (P,) int64 item code
    - ``ts`` (P,) float64 the visit's first event time in seconds; ``n_events`` (P,) int64
    - ``value`` (P,) float64 mean of the visit's values (NaN: none)
    - ``item_offsets`` (I + 1,): item ``i``'s visits are rows ``item_offsets[i]:item_offsets[i+1]``
    - ``pair_first`` (P,) int64 the row of the same user's first visit to the same item (itself
      for a first visit): counts of adopters are of users, not visits
    - ``event_pair`` (N,) int64 each event's row, -1 for events of users left out (allow-list)
    - ``user_first`` / ``user_last`` (U,) float64 each user's first / last event time;
      ``user_events`` (U,) int64 events per user
    - ``timed``: the log's timestamps carry timing (see :func:`has_time_signal`)
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    n_events: np.ndarray
    value: np.ndarray
    item_offsets: np.ndarray
    pair_first: np.ndarray
    event_pair: np.ndarray
    user_first: np.ndarray
    user_last: np.ndarray
    user_events: np.ndarray
    timed: bool

    @property
    def n_users(self) -> int:
        return len(self.user_first)

    @property
    def n_items(self) -> int:
        return len(self.item_offsets) - 1

    @property
    def first_visit(self) -> np.ndarray:
        """(P,) bool: the row is its user's first visit to the item."""
        return self.pair_first == np.arange(len(self.pair_first))

    @cached_property
    def item_size(self) -> np.ndarray:
        """(I,) adopters (distinct users) per item."""
        return np.bincount(self.item[self.first_visit], minlength=self.n_items)

    @property
    def t_min(self) -> float:
        return float(self.user_first.min()) if self.n_users else 0.0

    @property
    def t_max(self) -> float:
        return float(self.user_last.max()) if self.n_users else 0.0


def has_time_signal(ts: np.ndarray, row: np.ndarray | None = None) -> bool:
    """Whether timestamps can time a campaign: they span at least MIN_TIME_SPAN and are not the
    row numbers in disguise (one constant step from row to row)."""
    ts = np.asarray(ts, np.float64)
    if len(ts) < 2 or float(ts.max() - ts.min()) < MIN_TIME_SPAN:
        return False
    if row is not None:
        by_row = np.diff(ts[np.argsort(row, kind="stable")])
        if len(by_row) and np.all(by_row == by_row[0]):
            return False
    return True


def build_adoptions(offsets: np.ndarray, item_codes: np.ndarray, ts: np.ndarray, value: np.ndarray, *,
                    n_items: int, left_out: np.ndarray | None = None, row: np.ndarray | None = None) -> Adoptions:
    """Adoptions of a log sorted by user then time.

    offsets (U + 1,), item_codes (N,) int in [0, n_items), ts (N,) seconds, value (N,) (NaN: none);
    ``left_out`` (U,) bool: users whose events are left out (allow-listed: never members, and
    their adoptions do not count); ``row`` (N,): input row numbers (for the row-order check).
    """
    offsets = np.asarray(offsets, np.int64)
    n_users = len(offsets) - 1
    n_ev = np.diff(offsets)
    uix = np.repeat(np.arange(n_users, dtype=np.int64), n_ev)
    item_codes = np.asarray(item_codes, np.int64)
    ts = np.asarray(ts, np.float64)
    value = np.asarray(value, np.float64)
    if len(item_codes) and (item_codes.min() < 0 or item_codes.max() >= n_items):
        raise ValueError(f"item codes must lie in [0, {n_items}), got {item_codes.min()}..{item_codes.max()}")
    has = n_ev > 0
    user_first = np.zeros(n_users)
    user_last = np.zeros(n_users)
    user_first[has] = ts[offsets[:-1][has]]
    user_last[has] = ts[offsets[1:][has] - 1]
    keep = None if left_out is None else ~np.repeat(np.asarray(left_out, bool), n_ev)
    # events by (item, user, time): one visit's events adjacent, earliest first (every event
    # unless some users are left out: no gathered copies of the columns then)
    if keep is None:
        order = np.lexsort((ts, uix, item_codes))
    else:
        ev = np.flatnonzero(keep)
        order = ev[np.lexsort((ts[ev], uix[ev], item_codes[ev]))]
        del ev
    u, it, t = uix[order], item_codes[order], ts[order]
    del uix
    start = (np.r_[True, (u[1:] != u[:-1]) | (it[1:] != it[:-1]) | (np.diff(t) > EPISODE_GAP)]
             if len(order) else np.zeros(0, bool))
    pair_of = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    n_pair = np.bincount(pair_of, minlength=len(first)).astype(np.int64)
    v = value[order]
    fin = np.isfinite(v)
    vsum = np.bincount(pair_of[fin], weights=v[fin], minlength=len(first))
    vcnt = np.bincount(pair_of[fin], minlength=len(first))
    p_user, p_item, p_ts = u[first], it[first], t[first]
    p_value = np.where(vcnt > 0, vsum / np.maximum(vcnt, 1), np.nan)
    del u, it, t, v, fin  # the event-sized sort copies (the pass's peak)
    new_pair = np.r_[True, (p_user[1:] != p_user[:-1]) | (p_item[1:] != p_item[:-1])] if len(first) else start[:0]
    first_of_pair = np.maximum.accumulate(np.where(new_pair, np.arange(len(first)), 0))
    # re-sort pairs by item, then first time (users of one item were in user order)
    by_time = np.lexsort((p_user, p_ts, p_item))
    rank = np.empty(len(by_time), np.int64)
    rank[by_time] = np.arange(len(by_time))
    event_pair = np.full(len(ts), -1, np.int64)
    event_pair[order] = rank[pair_of]
    p_item = p_item[by_time]
    return Adoptions(
        user=p_user[by_time], item=p_item, ts=p_ts[by_time], n_events=n_pair[by_time], value=p_value[by_time],
        item_offsets=np.r_[0, np.cumsum(np.bincount(p_item, minlength=n_items))].astype(np.int64),
        pair_first=rank[first_of_pair[by_time]], event_pair=event_pair, user_first=user_first, user_last=user_last, user_events=n_ev.astype(np.int64),
        timed=(has_time_signal(ts, row) if keep is None
               else has_time_signal(ts[keep], None if row is None else np.asarray(row)[keep])),
    )
