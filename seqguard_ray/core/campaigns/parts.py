"""The campaign stage over a log given as partitions of whole users.

Each partition gives what the stage needs of it (:func:`visit_part`): its users (id, score, first
and last time, events), its distinct items, its visits (a user's events on an item, EPISODE_GAP
apart at most: one row per visit, not per event) and the two facts of its timestamps the timing
check needs (:func:`~.adoptions.time_part`). :func:`join_parts` joins them into the log's
adoptions with the whole log's user and item codes, which is all the item-side tests, the
grouping and the tables read. The in-process engine is one partition (the whole log), the Ray
batch path one per block of users (runtime/ray/campaigns.py), so both run this one code.

What a partition hands over is O(its users + items + visits), not O(events): the event-sized
work (the log, the sort of its events into visits) stays with the partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..allowlist import AllowList
from ..schema import EventLog
from .adoptions import Adoptions, assemble_adoptions, time_part, time_signal, user_span, user_visits


def item_codes(item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 code of each event's item id, codes in sorted id order, and (I,) each item's
    first event: ``np.unique(item, return_index=True, return_inverse=True)``'s, from a hash of
    the ids and a sort of the distinct ones only (a log's N ids repeat: sorting them all as
    Python strings was most of the campaign pass's first second, and 24 B/event)."""
    raw, uniques = pd.factorize(np.asarray(item, dtype=object), use_na_sentinel=False)
    raw = raw.astype(np.int64, copy=False)
    # factorize numbers ids in order of first appearance: a new code is one above all before it
    first = np.flatnonzero(np.r_[True, raw[1:] > np.maximum.accumulate(raw)[:-1]]) if len(raw) else raw
    order = np.argsort(np.asarray(uniques, dtype=object), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank[raw], first[order]


@dataclass
class VisitPart:
    """What one partition of whole users gives the campaign stage (k users, j items, V visits).

    - ``users`` (k,) ids as text (allow-listed ones too: they count as active users, but have no
      visits); ``score``, ``first``, ``last`` (k,) float64; ``events`` (k,) int64; ``first_ts`` (k,)
      the input ``ts`` of each user's first event (input dtype)
    - ``items`` (j,) its distinct item ids as text, sorted; ``item_values`` (j,) their input values
    - visits, aligned (V,): ``v_user`` index into ``users``, ``v_item`` index into ``items``,
      ``v_ts`` / ``v_last`` first / last event time, ``v_events``, ``v_value`` (mean; NaN: none),
      ``v_row`` the input row of the first event (a visit's key), ``v_ts_in`` / ``v_last_in`` the
      input ``ts`` of its first / last event
    - ``time``: :func:`~.adoptions.time_part` of its events (left-out users' aside)
    """

    users: np.ndarray
    score: np.ndarray
    first: np.ndarray
    last: np.ndarray
    events: np.ndarray
    first_ts: pd.Series
    items: np.ndarray
    item_values: pd.Series
    v_user: np.ndarray
    v_item: np.ndarray
    v_ts: np.ndarray
    v_last: np.ndarray
    v_events: np.ndarray
    v_value: np.ndarray
    v_row: np.ndarray
    v_ts_in: pd.Series
    v_last_in: pd.Series
    time: np.ndarray


def visit_part(lg: EventLog, user_score: np.ndarray, allow: AllowList | None = None) -> VisitPart:
    """The :class:`VisitPart` of a log of whole users (``lg.frame["_row"]`` its input rows) and
    its users' scores (U,)."""
    codes, item_first = item_codes(lg.item)
    left_out = allow.user_mask(lg.users) if allow else np.zeros(lg.n_users, bool)
    vis = user_visits(lg.offsets, codes, lg.ts, lg.value, left_out if left_out.any() else None)
    first, last, events = user_span(lg.offsets, lg.ts)
    rows = lg.frame["_row"].to_numpy()
    # the allowed users' events out of the timing check (without any: views, no copies)
    keep = ~np.repeat(left_out, np.diff(lg.offsets)) if left_out.any() else slice(None)
    ts_in = lg.frame["ts"]
    return VisitPart(
        users=np.asarray(lg.users, dtype=object), score=np.asarray(user_score, np.float64), first=first, last=last,
        events=events, first_ts=ts_in.iloc[lg.offsets[:-1]].reset_index(drop=True),
        items=np.asarray(lg.item[item_first], dtype=object),
        item_values=lg.frame["item_id"].iloc[item_first].reset_index(drop=True),
        v_user=vis.user, v_item=vis.item, v_ts=vis.ts, v_last=vis.last, v_events=vis.n_events, v_value=vis.value,
        v_row=rows[vis.first_event], v_ts_in=ts_in.iloc[vis.first_event].reset_index(drop=True),
        v_last_in=ts_in.iloc[vis.last_event].reset_index(drop=True),
        time=time_part(lg.ts[keep], rows[keep]),
    )


@dataclass
class Joined:
    """A log's partitions joined (:func:`join_parts`): U users in id order, I items in id order,
    P adoptions (``ad``); adoption row ``r`` is visit ``by[r]`` of the parts' visits laid end to
    end (part ``k``'s from ``base[k]``), whose key and input times :meth:`visits_of` and
    :meth:`input_ts` read from the parts."""

    users: np.ndarray        # (U,) ids as text, sorted
    user_score: np.ndarray   # (U,)
    first_ts: pd.Series      # (U,) input ts of each user's first event
    item_values: pd.Series   # (I,) input values
    allowed_items: np.ndarray  # (I,) bool
    ad: Adoptions
    by: np.ndarray           # (P,)
    base: np.ndarray         # (parts + 1,)
    parts: list[VisitPart]   # what join_parts left of them: v_row, v_last, v_ts_in, v_last_in

    def _where(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = self.by[np.asarray(rows, np.int64)]
        k = np.searchsorted(self.base, v, side="right") - 1
        return k, v - self.base[k]

    def visits_of(self, rows: np.ndarray, name: str) -> np.ndarray:
        """(len(rows),) field ``name`` (``v_row``, ``v_last``) of the visits of adoption rows ``rows``."""
        k, i = self._where(rows)
        out = np.empty(len(k), getattr(self.parts[0], name).dtype)
        for kk in np.unique(k):
            out[k == kk] = getattr(self.parts[kk], name)[i[k == kk]]
        return out

    def input_ts(self, row: int, name: str):
        """The input ``ts`` (``v_ts_in``: first event, ``v_last_in``: last) of adoption row ``row``'s visit."""
        k, i = self._where(np.array([row]))
        return getattr(self.parts[k[0]], name).iloc[i[0]]


def _concat(series: list[pd.Series]) -> pd.Series:
    return pd.concat(series, ignore_index=True) if series else pd.Series([], dtype=object)


def join_parts(parts: list[VisitPart], allow: AllowList | None = None) -> Joined:
    """The whole log's adoptions from its partitions' visits (each user in one partition). The
    parts are consumed: their visits' columns are released as they are joined, all but the four
    :class:`Joined` reads back for the few visits the result names."""
    parts = [p for p in parts if len(p.users)]
    if not parts:
        raise ValueError("the campaign stage needs a log with at least one user")
    ids = np.concatenate([p.users for p in parts])
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        dup = ids[1:][ids[1:] == ids[:-1]][0]
        raise ValueError(f"user {dup!r} is in more than one partition: each partition must hold whole users")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    cat = {k: np.concatenate([getattr(p, k) for p in parts])[order]
           for k in ("score", "first", "last", "events")}
    first_ts = _concat([p.first_ts for p in parts]).iloc[order].reset_index(drop=True)
    all_items = np.concatenate([p.items for p in parts])
    codes, item_first = item_codes(all_items)
    item_values = _concat([p.item_values for p in parts]).iloc[item_first].reset_index(drop=True)
    user_base = np.cumsum([0] + [len(p.users) for p in parts])
    item_base = np.cumsum([0] + [len(p.items) for p in parts])
    v_user = np.concatenate([rank[user_base[k] + p.v_user] for k, p in enumerate(parts)])
    v_item = np.concatenate([codes[item_base[k] + p.v_item] for k, p in enumerate(parts)])
    cols = {name: np.concatenate([getattr(p, name) for p in parts]) for name in ("v_ts", "v_events", "v_value")}
    for p in parts:  # consumed: the joined copies replace them
        p.v_user = p.v_item = p.v_ts = p.v_events = p.v_value = None
    ad, by = assemble_adoptions(v_user, v_item, cols.pop("v_ts"), cols.pop("v_events"), cols.pop("v_value"),
                                n_items=len(item_first), user_first=cat["first"], user_last=cat["last"],
                                user_events=cat["events"], timed=time_signal([p.time for p in parts]))
    text = np.asarray(all_items[item_first], dtype=object)
    return Joined(users=ids, user_score=cat["score"], first_ts=first_ts, item_values=item_values,
                  allowed_items=allow.item_mask(text) if allow else np.zeros(len(text), bool), ad=ad, by=by,
                  base=np.cumsum([0] + [len(p.v_row) for p in parts]), parts=parts)
