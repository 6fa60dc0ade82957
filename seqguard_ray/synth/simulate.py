"""A clean simulated e-commerce log: taste clusters, Zipf item popularity, sessions with a daily
rhythm and a view -> click -> cart -> purchase funnel, four user personas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .logstats import FUNNEL, SESSION_BREAK_S

_T0 = 1_704_067_200  # 2024-01-01 00:00:00 UTC, start of simulated logs
_DAYS = 60
_CATEGORY_NAMES = (
    "Outdoor gear", "Books", "Electronics", "Kitchen", "Toys", "Fashion", "Beauty", "Sports",
    "Garden", "Music", "Movies", "Video games", "Pet supplies", "Office", "Automotive", "Health",
    "Jewellery", "Baby", "Tools", "Groceries", "Furniture", "Art supplies", "Travel", "Software",
)
# relative activity by hour of day (UTC, before each user's own shift)
_HOUR_WEIGHTS = np.array([
    0.6, 0.35, 0.2, 0.15, 0.12, 0.15, 0.3, 0.6, 0.9, 1.0, 1.0, 1.1,
    1.3, 1.2, 1.0, 1.0, 1.1, 1.3, 1.6, 1.9, 2.1, 2.0, 1.6, 1.0,
])
_HOUR_P = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()


def simulate_clean(rng: np.random.Generator, *, n_users: int, n_items: int, events_per_user: float) -> pd.DataFrame:
    """A clean log, vectorised over all users; sorted by (user_id, ts)."""
    # catalogue: categories with Zipf popularity inside each
    n_cat = int(min(len(_CATEGORY_NAMES), n_items, max(1, round(math.sqrt(n_items) / 2))))
    item_ids = np.arange(1, n_items + 1, dtype=np.int64)
    item_cat = rng.integers(0, n_cat, n_items)
    item_cat[rng.permutation(n_items)[:n_cat]] = np.arange(n_cat)
    by_cat = np.lexsort((rng.random(n_items), item_cat))  # item indices grouped by category
    cat_sorted = item_cat[by_cat]
    cat_start = np.searchsorted(cat_sorted, np.arange(n_cat))
    cat_end = np.r_[cat_start[1:], n_items]
    rank = np.arange(n_items) - cat_start[cat_sorted]
    w = (rank + 1.0) ** -rng.uniform(0.8, 1.2, n_cat)[cat_sorted]
    cw = np.cumsum(w)
    cw_before = np.r_[0.0, cw][cat_start]
    cat_total = np.add.reduceat(w, cat_start)
    glob_cum = cat_sorted + (cw - cw_before[cat_sorted]) / cat_total[cat_sorted]  # in (c, c + 1]
    cat_pop = rng.lognormal(0.0, 0.6, n_cat)
    cat_pop /= cat_pop.sum()
    price = np.maximum(0.99, np.round(rng.uniform(8, 150, n_cat)[item_cat] * rng.lognormal(0, 0.5, n_items), 2))

    def draw_items(cats: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(glob_cum, cats + rng.random(len(cats)))
        return by_cat[np.clip(pos, cat_start[cats], cat_end[cats] - 1)]

    # users: ids, personas (0 regular, 1 multi-category explorer, 2 fast binge, 3 window shopper)
    id_space = 10 * n_users
    width = max(5, len(str(id_space - 1)))
    nums = np.sort(rng.choice(id_space, n_users, replace=False))
    user_ids = np.array([f"u{n:0{width}d}" for n in nums], dtype=object)
    persona = rng.choice(4, n_users, p=[0.78, 0.07, 0.05, 0.10])
    tz = np.rint(rng.normal(0, 1.5, n_users)).astype(int)
    owl = rng.random(n_users) < 0.06
    tz[owl] += rng.integers(7, 13, owl.sum())

    k_pref = min(6, n_cat)
    n_pref = np.where(persona == 1, rng.integers(4, 7, n_users), rng.choice([1, 2, 3], n_users, p=[0.45, 0.35, 0.2]))
    n_pref = np.minimum(n_pref, k_pref)
    gumbel = np.log(cat_pop)[None, :] + rng.gumbel(size=(n_users, n_cat))
    pref = np.argsort(-gumbel, axis=1)[:, :k_pref]  # (U, K) preferred categories, best first
    pw = rng.gamma(1.0, 1.0, (n_users, k_pref)) * (np.arange(k_pref)[None, :] < n_pref[:, None])
    pref_cum = np.cumsum(pw / pw.sum(1, keepdims=True), axis=1)
    explore = np.where(persona == 1, 0.25, 0.04)

    def draw_cats(users: np.ndarray) -> np.ndarray:
        slot = np.minimum((pref_cum[users] < rng.random(len(users))[:, None]).sum(1), k_pref - 1)
        cats = pref[users, slot]
        wander = rng.random(len(users)) < explore[users]
        cats[wander] = rng.choice(n_cat, wander.sum(), p=cat_pop)
        return cats

    # funnel propensities and activity
    p_click = np.where(persona == 3, 0.01, rng.beta(2, 7, n_users))
    p_cart = rng.beta(3, 7, n_users)
    p_buy = rng.beta(4.5, 5.5, n_users)
    depth_mean = 1 + p_click * (1 + p_cart * (1 + p_buy))
    sigma = 0.9
    n_ev = rng.lognormal(math.log(events_per_user) - sigma**2 / 2, sigma, n_users)
    n_int = np.clip(np.rint(n_ev / depth_mean), 2, 20 * events_per_user).astype(np.int64)
    gap_med = np.where(persona == 2, rng.uniform(2, 5, n_users), np.clip(rng.lognormal(math.log(25), 0.4, n_users), 6, 120))
    gap_sig = np.where(persona == 2, 0.5, rng.uniform(0.7, 1.1, n_users))
    dwell_med = np.where(persona == 2, rng.uniform(2, 5, n_users), rng.uniform(6, 20, n_users))
    sess_mean = np.where(persona == 2, rng.uniform(20, 40, n_users), rng.lognormal(math.log(6), 0.4, n_users))

    # sessions: start times over the user's active span with a daily rhythm
    n_sess = np.maximum(1, np.rint(n_int / sess_mean)).astype(np.int64)
    sess_user = np.repeat(np.arange(n_users), n_sess)
    span = rng.uniform(10, _DAYS, n_users)
    first_day = rng.uniform(0, _DAYS - span)
    day = np.floor(first_day[sess_user] + rng.random(len(sess_user)) * span[sess_user])
    hour = (rng.choice(24, len(sess_user), p=_HOUR_P) + tz[sess_user]) % 24
    start = _T0 + (day * 86400 + hour * 3600).astype(np.int64) + rng.integers(0, 3600, len(sess_user))
    start = start[np.lexsort((start, sess_user))]  # chronological within each user
    sess_off = np.r_[0, np.cumsum(n_sess)[:-1]]
    sess_cat = draw_cats(sess_user)

    # interactions: one item each, mostly from the session's category
    int_user = np.repeat(np.arange(n_users), n_int)
    local = np.sort((rng.random(len(int_user)) * n_sess[int_user]).astype(np.int64) + int_user * (n_sess.max() + 1))
    int_sess = sess_off[int_user] + local - int_user * (n_sess.max() + 1)
    cats = sess_cat[int_sess]
    switch = rng.random(len(cats)) < 0.25
    cats[switch] = draw_cats(int_user[switch])
    item = draw_items(cats)
    revisit = np.flatnonzero(rng.random(len(item)) < 0.08)
    revisit = revisit[(revisit > 0)]
    revisit = revisit[int_sess[revisit] == int_sess[revisit - 1]]
    item[revisit] = item[revisit - 1]
    c1 = rng.random(len(item)) < p_click[int_user]
    c2 = c1 & (rng.random(len(item)) < p_cart[int_user])
    c3 = c2 & (rng.random(len(item)) < p_buy[int_user])
    depth = 1 + c1.astype(np.int64) + c2 + c3

    # events: expand the funnel, time gaps inside sessions
    ev_int = np.repeat(np.arange(len(item)), depth)
    n_events = len(ev_int)
    step = np.arange(n_events) - np.repeat(np.cumsum(depth) - depth, depth)
    ev_user = int_user[ev_int]
    ev_sess = int_sess[ev_int]
    ev_item = item[ev_int]
    browse = rng.lognormal(np.log(gap_med[ev_user]), gap_sig[ev_user])
    funnel = rng.lognormal(np.log(np.array([1.0, 8.0, 15.0, 40.0]))[step], 0.6)
    gap = np.clip(np.rint(np.where(step == 0, browse, funnel)), 1, SESSION_BREAK_S - 1).astype(np.int64)
    first = np.r_[True, ev_sess[1:] != ev_sess[:-1]]
    gap[first] = 0
    cs = np.cumsum(gap)
    first_idx = np.maximum.accumulate(np.where(first, np.arange(n_events), 0))
    ts = start[ev_sess] + cs - cs[first_idx]

    dwell = rng.lognormal(np.log(np.where(step == 0, dwell_med[ev_user], 45.0)), np.where(step == 0, 0.9, 0.8))
    value = np.where(step >= 2, price[ev_item], np.round(np.maximum(dwell, 0.5), 1))

    order = np.lexsort((ts, ev_user))
    cat_names = np.array(_CATEGORY_NAMES[:n_cat], dtype=object)
    titles = np.array([f"Item {i} \u2014 {cat_names[c]}" for i, c in zip(item_ids, item_cat)], dtype=object)
    ev_item = ev_item[order]
    return pd.DataFrame({
        "user_id": user_ids[ev_user[order]],
        "item_id": item_ids[ev_item],
        "ts": ts[order].astype(np.int64),
        "action": np.array(FUNNEL, dtype=object)[step[order]],
        "value": value[order].astype(np.float64),
        "title": titles[ev_item],
        "category": cat_names[item_cat[ev_item]],
    })
