"""The attack injector: each attack type's events, built on a clean log's statistics."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .logstats import LogStats, expand_funnel, squeeze_into
from .mix import AttackMix

log = logging.getLogger(__name__)


@dataclass
class Chunk:
    user: int  # user code; >= len(stats.users) for fake users
    item_idx: np.ndarray
    act: np.ndarray
    ts: np.ndarray
    value: np.ndarray
    src: np.ndarray | None = None  # clean row each event copies (replay), else None


class Injector:
    """Builds attacks on one clean log: rows to keep, injected chunks, user types, targets.

    ``assemble.assemble`` turns the result into ``LabeledEvents``.
    """

    def __init__(self, st: LogStats, rng: np.random.Generator) -> None:
        self.st = st
        self.rng = rng
        self.keep = np.ones(len(st.ts), dtype=bool)
        self.chunks: list[Chunk] = []
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
        self.chunks.append(Chunk(user, np.asarray(item_idx, np.int64), np.asarray(act, np.int64),
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
            ts = squeeze_into(start + np.cumsum(gaps), st.t_min, st.t_max)
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
        self._add(u, items, act, squeeze_into(start + rel, st.t_min, st.t_max), self._weak_values(items, act))

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
        self._add(u, items, act, squeeze_into(start + rel, st.t_min, st.t_max), st.values(rng, "random", items, act))

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

        self.add_profile(u, parts, targets, target_kind, len(st.actions), st.t_min, st.t_max)

    def add_profile(self, u: int, parts: list[tuple[np.ndarray, str]], targets: np.ndarray, target_kind: str,
                    target_depth: int, lo: float, hi: float) -> None:
        """One fake profile's events: ``parts`` (items, value kind) in random order following the
        log's funnel, then ``targets`` at ``target_depth`` actions with ``target_kind`` values;
        times spread over [lo, hi]."""
        st, rng = self.st, self.rng
        inter = np.concatenate([p[0] for p in parts] + [targets]).astype(np.int64)
        kinds_i = np.concatenate([np.full(len(p[0]), p[1], dtype=object) for p in parts]
                                 + [np.full(len(targets), target_kind, dtype=object)])
        depth = st.depth(rng, len(inter))
        depth[len(inter) - len(targets):] = target_depth
        order = rng.permutation(len(inter))
        items, act = expand_funnel(inter[order], depth[order])
        kinds = np.repeat(kinds_i[order], depth[order])
        value = np.empty(len(items))
        for kd in np.unique(kinds):
            m = kinds == kd
            value[m] = st.values(rng, str(kd), items[m], act[m])
        self._add(u, items, act, st.timeline(rng, len(items), lo, hi), value)
