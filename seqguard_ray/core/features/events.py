"""Per-event features: every column oriented so that larger = more anomalous."""

from __future__ import annotations

import numpy as np

from ..stage import check_is_fitted
from ..tokens import N_SPECIAL
from .items import ItemStats
from .seqs import Seqs, prev_index, prev_occurrences, segment_sums

REPLAY_N = 3          # an event sequence of this many items seen before in the same history is a replay ...
REPLAY_GAP_S = 5.0    # ... when its gaps match the earlier ones within this many seconds
REPLAY_GAP_SHARE = 0.25  # ... or within this share of the gap (replayed traffic keeps its timing)
BURST_WINDOW_S = 60.0  # events within this many seconds count toward local density

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


def known_or_user_mean(x: np.ndarray, known: np.ndarray, offsets: np.ndarray, fallback: float) -> np.ndarray:
    """(N,) x, where events on unknown items (``known`` False) take the mean of their user's known
    events (``fallback`` for a user with none). Nothing is known of an item outside the vocabulary:
    it may be new (catalogue churn) rather than rare, so its statistics count as missing, not as
    the most extreme value there is."""
    if known.all():
        return x
    k = known.astype(np.float64)
    n = segment_sums(k, offsets)
    mean = np.where(n > 0, segment_sums(np.where(known, x, 0.0), offsets) / np.maximum(n, 1), fallback)
    return np.where(known, x, np.repeat(mean, np.diff(offsets)))


def item_surprisal(seqs: Seqs, stats: ItemStats) -> np.ndarray:
    """(N,) the encoder's item surprisal; events on unknown items take their user's mean over known
    ones (see :func:`known_or_user_mean`; a user without known items: the surprisal of a uniform
    guess over the catalogue). The unknown bucket's own probability says how many items were rare in
    training, not how odd a new item is."""
    known = seqs.item >= N_SPECIAL
    x = seqs.surprisal[:, 0].astype(np.float64)
    return known_or_user_mean(x, known, seqs.offsets, float(np.log(max(len(stats.log_count_) - N_SPECIAL, 2))))


def user_profiles(seqs: Seqs, stats: ItemStats) -> np.ndarray:
    """(U, TASTE_DIM) unit mean taste vector of each user's known items."""
    prof = segment_sums(stats.taste_[seqs.item].astype(np.float64), seqs.offsets)
    n = np.linalg.norm(prof, axis=1, keepdims=True)
    return prof / np.maximum(n, 1e-12)


def event_features(seqs: Seqs, stats: ItemStats) -> np.ndarray:
    """(N, len(EVENT_FEATURES)) per-event features of ``seqs`` against fitted item ``stats``."""
    check_is_fitted(stats, ["log_count_"])
    n = len(seqs.ts)
    uix = seqs.user_index()
    # events of the same user within +-BURST_WINDOW_S
    key = uix.astype(np.float64) * 1e12 + seqs.ts
    lo = np.searchsorted(key, key - BURST_WINDOW_S, side="left")
    hi = np.searchsorted(key, key + BURST_WINDOW_S, side="right")
    burst = np.log(hi - lo)
    known = seqs.item >= N_SPECIAL
    rarity = -known_or_user_mean(stats.log_count_[seqs.item], known, seqs.offsets, stats.typical_log_count_)
    prof = user_profiles(seqs, stats)[uix]
    taste = np.where(known, 1.0 - np.einsum("nd,nd->n", stats.taste_[seqs.item], prof), 0.0)
    ik = seqs.item_key
    ik = ik - min(int(ik.min(initial=0)), 0)  # >= 0: -1 below stands for "no event"
    repeat = np.log1p(prev_occurrences(uix, ik))
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
    earlier = prev_index(uix, gram)
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
    vdev = np.where(has_v, np.abs(np.nan_to_num(seqs.value) - stats.value_mean_[seqs.item]) / stats.value_std_, 0.0)
    vdev = known_or_user_mean(vdev, known | ~has_v, seqs.offsets, 0.0)
    out = np.stack([
        item_surprisal(seqs, stats), seqs.surprisal[:, 1] + seqs.surprisal[:, 2], burst, rarity, taste, repeat, replay, vdev,
    ], axis=1)
    return out.astype(np.float64)
