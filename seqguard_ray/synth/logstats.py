"""What injected events need to know about a clean log: its items, categories, actions, values and
timing habits, learned from the log itself so that injected events look like it."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

CORE_COLUMNS = ("user_id", "item_id", "ts", "action", "value")
SESSION_BREAK_S = 1800  # a gap this long (or longer) starts a new session
FUNNEL = ("view", "click", "cart", "purchase")


def normalize_log(events: pd.DataFrame) -> pd.DataFrame:
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
class LogStats:
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
    def build(cls, df: pd.DataFrame, *, rng: np.random.Generator, value_range, actions) -> LogStats:
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
        elif set(present) <= set(FUNNEL):
            vocab = tuple(a for a in FUNNEL if a in freq)
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
        in_gaps = gaps[gaps < SESSION_BREAK_S]
        between = gaps[gaps >= SESSION_BREAK_S]
        brk = np.r_[True, ~same | (np.diff(ts) >= SESSION_BREAK_S)]
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
        return expand_funnel(item_idx, self.depth(rng, len(item_idx), boost=boost))

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
        return squeeze_into(out, lo, hi)


def expand_funnel(item_idx: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def squeeze_into(ts: np.ndarray, lo: int, hi: int) -> np.ndarray:
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
