"""The item side of the campaign stage: for each item, its most concentrated audiences and how
unlike chance and the item's normal audience they are.

Candidate audiences of an item (each a set of its adoptions):

- its adopters in the densest window of each width (an hour, a day, a week, a month; timed logs
  whose span is at least 1.5 times the width);
- its lockstep core: its adopters who also adopted its lockstep partner, the item they co-adopt
  most beyond chance over the whole log (any log, timed or not).

Each audience is tested, in nats (-log tail probability):

- ``burst``: more adopters inside the window than the item's own rate outside it gives (Poisson,
  corrected for the windows of the item's lifetime); timing says *when*, never *whether*;
- ``atypical``: the members' per-user evidence (calibrated user scores, -log(1 - score)) summed,
  against the item's other adopters' (a Gamma with their moments);
- ``new``: adoptions by accounts at most NEW_AGE old, against the item's other adopters (binomial);
- ``value``: the members' share of one extreme value against the item's other adopters (binomial);
- ``lockstep``: the members' adoptions of one other item (in the window's period, or ever),
  against that item's other adopters (:mod:`.lockstep`).

Every comparison is with the same item's other adopters (with a few pseudo-adopters at the log's
rates), so an item's own audience (niche items draw odd users, popular ones new users) is its
baseline. The audience evidence is the sum of the four; a burst adds at most as much again, so
timing alone never makes an item suspicious: organic rises (a release) have ordinary audiences.
All but lockstep read one item's adoptions at a time (a Ray pass partitions by item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .adoptions import Adoptions
from .lockstep import _ranges, pair_lockstep, window_lockstep
from .tails import binom_nats, gamma_nats, poisson_nats

WINDOWS = (3600.0, 86_400.0, 7 * 86_400.0, 30 * 86_400.0)  # widths tried on timed logs (s), at most 2/3 of its span
NEW_AGE = 86_400.0   # an adoption within a day of the account's first event is a new account's
PRIOR = 5.0          # pseudo-adopters at the log's rates added to an item's other adopters
COMPONENTS = ("burst", "atypical", "new", "value", "lockstep")


@dataclass
class ItemContext:
    """What the item-side tests need besides one item's adoptions (fit: training statistics;
    score: the scored log's users)."""

    user_z: np.ndarray     # (U,) per-user evidence in nats, -log(1 - score) capped
    z_mean: float          # training users' mean and variance of it
    z_var: float
    value_lo: float        # values at or below / at or above these are extreme (NaN: no values)
    value_hi: float
    g_lo: float            # share of extreme-low / extreme-high values among training adoptions
    g_hi: float
    taste_lift: float      # how many times chance organic taste may raise a co-adoption
    min_members: int       # smallest audience tested


@dataclass
class Audiences:
    """Candidate audiences (C): audience ``c`` is adoption rows ``rows[ptr[c]:ptr[c + 1]]`` of
    ``item[c]``, in the period ``lo..hi`` (``width`` 0: a lockstep core over the whole log), with
    its evidence per component in nats."""

    item: np.ndarray
    ptr: np.ndarray
    rows: np.ndarray
    width: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    evidence: np.ndarray    # (C, len(COMPONENTS)) nats
    direction: np.ndarray   # (C,) +1: extreme-high values, -1: extreme-low, 0: none
    lock_item: np.ndarray   # (C,) the item co-adopted beyond chance (-1: none) and by how many
    lock_count: np.ndarray

    @property
    def size(self) -> np.ndarray:
        return np.diff(self.ptr)

    def rows_of(self, c: int) -> np.ndarray:
        return self.rows[self.ptr[c]:self.ptr[c + 1]]

    @property
    def raw(self) -> np.ndarray:
        """(C,) the combined statistic: audience evidence + min(burst, audience evidence)."""
        aud = self.evidence[:, 1:].sum(1)
        return aud + np.minimum(self.evidence[:, 0], aud)


def _audiences(item, sizes, rows, width, lo, hi) -> Audiences:
    c = len(item)
    return Audiences(np.asarray(item, np.int64), np.r_[0, np.cumsum(sizes)].astype(np.int64), np.asarray(rows, np.int64),
                     np.asarray(width, np.float64), np.asarray(lo, np.float64), np.asarray(hi, np.float64),
                     np.zeros((c, len(COMPONENTS))), np.zeros(c, np.int8), np.full(c, -1, np.int64), np.zeros(c, np.int64))


def new_account(ad: Adoptions) -> np.ndarray:
    """(P,) adoptions made within NEW_AGE of the account's first event, by accounts that started
    after the log's first NEW_AGE (older ones' age is unknown)."""
    if not ad.timed:
        return np.zeros(len(ad.user), bool)
    first = ad.user_first[ad.user]
    return (ad.ts - first <= NEW_AGE) & (first >= ad.t_min + NEW_AGE)


def _one_per_user(ad: Adoptions, cand: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) bool: the first of each user's rows within each candidate (cand, rows sorted by cand)."""
    key = cand * max(ad.n_users, 1) + ad.user[rows]
    keep = np.zeros(len(rows), bool)
    keep[np.unique(key, return_index=True)[1]] = True
    return keep


def window_audiences(ad: Adoptions, widths: tuple[float, ...], min_members: int) -> Audiences:
    """Each item's densest window of each width (timed logs), with its burst evidence; an
    audience holds one visit per user (its first in the window)."""
    n_i, off = ad.item_size, ad.item_offsets
    items = np.flatnonzero(n_i >= min_members)
    parts, bursts = [], []
    P = len(ad.user)
    span = (ad.t_max - ad.t_min) + 2 * max(widths, default=0.0) + 1.0
    key = ad.item * span + (ad.ts - ad.t_min)
    for w in (widths if ad.timed else ()):
        if w * 1.5 > ad.t_max - ad.t_min:  # the item's rate outside a window needs time outside it
            continue
        ends = np.searchsorted(key, key + w, side="left")  # rows j..ends[j] lie in [t_j, t_j + w)
        count = ends - np.arange(P)
        order = np.lexsort((np.arange(P), -count, ad.item))
        best = order[off[items]]  # each item's densest window (the earliest of equals), by visits
        rows = _ranges(best, count[best])
        cand = np.repeat(np.arange(len(items)), count[best])
        one = _one_per_user(ad, cand, rows)
        k, n = np.bincount(cand[one], minlength=len(items)), n_i[items]  # users in the window, of the item
        life = np.maximum(ad.t_max - ad.ts[off[items]], w)
        rate_out = (n - k + 0.5) / np.maximum(life - w, w)
        burst = np.maximum(0.0, poisson_nats(k, rate_out * w) - np.log(life / w))
        keep = k >= min_members
        in_kept = keep[cand] & one
        b = best[keep]
        parts.append((items[keep], k[keep], rows[in_kept], np.full(len(b), w), ad.ts[b], ad.ts[ends[b] - 1]))
        bursts.append(burst[keep])
    if not parts:
        return _audiences([], [], [], [], [], [])
    item, k, rows, width, lo, hi = (np.concatenate(x) for x in zip(*parts))
    aud = _audiences(item, k, rows, width, lo, hi)
    aud.evidence[:, 0] = np.concatenate(bursts)
    return aud


def core_audiences(ad: Adoptions, taste_lift: float, min_members: int) -> Audiences:
    """Each item's lockstep core over the whole log: its adopters who also adopted its partner
    (their first visits)."""
    partner, co_count, nats = pair_lockstep(ad, taste_lift)
    items = np.flatnonzero((partner >= 0) & (co_count >= min_members))
    off = ad.item_offsets
    visits = np.diff(off)[items]
    rows = _ranges(off[items], visits)
    owner = np.repeat(items, visits)
    first = ad.first_visit[rows]
    rows, owner = rows[first], owner[first]
    pair_keys = np.sort(ad.user * ad.n_items + ad.item)
    want = ad.user[rows] * ad.n_items + partner[owner]
    pos = np.minimum(np.searchsorted(pair_keys, want), len(pair_keys) - 1)
    rows = rows[pair_keys[pos] == want]
    sizes = np.bincount(np.searchsorted(items, ad.item[rows]), minlength=len(items))
    aud = _audiences(items, sizes, rows, np.zeros(len(items)), np.full(len(items), ad.t_min),
                     np.full(len(items), ad.t_max))
    aud.evidence[:, 4] = nats[items]
    aud.lock_item[:] = partner[items]
    aud.lock_count[:] = co_count[items]
    return aud


def _concat(a: Audiences, b: Audiences) -> Audiences:
    return Audiences(np.r_[a.item, b.item], np.r_[a.ptr[:-1], b.ptr + a.ptr[-1]], np.r_[a.rows, b.rows],
                     np.r_[a.width, b.width], np.r_[a.lo, b.lo], np.r_[a.hi, b.hi],
                     np.vstack([a.evidence, b.evidence]), np.r_[a.direction, b.direction],
                     np.r_[a.lock_item, b.lock_item], np.r_[a.lock_count, b.lock_count])


def audience_tests(ad: Adoptions, aud: Audiences, ctx: ItemContext) -> None:
    """Fill the atypical, new and value evidence of ``aud``: members against the item's others."""
    if len(aud.item) == 0:
        return
    off, it = ad.item_offsets, aud.item
    k = aud.size.astype(np.float64)
    n_other = ad.item_size[it] - k
    fv = ad.first_visit
    own_first = ad.pair_first[aud.rows]  # each member's first visit: what "others" leave out

    def inside(x: np.ndarray) -> np.ndarray:
        v = np.r_[x[aud.rows].astype(np.float64), 0.0]
        out = np.add.reduceat(v, aud.ptr[:-1]) if len(aud.rows) else np.zeros(len(it))
        return np.where(k > 0, out, 0.0)

    def others(x: np.ndarray) -> np.ndarray:
        """(C,) the sum of x over the first visits of the item's adopters outside the audience."""
        c = np.r_[0.0, np.cumsum(np.where(fv, x, 0), dtype=np.float64)]
        mine = np.r_[np.asarray(x, np.float64)[own_first], 0.0]
        out = np.add.reduceat(mine, aud.ptr[:-1]) if len(aud.rows) else np.zeros(len(it))
        return c[off[it + 1]] - c[off[it]] - np.where(k > 0, out, 0.0)

    z = ctx.user_z[ad.user]
    zi = inside(z)
    mean_o = (others(z) + PRIOR * ctx.z_mean) / (n_other + PRIOR)
    aud.evidence[:, 1] = gamma_nats(zi, k, mean_o, ctx.z_var * (mean_o / max(ctx.z_mean, 1e-6)) ** 2)
    new = new_account(ad)
    if new.any():
        ni = inside(new)
        p_o = (others(new) + PRIOR * new[fv].mean()) / (n_other + PRIOR)
        aud.evidence[:, 2] = binom_nats(ni, k, p_o)
    fin = np.isfinite(ad.value)
    if not (fin.any() and np.isfinite(ctx.value_hi)):
        return
    m = inside(fin)
    m_o = others(fin)
    best = np.zeros(len(it))
    for sign, flag, g in ((1, fin & (ad.value >= ctx.value_hi), ctx.g_hi), (-1, fin & (ad.value <= ctx.value_lo), ctx.g_lo)):
        c_in = inside(flag)
        p_o = (others(flag) + PRIOR * g) / (m_o + PRIOR)
        nats = binom_nats(c_in, m, p_o)
        better = nats > best
        best = np.where(better, nats, best)
        aud.direction[better & (nats > 0)] = sign
    aud.evidence[:, 3] = np.maximum(0.0, best - np.log(2.0))


def candidate_audiences(ad: Adoptions, ctx: ItemContext, widths: tuple[float, ...] = WINDOWS) -> Audiences:
    """Every item's candidate audiences with all five tests."""
    win = window_audiences(ad, widths, ctx.min_members)
    if len(win.item):
        partner, count, nats = window_lockstep(ad, win.item, (win.ptr, win.rows), win.lo - win.width,
                                               win.hi + win.width, ctx.taste_lift)
        win.evidence[:, 4], win.lock_item[:], win.lock_count[:] = nats, partner, count
    aud = _concat(win, core_audiences(ad, ctx.taste_lift, ctx.min_members))
    audience_tests(ad, aud, ctx)
    return aud
