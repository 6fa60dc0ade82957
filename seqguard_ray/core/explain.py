"""The explainer: for each flagged user, where the anomaly lies (a part of the history or all of
it), its type (one of repair.ANOMALY_TYPES) and the reasons, in words; and whether the verdict
holds at a typical history length."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .detectors import ACCOUNT, DETECTORS
from .ensemble import decisive
from .event_detector import ResidualCheck
from .changepoint import Changes
from .features import EVENT_FEATURES, USER_FEATURES, ItemStats, Seqs, event_features, item_sets, prev_occurrences, user_features
from .results import Scored
from .stage import check_is_fitted
from .strata import LengthStrata, LengthTrend
from .tokens import N_SPECIAL
from .validate import repeated

log = logging.getLogger(__name__)

# Training users presumed anomalous before any detector is fitted: histories of at least
# PRESUME_MIN_ITEMS items that resemble other people's less than random item sets drawn by
# popularity do. Fake profiles resemble nobody, not even each other, so the test holds however
# many of them there are. Where more than MAX_PRESUMED_SHARE of the users fail it, the log has too
# little shared taste for it to mean anything, and nobody is presumed.
PRESUME_MIN_ITEMS = 10
MAX_PRESUMED_SHARE = 0.3

_BOT_FEATURES = ("log_rate_per_active_hour", "median_log_gap", "gap_spread", "catalogue_order", "fast_gap_share",
                 "gap_regularity", "hour_entropy", "main_action_share", "action_entropy", "unseen_action_share",
                 "mean_timing_surprisal")
_SHILL_FEATURES = ("mean_log_count", "std_log_count", "distinct_item_share", "top_item_share", "value_mean",
                   "value_std", "value_extreme_share", "value_deviation", "value_item_corr", "mean_item_surprisal",
                   "taste_coherence", "neighbour_lift")


def resembles_nobody(seqs: Seqs, uf: np.ndarray, n_items: int, *, training: bool = True) -> np.ndarray:
    """(U,) histories whose items resemble other people's less than random item sets do
    (neighbour_lift < 0, at least PRESUME_MIN_ITEMS items); in training, nobody when more than
    MAX_PRESUMED_SHARE of the users are such."""
    n = np.diff(item_sets(seqs, n_items).indptr)
    presumed = (uf[:, USER_FEATURES.index("neighbour_lift")] < 0) & (n >= PRESUME_MIN_ITEMS)
    if training and presumed.mean() > MAX_PRESUMED_SHARE:
        log.warning("%.0f%% of the training users resemble other users no more than random item sets do: "
                    "too little shared taste to presume any of them anomalous", 100 * presumed.mean())
        return np.zeros(len(uf), bool)
    return presumed


def on_targets(uix: np.ndarray, item: np.ndarray, hot: np.ndarray) -> np.ndarray:
    """(N,) events on a user's target items: items with two or more ``hot`` events in that user's
    history. Injected traffic (click farms) pushes a few items many times, and not every injected
    event is odd on its own. ``item``: item keys (Seqs.item_key, where each new item has its own
    negative key); the special ids, the unknown bucket among them, are no item and gather nothing."""
    is_item = (item >= N_SPECIAL) | (item < 0)
    item = item - min(int(item.min(initial=0)), 0)  # >= 0 for the pair key
    key = uix.astype(np.int64) * (int(item.max(initial=0)) + 1) + item
    keys, counts = np.unique(key[hot & is_item], return_counts=True)
    return np.isin(key, keys[counts >= 2])


def distinct_items(uix: np.ndarray, item: np.ndarray, mask: np.ndarray, n_users: int) -> np.ndarray:
    """(U,) distinct items among each user's ``mask``ed events."""
    first = prev_occurrences(uix[mask], item[mask]) == 0
    return np.bincount(uix[mask], weights=first, minlength=n_users).astype(np.int64)


@dataclass
class Evidence:
    """What the detectors saw of a batch of users: the explainer's input."""

    seqs: Seqs
    ef: np.ndarray        # (N, E) event features
    local: np.ndarray     # (N,) local event scores in [0, 1]
    uf: np.ndarray        # (U, F) user features
    segments: np.ndarray  # (U, 2) each history's most changed stretch [a, b)
    score: np.ndarray     # (U,) user scores in [0, 1]
    per_det: np.ndarray   # (U, len(DETECTORS)) calibrated per-detector scores
    # each history's located change point (ChangePoint) and its verdict on the score's scale (U,),
    # already part of ``score``; None: the best taste ``segments`` stand in (format-11 bundles)
    changes: Changes | None = None
    change_score: np.ndarray | None = None


class Explainer:
    """Types flagged users, marks their anomalous events and says why.

    A flagged history is explained by the smallest set of its events (the events beyond the
    threshold, the doubtful ones, those plus the items they push, its replays, its most changed
    stretch) whose removal leaves a clearly normal history of ordinary events; otherwise the whole
    history is anomalous, typed bot / shilling / other by its most extreme feature group (or
    replay, for a copied account).

    Parameters:
        residual_normal (float, 0.95): what is left must score below this (clearly normal, not just
            under the threshold: fake profiles less their oddest events often land in 0.95..0.99).
        residual_z (float, 3.0): ... and its events must lie fewer spreads than this above normal
            users' (:class:`ResidualCheck`).
        max_explained (float, 0.8): the largest share of a history a partial explanation may take
            (click farms can inject more events than their victim made).
        doubtful_event (float, 0.9): local score of "doubtful" events, the wider injection candidate.
        whole_spread (float, 1e-4): a whole-history anomaly's event scores are the user's score, less
            up to this much for its locally most ordinary events (ties broken by local oddness).

    Fitted on the training users the detectors keep as normal: ``residual_check_``,
    ``length_trend_`` (:class:`LengthTrend`), ``quantiles_`` (2, F) their features' 5% and 95%
    quantiles (the "typical" range in reasons).
    """

    def __init__(self, *, residual_normal: float = 0.95, residual_z: float = 3.0, max_explained: float = 0.8,
                 doubtful_event: float = 0.9, whole_spread: float = 1e-4) -> None:
        self.residual_normal = residual_normal
        self.residual_z = residual_z
        self.max_explained = max_explained
        self.doubtful_event = doubtful_event
        self.whole_spread = whole_spread

    def fit(self, local: np.ndarray, offsets: np.ndarray, uf: np.ndarray, normal: np.ndarray, *, main_stratum: int,
            drift_columns: Sequence[int]) -> Explainer:
        """local (N,) training event scores, offsets (U + 1,), uf (U, F), normal (U,) bool."""
        for name in ("residual_normal", "max_explained", "doubtful_event", "whole_spread"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        n_ev = np.diff(offsets)
        self.residual_check_ = ResidualCheck(cut=self.doubtful_event).fit(local, offsets, normal)
        self.length_trend_ = LengthTrend(columns=drift_columns).fit(uf, n_ev, normal & (n_ev >= main_stratum))
        self.quantiles_ = np.quantile(uf[normal] if normal.sum() >= 5 else uf, [0.05, 0.95], axis=0)
        return self

    def explain(self, ev: Evidence, *, strata: LengthStrata, stats: ItemStats, n_items: int,
                known_actions: int) -> Scored:
        """Verdicts, types, reasons and event scores for the users of ``ev``; ``strata`` judges
        what is left of a history, ``stats`` featurizes it, ``n_items`` is the vocabulary size and
        ``known_actions`` the number of actions the model learned."""
        check_is_fitted(self, ["residual_check_"])
        seqs, score, per_det, uf = ev.seqs, ev.score, ev.per_det, ev.uf
        n_ev = np.diff(seqs.offsets)
        thr = strata.threshold_
        U = seqs.n_users
        anomalous = score >= thr
        atype = repeated("normal", U)
        ev_score = np.minimum(ev.local, np.repeat(score, n_ev))
        ev_anom = np.zeros(len(ev.local), bool)
        reasons: list[list[str]] = [[] for _ in range(U)]
        flagged = np.flatnonzero(anomalous)
        # what makes each flagged user unusual, feature by feature (-log tail probabilities)
        tails = dict(zip(flagged, strata.feature_tails(uf[flagged], n_ev[flagged]))) if len(flagged) else {}
        copied = decisive(per_det, ACCOUNT) >= thr
        of_person = decisive(per_det, ("part_copy",)) >= thr  # a partial copy's source is a person (no sweep)
        replayed = decisive(per_det, ("replay",)) >= thr
        if len(flagged):
            self._localize(ev, strata, stats, n_items, known_actions, tails, flagged, copied, of_person, atype,
                           ev_score, ev_anom, reasons)
        nobody = resembles_nobody(seqs, uf, n_items, training=False) if len(flagged) else np.zeros(U, bool)
        for u in flagged:
            reasons[u] = self._reasons(score[u], thr, per_det[u], uf[u], tails[u], nobody[u], copied[u], replayed[u]) + reasons[u]
        doubt = self._length_doubt(uf, n_ev, flagged[atype[flagged] != "takeover"], reasons, strata)
        start = self._takeovers(ev, thr, flagged, atype, ev_anom, reasons)
        return Scored(score, anomalous, atype, reasons, ev_score, ev_anom, per_det, doubt, takeover_start=start)

    @staticmethod
    def _takeovers(ev: Evidence, thr: float, flagged: np.ndarray, atype: np.ndarray, ev_anom: np.ndarray,
                   reasons) -> np.ndarray:
        """(U,) each takeover's first event after its change point (-1 elsewhere); reasons say where
        and what changed, for takeovers and for any flagged user the change point crossed."""
        start = np.full(ev.seqs.n_users, -1, np.int64)
        off = ev.seqs.offsets
        for u in flagged:
            taken = atype[u] == "takeover"
            cut = np.flatnonzero(ev_anom[off[u]:off[u + 1]]) if taken else None
            if taken:  # the stretch the explanation took: the change point's or the best taste segment
                start[u] = cut[0]
            if ev.changes is not None and (taken or ev.change_score[u] >= thr):
                stretch = (int(cut[0]), int(cut[-1]) + 1) if taken else None
                reasons[u].append(ev.changes.describe(u, ev.seqs.ts[off[u]:off[u + 1]], taken=taken, stretch=stretch))
        return start

    def _localize(self, ev, strata, stats, n_items, known_actions, tails, flagged, copied, of_person, atype, ev_score,
                  ev_anom, reasons) -> None:
        """Where each flagged user's anomaly lies: the smallest candidate set whose removal leaves a
        clearly normal history of ordinary events, or the whole history."""
        seqs, local, score = ev.seqs, ev.local, ev.score
        off, thr = seqs.offsets, strata.threshold_
        n_ev = np.diff(off)
        uix = seqs.user_index()
        in_flagged = np.isin(uix, flagged)
        replay = ev.ef[:, EVENT_FEATURES.index("replay")] > 0
        # a takeover the change point flagged is one whenever what is left is normal, smallest or not;
        # the best taste segment stays a candidate beside the change point's stretch (tried last)
        by_change = np.zeros(seqs.n_users, bool) if ev.changes is None else ev.change_score >= thr
        stretches = [ev.segments] + ([] if ev.changes is None else [np.stack([ev.changes.start, ev.changes.end], 1)])
        seg_masks = [np.zeros(len(local), bool) for _ in stretches]
        for u in flagged:
            for mask, pairs in zip(seg_masks, stretches):
                a, b = pairs[u]
                mask[off[u] + a: off[u] + b] = True
        doubtful = local >= self.doubtful_event
        candidates = [
            ("injection", local >= thr),
            ("injection", doubtful),
            ("injection", doubtful | on_targets(uix, seqs.item_key, doubtful & in_flagged)),
            ("replay", replay),
            *[("takeover", mask) for mask in seg_masks],
        ]
        per_item_push = 2 * max(1, known_actions)  # a push: more events per item than two passes down the action funnel
        best_set = {}
        still_odd = {}  # user -> (size, residual score, z, nobody) of the smallest set the residual check refused
        explainable = in_flagged & ~copied[uix]  # a copied account is a copy as a whole
        tries = []  # (candidate k, its events, the users it may explain, each user's set size)
        for k, (name, cand) in enumerate(candidates):
            cand = cand & explainable
            size = np.bincount(uix[cand], minlength=seqs.n_users)
            ok = (size > 0) & (size <= self.max_explained * n_ev) & (n_ev - size >= 5)
            users = np.flatnonzero(ok & np.isin(np.arange(seqs.n_users), flagged))
            if len(users):
                tries.append((k, cand, users, size))
        if tries:
            # every (candidate, user) residual history featurised in ONE pass, each as a history of
            # its own: the features are per history, so this equals a pass per candidate, with the
            # fixed cost of a pass paid once (a stream scores one user a call)
            rows = [np.flatnonzero(np.isin(uix, users) & ~cand) for _, cand, users, _ in tries]
            left = np.concatenate([(n_ev - size)[users] for _, _, users, size in tries])
            idx = np.concatenate(rows)
            sub = seqs.take(idx, np.r_[0, np.cumsum(left)])
            sub_ef = event_features(sub, stats)
            sub_uf, _ = user_features(sub, stats, sub_ef, local[idx])
            res_score, _ = strata.score(sub_uf, left, whole=False)
            res_z = self.residual_check_.z(local[idx], sub.offsets)
            # filler that resembles nobody stays filler once the targets are gone
            res_nobody = resembles_nobody(sub, sub_uf, n_items, training=False)
        at = 0
        for k, cand, users, size in tries:
            name, here = candidates[k][0], slice(at, at + len(users))
            at += len(users)
            pushed = size >= per_item_push * distinct_items(uix, seqs.item_key, cand, seqs.n_users)
            for u, r, z, nobody in zip(users, res_score[here], res_z[here], res_nobody[here]):
                if r >= self.residual_normal or (name == "takeover" and pushed[u]):
                    continue  # (a stretch of many events on a few items is a push, not another person)
                # a set picked by oddness alone must leave ordinary events; a push of a few items,
                # or a stretch the change point flagged (the owner's events were scored in the
                # intruder's context), is an explanation by its structure, unless what is left
                # resembles nobody
                structure = pushed[u] or (name == "takeover" and by_change[u])
                if (z >= self.residual_z and not structure) or nobody:
                    if u not in still_odd or size[u] < still_odd[u][0]:
                        still_odd[u] = (size[u], r, z, nobody)
                elif u not in best_set or size[u] < best_set[u][1] or (name == "takeover" and by_change[u]):
                    best_set[u] = (k, size[u], r)
        for u in flagged:
            a, b = off[u], off[u + 1]
            if u in best_set:
                k, size, r = best_set[u]
                atype[u], cand = candidates[k][0], candidates[k][1][a:b]
                ev_score[a:b] = np.where(cand, np.maximum(local[a:b], score[u]), np.minimum(local[a:b], r))
                ev_anom[a:b] = cand
                reasons[u].append(f"{size} of {b - a} events explain it: without them the history scores {r:.3f} (normal)")
                continue
            # a copied account is a replay, unless it is a bot's sweep that another bot made too
            # (a partial copy copies a person: a replay whatever its timing looks like)
            whole = self._whole_type(tails[u])
            atype[u] = "replay" if copied[u] and (whole != "bot" or of_person[u]) else whole
            # every event is anomalous; within the history the locally odder ones rank higher
            ev_score[a:b] = np.maximum(local[a:b], score[u] * (1.0 - self.whole_spread * (1.0 - local[a:b])))
            ev_anom[a:b] = True
            reasons[u].append("the whole history is anomalous: no part of it explains the score")
            if u in still_odd:
                size, r, z, nobody = still_odd[u]
                left = ("still resemble other users' less than random item sets do" if nobody else
                        f"are still unusual ({z:.1f} spreads above normal users' events)")
                reasons[u].append(f"without its {size} oddest events it would score {r:.3f}, but the events left {left}")

    @staticmethod
    def _whole_type(tails_row: np.ndarray) -> str:
        """bot or shilling by which feature group is most extreme; other when neither is."""
        t = dict(zip(USER_FEATURES, tails_row))
        bot = max(t[f] for f in _BOT_FEATURES)
        shill = max(t[f] for f in _SHILL_FEATURES)
        if max(bot, shill) < -math.log(0.01):
            return "other"
        return "bot" if bot >= shill else "shilling"

    def _reasons(self, score, thr, per_det, uf_row, tails_row, nobody: bool, copied: bool, replayed: bool) -> list[str]:
        det = ", ".join(f"{d} {p:.3f}" for d, p in zip(DETECTORS, per_det) if p >= 0.95)
        out = [f"score {score:.3f} >= threshold {thr:.3f}" + (f" (detectors: {det})" if det else "")]
        q = getattr(self, "quantiles_", None)
        for j in np.argsort(-tails_row)[:3]:
            if tails_row[j] < -math.log(0.05):
                break
            typical = f" (typical {q[0][j]:.3g}..{q[1][j]:.3g})" if q is not None else ""
            out.append(f"{USER_FEATURES[j]} = {uf_row[j]:.3g}{typical}")
        if nobody:
            lift = uf_row[USER_FEATURES.index("neighbour_lift")]
            out.append(f"its items resemble other users' less than random item sets do (neighbour_lift {lift:.2f} < 0)")
        if copied:
            jac = uf_row[USER_FEATURES.index("copy_overlap")]
            part = uf_row[USER_FEATURES.index("part_copy")]
            if per_det[DETECTORS.index("copy")] >= per_det[DETECTORS.index("part_copy")]:
                out.append(f"its items are a copy of an account that started earlier (Jaccard similarity {jac:.2f}): "
                           f"replayed traffic or a cloned account")
            else:
                out.append(f"nearly all its items are inside one other account's, far more than people of its size share "
                           f"with anyone ({part:.0f} nats): a partial copy, e.g. of a power user")
        if replayed:
            share = uf_row[USER_FEATURES.index("replay_share")]
            out.append(f"{share:.0%} of its events replay earlier stretches of its own history, the same items in the "
                       f"same order with the same gaps: replayed traffic")
        return out

    def _length_doubt(self, uf: np.ndarray, n_ev: np.ndarray, flagged: np.ndarray, reasons: list[list[str]],
                      strata: LengthStrata) -> np.ndarray:
        """(U,) the ``flagged`` histories of the main stratum that score clearly normal (below
        residual_normal) once their features are moved to the median training length along normal
        users' trend: odd only in the ways users of their length are. Their verdict stands; the
        repair policy keeps their events at lower weights. Takeovers are not judged so: their
        evidence is a located stretch, which moving the whole history's features says nothing about."""
        out = np.zeros(len(uf), bool)
        judged = flagged[n_ev[flagged] >= strata.main_stratum_]
        trend = self.length_trend_
        if len(judged) == 0 or not trend.active:
            return out
        at_typical, _ = strata.score(trend.adjust(uf[judged], n_ev[judged]), n_ev[judged])
        for u, r in zip(judged, at_typical):
            if r < self.residual_normal:
                out[u] = True
                reasons[u].append(f"users of its length ({n_ev[u]} events) commonly look like this: at the typical "
                                  f"length ({trend.pivot_events:.0f} events) it would score {r:.3f}, so its "
                                  f"events are kept at lower weights rather than dropped")
        return out

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``residual_check`` (4,), ``length_trend`` (1 + F,), ``quantiles`` (2, F); meta the parameters."""
        check_is_fitted(self, ["residual_check_"])
        arrays = {**self.residual_check_.to_state()[0], **self.length_trend_.to_state()[0], "quantiles": self.quantiles_}
        return arrays, {k: getattr(self, k) for k in ("residual_normal", "residual_z", "max_explained", "doubtful_event",
                                                      "whole_spread")}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Explainer:
        """``quantiles`` may be absent (reasons then give no typical range)."""
        ex = cls(**meta)
        ex.residual_check_ = ResidualCheck.from_state(arrays, {})
        ex.length_trend_ = LengthTrend.from_state(arrays, {})
        q = arrays.get("quantiles")
        ex.quantiles_ = None if q is None else np.asarray(q, np.float64)
        return ex
