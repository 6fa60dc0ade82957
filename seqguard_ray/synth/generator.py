"""Seeded demo data with ground truth: a realistic clean behaviour log plus injected attacks.

``generate`` simulates a clean e-commerce log (taste clusters, Zipf item popularity, sessions with
a daily rhythm, a view -> click -> cart -> purchase funnel) and then calls ``inject_attacks``.
``inject_attacks`` works on any clean log with columns user_id, item_id, ts, action, value
(e.g. MovieLens ratings): it learns item popularity, values, actions, timing and categories from
the log itself so that injected events look like the log they are injected into.

Every injected event is labelled (``LabeledEvents.event_injected``) and every user has a type
(``LabeledEvents.user_type``: an attack type name or ``"normal"``).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

NORMAL = "normal"
# attack types that add new (fake) users: all their events are injected
FAKE_USER_TYPES = (
    "bot", "shilling_random", "shilling_average", "shilling_bandwagon", "segment", "love_hate", "slow_bot",
    "account_copy",
)
# attack types that alter real users' histories: some, not all, of their events are injected
PARTIAL_TYPES = ("click_farm", "takeover", "replay", "mid_takeover")
# attack types left out of the default mix, to test that detectors generalise
HELD_OUT_TYPES = ("segment", "love_hate", "slow_bot", "mid_takeover", "account_copy")

CORE_COLUMNS = ("user_id", "item_id", "ts", "action", "value")

_T0 = 1_704_067_200  # 2024-01-01 00:00:00 UTC, start of simulated logs
_DAYS = 60
_SESSION_BREAK_S = 1800  # a gap this long (or longer) starts a new session
_FUNNEL = ("view", "click", "cart", "purchase")
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


@dataclass
class LabeledEvents:
    """A behaviour log with ground truth.

    - ``events``: one row per event, columns user_id (str), item_id (int64), ts (int64 unix
      seconds), action (str), value (float64), plus optional item text (title, category);
      sorted by (user_id, ts), RangeIndex.
    - ``event_injected``: (n_events,) bool, True where an attack injected the event.
    - ``user_type``: index user_id, value an attack type name or ``"normal"``, for every user.
    - ``target_items``: item ids pushed or nuked by attacks (sorted, unique, int64).
    """

    events: pd.DataFrame
    event_injected: np.ndarray
    user_type: pd.Series
    target_items: np.ndarray

    @property
    def user_is_attacked(self) -> pd.Series:
        """Bool per user (index user_id): True if the user is fake or was attacked."""
        return self.user_type != NORMAL


@dataclass(frozen=True)
class AttackMix:
    """How much of each attack to inject: a fraction of the clean log's user count, per type.

    A positive fraction injects at least one attack. Fake-profile types add new users; partial
    types (click_farm, takeover, replay, mid_takeover) alter distinct real users.
    """

    bot: float = 0.02  # crawler bots: new users, very regular fast gaps, breadth-first over the catalogue, views only
    click_farm: float = 0.02  # bursts of clicks/carts on 1-3 target items inside real users' histories
    shilling_random: float = 0.01  # fake profiles: targets at max value + random fillers with random values
    shilling_average: float = 0.01  # fake profiles: fillers valued near each item's mean value
    shilling_bandwagon: float = 0.01  # fake profiles: most popular items at high values + targets
    takeover: float = 0.02  # a real user's tail (last 20-50%) replaced or extended by another taste and timing
    replay: float = 0.02  # a segment of a real user's own history copied later in time
    # held-out types (default 0): to test that detectors generalise to attacks they were not tuned on
    segment: float = 0.0  # fake profiles rating one category highly plus targets
    love_hate: float = 0.0  # nuke: targets at min value, fillers at max value
    slow_bot: float = 0.0  # bot with human-looking lognormal gaps but uniform random items over the catalogue
    mid_takeover: float = 0.0  # an intruder uses the account in a long gap mid-history, then the owner returns
    account_copy: float = 0.0  # replayed traffic: a new account replays 60-100% of a real user's history, later

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"AttackMix.{f.name} must be a number >= 0, got {v!r}")
            if not math.isfinite(float(v)) or v < 0:
                raise ValueError(f"AttackMix.{f.name} must be a finite number >= 0, got {v!r}")

    @classmethod
    def none(cls) -> AttackMix:
        """A mix that injects nothing."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    @classmethod
    def only(cls, attack: str, fraction: float) -> AttackMix:
        """A mix with one attack type at ``fraction`` and every other type at 0."""
        if attack not in ATTACK_TYPES:
            raise ValueError(f"attack must be one of {ATTACK_TYPES}, got {attack!r}")
        return cls(**{f.name: (fraction if f.name == attack else 0.0) for f in fields(cls)})

    @classmethod
    def all(cls, fraction: float = 0.02) -> AttackMix:
        """Every attack type, held-out ones included, at ``fraction``."""
        return cls(**{f.name: fraction for f in fields(cls)})


ATTACK_TYPES = tuple(f.name for f in fields(AttackMix))
# coarse anomaly family of each user type (the repair policy's vocabulary)
ATTACK_FAMILY = {
    NORMAL: "normal", "bot": "bot", "slow_bot": "bot", "click_farm": "injection",
    "shilling_random": "shilling", "shilling_average": "shilling", "shilling_bandwagon": "shilling",
    "segment": "shilling", "love_hate": "shilling", "takeover": "takeover", "mid_takeover": "takeover",
    "replay": "replay", "account_copy": "replay",
}


# --------------------------------------------------------------------------------------------
# public functions


def generate(
    *,
    n_users: int = 1000,
    n_items: int = 2000,
    events_per_user: float = 80.0,
    mix: AttackMix = AttackMix(),
    seed: int = 0,
) -> LabeledEvents:
    """Simulate a clean ~60-day e-commerce log of ``n_users`` users, then inject ``mix`` attacks.

    Actions are view/click/cart/purchase; ``value`` is dwell seconds (view, click) or the item
    price (cart, purchase); items carry ``title`` and ``category``.
    """
    _check_int("n_users", n_users, 1)
    _check_int("n_items", n_items, 1)
    if isinstance(events_per_user, bool) or not isinstance(events_per_user, (int, float, np.integer, np.floating)) \
            or not math.isfinite(events_per_user) or events_per_user < 1:
        raise ValueError(f"events_per_user must be a finite number >= 1, got {events_per_user!r}")
    if not isinstance(mix, AttackMix):
        raise ValueError(f"mix must be an AttackMix, got {type(mix).__name__}")
    _check_int("seed", seed, 0)
    rng = np.random.default_rng([seed, 0x5EED])
    clean = _simulate_clean(rng, n_users=n_users, n_items=n_items, events_per_user=float(events_per_user))
    log.info("simulated clean log: %d users, %d items, %d events", n_users, n_items, len(clean))
    return inject_attacks(clean, mix=mix, seed=seed)


def inject_attacks(
    events: pd.DataFrame,
    *,
    mix: AttackMix = AttackMix(),
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    actions: tuple[str, ...] | None = None,
) -> LabeledEvents:
    """Inject ``mix`` attacks into a clean log (columns user_id, item_id, ts, action, value).

    Item popularity, item mean values, value range, actions, timing and categories (the
    ``category`` column, else co-occurrence clusters) are learned from ``events``.
    ``value_range`` bounds injected values (default: the log's min and max); ``actions`` is the
    vocabulary injected events may use, weakest first (default: the log's actions; a known
    view/click/cart/purchase funnel keeps its order, others go from most to least frequent).
    Injected timestamps lie within the log's time range. Same seed, same output.
    """
    if not isinstance(mix, AttackMix):
        raise ValueError(f"mix must be an AttackMix, got {type(mix).__name__}")
    _check_int("seed", seed, 0)
    if value_range is not None:
        try:
            vlo, vhi = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise ValueError(f"value_range must be a (low, high) pair of numbers, got {value_range!r}") from None
        if not (math.isfinite(vlo) and math.isfinite(vhi) and vlo <= vhi):
            raise ValueError(f"value_range must be finite with low <= high, got {value_range!r}")
    if actions is not None and (
        isinstance(actions, str) or not isinstance(actions, (tuple, list)) or not actions
        or not all(isinstance(a, str) and a for a in actions) or len(set(actions)) != len(actions)
    ):
        raise ValueError(f"actions must be a non-empty tuple of distinct non-empty strings, got {actions!r}")
    clean = _normalize(events)
    rng = np.random.default_rng(seed)
    st = _LogStats.build(clean, rng=rng, value_range=value_range, actions=actions)
    inj = _Injector(st, rng)
    inj.run(mix)
    return inj.assemble()


def write_events(events: pd.DataFrame, path: str | Path) -> None:
    """Write ``events`` to ``path`` as Parquet (.parquet/.pq), CSV (.csv) or JSON lines (.jsonl/.json)."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".jsonl", ".json"):
        raise ValueError(f"path must end in .parquet, .pq, .csv, .jsonl or .json, got {str(path)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".parquet", ".pq"):
        events.to_parquet(p, index=False)
    elif suffix == ".csv":
        events.to_csv(p, index=False)
    else:
        events.to_json(p, orient="records", lines=True, force_ascii=False)


# --------------------------------------------------------------------------------------------
# clean simulation


def _simulate_clean(rng: np.random.Generator, *, n_users: int, n_items: int, events_per_user: float) -> pd.DataFrame:
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
    gap = np.clip(np.rint(np.where(step == 0, browse, funnel)), 1, _SESSION_BREAK_S - 1).astype(np.int64)
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
        "action": np.array(_FUNNEL, dtype=object)[step[order]],
        "value": value[order].astype(np.float64),
        "title": titles[ev_item],
        "category": cat_names[item_cat[ev_item]],
    })


# --------------------------------------------------------------------------------------------
# what a log looks like


def _check_int(name: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


def _normalize(events: pd.DataFrame) -> pd.DataFrame:
    """Validated copy of a clean log with core dtypes, sorted by (user_id, ts), RangeIndex."""
    if not isinstance(events, pd.DataFrame):
        raise ValueError(f"events must be a pandas DataFrame, got {type(events).__name__}")
    missing = [c for c in CORE_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events lacks column(s) {missing}; needs {list(CORE_COLUMNS)}")
    if len(events) == 0:
        raise ValueError("events holds no rows")
    df = events.reset_index(drop=True).copy()
    for c in ("user_id", "item_id", "ts", "action"):
        if df[c].isna().any():
            raise ValueError(f"events.{c} has {int(df[c].isna().sum())} null value(s)")
    df["user_id"] = df["user_id"].astype(str)
    df["action"] = df["action"].astype(str)
    if not pd.api.types.is_integer_dtype(df["item_id"]):
        item = pd.to_numeric(df["item_id"], errors="coerce")
        if item.isna().any() or not np.all(np.mod(item.to_numpy(np.float64), 1) == 0):
            raise ValueError("events.item_id must hold integers")
        df["item_id"] = item
    df["item_id"] = df["item_id"].astype(np.int64)
    ts = df["ts"]
    if pd.api.types.is_datetime64_any_dtype(ts):
        ts = ts.dt.tz_localize(None) if getattr(ts.dt, "tz", None) is not None else ts
        df["ts"] = ts.astype("datetime64[s]").astype(np.int64)
    else:
        tsn = pd.to_numeric(ts, errors="coerce")
        if tsn.isna().any():
            raise ValueError("events.ts must hold unix seconds or timestamps")
        df["ts"] = np.rint(tsn.to_numpy(np.float64)).astype(np.int64)
    value = pd.to_numeric(df["value"], errors="coerce")
    if value.isna().sum() > df["value"].isna().sum():
        raise ValueError("events.value must hold numbers")
    df["value"] = value.astype(np.float64)
    codes, _ = pd.factorize(df["user_id"], sort=True)
    order = np.lexsort((np.arange(len(df)), df["ts"].to_numpy(), codes))
    return df.take(order).reset_index(drop=True)


@dataclass
class _LogStats:
    """What injected events need to know about a clean log (sorted by user, ts)."""

    df: pd.DataFrame
    user_codes: np.ndarray  # (N,) index into users
    users: np.ndarray  # (U,) sorted user id strings
    offsets: np.ndarray  # (U + 1,) rows of user u are offsets[u]:offsets[u+1]
    ts: np.ndarray  # (N,) int64
    item_idx: np.ndarray  # (N,) index into items
    row_act: np.ndarray  # (N,) index of each row's action in ``actions``, -1 if outside it
    value: np.ndarray  # (N,) float64
    items: np.ndarray  # (I,) sorted item ids
    pop: np.ndarray  # (I,) event count per item
    item_cat: np.ndarray  # (I,) category code per item
    cat_items: list  # per category: (item indices, popularity probabilities)
    cat_p: np.ndarray  # (C,) share of events per category
    actions: tuple  # vocabulary for injected events, weakest first
    action_p: np.ndarray  # (A,) frequency of each action
    cont: np.ndarray  # (A - 1,) P(next funnel step | this step)
    act_vals: list  # per action: sorted finite values seen
    act_mean: np.ndarray  # (A,) mean value per action
    act_std: np.ndarray  # (A,) value std per action
    discrete: np.ndarray  # (A,) bool: few distinct values (ratings)
    step: np.ndarray  # (A,) grid step of discrete values
    item_fixed: np.ndarray  # (A,) bool: value is a property of the item (price)
    decimals: np.ndarray  # (A,) decimals values are rounded to in the log, -1 if none
    item_mean: list  # per action: (I,) mean value per item, NaN where unseen
    vlo: float
    vhi: float
    range_given: bool  # vlo, vhi come from the caller's value_range
    in_gaps: np.ndarray  # gaps inside sessions (s)
    between_gaps: np.ndarray  # gaps between sessions (s)
    sess_len: np.ndarray  # events per session
    log_in_gap: tuple  # (mean, std) of log gaps inside sessions
    log_between_gap: tuple  # (mean, std) of log gaps between sessions
    t_min: int
    t_max: int
    median_len: int  # median events per user

    @classmethod
    def build(cls, df: pd.DataFrame, *, rng: np.random.Generator, value_range, actions) -> _LogStats:
        user_codes, users = pd.factorize(df["user_id"], sort=True)
        users = np.asarray(users, dtype=object)
        counts = np.bincount(user_codes, minlength=len(users))
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        ts = df["ts"].to_numpy(np.int64)
        items, item_idx = np.unique(df["item_id"].to_numpy(np.int64), return_inverse=True)
        pop = np.bincount(item_idx, minlength=len(items))
        value = df["value"].to_numpy(np.float64)

        # categories
        if "category" in df.columns:
            first_row = np.full(len(items), len(df))
            np.minimum.at(first_row, item_idx, np.arange(len(df)))
            item_cat, _ = pd.factorize(df["category"].astype(str).to_numpy()[first_row])
        else:
            item_cat = _cooccurrence_clusters(item_idx, user_codes, len(items), len(users), rng)
        item_cat = np.asarray(item_cat, dtype=np.int64)
        n_cat = int(item_cat.max()) + 1
        cat_items = []
        for c in range(n_cat):
            idx = np.flatnonzero(item_cat == c)
            p = pop[idx] ** 0.8
            cat_items.append((idx, p / p.sum()))
        cat_p = np.bincount(item_cat[item_idx], minlength=n_cat) / len(df)

        # actions
        act_codes, present = pd.factorize(df["action"])
        present = list(present)
        freq = dict(zip(present, np.bincount(act_codes, minlength=len(present))))
        if actions is not None:
            vocab = tuple(actions)
        elif set(present) <= set(_FUNNEL):
            vocab = tuple(a for a in _FUNNEL if a in freq)
        else:
            vocab = tuple(sorted(present, key=lambda a: (-freq[a], a)))
        counts_a = np.array([freq.get(a, 0) for a in vocab], dtype=np.float64)
        action_p = (counts_a + 1) / (counts_a + 1).sum()
        cont = np.clip(action_p[1:] / action_p[:-1], 0.0, 0.95)

        # values per action
        if value_range is not None:
            vlo, vhi = (float(v) for v in value_range)
        else:
            fin = value[np.isfinite(value)]
            vlo, vhi = (float(fin.min()), float(fin.max())) if len(fin) else (-np.inf, np.inf)
        row_act = np.asarray(present, dtype=object)[act_codes]
        row_act_idx = np.array([vocab.index(a) if a in vocab else -1 for a in present], dtype=np.int64)[act_codes]
        act_vals, discrete, step, item_fixed, item_mean, decimals = [], [], [], [], [], []
        all_fin = np.isfinite(value)
        for a in vocab:
            m = (row_act == a) & all_fin
            if not m.any():
                m = all_fin
            v = value[m]
            act_vals.append(np.sort(v))
            uniq = np.unique(v)
            is_disc = 0 < len(uniq) <= 20
            discrete.append(is_disc)
            step.append(float(np.min(np.diff(uniq))) if len(uniq) > 1 else 1.0)
            s = np.bincount(item_idx[m], weights=v, minlength=len(items))
            n = np.bincount(item_idx[m], minlength=len(items))
            with np.errstate(invalid="ignore", divide="ignore"):
                im = s / n
            item_mean.append(im)
            resid = v - im[item_idx[m]]
            var = float(np.var(v)) if len(v) else 0.0
            item_fixed.append(bool(not is_disc and var > 0 and float(np.mean(resid**2)) < 0.05 * var))
            decimals.append(_decimals(v))
        # item-level values (prices): one value per item, shared by every action that has them
        fixed = [a for a in range(len(vocab)) if item_fixed[a]]
        if fixed:
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                shared = np.nanmean(np.stack([item_mean[a] for a in fixed]), axis=0)
            miss = np.isnan(shared)
            shared[miss] = rng.choice(np.concatenate([act_vals[a] for a in fixed]), int(miss.sum()))
            for a in fixed:
                im = np.where(np.isnan(item_mean[a]), shared, item_mean[a])
                item_mean[a] = im if decimals[a] < 0 else np.round(im, decimals[a])

        # timing
        same = user_codes[1:] == user_codes[:-1]
        gaps = np.diff(ts)[same]
        in_gaps = gaps[gaps < _SESSION_BREAK_S]
        between = gaps[gaps >= _SESSION_BREAK_S]
        brk = np.r_[True, ~same | (np.diff(ts) >= _SESSION_BREAK_S)]
        sess_len = np.diff(np.r_[np.flatnonzero(brk), len(ts)])
        if len(in_gaps) == 0:
            in_gaps = np.array([30])
        if len(between) == 0:
            between = np.array([86400])
        cap = 200_000
        if len(in_gaps) > cap:
            in_gaps = rng.choice(in_gaps, cap, replace=False)
        if len(between) > cap:
            between = rng.choice(between, cap, replace=False)

        return cls(
            df=df, user_codes=user_codes, users=users, offsets=offsets, ts=ts, item_idx=item_idx,
            row_act=row_act_idx, value=value,
            items=items, pop=pop, item_cat=item_cat, cat_items=cat_items, cat_p=cat_p, actions=vocab,
            action_p=action_p, cont=cont, act_vals=act_vals,
            act_mean=np.array([v.mean() if len(v) else np.nan for v in act_vals]),
            act_std=np.array([v.std() if len(v) else np.nan for v in act_vals]), discrete=np.array(discrete),
            step=np.array(step), item_fixed=np.array(item_fixed), decimals=np.array(decimals), item_mean=item_mean, vlo=vlo, vhi=vhi,
            range_given=value_range is not None, in_gaps=in_gaps, between_gaps=between, sess_len=sess_len,
            log_in_gap=_log_fit(in_gaps), log_between_gap=_log_fit(between), t_min=int(ts.min()),
            t_max=int(ts.max()), median_len=max(2, int(np.median(counts))),
        )

    @property
    def n_items(self) -> int:
        return len(self.items)

    # values ----------------------------------------------------------------------------------

    def values(self, rng: np.random.Generator, kind: str, item_idx: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Plausible values for events: kind is 'high', 'low', 'random' or 'near_mean'."""
        out = np.empty(len(item_idx), dtype=np.float64)
        for a in np.unique(act):
            m = act == a
            out[m] = self._values_one(rng, kind, item_idx[m], int(a))
        return np.clip(out, self.vlo, self.vhi)

    def _values_one(self, rng: np.random.Generator, kind: str, items: np.ndarray, a: int) -> np.ndarray:
        av = self.act_vals[a]
        n = len(items)
        if len(av) == 0:
            return np.full(n, np.nan)
        im = self.item_mean[a][items]
        if self.item_fixed[a]:
            miss = np.isnan(im)
            im[miss] = rng.choice(av, miss.sum())
            return im
        if self.discrete[a]:
            lo, hi = (self.vlo, self.vhi) if self.range_given else (av[0], av[-1])
            if kind == "high":
                return np.full(n, hi)
            if kind == "low":
                return np.full(n, lo)
            if kind == "near_mean":
                v = rng.normal(np.where(np.isnan(im), self.act_mean[a], im), 0.35 * self.act_std[a] + 1e-9)
            else:
                v = rng.normal(self.act_mean[a], self.act_std[a] + 1e-9, n)
            v = av[0] + np.rint((v - av[0]) / self.step[a]) * self.step[a]
            return np.clip(v, lo, hi)
        if kind == "near_mean":
            base = np.where(np.isnan(im), rng.choice(av, n), im)
            v = base * np.exp(rng.normal(0, 0.15, n))
            return v if self.decimals[a] < 0 else np.round(v, self.decimals[a])
        q = {"high": (0.9, 1.0), "low": (0.0, 0.1)}.get(kind, (0.0, 1.0))
        return av[(rng.uniform(*q, n) * (len(av) - 1)).astype(np.int64)]

    # sequences -------------------------------------------------------------------------------

    def depth(self, rng: np.random.Generator, n: int, *, boost: float = 1.0) -> np.ndarray:
        """(n,) funnel depth per item interaction (1 = weakest action only), as in the log."""
        depth = np.ones(n, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        for c in np.clip(self.cont * boost, 0, 0.95):
            alive &= rng.random(n) < c
            depth += alive
        return depth

    def funnel(self, rng: np.random.Generator, item_idx: np.ndarray, *, boost: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Expand item interactions into events: (item index, action index), weakest action first."""
        return _expand(item_idx, self.depth(rng, len(item_idx), boost=boost))

    def timeline(
        self, rng: np.random.Generator, n: int, lo: int, hi: int, *, gap_scale: float = 1.0, hour: float | None = None,
    ) -> np.ndarray:
        """(n,) sorted int64 timestamps in [lo, hi] with the log's own session and gap habits.

        ``gap_scale`` stretches gaps inside sessions; ``hour`` (0-24, UTC) starts sessions around
        that hour of day instead of the log's between-session gaps.
        """
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        lens = rng.choice(self.sess_len, max(2, 2 * n // max(1, int(self.sess_len.mean())) + 2))
        while lens.sum() < n:
            lens = np.r_[lens, rng.choice(self.sess_len, len(lens))]
        k = int(np.searchsorted(np.cumsum(lens), n)) + 1
        lens = lens[:k].copy()
        lens[-1] -= lens.sum() - n
        gaps = np.rint(rng.choice(self.in_gaps, n) * gap_scale).astype(np.int64)
        first = np.r_[0, np.cumsum(lens)[:-1]]
        gaps[first] = 0
        sess_id = np.repeat(np.arange(k), lens)
        cs = np.cumsum(gaps)
        within = cs - cs[first][sess_id]
        dur = within[np.r_[first[1:] - 1, n - 1]]
        if hour is None:
            between = rng.choice(self.between_gaps, k - 1).astype(np.float64)
            room = max(0, hi - lo) - dur.sum()
            if between.sum() > room and between.sum() > 0:
                between *= max(0.0, room) / between.sum()
            starts = np.r_[0.0, np.cumsum(dur[:-1] + between)]
            total = starts[-1] + dur[-1]
            starts = lo + rng.uniform(0, max(0.0, hi - lo - total)) + starts
        else:
            t = lo + rng.random(k) * max(0, hi - lo)
            day0 = np.floor(t / 86400) * 86400
            h = (hour + rng.normal(0, 1.5, k)) % 24
            s = np.sort(day0 + h * 3600 + rng.uniform(0, 1800, k))
            starts = s.copy()
            for j in range(1, k):
                starts[j] = max(s[j], starts[j - 1] + dur[j - 1] + 60)
        out = np.rint(starts[sess_id] + within).astype(np.int64)
        return _squeeze(out, lo, hi)


def _expand(item_idx: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Repeat each item ``depth`` times with action indices 0..depth-1."""
    act = np.arange(int(depth.sum())) - np.repeat(np.cumsum(depth) - depth, depth)
    return np.repeat(item_idx, depth), act


def _decimals(v: np.ndarray) -> int:
    """Decimals the values are rounded to (0-4), or -1 if they are not."""
    v = v[:10_000]
    for d in range(5):
        x = v * 10.0**d
        if np.all(np.abs(x - np.rint(x)) < 1e-6 * np.maximum(1.0, np.abs(x))):
            return d
    return -1


def _log_fit(gaps: np.ndarray) -> tuple[float, float]:
    """(mean, std) of log(gap) over gaps >= 1 s: a lognormal fit."""
    lg = np.log(np.maximum(gaps, 1).astype(np.float64))
    return float(lg.mean()), float(lg.std()) + 1e-3


def _squeeze(ts: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Map sorted timestamps into [lo, hi] (shift if they fit, else rescale), keeping order."""
    if len(ts) == 0 or (ts[0] >= lo and ts[-1] <= hi):
        return ts
    span = ts[-1] - ts[0]
    if span <= hi - lo:
        shift = lo - ts[0] if ts[0] < lo else hi - ts[-1]
        return ts + shift
    scaled = lo + np.floor((ts - ts[0]) * ((hi - lo) / span))
    return np.clip(scaled, lo, hi).astype(np.int64)


def _cooccurrence_clusters(item_idx, user_codes, n_items: int, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Category codes for items from user co-occurrence (SVD + k-means); id blocks if too small."""
    k = int(np.clip(round(math.sqrt(n_items) / 2), 2, 20))
    if n_items < 4 * k or n_users < 3:
        return (np.arange(n_items) * k // max(1, n_items)).astype(np.int64)
    from scipy import sparse
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD

    x = sparse.csr_matrix((np.ones(len(item_idx)), (item_idx, user_codes)), shape=(n_items, n_users))
    x.data = np.log1p(x.data)
    dim = max(2, min(16, n_users - 1, n_items - 1))
    emb = TruncatedSVD(n_components=dim, random_state=int(rng.integers(2**31))).fit_transform(x)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
    labels = KMeans(n_clusters=k, n_init=3, random_state=int(rng.integers(2**31))).fit_predict(emb)
    _, labels = np.unique(labels, return_inverse=True)
    return labels.astype(np.int64)


def _fresh_ids(rng: np.random.Generator, existing: np.ndarray, n: int) -> np.ndarray:
    """``n`` new user ids shaped like ``existing`` ones (prefix + number, or same-length strings)."""
    if n == 0:
        return np.empty(0, dtype=object)
    s = pd.Series(existing, dtype=object).astype(str)
    parts = s.str.extract(r"^(\D*?)(\d+)$")
    taken = set(s)
    if parts[1].notna().all() and parts[0].nunique() == 1 and parts[1].str.len().max() <= 15:
        prefix = parts[0].iloc[0]
        digits = parts[1]
        lens = digits.str.len()
        padded = lens.nunique() == 1 and (digits.str[0] == "0").any()
        width = int(lens.iloc[0]) if padded else 0
        nums = digits.astype(np.int64).to_numpy()
        mn, mx = int(nums.min()), int(nums.max()) + n
        if mx - mn < 5_000_000:
            free = np.setdiff1d(np.arange(mn, mx + 1), nums)
            pick = rng.choice(free, n, replace=False)
        else:
            used, pick = set(nums.tolist()), []
            while len(pick) < n:
                c = int(rng.integers(mn, mx + 1))
                if c not in used:
                    used.add(c)
                    pick.append(c)
        return np.array([f"{prefix}{int(p):0{width}d}" for p in pick], dtype=object)
    length = int(s.str.len().median()) or 8
    alphabet = np.array(sorted(set("".join(s.iloc[:1000]))) or list("0123456789abcdef"))
    out = []
    while len(out) < n:
        c = "".join(rng.choice(alphabet, length))
        if c not in taken:
            taken.add(c)
            out.append(c)
    return np.array(out, dtype=object)


# --------------------------------------------------------------------------------------------
# attacks


@dataclass
class _Chunk:
    user: int  # user code; >= len(stats.users) for fake users
    item_idx: np.ndarray
    act: np.ndarray
    ts: np.ndarray
    value: np.ndarray
    src: np.ndarray | None = None  # clean row each event copies (replay), else None


class _Injector:
    """Builds attacks on one clean log, then assembles the labelled result."""

    def __init__(self, st: _LogStats, rng: np.random.Generator) -> None:
        self.st = st
        self.rng = rng
        self.keep = np.ones(len(st.ts), dtype=bool)
        self.chunks: list[_Chunk] = []
        self.types: dict[int, str] = {}
        self.targets: set[int] = set()
        self.n_fake = 0
        order = np.argsort(st.pop, kind="stable")
        n = st.n_items
        self.push_pool = order[: max(1, int(0.6 * n))]  # less popular items get pushed
        self.nuke_pool = order[min(n - 1, int(0.8 * n)):]  # popular items get nuked
        self.popular = order[::-1][: max(10, n // 20)]

    # driver ----------------------------------------------------------------------------------

    def _count(self, frac: float) -> int:
        return 0 if frac <= 0 else max(1, int(round(frac * len(self.st.users))))

    def run(self, mix: AttackMix) -> None:
        st, rng = self.st, self.rng
        lengths = np.diff(st.offsets)
        candidates = rng.permutation(len(st.users))
        used = np.zeros(len(st.users), dtype=bool)
        partial = [("mid_takeover", 6, self._mid_takeover), ("replay", 4, self._replay),
                   ("takeover", 3, self._takeover), ("click_farm", 2, self._click_farm)]
        for name, min_len, fn in partial:
            want = self._count(getattr(mix, name))
            if want == 0:
                continue
            tg = self._campaigns(want, self.push_pool) if name == "click_farm" else [None] * want
            done = 0
            for u in candidates:
                if done == want:
                    break
                if used[u] or lengths[u] < min_len:
                    continue
                used[u] = True
                if fn(int(u), tg[done]):
                    self.types[int(u)] = name
                    done += 1
            if done < want:
                log.warning("%s: only %d of %d users could be attacked (too few eligible users)", name, done, want)

        for name in ("bot", "slow_bot", "shilling_random", "shilling_average", "shilling_bandwagon",
                     "segment", "love_hate", "account_copy"):
            want = self._count(getattr(mix, name))
            if want == 0:
                continue
            if name == "account_copy":
                made = sum(self._account_copy(len(st.users) + self.n_fake + j) for j in range(want))
                for j in range(made):
                    self.types[len(st.users) + self.n_fake + j] = name
                self.n_fake += made
                if made < want:
                    log.warning("%s: only %d of %d copies fit in the log's time range", name, made, want)
                continue
            pool = self.nuke_pool if name == "love_hate" else self.push_pool
            bot = name in ("bot", "slow_bot")
            tg = [None] * want if bot else self._campaigns(want, pool)
            for j in range(want):
                u = len(st.users) + self.n_fake
                self.n_fake += 1
                self.types[u] = name
                if name == "bot":
                    self._bot(u)
                elif name == "slow_bot":
                    self._slow_bot(u)
                else:
                    self._shill(u, tg[j], kind=name)

    def _campaigns(self, n: int, pool: np.ndarray) -> list[np.ndarray]:
        """Target items per attacker: coordinated campaigns of 2-10 attackers share 1-3 targets."""
        out: list[np.ndarray] = []
        while len(out) < n:
            size = int(self.rng.integers(2, 11))
            k = min(int(self.rng.integers(1, 4)), len(pool))
            tg = self.rng.choice(pool, k, replace=False)
            out.extend([tg] * min(size, n - len(out)))
        return out

    def _add(self, user: int, item_idx, act, ts, value, src=None) -> None:
        self.chunks.append(_Chunk(user, np.asarray(item_idx, np.int64), np.asarray(act, np.int64),
                                  np.asarray(ts, np.int64), np.asarray(value, np.float64), src))

    def _rows(self, u: int) -> np.ndarray:
        return np.arange(self.st.offsets[u], self.st.offsets[u + 1])

    def _other_taste(self, rows: np.ndarray) -> np.ndarray:
        """Category weights that avoid the categories in ``rows``."""
        st = self.st
        seen = np.bincount(st.item_cat[st.item_idx[rows]], minlength=len(st.cat_p))
        w = np.where(seen == 0, st.cat_p + 1e-9, 0.0)
        if w.sum() == 0:
            w = (seen == seen.min()).astype(np.float64)
        return w / w.sum()

    def _taste_items(self, n: int, cat_w: np.ndarray) -> np.ndarray:
        st, rng = self.st, self.rng
        c = int(rng.choice(len(cat_w), p=cat_w))
        idx, p = st.cat_items[c]
        items = rng.choice(idx, n, p=p)
        stray = rng.random(n) < 0.15
        items[stray] = rng.integers(0, st.n_items, stray.sum())
        return items

    def _habit(self, rows: np.ndarray) -> tuple[float, float]:
        """(hour, gap_scale) for an intruder: opposite hours of day, different speed."""
        rng = self.rng
        hours = (self.st.ts[rows] % 86400) / 3600.0
        ang = hours / 24 * 2 * np.pi
        owner = (np.arctan2(np.sin(ang).mean(), np.cos(ang).mean()) / (2 * np.pi) * 24) % 24
        hour = (owner + rng.uniform(8, 16)) % 24
        scale = rng.uniform(0.15, 0.4) if rng.random() < 0.5 else rng.uniform(2.5, 6.0)
        return float(hour), float(scale)

    # partial attacks on real users ---------------------------------------------------------------

    def _click_farm(self, u: int, targets: np.ndarray) -> bool:
        st, rng = self.st, self.rng
        rows = self._rows(u)
        acts = st.actions
        if "click" in acts or "cart" in acts:
            farm = [acts.index(a) for a in ("click", "cart") if a in acts]
        elif len(acts) >= 3:
            farm = [1, 2]
        else:
            farm = [len(acts) - 1]
        fp = np.array([0.75, 0.25][: len(farm)])
        fp /= fp.sum()
        t0, t1 = int(st.ts[rows[0]]), int(st.ts[rows[-1]])
        base = rng.uniform(1, 5)
        for _ in range(int(rng.integers(1, 4))):
            size = int(rng.integers(5, 31))
            start = int(rng.integers(t0, t1 + 1))
            gaps = np.maximum(1, np.rint(base * rng.lognormal(0, 0.3, size))).astype(np.int64)
            gaps[0] = int(rng.integers(1, 60))
            ts = _squeeze(start + np.cumsum(gaps), st.t_min, st.t_max)
            items = rng.choice(targets, size)
            act = np.asarray(farm)[rng.choice(len(farm), size, p=fp)]
            kind = "high" if st.discrete[act[0]] else "low"
            self._add(u, items, act, ts, st.values(rng, kind, items, act))
        self.targets.update(int(t) for t in targets)
        return True

    def _takeover(self, u: int, _: object) -> bool:
        st, rng = self.st, self.rng
        rows = self._rows(u)
        n = len(rows)
        f = rng.uniform(0.2, 0.5)
        last = int(st.ts[rows[-1]])
        hour, scale = self._habit(rows)
        replace = rng.random() < 0.5 or last > st.t_max - 2 * 86400
        if replace:
            m = int(np.clip(round(n * f), 1, n - 1))
            owner = rows[: n - m]
            self.keep[rows[n - m:]] = False
            lo = int(st.ts[owner[-1]]) + int(rng.integers(600, 86400))
            hi = min(st.t_max, max(lo + 86400, last))
            n_new = max(2, int(round(m * rng.uniform(0.8, 1.5))))
        else:
            owner = rows
            lo = last + int(rng.integers(3600, 3 * 86400))
            hi = min(st.t_max, lo + int(rng.uniform(2, 14) * 86400))
            n_new = max(2, int(round(n * f / (1 - f))))
        lo = min(lo, st.t_max)
        self._intrude(u, owner, n_new, lo, max(lo, hi), hour, scale)
        return True

    def _mid_takeover(self, u: int, _: object) -> bool:
        st, rng = self.st, self.rng
        rows = self._rows(u)
        n = len(rows)
        gaps = np.diff(st.ts[rows]).astype(np.float64)  # gap i lies between rows i and i + 1
        i = np.arange(len(gaps))
        ok = (i >= int(0.2 * n)) & (i < int(np.ceil(0.8 * n))) & (gaps >= 6 * 3600)
        if not ok.any():
            return False
        w = np.where(ok, gaps, 0.0)
        g = int(rng.choice(len(gaps), p=w / w.sum()))
        lo = int(st.ts[rows[g]] + rng.uniform(0.05, 0.3) * gaps[g])
        hi = int(st.ts[rows[g + 1]] - rng.uniform(0.05, 0.3) * gaps[g])
        hour, scale = self._habit(rows)
        n_new = max(2, int(round(n * rng.uniform(0.2, 0.4))))
        self._intrude(u, rows, n_new, lo, hi, hour, scale)
        return True

    def _intrude(self, u: int, owner: np.ndarray, n_new: int, lo: int, hi: int, hour: float, scale: float) -> None:
        """Events of another person in the user's account: other taste, timing and action mix."""
        st, rng = self.st, self.rng
        depth = float(np.sum(np.cumprod(np.clip(st.cont * 2.0, 0, 0.95)))) + 1
        items = self._taste_items(max(1, int(round(n_new / depth))), self._other_taste(owner))
        items, act = st.funnel(rng, items, boost=2.0)
        ts = st.timeline(rng, len(items), lo, hi, gap_scale=scale, hour=hour)
        self._add(u, items, act, ts, st.values(rng, "random", items, act))

    def _replay(self, u: int, _: object) -> bool:
        st, rng = self.st, self.rng
        rows = self._rows(u)
        n = len(rows)
        ts = st.ts[rows]
        for length in (int(np.clip(round(n * rng.uniform(0.2, 0.6)), 2, n - 1)), 2):
            s = np.arange(n - length + 1)
            end = ts[s + length - 1]
            room = st.t_max - (end - ts[s]) - (end + 60)
            ok = np.flatnonzero(room >= 0)
            if len(ok):
                break
        else:
            return False
        s0 = int(rng.choice(ok))
        seg = rows[s0: s0 + length]
        seg_ts = st.ts[seg]
        start_lo = int(seg_ts[-1]) + 60
        start_hi = st.t_max - int(seg_ts[-1] - seg_ts[0])
        copies = 1 if rng.random() < 0.8 else int(rng.integers(2, 4))
        for _ in range(copies):
            if start_lo > start_hi:
                break
            new0 = int(rng.integers(start_lo, start_hi + 1))
            new_ts = seg_ts - seg_ts[0] + new0
            if rng.random() < 0.5:
                new_ts = np.maximum.accumulate(new_ts + rng.integers(-2, 3, len(new_ts)))
                new_ts = np.clip(new_ts, st.t_min, st.t_max)
            item = st.item_idx[seg]
            self._add(u, item, st.row_act[seg], new_ts, st.value[seg], src=seg)
            start_lo = int(new_ts[-1]) + 60
        return True

    # fake users ------------------------------------------------------------------------------

    def _weak_values(self, items: np.ndarray, act: np.ndarray) -> np.ndarray:
        st, rng = self.st, self.rng
        if st.discrete[0] and rng.random() < 0.5:
            return np.full(len(items), st.values(rng, "random", items[:1], act[:1])[0])
        return st.values(rng, "low" if not st.discrete[0] else "random", items, act)

    def _bot(self, u: int) -> None:
        st, rng = self.st, self.rng
        n_items = st.n_items
        n = int(np.clip(rng.uniform(2, 8) * st.median_len, 30, max(30, 2 * n_items)))
        kind = int(rng.integers(3))
        if kind == 0:
            base = np.arange(n_items)  # item id order
        elif kind == 1:
            base = np.argsort(-st.pop, kind="stable")  # most popular first
        else:
            base = np.lexsort((st.items, st.item_cat))  # category by category
        stride = 1 if rng.random() < 0.7 else int(rng.integers(2, 6))
        items = base[(int(rng.integers(n_items)) + stride * np.arange(n)) % n_items]
        gap = rng.uniform(1, 8)
        gaps = np.maximum(1, np.rint(gap * (1 + rng.uniform(0.02, 0.15) * rng.standard_normal(n)))).astype(np.int64)
        if rng.random() < 0.5:
            every = int(rng.integers(20, 100))
            gaps[every::every] += rng.integers(60, 600, len(gaps[every::every]))
        gaps[0] = 0
        rel = np.cumsum(gaps)
        start = st.t_min + int(rng.uniform(0, max(0, st.t_max - st.t_min - rel[-1])))
        act = np.zeros(n, dtype=np.int64)
        self._add(u, items, act, _squeeze(start + rel, st.t_min, st.t_max), self._weak_values(items, act))

    def _slow_bot(self, u: int) -> None:
        st, rng = self.st, self.rng
        n = int(np.clip(rng.uniform(1.5, 5) * st.median_len, 20, max(20, 2 * st.n_items)))
        items = rng.choice(st.n_items, n, replace=n > st.n_items)
        gaps = rng.lognormal(*st.log_in_gap, n)
        brk = rng.random(n) < 1.0 / max(1.5, float(st.sess_len.mean()))
        gaps[brk] = rng.lognormal(*st.log_between_gap, brk.sum())
        gaps[0] = 0
        rel = np.cumsum(np.rint(gaps)).astype(np.int64)
        start = st.t_min + int(rng.uniform(0, max(0, st.t_max - st.t_min - rel[-1])))
        act = np.zeros(n, dtype=np.int64)
        self._add(u, items, act, _squeeze(start + rel, st.t_min, st.t_max), st.values(rng, "random", items, act))

    def _account_copy(self, u: int) -> bool:
        """New account u replays a contiguous 60-100% of a real user's history (at least 10 events)
        with its timing, starting a day to two months later; False when no history fits."""
        st, rng = self.st, self.rng
        lengths = np.diff(st.offsets)
        for src in rng.permutation(np.flatnonzero(lengths >= 10))[:50]:
            rows = self._rows(int(src))
            k = max(10, int(round(len(rows) * rng.uniform(0.6, 1.0))))
            seg = rows[int(rng.integers(0, len(rows) - k + 1)):][:k]
            t0, span = int(st.ts[seg[0]]), int(st.ts[seg[-1]] - st.ts[seg[0]])
            lo, hi = t0 + 86_400, min(t0 + 60 * 86_400, st.t_max - span)
            if lo <= hi:
                self._add(u, st.item_idx[seg], st.row_act[seg], st.ts[seg] - t0 + int(rng.integers(lo, hi + 1)),
                          st.value[seg])
                return True
        return False

    def _shill(self, u: int, targets: np.ndarray, *, kind: str) -> None:
        """A fake profile: filler items plus target items, values by attack kind."""
        st, rng = self.st, self.rng
        size = max(5, int(round(rng.uniform(0.5, 1.5) * st.median_len)))
        free = np.ones(st.n_items, dtype=bool)
        free[targets] = False
        others = np.flatnonzero(free)
        parts: list[tuple[np.ndarray, str]] = []
        target_kind = "low" if kind == "love_hate" else "high"

        def rand_items(k: int, exclude: np.ndarray | None = None) -> np.ndarray:
            pool = others if exclude is None else np.setdiff1d(others, exclude)
            return rng.choice(pool, min(k, len(pool)), replace=False) if len(pool) else np.empty(0, np.int64)

        if kind == "shilling_random":
            parts.append((rand_items(size), "random"))
        elif kind == "shilling_average":
            parts.append((rand_items(size), "near_mean"))
        elif kind == "love_hate":
            parts.append((rand_items(size), "high"))
        elif kind == "shilling_bandwagon":
            popular = np.setdiff1d(self.popular, targets)
            k = min(len(popular), max(1, int(round(size * rng.uniform(0.3, 0.7)))))
            pop_items = rng.choice(popular, k, replace=False)
            parts.append((pop_items, "high"))
            parts.append((rand_items(size - k, pop_items), "random"))
        elif kind == "segment":
            sizes = np.array([len(ci[0]) for ci in st.cat_items])
            w = st.cat_p * (sizes >= 3) + 1e-12
            c = int(rng.choice(len(w), p=w / w.sum()))
            idx, p = st.cat_items[c]
            keep = ~np.isin(idx, targets)
            idx, p = idx[keep], p[keep]
            k = min(len(idx), max(1, int(round(size * rng.uniform(0.4, 0.8)))))
            seg = rng.choice(idx, k, replace=False, p=p / p.sum()) if k else np.empty(0, np.int64)
            parts.append((seg, "high"))
            parts.append((rand_items(int(round(size * rng.uniform(0, 0.3))), seg), "low"))
        else:
            raise AssertionError(kind)
        self.targets.update(int(t) for t in targets)

        # interactions in random order; fillers follow the log's funnel, targets get every action
        inter = np.concatenate([p[0] for p in parts] + [targets]).astype(np.int64)
        kinds_i = np.concatenate([np.full(len(p[0]), p[1]) for p in parts] + [np.full(len(targets), target_kind)])
        depth = st.depth(rng, len(inter))
        depth[len(inter) - len(targets):] = len(st.actions)
        order = rng.permutation(len(inter))
        items, act = _expand(inter[order], depth[order])
        kinds = np.repeat(kinds_i[order], depth[order])
        value = np.empty(len(items))
        for kd in np.unique(kinds):
            m = kinds == kd
            value[m] = st.values(rng, str(kd), items[m], act[m])
        self._add(u, items, act, st.timeline(rng, len(items), st.t_min, st.t_max), value)

    # result ----------------------------------------------------------------------------------

    def assemble(self) -> LabeledEvents:
        st = self.st
        n_real = len(st.users)
        fake_ids = _fresh_ids(self.rng, st.users, self.n_fake)
        all_ids = np.concatenate([st.users, fake_ids]).astype(object)
        rank = np.empty(len(all_ids), dtype=np.int64)
        rank[np.argsort(all_ids, kind="stable")] = np.arange(len(all_ids))

        kept = np.flatnonzero(self.keep)
        ch = self.chunks
        n_inj = sum(len(c.ts) for c in ch)
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.empty(0, dt))
        inj_user = cat([np.full(len(c.ts), c.user) for c in ch], np.int64)
        inj_item = cat([c.item_idx for c in ch], np.int64)
        inj_act = cat([c.act for c in ch], np.int64)
        inj_ts = cat([c.ts for c in ch], np.int64)
        inj_val = cat([c.value for c in ch], np.float64)
        inj_src = cat([c.src if c.src is not None else np.full(len(c.ts), -1) for c in ch], np.int64)

        user = np.r_[st.user_codes[kept], inj_user]
        ts = np.r_[st.ts[kept], inj_ts]
        order = np.lexsort((np.arange(len(ts)), ts, rank[user]))

        df = st.df
        vocab = np.array(st.actions, dtype=object)
        clean_act = df["action"].to_numpy(dtype=object)
        inj_action = np.where(inj_act >= 0, vocab[np.maximum(inj_act, 0)], clean_act[np.maximum(inj_src, 0)])
        cols = {
            "user_id": all_ids[user[order]],
            "item_id": np.r_[st.items[st.item_idx[kept]], st.items[inj_item]].astype(np.int64)[order],
            "ts": ts[order],
            "action": np.concatenate([clean_act[kept], inj_action])[order],
            "value": np.r_[st.value[kept], inj_val][order],
        }
        out = pd.DataFrame(cols)
        out["user_id"] = out["user_id"].astype(str)
        out["action"] = out["action"].astype(str)
        for c in df.columns:
            if c in CORE_COLUMNS:
                continue
            col = df[c]
            if c in ("title", "category") or _is_item_level(col, st.item_idx):
                first_row = np.full(st.n_items, len(df))
                np.minimum.at(first_row, st.item_idx, np.arange(len(df)))
                inj_col = col.take(first_row[inj_item]).reset_index(drop=True)
            else:
                inj_col = col.take(np.maximum(inj_src, 0)).reset_index(drop=True)
                inj_col[inj_src < 0] = None
            full = pd.concat([col.take(kept).reset_index(drop=True), inj_col], ignore_index=True)
            out[c] = full.take(order).reset_index(drop=True)

        injected = np.r_[np.zeros(len(kept), dtype=bool), np.ones(n_inj, dtype=bool)][order]
        types = np.full(len(all_ids), NORMAL, dtype=object)
        for u, t in self.types.items():
            types[u] = t
        user_type = pd.Series(types, index=pd.Index(all_ids, name="user_id"), name="user_type")
        user_type = user_type.iloc[np.argsort(all_ids, kind="stable")]
        user_type.index = user_type.index.astype(str)
        user_type = user_type.astype(str)
        targets = np.array(sorted(st.items[list(self.targets)]), dtype=np.int64) if self.targets else np.empty(0, np.int64)
        log.info("injected %d events: %d fake users, %d attacked real users, %d target items",
                 n_inj, self.n_fake, sum(1 for u in self.types if u < n_real), len(targets))
        return LabeledEvents(events=out, event_injected=injected, user_type=user_type, target_items=targets)


def _is_item_level(col: pd.Series, item_idx: np.ndarray) -> bool:
    """True if ``col`` holds one value per item (item text, item attributes)."""
    codes, _ = pd.factorize(col, use_na_sentinel=False)
    pairs = np.unique(np.c_[item_idx, codes], axis=0)
    return len(pairs) == len(np.unique(item_idx))
