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


def time_part(ts: np.ndarray, row: np.ndarray | None = None) -> np.ndarray:
    """What :func:`time_signal` needs of one part of a log (any partition of its events): (8,)
    float64 ``[events, t_min, t_max, r0, t0, r1, t1, straight]``, (r0, t0) / (r1, t1) its events
    of lowest / highest input row, ``straight``: every event lies on the line through them (0 without
    ``row``: no row check)."""
    ts = np.asarray(ts, np.float64)
    if len(ts) == 0:
        return np.array([0, np.inf, -np.inf, 0, 0, 0, 0, 1], np.float64)
    out = np.array([len(ts), ts.min(), ts.max(), 0, 0, 0, 0, 0], np.float64)
    if row is not None:
        row = np.asarray(row, np.float64)
        lo, hi = int(np.argmin(row)), int(np.argmax(row))
        out[3:7] = row[lo], ts[lo], row[hi], ts[hi]
        out[7] = float(_on_line(row, ts, *out[3:7]).all())
    return out


def _on_line(r: np.ndarray, t: np.ndarray, r0: float, t0: float, r1: float, t1: float) -> np.ndarray:
    """Whether the points (r, t) lie on the line through (r0, t0) and (r1, t1), to a millionth of
    its step per row (a single point: on it when it is that point)."""
    if r1 == r0:
        return (r == r0) & (t == t0)
    step = (t1 - t0) / (r1 - r0)
    return np.abs(t - (t0 + step * (r - r0))) <= 1e-6 * max(abs(step), 1e-9)


def time_signal(parts: list[np.ndarray] | np.ndarray) -> bool:
    """Whether timestamps can time a campaign, from the :func:`time_part` of each part of a log:
    they span at least MIN_TIME_SPAN and are not the input row numbers in disguise (an affine
    function of the row: one line through every part, which each part checks on its own events
    and the parts' end points check across them)."""
    p = np.asarray(parts, np.float64).reshape(-1, 8)
    p = p[p[:, 0] > 0]
    if p[:, 0].sum() < 2 or float(p[:, 2].max() - p[:, 1].min()) < MIN_TIME_SPAN:
        return False
    if not p[:, 7].all():
        return True
    lo, hi = int(np.argmin(p[:, 3])), int(np.argmax(p[:, 5]))
    ends = np.r_[p[:, 3], p[:, 5]], np.r_[p[:, 4], p[:, 6]]
    return not _on_line(*ends, p[lo, 3], p[lo, 4], p[hi, 5], p[hi, 6]).all()


def has_time_signal(ts: np.ndarray, row: np.ndarray | None = None) -> bool:
    """:func:`time_signal` of a whole log: its timestamps (N,) and input rows (N,) (None: the span only)."""
    return time_signal([time_part(ts, row)])


@dataclass
class Visits:
    """A log's visits (V rows, in no particular order), made per user: any partition of whole
    users makes its own visits, which :func:`assemble_adoptions` joins into the log's adoptions.

    ``user`` (V,) user index, ``item`` (V,) item code, ``ts`` / ``last`` (V,) the first / last
    event's time, ``n_events`` (V,), ``value`` (V,) mean of the values (NaN: none),
    ``first_event`` / ``last_event`` (V,) those events' positions in the log; ``event_visit`` (N,)
    each event's visit, -1 for events of users left out.
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    last: np.ndarray
    n_events: np.ndarray
    value: np.ndarray
    first_event: np.ndarray
    last_event: np.ndarray
    event_visit: np.ndarray


def user_visits(offsets: np.ndarray, item_codes: np.ndarray, ts: np.ndarray, value: np.ndarray,
                left_out: np.ndarray | None = None) -> Visits:
    """The visits of a log sorted by user then time (arrays as in :func:`build_adoptions`): a
    user's events on one item with no gap over EPISODE_GAP are one visit."""
    offsets = np.asarray(offsets, np.int64)
    n_users = len(offsets) - 1
    n_ev = np.diff(offsets)
    uix = np.repeat(np.arange(n_users, dtype=np.int64), n_ev)
    item_codes = np.asarray(item_codes, np.int64)
    ts = np.asarray(ts, np.float64)
    # events by (item, user, time): one visit's events adjacent, earliest first (every event
    # unless some users are left out: no gathered copies of the columns then)
    if left_out is None:
        order = np.lexsort((ts, uix, item_codes))
    else:
        ev = np.flatnonzero(~np.repeat(np.asarray(left_out, bool), n_ev))
        order = ev[np.lexsort((ts[ev], uix[ev], item_codes[ev]))]
        del ev
    u, it, t = uix[order], item_codes[order], ts[order]
    del uix
    start = (np.r_[True, (u[1:] != u[:-1]) | (it[1:] != it[:-1]) | (np.diff(t) > EPISODE_GAP)]
             if len(order) else np.zeros(0, bool))
    visit_of = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    last = np.r_[first[1:], len(order)] - 1
    v = np.asarray(value, np.float64)[order]
    fin = np.isfinite(v)
    vsum = np.bincount(visit_of[fin], weights=v[fin], minlength=len(first))
    vcnt = np.bincount(visit_of[fin], minlength=len(first))
    event_visit = np.full(len(ts), -1, np.int64)
    event_visit[order] = visit_of
    return Visits(user=u[first], item=it[first], ts=t[first], last=t[last], n_events=(last - first + 1).astype(np.int64),
                  value=np.where(vcnt > 0, vsum / np.maximum(vcnt, 1), np.nan), first_event=order[first],
                  last_event=order[last], event_visit=event_visit)


def assemble_adoptions(user: np.ndarray, item: np.ndarray, ts: np.ndarray, n_events: np.ndarray,
                       value: np.ndarray, *, n_items: int, user_first: np.ndarray, user_last: np.ndarray,
                       user_events: np.ndarray, timed: bool) -> tuple[Adoptions, np.ndarray]:
    """The :class:`Adoptions` of a log's visits (any order; user indices and item codes of the
    whole log), and ``order`` (V,): adoption row ``r`` is visit ``order[r]``."""
    user, item, ts = np.asarray(user, np.int64), np.asarray(item, np.int64), np.asarray(ts, np.float64)
    if len(item) and (item.min() < 0 or item.max() >= n_items):
        raise ValueError(f"item codes must lie in [0, {n_items}), got {item.min()}..{item.max()}")
    order = np.lexsort((user, ts, item))  # by item, then first time (a user's visits to an item differ in time)
    user, item, ts = user[order], item[order], ts[order]
    # the row of each (user, item) pair's first visit: its earliest
    by_pair = np.lexsort((ts, user, item))
    new = (np.r_[True, (user[by_pair][1:] != user[by_pair][:-1]) | (item[by_pair][1:] != item[by_pair][:-1])]
           if len(by_pair) else np.zeros(0, bool))
    head = by_pair[np.maximum.accumulate(np.where(new, np.arange(len(by_pair)), 0))] if len(by_pair) else by_pair
    pair_first = np.empty(len(by_pair), np.int64)
    pair_first[by_pair] = head
    ad = Adoptions(
        user=user, item=item, ts=ts, n_events=np.asarray(n_events, np.int64)[order],
        value=np.asarray(value, np.float64)[order],
        item_offsets=np.r_[0, np.cumsum(np.bincount(item, minlength=n_items))].astype(np.int64),
        pair_first=pair_first, user_first=np.asarray(user_first, np.float64),
        user_last=np.asarray(user_last, np.float64), user_events=np.asarray(user_events, np.int64), timed=bool(timed))
    return ad, order


def user_span(offsets: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U,) each user's first and last event time (0 without events) and event count."""
    offsets = np.asarray(offsets, np.int64)
    n_ev = np.diff(offsets)
    has = n_ev > 0
    first, last = np.zeros(len(n_ev)), np.zeros(len(n_ev))
    first[has] = np.asarray(ts, np.float64)[offsets[:-1][has]]
    last[has] = np.asarray(ts, np.float64)[offsets[1:][has] - 1]
    return first, last, n_ev.astype(np.int64)


def build_adoptions(offsets: np.ndarray, item_codes: np.ndarray, ts: np.ndarray, value: np.ndarray, *,
                    n_items: int) -> Adoptions:
    """Adoptions of a whole log sorted by user then time, in one piece (training: the fit's log);
    offsets (U + 1,), item_codes (N,) int in [0, n_items), ts (N,) seconds, value (N,) (NaN: none).
    Scoring builds them from partitions' visits (``parts.join_parts``), with the row check in its
    timing check; training's is the span alone, as it has always been."""
    vis = user_visits(offsets, item_codes, ts, value)
    first, last, n_ev = user_span(offsets, ts)
    return assemble_adoptions(vis.user, vis.item, vis.ts, vis.n_events, vis.value, n_items=n_items,
                              user_first=first, user_last=last, user_events=n_ev, timed=has_time_signal(ts))[0]
