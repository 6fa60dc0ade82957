"""Per-user features, two-sided: the detectors decide which direction is unusual.

Volume (number of events, span of time) is left out on purpose: heavy human users are common and
legitimate; automation shows in rate, pace and regularity instead.
"""

from __future__ import annotations

import numpy as np

from ..stage import check_is_fitted
from ..tokens import N_SPECIAL
from .events import EVENT_FEATURES
from .items import ItemStats, catalogue_order
from .neighbours import item_sets
from .seqs import Seqs, prev_occurrences, segment_sums, user_spans

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
        c = np.r_[0.0, np.cumsum(x[a:b])]  # the user's own running total (see segment_sums)
        out[u] = ((c[w:] - c[:n - w + 1]) / w).max()
    return out


def _longest_run(flag: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(U,) the longest run of consecutive True events inside each user's history."""
    out = np.zeros(len(offsets) - 1)
    for u in np.flatnonzero(segment_sums(flag.astype(np.int64), offsets) > 0):
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
    if stats.neighbours_ is None:
        return np.zeros(seqs.n_users), np.zeros(seqs.n_users), np.zeros(seqs.n_users)
    sets = item_sets(seqs, len(stats.log_count_))
    return stats.neighbours_.compare(sets, user_spans(seqs))


def user_features(seqs: Seqs, stats: ItemStats, ef: np.ndarray, event_local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, len(USER_FEATURES)) per-user features and (U, 2) best taste segment [a, b) per user.

    ``ef``: (N, len(EVENT_FEATURES)) from :func:`event_features`; ``event_local``: (N,) per-event
    local anomaly (from the event detector), used for the segment-level surprisal.
    """
    check_is_fitted(stats, ["log_count_"])
    U, off = seqs.n_users, seqs.offsets
    n_ev = np.diff(off).astype(np.float64)
    nz = np.maximum(n_ev, 1)
    uix = seqs.user_index()
    ts = seqs.ts
    gaps = np.diff(ts, prepend=ts[:1]) if len(ts) else ts
    not_first = np.ones(len(ts), bool)
    not_first[off[:-1][n_ev > 0]] = False
    lg = np.log1p(np.maximum(gaps, 0.0))
    ng = np.maximum(segment_sums(not_first.astype(float), off), 1)
    hours = np.floor(ts / 3600.0).astype(np.int64)
    new_hour = np.r_[True, (hours[1:] != hours[:-1]) | (uix[1:] != uix[:-1])] if len(ts) else np.zeros(0, bool)
    active_hours = np.maximum(segment_sums(new_hour.astype(float), off), 1)

    mean_lg = segment_sums(lg * not_first, off) / ng
    med_lg = np.zeros(U)
    regular = np.zeros(U)
    # relative to the most a history of this length can reach, so heavy users are not odd by size
    hour_ent = _entropy_by_user(uix, (np.floor(ts / 3600.0) % 24).astype(np.int64), U) / np.log(np.clip(n_ev, 2, 24))
    for u in np.flatnonzero(n_ev >= 3):
        g = lg[off[u] + 1:off[u + 1]]
        med = np.median(g)
        med_lg[u] = med
        regular[u] = np.mean(np.abs(g - med) < 0.1)
    spread = np.sqrt(np.maximum(segment_sums(lg ** 2 * not_first, off) / ng - mean_lg ** 2, 0.0))
    fast = segment_sums(((gaps < 2.0) & not_first).astype(float), off) / ng

    # item statistics over known items only (see events.known_or_user_mean)
    known = seqs.item >= N_SPECIAL
    n_known = segment_sums(known.astype(float), off)
    lc = np.where(known, stats.log_count_[seqs.item], 0.0)
    mean_lc = np.where(n_known > 0, segment_sums(lc, off) / np.maximum(n_known, 1), stats.typical_log_count_)
    std_lc = np.sqrt(np.maximum(segment_sums(lc ** 2, off) / np.maximum(n_known, 1) - np.where(n_known > 0, mean_lc, 0.0) ** 2, 0.0))
    ik = seqs.item_key
    prev = prev_occurrences(uix, ik)
    distinct = segment_sums((prev == 0).astype(float), off) / nz
    top_share = np.zeros(U)
    replay = ef[:, EVENT_FEATURES.index("replay")] > 0
    replay_share = segment_sums(replay.astype(float), off) / nz
    longest_run = _longest_run(replay, off)
    main_share = segment_sums((seqs.action == stats.main_action_).astype(float), off) / nz
    act_ent = _entropy_by_user(uix, seqs.action, U)
    # a non-main action on an item this user never touched before (e.g. purchase without a view)
    unseen_action = segment_sums(((seqs.action != stats.main_action_) & (prev == 0)).astype(float), off) / nz

    has_v = np.isfinite(seqs.value)
    v = np.nan_to_num(seqs.value)
    nv = np.maximum(segment_sums(has_v.astype(float), off), 1)
    v_mean = segment_sums(v, off) / nv
    v_std = np.sqrt(np.maximum(segment_sums(v ** 2, off) / nv - v_mean ** 2, 0.0))
    # at the training range's ends (not this batch's: a user's score must not depend on batch-mates)
    vlo, vhi = stats.value_lo_, stats.value_hi_
    extreme = has_v & ((v <= vlo) | (v >= vhi)) & (vhi > vlo)
    v_extreme = segment_sums(extreme.astype(float), off) / nv
    v_dev = segment_sums(ef[:, EVENT_FEATURES.index("value_deviation")], off) / nv
    im = stats.value_mean_[seqs.item]
    v_corr = np.zeros(U)

    s_item = segment_sums(ef[:, EVENT_FEATURES.index("item_surprisal")], off) / nz
    s_time = segment_sums((seqs.surprisal[:, 1] + seqs.surprisal[:, 2]).astype(np.float64), off) / nz
    seg_local = _rolling_max_mean(event_local, off, 8)
    # a history without known items is as coherent as a one-item history
    coherence = np.where(n_ev > 0, 1.0 - segment_sums(ef[:, EVENT_FEATURES.index("taste_distance")], off) / np.maximum(n_known, 1), 0.0)
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
            r2, s0, s1 = best_segment(np.hstack([stats.taste_[it], habits[a:b][k]]))
            shift[u] = r2
            if s1 > s0:  # back to positions in the whole history
                segments[u] = (k[s0], k[s1 - 1] + 1 if s1 < len(k) else b - a)
            novelty[u] = segment_novelty(stats.taste_[it], s0, s1)
    feats = np.stack([
        np.log(nz / active_hours), med_lg, spread,
        fast, regular, hour_ent, mean_lc, std_lc,
        distinct, top_share, replay_share, np.log1p(longest_run),
        main_share, act_ent, unseen_action,
        v_mean, v_std, v_extreme, v_dev, v_corr,
        s_item, s_time, seg_local,
        coherence, *_neighbour_features(seqs, stats),
        shift, novelty, catalogue_order(seqs, stats.id_rank_, uix),
    ], axis=1)
    return np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0), segments
