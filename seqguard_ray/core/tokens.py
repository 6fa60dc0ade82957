"""Events -> token ids: item vocabulary (+ unknown bucket), action ids, log-bucketed time gaps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass
class Vocab:
    """Item and action vocabularies learned from training data.

    Items seen fewer than ``min_count`` times share the unknown bucket, so that bucket is
    trained and new items at scoring time get a meaningful id.
    """

    items: list[str]          # item strings in id order, ids start at N_SPECIAL
    actions: list[str]        # action strings in id order, ids start at N_SPECIAL
    item_counts: np.ndarray   # (len(items),) training count of each item

    def __post_init__(self) -> None:
        self._item_ix = {s: i + N_SPECIAL for i, s in enumerate(self.items)}
        self._action_ix = {s: i + N_SPECIAL for i, s in enumerate(self.actions)}

    @classmethod
    def build(cls, item: np.ndarray, action: np.ndarray, *, min_count: int = 2, max_items: int = 200_000) -> Vocab:
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        uniq, counts = np.unique(item.astype(str), return_counts=True)
        keep = counts >= min_count
        uniq, counts = uniq[keep], counts[keep]
        order = np.argsort(-counts, kind="stable")[:max_items]
        actions = sorted(set(action.astype(str).tolist()))
        return cls(uniq[order].tolist(), actions, counts[order].astype(np.int64))

    @property
    def n_items(self) -> int:
        """Size of the item id space, specials included."""
        return len(self.items) + N_SPECIAL

    @property
    def n_actions(self) -> int:
        return len(self.actions) + N_SPECIAL

    def item_ids(self, item: np.ndarray) -> np.ndarray:
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
        get = self._action_ix.get
        return np.fromiter((get(s, UNK) for s in action), dtype=np.int64, count=len(action))

    def to_dict(self) -> dict:
        return {"items": self.items, "actions": self.actions, "item_counts": self.item_counts.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        return cls(list(d["items"]), list(d["actions"]), np.asarray(d["item_counts"], dtype=np.int64))


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
