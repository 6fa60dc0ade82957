"""Events -> token ids: the item vocabulary (+ unknown bucket) and action ids (:class:`Vocab`),
log-bucketed time gaps, and the encoder windows a long history is cut into."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .stage import check_is_fitted

PAD, MASK, UNK = 0, 1, 2
N_SPECIAL = 3
# Gap bucket 1 is "first event of the sequence"; bucket b >= 2 holds gaps in [2^(b-3), 2^(b-2)) s.
N_GAP_BUCKETS = 28


def gap_buckets(ts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N,) log2-bucketed seconds since the user's previous event; first events get bucket N_SPECIAL-2."""
    gaps = np.diff(ts, prepend=ts[:1])
    b = 2 + np.floor(np.log2(1.0 + np.maximum(gaps, 0.0))).astype(np.int64)
    b = np.clip(b, 2, N_GAP_BUCKETS - 1)
    b[offsets[:-1]] = 1
    return b


def count_items(item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K,) the distinct item strings, sorted, and (K,) how often each occurs. The counts of a log's
    parts (Ray blocks), added up per item, are the whole log's (see :meth:`Vocab.fit_counts`)."""
    return np.unique(np.asarray(item).astype(str), return_counts=True)


class Vocab:
    """The item and action vocabularies: fit on a training log, transform events to token ids.

    Items seen fewer than ``min_count`` times share the unknown bucket, so that bucket is trained
    and new items at scoring time get a meaningful id.

    Parameters: ``min_count`` (int, default 2), ``max_items`` (int, default 200_000: the most
    frequent items kept). Fitted: ``items_`` (item strings in id order, ids from N_SPECIAL),
    ``actions_`` (action strings in id order, ids from N_SPECIAL), ``item_counts_`` (training
    count of each item).
    """

    def __init__(self, *, min_count: int = 2, max_items: int = 200_000) -> None:
        self.min_count = min_count
        self.max_items = max_items

    def fit(self, item: np.ndarray, action: np.ndarray) -> Vocab:
        """item (N,), action (N,): a training log's events (any types; compared as strings)."""
        return self.fit_counts(*count_items(item), action)

    def fit_counts(self, uniq: np.ndarray, counts: np.ndarray, action: np.ndarray) -> Vocab:
        """Fit from item counts: ``uniq`` (K,) distinct item strings, sorted, seen ``counts`` (K,)
        times, and the actions in ``action``; what :meth:`fit` learns from a log whose
        :func:`count_items` they are (e.g. the counts of a log's Ray blocks, added up)."""
        for name in ("min_count", "max_items"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be >= 1, got {v!r}")
        uniq, counts = np.asarray(uniq), np.asarray(counts)
        keep = counts >= self.min_count
        uniq, counts = uniq[keep], counts[keep]
        order = np.argsort(-counts, kind="stable")[: self.max_items]
        self.items_ = uniq[order].tolist()
        self.actions_ = sorted(set(np.asarray(action).astype(str).tolist()))
        self.item_counts_ = counts[order].astype(np.int64)
        self._index()
        return self

    def _index(self) -> None:
        self._item_ix = {s: i + N_SPECIAL for i, s in enumerate(self.items_)}
        self._action_ix = {s: i + N_SPECIAL for i, s in enumerate(self.actions_)}

    @property
    def n_items(self) -> int:
        """Size of the item id space, specials included."""
        check_is_fitted(self, ["items_"])
        return len(self.items_) + N_SPECIAL

    @property
    def n_actions(self) -> int:
        """Size of the action id space, specials included."""
        check_is_fitted(self, ["actions_"])
        return len(self.actions_) + N_SPECIAL

    def item_ids(self, item: np.ndarray) -> np.ndarray:
        """(N,) int64 vocab ids; UNK for items outside the vocabulary."""
        check_is_fitted(self, ["items_"])
        get = self._item_ix.get
        return np.fromiter((get(s, UNK) for s in item), dtype=np.int64, count=len(item))

    @staticmethod
    def item_keys(item: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(N,) ``ids`` (from :meth:`item_ids`) with each distinct unknown item given its own
        negative key (-1, -2, ...): the unknown bucket holds many items, and a history of new items
        is not one item repeated."""
        keys = ids.copy()
        unk = ids == UNK
        if unk.any():
            keys[unk] = -1 - np.unique(np.asarray(item)[unk], return_inverse=True)[1].ravel()
        return keys

    def action_ids(self, action: np.ndarray) -> np.ndarray:
        """(N,) int64 action ids; UNK for actions the vocabulary never saw."""
        check_is_fitted(self, ["actions_"])
        get = self._action_ix.get
        return np.fromiter((get(s, UNK) for s in action), dtype=np.int64, count=len(action))

    def transform(self, item: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Events -> (N,) item ids, (N,) action ids and (N,) item keys (see :meth:`item_keys`)."""
        ids = self.item_ids(item)
        return ids, self.action_ids(action), self.item_keys(item, ids)

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Array ``item_counts``; meta ``items``, ``actions`` and the parameters."""
        check_is_fitted(self, ["items_"])
        return ({"item_counts": self.item_counts_},
                {"items": self.items_, "actions": self.actions_, "min_count": self.min_count, "max_items": self.max_items})

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Vocab:
        v = cls(min_count=meta.get("min_count", 2), max_items=meta.get("max_items", 200_000))
        v.items_, v.actions_ = list(meta["items"]), list(meta["actions"])
        v.item_counts_ = np.asarray(arrays["item_counts"], dtype=np.int64)
        if v.item_counts_.shape != (len(v.items_),):
            raise ValueError(f"the vocabulary has {len(v.items_)} items and {v.item_counts_.shape} counts")
        v._index()
        return v


def windows(offsets: np.ndarray, *, max_len: int, context: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each user's events into windows of at most ``max_len`` events.

    Consecutive windows of a long history overlap by ``context`` events so every event is scored
    with context on both sides; each event is *owned* by exactly one window.

    Returns ``starts`` (W,), ``lengths`` (W,) and ``own_from`` (W,): the window covers events
    ``starts[w] : starts[w] + lengths[w]`` and owns those from offset ``own_from[w]`` on, up to
    where the next window of the same user starts owning.
    """
    if not 0 <= 2 * context < max_len:
        raise ValueError(f"need 0 <= 2*context < max_len, got context={context}, max_len={max_len}")
    starts, lengths, own = [], [], []
    step = max_len - 2 * context
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        n = b - a
        if n <= max_len:
            starts.append(a), lengths.append(n), own.append(0)
            continue
        s = 0
        while True:
            e = min(s + max_len, n)
            if e == n:
                s = max(0, n - max_len)
            starts.append(a + s), lengths.append(min(max_len, n - s))
            own.append(0 if s == 0 else context)
            if e == n:
                break
            s += step
    return np.asarray(starts, np.int64), np.asarray(lengths, np.int64), np.asarray(own, np.int64)


def owner_positions(starts: np.ndarray, lengths: np.ndarray, own_from: np.ndarray, n_events: int) -> tuple[np.ndarray, np.ndarray]:
    """For each event, the (window, position) that owns its score. Later windows win overlaps."""
    win = np.empty(n_events, np.int64)
    pos = np.empty(n_events, np.int64)
    for w in range(len(starts)):
        a = starts[w] + own_from[w]
        b = starts[w] + lengths[w]
        win[a:b] = w
        pos[a:b] = np.arange(own_from[w], lengths[w])
    return win, pos
