"""History length: user detectors per length stratum, and how normal users' features drift with length.

Short histories carry too little behaviour to be judged against longer ones (rates, gap spreads,
entropies and shares are degenerate at a few events, and differ from one length to the next), and
heavy users are odd in ways that come with their length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .ensemble import UserDetectors
from .stage import check_is_fitted, nest, unnest

STRATA = (1, 2, 3, 5, 10)  # fewest events of the candidate strata; STRATA[-1] and up is the main one
MIN_STRATUM = 100          # training users a stratum needs; smaller ones join the next longer one


class LengthStrata:
    """One :class:`UserDetectors` per history-length stratum: histories under the main stratum's
    fewest events are judged against training users of about their own length.

    Parameters: ``detectors`` (an unfitted UserDetectors whose parameters each stratum's copy
    takes), ``strata`` (default STRATA), ``min_users`` (default MIN_STRATUM).
    Fitted: ``bounds_`` (fewest events of each stratum, increasing from 1; each stratum holds
    histories up to the next one's bound, the last every longer one) and ``detectors_`` (one
    fitted UserDetectors per stratum, the main one last).
    """

    def __init__(self, *, detectors: UserDetectors | None = None, strata: Sequence[int] = STRATA,
                 min_users: int = MIN_STRATUM) -> None:
        self.detectors = detectors
        self.strata = strata
        self.min_users = min_users

    def split(self, n_ev: np.ndarray) -> list[int]:
        """The fewest events of each stratum for training histories of ``n_ev`` (U,) events."""
        def count(lo, hi):
            return int(((n_ev >= lo) & (n_ev < hi)).sum())

        groups = [[self.strata[-1], np.inf]]
        for lo in reversed(self.strata[:-1]):
            if count(*groups[0]) < self.min_users:
                groups[0][0] = lo                       # too few users yet: reach down to shorter histories
            else:
                groups.insert(0, [lo, groups[0][0]])
        if len(groups) > 1 and count(*groups[0]) < self.min_users:
            lo = groups.pop(0)[0]
            groups[0][0] = lo                           # the shortest too small: it joins the next one
        return [int(g[0]) for g in groups]

    def fit(self, feats: np.ndarray, n_ev: np.ndarray, presumed: np.ndarray | None = None) -> LengthStrata:
        """feats (U, F) training user features, n_ev (U,) their event counts, presumed (U,) bool."""
        strata = list(self.strata)
        if not strata or strata[0] != 1 or any(b <= a for a, b in zip(strata, strata[1:])):
            raise ValueError(f"strata must increase from 1, got {self.strata!r}")
        if not isinstance(self.min_users, (int, np.integer)) or self.min_users < 1:
            raise ValueError(f"min_users must be a positive integer, got {self.min_users!r}")
        template = self.detectors if self.detectors is not None else UserDetectors()
        presumed = np.zeros(len(feats), bool) if presumed is None else np.asarray(presumed, bool)

        def fitted(users: np.ndarray) -> UserDetectors:
            return UserDetectors(**template.get_params()).fit(feats[users], presumed=presumed[users])

        los = self.split(n_ev)
        short = [fitted((n_ev >= lo) & (n_ev < hi)) for lo, hi in zip(los, los[1:])]
        main = fitted(n_ev >= los[-1] if len(los) > 1 else np.ones(len(feats), bool))
        self.bounds_, self.detectors_ = los, [*short, main]
        return self

    @property
    def main_(self) -> UserDetectors:
        """The detectors of the main (longest) stratum; its ``threshold_`` is every stratum's."""
        check_is_fitted(self, ["detectors_"])
        return self.detectors_[-1]

    @property
    def main_stratum_(self) -> int:
        """Fewest events of the histories the main stratum judges."""
        check_is_fitted(self, ["bounds_"])
        return self.bounds_[-1]

    @property
    def threshold_(self) -> float:
        return self.main_.threshold_

    def judge(self, feats: np.ndarray, n_ev: np.ndarray, method: str, **kw) -> np.ndarray | tuple[np.ndarray, ...]:
        """UserDetectors.<method>(feats, **kw), each history by the detectors of its length's stratum."""
        out = getattr(self.main_, method)(feats, **kw)
        for lo, hi, det in zip(self.bounds_, self.bounds_[1:], self.detectors_):
            m = (n_ev >= lo) & (n_ev < hi)
            if m.any():
                part = getattr(det, method)(feats[m], **kw)
                for a, b in zip(out if isinstance(out, tuple) else (out,), part if isinstance(part, tuple) else (part,)):
                    a[m] = b
        return out

    def score(self, feats: np.ndarray, n_ev: np.ndarray, *, whole: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(U,) ensemble scores in [0, 1] and (U, D) per-detector scores; ``whole``: the histories
        are accounts, not what is left of one (see UserDetectors.score)."""
        return self.judge(feats, n_ev, "score", whole=whole)

    def feature_tails(self, feats: np.ndarray, n_ev: np.ndarray) -> np.ndarray:
        """(U, F) each feature's -log two-sided tail probability within the user's stratum."""
        return self.judge(feats, n_ev, "feature_tails")

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays: the main stratum's under ``user.``, the others' under ``short<i>.``; meta: the main
        stratum's, ``main_stratum`` and ``short`` (each shorter stratum's, with ``min_events``)."""
        check_is_fitted(self, ["detectors_"])
        states = [d.to_state() for d in self.detectors_]
        arrays = {**nest("user", states[-1][0]), **{k: v for i, (a, _) in enumerate(states[:-1]) for k, v in nest(f"short{i}", a).items()}}
        meta = {**states[-1][1], "main_stratum": self.bounds_[-1], "strata": list(self.strata), "min_users": self.min_users,
                "short": [{**m, "min_events": lo} for lo, (_, m) in zip(self.bounds_, states[:-1])]}
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> LengthStrata:
        main = UserDetectors.from_state(unnest("user", arrays), meta)
        ls = cls(detectors=UserDetectors(**main.get_params()), strata=tuple(meta.get("strata", STRATA)),
                 min_users=meta.get("min_users", MIN_STRATUM))
        short = [UserDetectors.from_state(unnest(f"short{i}", arrays), m) for i, m in enumerate(meta["short"])]
        ls.bounds_ = [int(m["min_events"]) for m in meta["short"]] + [int(meta["main_stratum"])]
        if any(b <= a for a, b in zip(ls.bounds_, ls.bounds_[1:])) or ls.bounds_[0] < 1:
            raise ValueError(f"its history-length strata {ls.bounds_} are not increasing from 1")
        ls.detectors_ = [*short, main]
        return ls


class LengthTrend:
    """How normal users' features drift with their history length, to judge a flagged history at a
    typical length before deleting it.

    Heavy users go deeper into the catalogue, resemble any one other person less and rate faster:
    judged against everyone, a few heavy real raters score like attackers. The trend is Tukey's
    resistant line of each feature on log(events) over the normal training users (the slope between
    the medians of the shortest and longest thirds); :meth:`adjust` moves a history's features to
    what they would be at the median length (the pivot).

    Parameters: ``columns`` (the features that may drift; the others keep slope 0; None: all).
    Fitted: ``coef_`` (1 + F,): the pivot log-length, then a slope per feature (all 0: no trend).
    """

    MIN_USERS = 30  # fewer normal training users than this: no trend (every slope 0)

    def __init__(self, *, columns: Sequence[int] | None = None) -> None:
        self.columns = columns

    def fit(self, feats: np.ndarray, n_events: np.ndarray, normal: np.ndarray) -> LengthTrend:
        """feats (U, F), n_events (U,), normal (U,) bool: the users to learn from."""
        cols = range(feats.shape[1]) if self.columns is None else list(self.columns)
        if any(not 0 <= j < feats.shape[1] for j in cols):
            raise ValueError(f"columns must index the {feats.shape[1]} feature columns, got {self.columns!r}")
        x = np.log(np.maximum(np.asarray(n_events, np.float64), 1.0))
        use = np.asarray(normal, bool)
        out = np.zeros(1 + feats.shape[1])
        self.coef_ = out
        if use.sum() < self.MIN_USERS:
            return self
        xs = x[use]
        lo, hi = np.quantile(xs, [1 / 3, 2 / 3])
        short, long_ = use & (x <= lo), use & (x >= hi)
        dx = np.median(x[long_]) - np.median(x[short])
        out[0] = np.median(xs)
        if dx > 1e-9:
            for j in cols:
                out[1 + j] = (np.median(feats[long_, j]) - np.median(feats[short, j])) / dx
        return self

    @property
    def pivot_events(self) -> float:
        check_is_fitted(self, ["coef_"])
        return float(np.exp(self.coef_[0]))

    @property
    def active(self) -> bool:
        """Whether any feature drifts (a fitted trend with every slope 0 changes nothing)."""
        return getattr(self, "coef_", None) is not None and bool(self.coef_[1:].any())

    def adjust(self, feats: np.ndarray, n_events: np.ndarray) -> np.ndarray:
        """(n, F) the features moved along the trend to the median training length."""
        check_is_fitted(self, ["coef_"])
        if feats.shape[1] != len(self.coef_) - 1:
            raise ValueError(f"length trend has {len(self.coef_) - 1} feature slopes, features have {feats.shape[1]} columns")
        x = np.log(np.maximum(np.asarray(n_events, np.float64), 1.0))
        return feats - self.coef_[None, 1:] * (x - self.coef_[0])[:, None]

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One array, ``length_trend``: the pivot, then the slopes."""
        check_is_fitted(self, ["coef_"])
        return {"length_trend": self.coef_}, {"columns": None if self.columns is None else [int(c) for c in self.columns]}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> LengthTrend:
        coef = np.asarray(arrays["length_trend"], np.float64)
        if coef.ndim != 1 or len(coef) < 1 or not np.isfinite(coef).all():
            raise ValueError(f"length trend needs a finite (pivot, slopes...) vector, got shape {coef.shape}")
        trend = cls(columns=meta.get("columns"))
        trend.coef_ = coef
        return trend
