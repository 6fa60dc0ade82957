"""Change points: where a history stops being its owner's (account takeovers).

For each history, :class:`ChangePoint` finds the split into its owner's part and a stretch that
differs from it in taste (item taste vectors), hours of day, pace (gaps inside sessions), action
mix, values (on each action's scale) and local oddness (the event detector's scores), as a scan
statistic: for every candidate stretch [a, b) (a tail [a, n), or a stretch the owner comes back
after) each feature group's likelihood ratio of a mean change becomes a chi-square tail, after
dividing it by how much larger the group runs in normal histories of that length (sessions and
slow drift make events dependent: the ``inflation``); the groups' tails are combined with Fisher's
method, and the stretch with the strongest combined evidence wins. The maximum over stretches grows
with a history's length, so its null is calibrated on the training users as a function of length,
with a tail fitted on the bulk (median to 80th percentile) of each length's maxima and
extrapolated, so that takeovers in a poisoned training log do not become the reference.

Score convention: :meth:`ChangePoint.score` is in [0, 1], higher = more anomalous.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy import special

from .features import ItemStats, Seqs
from .features.neighbours import MAX_NATS
from .stage import check_is_fitted
from .tokens import N_SPECIAL

log = logging.getLogger(__name__)

GROUPS = ("taste", "hours of day", "pace", "action mix", "values", "odd events")
SESSION_GAP = 1800.0   # seconds: a longer gap starts a new session (the web-analytics convention)
MAX_ACTIONS = 16       # one-hot columns for actions; rarer action ids share the last one
_TAIL_LO, _TAIL_HI = 0.5, 0.8  # the null's quantiles its upper tail is fitted through
_LOGIT_HI = math.log(_TAIL_HI / (1 - _TAIL_HI))  # the standard logistic's 80% quantile


@dataclass
class Changes:
    """What :meth:`ChangePoint.transform` found, per user (U users).

    - ``stat`` (U,) the largest combined evidence over stretches (nats; 0 when not judged)
    - ``nats`` (U,) -log tail probability of ``stat`` among training histories of that length
    - ``start``, ``end`` (U,) int64 the located stretch [start, end) in the user's history
      (positions in its time order; start == end == 0 when none); ``end`` is the history's length
      for a tail, less when the owner comes back
    - ``groups`` (U, len(GROUPS)) each feature group's evidence (nats) at the located stretch
    """

    stat: np.ndarray
    nats: np.ndarray
    start: np.ndarray
    end: np.ndarray
    groups: np.ndarray

    def score(self) -> np.ndarray:
        """(U,) in [0, 1], higher = more anomalous: one minus the tail probability."""
        return 1.0 - np.exp(-self.nats)

    def changed(self, u: int, *, min_nats: float = math.log(100)) -> list[str]:
        """The feature groups that changed at user ``u``'s stretch (strongest first; at least one)."""
        g = self.groups[u]
        order = [j for j in np.argsort(-g) if g[j] > 0]
        strong = [GROUPS[j] for j in order if g[j] >= min_nats]
        return strong or [GROUPS[j] for j in order[:1]]

    def describe(self, u: int, ts: np.ndarray, *, taken: bool, stretch: tuple[int, int] | None = None) -> str:
        """User ``u``'s change in words; ``ts`` (n,) its events' times (seconds), ``taken``: typed a
        takeover (else the change is only reported), ``stretch``: the one the explanation took
        when not the located one (what changed is then said of the located one)."""
        n = len(ts)
        a, b = (int(self.start[u]), int(self.end[u])) if stretch is None else stretch
        when = datetime.fromtimestamp(float(ts[a]), tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        span = "to the end" if b >= n else f"until event {b} (the owner comes back at event {b + 1})"
        what = "taken over" if taken else "its history changes"
        own = stretch is None or (abs(a - self.start[u]) <= 5 and abs(b - self.end[u]) <= 5)
        changed = ", ".join(self.changed(u))
        if not own:
            changed = f"taste and habits (change point at event {self.start[u] + 1}: {changed})"
        return (f"{what} from {when} (event {a + 1} of {n}) {span}: {changed} changed "
                f"(change-point evidence {self.score()[u]:.4f})")


def _event_groups(seqs: Seqs, stats: ItemStats, n_actions: int, local: np.ndarray | None,
                  value_loc: np.ndarray, value_scale: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per feature group: x (N, d) float64 and ok (N,) bool (where the event observes the group)."""
    ts, off, N = seqs.ts, seqs.offsets, len(seqs.ts)
    first = np.zeros(N, bool)
    first[off[:-1][np.diff(off) > 0]] = True
    gap = np.where(first, np.inf, np.diff(ts, prepend=ts[:1]) if N else ts)
    start = gap >= SESSION_GAP                      # the first event of a history starts a session
    ang = 2 * np.pi * (ts % 86400) / 86400
    known = seqs.item >= N_SPECIAL
    act = np.minimum(seqs.action, n_actions - 1)
    onehot = np.zeros((N, n_actions))
    onehot[np.arange(N), act] = 1.0
    has_v = np.isfinite(seqs.value)
    # each action's values on their own scale (a cart's price is no view's dwell time)
    z = np.where(has_v, (np.nan_to_num(seqs.value) - value_loc[act]) / value_scale[act], 0.0)
    return [
        (stats.taste_[seqs.item].astype(np.float64), known),
        (np.stack([np.sin(ang), np.cos(ang)], 1), np.ones(N, bool)),  # sessions' clustering: see inflation
        (np.log1p(np.where(start, 0.0, np.maximum(gap, 0.0)))[:, None], ~start),  # pace inside sessions
        (onehot, np.ones(N, bool)),
        (np.stack([z, np.abs(z)], 1), has_v),
        (np.zeros((N, 1)) if local is None else np.asarray(local, np.float64)[:, None], np.full(N, local is not None)),
    ]


def chi2_nats(x: np.ndarray, k: float | np.ndarray) -> np.ndarray:
    """-log P(chi2(k) >= x), by the Wilson-Hilferty cube-root normal approximation: a ufunc-fast
    tail that does not saturate far out (the scan evaluates it at every stretch of every history)."""
    v = 2.0 / (9.0 * k)
    z = (np.cbrt(np.maximum(x, 0.0) / k) - (1.0 - v)) / np.sqrt(v)
    return np.maximum(-special.log_ndtr(-z), 0.0)


def _effective_dims(x: np.ndarray) -> float:
    """Participation ratio (tr C)^2 / tr(C^2) of x's covariance: chi-square degrees of freedom."""
    c = np.cov(x, rowvar=False) if x.shape[1] > 1 else np.atleast_2d(x.var())
    tr = float(np.trace(c))
    tr2 = float((c * c).sum())
    return max(1.0, tr * tr / tr2) if tr2 > 0 else 1.0


class _History:
    """One history's running sums per group, for the two-sample statistic of any stretch.

    ``inflation`` (len(GROUPS),): how much larger than chi-square each group's statistic runs in
    normal histories of this length (sessions and slow drift make events dependent); the group's
    statistic is divided by it, so that no group's ordinary variation drowns the others."""

    def __init__(self, groups: list[tuple[np.ndarray, np.ndarray]], min_obs: int,
                 inflation: np.ndarray | None = None) -> None:
        self.parts = []
        self.index: list[int] = []   # which of GROUPS each part is
        for j, (x, ok) in enumerate(groups):
            k = int(ok.sum())
            if k < 2 * min_obs:
                continue
            xo = x[ok]
            tss = float(((xo - xo.mean(0)) ** 2).sum())
            if tss <= 1e-9 * k:
                continue
            xs = np.where(ok[:, None], x, 0.0)
            c = np.vstack([np.zeros(x.shape[1]), np.cumsum(xs, 0)])   # (n + 1, d)
            m = np.r_[0, np.cumsum(ok)]                                 # (n + 1,)
            self.parts.append((c, m, tss, _effective_dims(xo)))
            self.index.append(j)

        self.min_obs = min_obs
        self.inflation = np.ones(len(GROUPS)) if inflation is None else inflation

    def chi2(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(P, parts) each group's two-sample statistic for stretches [a, b) against the rest (about
        chi-square with the group's effective dimensions when nothing changes; NaN where a side has
        fewer than ``min_obs`` observations)."""
        out = np.full((len(a), len(self.parts)), np.nan)
        for j, (c, m, tss, dims) in enumerate(self.parts):
            s_n = (m[b] - m[a]).astype(np.float64)
            tot = float(m[-1])
            r_n = tot - s_n
            ok = (s_n >= self.min_obs) & (r_n >= self.min_obs)
            if not ok.any():
                continue
            seg = c[b[ok]] - c[a[ok]]
            rest = c[-1] - seg
            diff = seg / s_n[ok, None] - rest / r_n[ok, None]
            between = (diff ** 2).sum(1) * s_n[ok] * r_n[ok] / tot
            # the likelihood ratio of a mean change (Gaussian, one spread for both sides)
            out[ok, j] = dims * tot * np.log(tss / np.maximum(tss - between, 1e-6 * tss))
        return out

    @property
    def dims(self) -> np.ndarray:
        return np.array([p[3] for p in self.parts])

    def nats(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fisher-combined evidence (P,) for stretches [a, b) against the rest, and (P, parts) each
        group's -log tail; groups without enough observations on a side count as no evidence."""
        g = len(self.parts)
        if g == 0:
            return np.zeros(len(a)), np.zeros((len(a), 0))
        chi = self.chi2(a, b) / self.inflation[self.index]
        per = np.nan_to_num(chi2_nats(chi, self.dims))
        # Fisher: -2 sum log p ~ chi2(2g); back to nats so histories with fewer groups compare
        return chi2_nats(2 * per.sum(1), 2 * g), per


def _value_scales(seqs: Seqs, n_actions: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_actions,) each action's mean value and spread (0 and 1 where it has none)."""
    act = np.minimum(seqs.action, n_actions - 1)
    has = np.isfinite(seqs.value)
    cnt = np.bincount(act[has], minlength=n_actions)
    tot = np.bincount(act[has], weights=seqs.value[has], minlength=n_actions)
    sq = np.bincount(act[has], weights=seqs.value[has] ** 2, minlength=n_actions)
    loc = np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)
    sd = np.sqrt(np.maximum(np.where(cnt > 1, sq / np.maximum(cnt, 1) - loc ** 2, 1.0), 0.0))
    return loc, np.where(sd > 1e-9, sd, 1.0)


def _scan(h: _History, n: int, min_segment: int, grid: int) -> tuple[float, int, int, np.ndarray]:
    """The best stretch of a history of n events: (evidence, start, end, per-group evidence).

    Tails [a, n) are scanned at every a; stretches the owner comes back after ([a, b), b < n) on a
    grid, refined at full resolution, and pay log(n) nats for their extra end point."""
    a = np.arange(min_segment, n - min_segment + 1)
    best = (0.0, 0, 0, np.zeros(len(h.parts)))
    if len(a):
        tot, per = h.nats(a, np.full(len(a), n))
        j = int(tot.argmax())
        best = (float(tot[j]), int(a[j]), n, per[j])
    pts = np.unique(np.linspace(1, n - 1, min(grid, n - 1)).round().astype(np.int64))
    aa, bb = np.meshgrid(pts, pts, indexing="ij")
    ok = (bb - aa >= min_segment) & (n - (bb - aa) >= min_segment) & (bb < n)
    if not ok.any():
        return best
    aa, bb = aa[ok], bb[ok]
    tot, _ = h.nats(aa, bb)
    j = int(tot.argmax())
    s, e = int(aa[j]), int(bb[j])
    for _ in range(2):                       # coordinate ascent at full resolution
        a = np.arange(1, e - min_segment + 1)
        a = a[n - (e - a) >= min_segment]
        if len(a):
            s = int(a[h.nats(a, np.full(len(a), e))[0].argmax()])
        b = np.arange(s + min_segment, n)
        b = b[n - (b - s) >= min_segment]
        if len(b):
            e = int(b[h.nats(np.full(len(b), s), b)[0].argmax()])
    tot, per = h.nats(np.array([s]), np.array([e]))
    if tot[0] - math.log(n) > best[0]:
        best = (float(tot[0] - math.log(n)), s, e, per[0])
    return best


class ChangePoint:
    """Locates each history's change point and calibrates its evidence on the training users.

    Parameters (stored unchanged, checked in :meth:`fit`):
        min_events (int, 12): shorter histories are not judged (no evidence, no stretch).
        min_segment (int, 4): events on each side of a change, at least ...
        min_share (float, 0.1): ... and this share of the history (a takeover is a sustained
            change; a burst of a few odd events is the injection candidates' to explain).
        min_obs (int, 3): observations of a feature group on each side for it to count.
        grid (int, 24): grid points per end for stretches the owner comes back after.
        min_bin (int, 80): training histories per length bin of the null.

    Fitted: ``n_actions_`` (int) one-hot width; ``value_loc_``, ``value_scale_`` (n_actions_,) each
    action's value mean and spread; ``knots_`` (K,) log history length of each bin;
    ``inflation_`` (K, len(GROUPS)) each group's typical statistic over its chi-square value at a
    history's midpoint (>= 1); ``lo_``, ``hi_`` (K,) the null maxima's 50% and 80% quantiles (all
    interpolated in log length between knots); ``n_fit_`` training histories judged.
    """

    def __init__(self, *, min_events: int = 12, min_segment: int = 4, min_share: float = 0.1, min_obs: int = 3,
                 grid: int = 24, min_bin: int = 80) -> None:
        self.min_events = min_events
        self.min_segment = min_segment
        self.min_share = min_share
        self.min_obs = min_obs
        self.grid = grid
        self.min_bin = min_bin

    def _check(self) -> None:
        for name, lo in (("min_events", 4), ("min_segment", 1), ("min_obs", 1), ("grid", 4), ("min_bin", 5)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        share = self.min_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 0.5:
            raise ValueError(f"min_share must be in [0, 0.5), got {self.min_share!r}")
        if self.min_events < 2 * self.min_segment:
            raise ValueError(f"min_events ({self.min_events}) must be at least 2 * min_segment ({self.min_segment})")

    def _histories(self, seqs: Seqs, stats: ItemStats, local: np.ndarray | None, inflation: np.ndarray | None):
        """(user, n, _History) for each judged history; ``inflation`` (U, len(GROUPS)) or None."""
        off = seqs.offsets
        flat = _event_groups(seqs, stats, self.n_actions_, local, self.value_loc_, self.value_scale_)
        for u in np.flatnonzero(np.diff(off) >= self.min_events):
            a, b = off[u], off[u + 1]
            h = _History([(x[a:b], ok[a:b]) for x, ok in flat], self.min_obs,
                         None if inflation is None else inflation[u])
            if h.parts:
                yield u, b - a, h

    def _raw(self, seqs: Seqs, stats: ItemStats, local: np.ndarray | None,
             inflation: np.ndarray) -> tuple[np.ndarray, ...]:
        """(U,) max evidence, (U,) start, (U,) end, (U, len(GROUPS)) per-group evidence."""
        U = seqs.n_users
        stat, start, end = np.zeros(U), np.zeros(U, np.int64), np.zeros(U, np.int64)
        groups = np.zeros((U, len(GROUPS)))
        for u, n, h in self._histories(seqs, stats, local, inflation):
            least = max(self.min_segment, math.ceil(self.min_share * n))
            stat[u], start[u], end[u], groups[u, h.index] = _scan(h, n, least, self.grid)
        return stat, start, end, groups

    def _interp(self, table: np.ndarray, n: np.ndarray) -> np.ndarray:
        """(U, ...) a per-bin table (K, ...) at each history's length (linear in log length)."""
        ln = np.log(np.maximum(n, 1))
        t = table.reshape(len(self.knots_), -1)
        out = np.stack([np.interp(ln, self.knots_, t[:, j]) for j in range(t.shape[1])], 1)
        return out.reshape((len(n),) + table.shape[1:])

    def fit(self, seqs: Seqs, stats: ItemStats, local: np.ndarray | None = None) -> ChangePoint:
        """Learn how much normal histories change from the training histories (poisoned or not:
        medians, and a tail fitted on the bulk below the 80th percentile of each length)."""
        self._check()
        check_is_fitted(stats, ["taste_"])
        self.n_actions_ = int(min(MAX_ACTIONS, (seqs.action.max() + 1) if len(seqs.action) else 1))
        self.value_loc_, self.value_scale_ = _value_scales(seqs, self.n_actions_)
        n = np.diff(seqs.offsets)
        judged = np.flatnonzero(n >= self.min_events)
        self.n_fit_ = len(judged)
        if self.n_fit_ < self.min_bin:
            log.warning("only %d training histories have %d events or more: change points are not judged",
                        self.n_fit_, self.min_events)
            self.knots_, self.lo_, self.hi_ = np.zeros(0), np.zeros(0), np.zeros(0)
            self.inflation_ = np.ones((0, len(GROUPS)))
            return self
        bins = np.array_split(judged[np.argsort(n[judged], kind="stable")], max(1, self.n_fit_ // self.min_bin))
        self.knots_ = np.array([np.median(np.log(n[i])) for i in bins])
        # how far from chi-square each group runs at a plain split (the middle) of normal histories
        ratio = np.full((seqs.n_users, len(GROUPS)), np.nan)
        for u, m, h in self._histories(seqs, stats, local, None):
            ratio[u, h.index] = h.chi2(np.array([m // 2]), np.array([m]))[0] / np.maximum(h.dims - 2 / 3, 1 / 3)
        med = np.array([[np.nanmedian(c) if np.isfinite(c).sum() >= 10 else 1.0 for c in ratio[i].T] for i in bins])
        self.inflation_ = np.maximum(np.nan_to_num(med, nan=1.0), 1.0)
        stat = self._raw(seqs, stats, local, self._interp(self.inflation_, n))[0]
        self.lo_ = np.array([np.quantile(np.log1p(stat[i]), _TAIL_LO) for i in bins])
        self.hi_ = np.array([np.quantile(np.log1p(stat[i]), _TAIL_HI) for i in bins])
        return self

    def _tail_nats(self, stat: np.ndarray, n: np.ndarray) -> np.ndarray:
        """(U,) -log P(null max >= stat) for histories of n events: log1p(stat) has a logistic tail
        through the bin's median and 80th percentile. The training maxima, standardised so, lie at
        or below a normal's upper quantiles in the log they were fitted on, but a fresh log of the
        same kind reaches a logistic's (0.99 quantile 3.3 spreads where a normal's is 2.8): the
        logistic's exponential tail keeps a log the model did not see within its share."""
        if len(self.knots_) == 0:
            return np.zeros(len(stat))
        lo, hi = self._interp(self.lo_, n), self._interp(self.hi_, n)
        z = (np.log1p(stat) - lo) / np.maximum(hi - lo, 1e-6) * _LOGIT_HI
        return np.clip(np.where(n >= self.min_events, np.logaddexp(0.0, z), 0.0), 0.0, MAX_NATS)

    def transform(self, seqs: Seqs, stats: ItemStats, local: np.ndarray | None = None) -> Changes:
        """Each history's located stretch and its calibrated evidence (see :class:`Changes`)."""
        check_is_fitted(self, ["knots_"])
        n = np.diff(seqs.offsets)
        if len(self.knots_) == 0:
            z = np.zeros(seqs.n_users)
            return Changes(z, z.copy(), np.zeros(len(z), np.int64), np.zeros(len(z), np.int64),
                           np.zeros((len(z), len(GROUPS))))
        stat, start, end, groups = self._raw(seqs, stats, local, self._interp(self.inflation_, n))
        return Changes(stat, self._tail_nats(stat, n), start, end, groups)

    def score(self, seqs: Seqs, stats: ItemStats, local: np.ndarray | None = None) -> np.ndarray:
        """(U,) in [0, 1], higher = more anomalous: one minus the change evidence's tail probability."""
        return self.transform(seqs, stats, local).score()

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``knots``, ``lo``, ``hi`` (K,), ``inflation`` (K, len(GROUPS)); meta the
        parameters, ``n_actions`` and ``n_fit``."""
        check_is_fitted(self, ["knots_"])
        meta = {k: getattr(self, k) for k in ("min_events", "min_segment", "min_share", "min_obs", "grid", "min_bin")}
        arrays = {"knots": self.knots_, "lo": self.lo_, "hi": self.hi_, "inflation": self.inflation_,
                  "value_loc": self.value_loc_, "value_scale": self.value_scale_}
        return arrays, {**meta, "n_actions": self.n_actions_, "n_fit": self.n_fit_}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> ChangePoint:
        """The stage :meth:`to_state` wrote; ValueError naming what does not fit."""
        meta = dict(meta)
        n_actions, n_fit = int(meta.pop("n_actions")), int(meta.pop("n_fit"))
        cp = cls(**meta)
        cp._check()
        cp.knots_, cp.lo_, cp.hi_ = (np.asarray(arrays[k], np.float64) for k in ("knots", "lo", "hi"))
        cp.inflation_ = np.asarray(arrays["inflation"], np.float64)
        K = len(cp.knots_)
        if (cp.knots_.ndim != 1 or cp.lo_.shape != (K,) or cp.hi_.shape != (K,)
                or cp.inflation_.shape != (K, len(GROUPS))):
            raise ValueError(f"its change-point null has knots {cp.knots_.shape}, quantiles {cp.lo_.shape} and "
                             f"{cp.hi_.shape}, inflation {cp.inflation_.shape}: expected ({K},) each and "
                             f"({K}, {len(GROUPS)})")
        if not 1 <= n_actions <= MAX_ACTIONS:
            raise ValueError(f"its change-point action columns must be 1..{MAX_ACTIONS}, got {n_actions}")
        cp.n_actions_, cp.n_fit_ = n_actions, n_fit
        cp.value_loc_, cp.value_scale_ = (np.asarray(arrays[k], np.float64) for k in ("value_loc", "value_scale"))
        if cp.value_loc_.shape != (n_actions,) or cp.value_scale_.shape != (n_actions,) or (cp.value_scale_ <= 0).any():
            raise ValueError(f"its change-point value scales have shapes {cp.value_loc_.shape} and "
                             f"{cp.value_scale_.shape} (positive spreads expected), for {n_actions} action columns")
        return cp
