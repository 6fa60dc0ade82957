"""The in-process engine: fit / score / repair, sklearn-style. Ray code wraps these stages.

Stages (each a method, so Ray Data and Ray Serve can run them separately):

1. ``tokenize``: EventLog -> :class:`~seqguard_ray.core.features.Seqs` (ids, gaps)
2. ``encode``: Seqs -> per-event surprisal (N, 3) and per-user embeddings (U, H)
3. ``detect``: -> per-user score, verdict, type, reasons; per-event score and verdict
4. ``repair``: -> which events survive, with weights and a reason per action
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .detectors import ACCOUNT, DETECTORS, EventDetector, LengthTrend, ResidualCheck, UserDetectors
from .events import EventLog, from_frame, read_events
from .features import (EVENT_FEATURES, USER_FEATURES, ItemStats, Seqs, _prev_occurrences, event_features,
                       item_sets, user_features)
from .encoder import SeqGuardConfig, SeqGuardEncoder, iter_window_batches, surprisal, train_encoder
from .repair import RepairPolicy
from .tokens import N_SPECIAL, Vocab, gap_buckets, owner_positions, windows

log = logging.getLogger(__name__)
_WARNED_ONCE: set[str] = set()  # check_log warnings given with once=True in this process


@dataclass
class TrainConfig:
    """How a model is trained. Every field is stored in the bundle."""

    epochs: int | None = None   # encoder epochs; None = enough for ~target_steps optimiser steps (2..40)
    target_steps: int = 300     # optimiser steps aimed at when epochs is None
    batch_size: int = 64        # windows per training batch
    lr: float = 2e-3            # AdamW learning rate (cosine decay, short warm-up)
    seed: int = 0               # seeds torch, numpy and the detectors
    max_len: int = 128          # events per encoder window
    context: int = 16           # events of overlap on each side between windows of a long history
    hidden_size: int = 64       # encoder width
    num_layers: int = 2         # encoder layers
    num_heads: int = 2          # attention heads
    min_item_count: int = 2     # items seen fewer times share the unknown bucket
    # share of normal users flagged at the threshold (0.01; clean logs: more, docs/metrics.md)
    target_fpr: float = UserDetectors.target_fpr
    # share of training users presumed anomalous, left out of the normal references (0.05),
    # besides those whose items resemble nobody (SeqGuard._resembles_nobody)
    trim_share: float = UserDetectors.trim_share
    score_batch_size: int = 128  # windows per scoring batch

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs is None or self.epochs >= 1,
            "target_steps": self.target_steps >= 1, "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0, "max_len": 8 <= self.max_len <= 4096,
            "context": 0 <= 2 * self.context < self.max_len, "hidden_size": self.hidden_size >= 8,
            "num_layers": self.num_layers >= 1,
            "num_heads": self.num_heads >= 1 and self.hidden_size % self.num_heads == 0,
            "min_item_count": self.min_item_count >= 1, "target_fpr": 0 < self.target_fpr < 0.5,
            "trim_share": 0 <= self.trim_share < 0.5,
            "score_batch_size": self.score_batch_size >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid training config: " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class Encoded:
    """Output of the encoder stage for a set of users."""

    seqs: Seqs
    user_emb: np.ndarray  # (U, H) float32


@dataclass
class Scored:
    """Output of the detector stage, aligned with the EventLog's users and (sorted) events."""

    score: np.ndarray          # (U,) in [0, 1], higher = more anomalous
    anomalous: np.ndarray      # (U,) bool
    anomaly_type: np.ndarray   # (U,) str
    reasons: list[list[str]]   # (U,) human-readable reasons
    event_score: np.ndarray    # (N,) in [0, 1]
    event_anomalous: np.ndarray  # (N,) bool
    detector_scores: np.ndarray  # (U, len(DETECTORS)) calibrated per-detector scores
    length_doubt: np.ndarray     # (U,) bool: flagged, but clearly normal judged at a typical length (see detect)


@dataclass
class ScoreResult:
    """What ``seqguard score`` writes: users, events (input order) and the log it came from."""

    users: pd.DataFrame
    events: pd.DataFrame
    log: EventLog
    scored: Scored


@dataclass
class RepairResult:
    repaired: pd.DataFrame       # surviving events, all input columns + weight
    actions: pd.DataFrame        # one row per user that was acted on: user_id, anomaly_type, action, events_dropped
    summary: dict[str, int]


def as_log(events: EventLog | pd.DataFrame | str | Path, *, on_bad_rows: str = "error") -> EventLog:
    if isinstance(events, EventLog):
        return events
    if isinstance(events, pd.DataFrame):
        return from_frame(events, on_bad_rows=on_bad_rows)
    return read_events(events, on_bad_rows=on_bad_rows)


def _progress(it, **kw):
    from tqdm.auto import tqdm
    return tqdm(it, disable=not log.isEnabledFor(logging.INFO), **kw)


class SeqGuard:
    """Learn normal behaviour sequences, then score and repair logs.

    >>> sg = SeqGuard(TrainConfig(epochs=2)).fit("train.parquet")
    >>> result = sg.score("today.parquet")        # users / events frames
    >>> repaired = sg.repair(result).repaired     # surviving events with a weight column
    """

    def __init__(self, config: TrainConfig | None = None, policy: RepairPolicy | None = None):
        self.config = config or TrainConfig()
        self.policy = policy or RepairPolicy()
        self.vocab: Vocab | None = None
        self.stats: ItemStats | None = None
        self.model: SeqGuardEncoder | None = None
        self.event_detector: EventDetector | None = None
        self.user_detectors: UserDetectors | None = None
        # detectors for short histories: (fewest events, UserDetectors) by increasing length, each for
        # histories up to the next one's fewest events; longer ones go to user_detectors. See fit_detectors.
        self.short_detectors: list[tuple[int, UserDetectors]] = []
        self.main_stratum = 1  # fewest events of the histories user_detectors judges
        self.residual_check = ResidualCheck()
        self.length_trend = LengthTrend(n_features=len(USER_FEATURES))
        self.metrics: dict = {}

    # ------------------------------------------------------------------ stages
    def tokenize(self, log_: EventLog) -> Seqs:
        self._check_fitted(need_model=False)
        return self._seqs(log_)

    def _seqs(self, log_: EventLog) -> Seqs:
        ids = self.vocab.item_ids(log_.item)
        return Seqs(
            offsets=log_.offsets, ts=log_.ts, item=ids, action=self.vocab.action_ids(log_.action), value=log_.value,
            surprisal=np.zeros((log_.n_events, 3), np.float32), key=self.vocab.item_keys(log_.item, ids),
        )

    def _windows(self, seqs: Seqs):
        c = self.config
        return windows(seqs.offsets, max_len=c.max_len, context=c.context)

    @staticmethod
    def _token_arrays(seqs: Seqs) -> dict[str, np.ndarray]:
        return {"items": seqs.item, "actions": seqs.action, "gaps": gap_buckets(seqs.ts, seqs.offsets)}

    def encode(self, seqs: Seqs) -> Encoded:
        """Fill ``seqs.surprisal`` (N, 3) and compute user embeddings (U, H)."""
        if self.model is None:
            raise RuntimeError("this SeqGuard has no encoder: call fit() or SeqGuard.load(dir)")
        starts, lengths, own = self._windows(seqs)
        tok = self._token_arrays(seqs)
        H = self.model.config.hidden_size
        win_sur = np.zeros((len(starts), self.config.max_len, 3), np.float32)
        win_emb = np.zeros((len(starts), H), np.float32)
        device = next(self.model.parameters()).device
        for batch in iter_window_batches(tok, starts, lengths, max_len=self.config.max_len,
                                         batch_size=self.config.score_batch_size, shuffle=False):
            w = batch.pop("window").numpy()
            s, e = surprisal(self.model, **{k: v.to(device) for k, v in batch.items()})
            win_sur[w, : s.shape[1]] = s.cpu().numpy()
            win_emb[w] = e.cpu().numpy()
        win, pos = owner_positions(starts, lengths, own, len(seqs.ts))
        seqs.surprisal = win_sur[win, pos]
        # user embedding: length-weighted mean of its windows' embeddings
        win_user = np.searchsorted(seqs.offsets, starts, side="right") - 1
        user_emb = np.zeros((seqs.n_users, H), np.float64)
        np.add.at(user_emb, win_user, win_emb * lengths[:, None])
        user_emb /= np.maximum(np.diff(seqs.offsets), 1)[:, None]
        return Encoded(seqs, user_emb.astype(np.float32))

    def detect(self, enc: Encoded) -> Scored:
        """Scores, verdicts, types and reasons for users and events."""
        self._check_fitted()
        seqs = enc.seqs
        ef = event_features(seqs, self.stats)
        local = self.event_detector.score(ef)
        uf, segments = user_features(seqs, self.stats, ef, local)
        n_ev = np.diff(seqs.offsets)
        score, per_det = self._user_scores(uf, n_ev)
        thr = self.user_detectors.threshold_
        anomalous = score >= thr
        U = seqs.n_users
        atype = np.full(U, "normal", dtype=object)
        ev_score = np.minimum(local, np.repeat(score, np.diff(seqs.offsets)))
        ev_anom = np.zeros(len(local), bool)
        reasons: list[list[str]] = [[] for _ in range(U)]
        flagged = np.flatnonzero(anomalous)
        # what makes each flagged user unusual, feature by feature (-log tail probabilities)
        tails = dict(zip(flagged, self._judge(n_ev[flagged], uf[flagged], "feature_tails"))) if len(flagged) else {}
        copied = self.user_detectors.decisive(per_det, ACCOUNT) >= thr
        # a partial copy's source is a person (features.Neighbours: no sweep is one)
        of_person = self.user_detectors.decisive(per_det, ("part_copy",)) >= thr
        replayed = self.user_detectors.decisive(per_det, ("replay",)) >= thr
        if len(flagged):
            self._localize(enc, ef, local, tails, segments, score, flagged, copied, of_person, atype, ev_score, ev_anom,
                           reasons)
        nobody = self._resembles_nobody(seqs, uf, training=False) if len(flagged) else np.zeros(U, bool)
        for u in flagged:
            reasons[u] = self._reasons(u, score[u], per_det[u], uf[u], tails[u], nobody[u], copied[u], replayed[u]) + reasons[u]
        return Scored(score, anomalous, atype, reasons, ev_score, ev_anom, per_det,
                      self._length_doubt(uf, n_ev, flagged[atype[flagged] != "takeover"], reasons))

    def _length_doubt(self, uf: np.ndarray, n_ev: np.ndarray, flagged: np.ndarray, reasons: list[list[str]]) -> np.ndarray:
        """(U,) the ``flagged`` histories (of the main stratum) that score clearly normal (below
        _RESIDUAL_NORMAL) once their features are moved to the median training length along
        normal users' trend (LengthTrend): odd only in the ways users of their length are. Their
        verdict stands; the repair policy keeps their events at lower weights (doubtful_action).
        Takeovers are not judged so: their evidence is a located stretch in another taste, which
        moving the whole history's features says nothing about (MovieLens trained on the clean
        log: with them, 30% of the takeover events were removed, 73% without any length doubt)."""
        out = np.zeros(len(uf), bool)
        judged = flagged[n_ev[flagged] >= self.main_stratum]
        if len(judged) == 0 or not self.length_trend.coef[1:].any():
            return out
        at_typical, _ = self._user_scores(self.length_trend.adjust(uf[judged], n_ev[judged]), n_ev[judged])
        for u, r in zip(judged, at_typical):
            if r < self._RESIDUAL_NORMAL:
                out[u] = True
                reasons[u].append(f"users of its length ({n_ev[u]} events) commonly look like this: at the typical "
                                  f"length ({self.length_trend.pivot_events:.0f} events) it would score {r:.3f}, so its "
                                  f"events are kept at lower weights rather than dropped")
        return out

    # Short histories carry too little behaviour to be judged against longer ones (rates, gap spreads,
    # entropies and shares are degenerate at a few events, and differ from one length to the next):
    # histories under STRATA[-1] events are judged against training users of about their own length,
    # STRATA giving the strata's fewest events, where each has MIN_STRATUM training users (smaller
    # strata join the next longer one). A log with Zipf history lengths (half the users with one
    # event) otherwise flagged every history over 100 events and 56% of those with 21-100.
    STRATA = (1, 2, 3, 5, 10)
    MIN_STRATUM = 100

    def _strata(self, n_ev: np.ndarray) -> list[int]:
        """The fewest events of each length stratum, increasing (see STRATA); the last stratum holds
        every longer history too, and its detectors are user_detectors."""
        def count(lo, hi):
            return int(((n_ev >= lo) & (n_ev < hi)).sum())

        groups = [[self.STRATA[-1], np.inf]]
        for lo in reversed(self.STRATA[:-1]):
            if count(*groups[0]) < self.MIN_STRATUM:
                groups[0][0] = lo                       # too few users yet: reach down to shorter histories
            else:
                groups.insert(0, [lo, groups[0][0]])
        if len(groups) > 1 and count(*groups[0]) < self.MIN_STRATUM:
            lo = groups.pop(0)[0]
            groups[0][0] = lo                           # the shortest too small: it joins the next one
        return [int(g[0]) for g in groups]

    def _judge(self, n_ev: np.ndarray, uf: np.ndarray, method: str, **kw) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """UserDetectors.<method>(uf, **kw), each history by the detectors of its length's stratum."""
        out = getattr(self.user_detectors, method)(uf, **kw)
        bounds = [lo for lo, _ in self.short_detectors] + [self.main_stratum]
        for (lo, det), hi in zip(self.short_detectors, bounds[1:]):
            m = (n_ev >= lo) & (n_ev < hi)
            if m.any():
                part = getattr(det, method)(uf[m], **kw)
                for a, b in zip(out if isinstance(out, tuple) else (out,), part if isinstance(part, tuple) else (part,)):
                    a[m] = b
        return out

    def _user_scores(self, uf: np.ndarray, n_ev: np.ndarray, *, whole: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(U,) ensemble scores and (U, D) per-detector scores, each history by its length's detectors
        (``whole``: the histories are accounts, not what is left of one)."""
        return self._judge(n_ev, uf, "score", whole=whole)

    # where a flagged user's anomaly lies: a part of the history, or all of it
    def _localize(self, enc, ef, local, tails, segments, score, flagged, copied, of_person, atype, ev_score, ev_anom,
                  reasons):
        seqs, off, thr = enc.seqs, enc.seqs.offsets, self.user_detectors.threshold_
        n_ev = np.diff(off)
        uix = seqs.user_index()
        in_flagged = np.isin(uix, flagged)
        replay = ef[:, EVENT_FEATURES.index("replay")] > 0
        seg_mask = np.zeros(len(local), bool)
        for u in flagged:
            a, b = segments[u]
            if b > a:
                seg_mask[off[u] + a: off[u] + b] = True
        doubtful = local >= self._DOUBTFUL_EVENT
        # (type, events) candidates; the smallest set whose removal leaves a clearly normal history wins
        candidates = [
            ("injection", local >= thr),
            ("injection", doubtful),
            ("injection", doubtful | _on_targets(uix, seqs.item_key, doubtful & in_flagged)),
            ("replay", replay),
            ("takeover", seg_mask),
        ]
        # a push: on average more events per item than two full passes down the action funnel
        per_item_push = 2 * max(1, len(self.vocab.actions))
        best_set = {}
        still_odd = {}  # user -> (size, residual score, z) of the smallest set refused by the residual check
        # a copied account is a copy as a whole: no part of it is the explanation
        explainable = in_flagged & ~copied[uix]
        for k, (name, cand) in enumerate(candidates):
            cand = cand & explainable
            size = np.bincount(uix[cand], minlength=seqs.n_users)
            ok = (size > 0) & (size <= self._MAX_EXPLAINED * n_ev) & (n_ev - size >= 5)
            users = np.flatnonzero(ok & np.isin(np.arange(seqs.n_users), flagged))
            if len(users) == 0:
                continue
            # residual histories of these users only (everyone else becomes empty: no work)
            keep = np.isin(uix, users) & ~cand
            sub = seqs.subset(keep)
            sub_ef = event_features(sub, self.stats)
            sub_uf, _ = user_features(sub, self.stats, sub_ef, local[keep])
            # what is left of a history is no account: the copy detector does not judge it (the most
            # ordinary part of a history overlaps others' more than the whole does); a replay must be gone
            res_score, _ = self._user_scores(sub_uf[users], n_ev[users] - size[users], whole=False)
            res_z = self.residual_check.z(local[keep], sub.offsets)[users]
            # ... nor is what is left of a fake profile: filler that resembles nobody stays filler
            res_nobody = self._resembles_nobody(sub, sub_uf, training=False)[users]
            pushed = size >= per_item_push * _distinct_items(uix, seqs.item_key, cand, seqs.n_users)
            for u, r, z, nobody in zip(users, res_score, res_z, res_nobody):
                if r >= self._RESIDUAL_NORMAL:
                    continue
                # a set picked by oddness alone must leave ordinary events; a push of a few items
                # is an explanation by its structure, unless what is left resembles nobody
                if (z >= self._RESIDUAL_Z and not pushed[u]) or nobody:
                    if u not in still_odd or size[u] < still_odd[u][0]:
                        still_odd[u] = (size[u], r, z, nobody)
                elif u not in best_set or size[u] < best_set[u][1]:
                    best_set[u] = (k, size[u], r)
        for u in flagged:
            a, b = off[u], off[u + 1]
            if u in best_set:
                k, size, r = best_set[u]
                atype[u], cand = candidates[k][0], candidates[k][1][a:b]
                ev_score[a:b] = np.where(cand, np.maximum(local[a:b], score[u]), np.minimum(local[a:b], r))
                ev_anom[a:b] = cand
                reasons[u].append(f"{size} of {b - a} events explain it: without them the history scores {r:.3f} (normal)")
            else:
                # a copied account is a replay, unless it is a bot's sweep that another bot made too
                # (a partial copy copies a person: a replay whatever its timing looks like)
                whole = self._whole_type(tails[u])
                atype[u] = "replay" if copied[u] and (whole != "bot" or of_person[u]) else whole
                # every event is anomalous; within the history the locally odder ones rank higher
                ev_score[a:b] = np.maximum(local[a:b], score[u] * (1.0 - self._WHOLE_SPREAD * (1.0 - local[a:b])))
                ev_anom[a:b] = True
                reasons[u].append("the whole history is anomalous: no part of it explains the score")
                if u in still_odd:
                    size, r, z, nobody = still_odd[u]
                    left = ("still resemble other users' less than random item sets do" if nobody else
                            f"are still unusual ({z:.1f} spreads above normal users' events)")
                    reasons[u].append(f"without its {size} oddest events it would score {r:.3f}, but the events left {left}")

    # A partial explanation must leave a history that scores below this (clearly normal, not just
    # under the threshold): fake profiles minus their oddest events often land in 0.95..0.99, and
    # quarantining them removes more injected events than it costs (bench/quality.py, 4 logs).
    _RESIDUAL_NORMAL = 0.95
    # ... and its remaining events must not be unusually odd on average (ResidualCheck z-score):
    # fake profiles typed "injection" kept about half their events otherwise (bench/quality.py,
    # MovieLens with held-out attack types: injected events removed 0.627 -> 0.690).
    _RESIDUAL_Z = 3.0
    # ... and what is left must resemble other people (_resembles_nobody): a fake profile whose
    # oddest events are its targets is filler without them (every type at 2%, generator: injected
    # events removed 0.776 -> 0.797, love/hate profiles 0.755 -> 0.938; MovieLens 0.937 -> 0.941,
    # held-out types 0.946 -> 0.949; clean events removed the same on all five logs).
    # The largest share of a history a partial explanation may take. Click farms can inject more
    # events than their victim made; with the residual check guarding against fakes explained
    # away, 0.6 -> 0.8 lowered clean events removed (MovieLens 0.027 -> 0.026, held-out 0.016 ->
    # 0.014, generator 0.007 -> 0.006) and injected events removed did not move on any log.
    _MAX_EXPLAINED = 0.8
    # Local event score of "doubtful" events: the wider injection candidate, for bursts whose
    # events are not all beyond the threshold.
    _DOUBTFUL_EVENT = 0.9
    # The event scores of a whole-history anomaly are the user's score, less up to this much for
    # its locally most ordinary events: ties broken by local oddness, so that a real history typed
    # whole (a click-farm victim taken for a fake profile) still ranks its injected events first.
    # bench logs, event PR-AUC inside attacked users: MovieLens 0.923 -> 0.957, held-out types
    # 0.923 -> 0.961, generator 0.976 -> 0.972, held-out 0.973 -> 0.976; a spread of 0.02-0.08
    # gained the same on MovieLens but lost 0.03 on the generator, whose bots' ordinary-looking
    # events then fell below other users' events.
    _WHOLE_SPREAD = 1e-4

    _BOT_FEATURES = ("log_rate_per_active_hour", "median_log_gap", "gap_spread", "catalogue_order",
                     "fast_gap_share", "gap_regularity", "hour_entropy", "main_action_share", "action_entropy",
                     "unseen_action_share", "mean_timing_surprisal")
    _SHILL_FEATURES = ("mean_log_count", "std_log_count", "distinct_item_share",
                       "top_item_share", "value_mean", "value_std", "value_extreme_share", "value_deviation",
                       "value_item_corr", "mean_item_surprisal", "taste_coherence", "neighbour_lift")

    def _whole_type(self, tails_row: np.ndarray) -> str:
        """bot or shilling by which feature group is most extreme; other when neither is."""
        t = dict(zip(USER_FEATURES, tails_row))
        bot = max(t[f] for f in self._BOT_FEATURES)
        shill = max(t[f] for f in self._SHILL_FEATURES)
        strong = -math.log(0.01)
        if max(bot, shill) < strong:
            return "other"
        return "bot" if bot >= shill else "shilling"

    def _reasons(self, u, score, per_det, uf_row, tails_row, nobody: bool, copied: bool, replayed: bool) -> list[str]:
        det = ", ".join(f"{d} {p:.3f}" for d, p in zip(DETECTORS, per_det) if p >= 0.95)
        out = [f"score {score:.3f} >= threshold {self.user_detectors.threshold_:.3f}" + (f" (detectors: {det})" if det else "")]
        q = self.metrics.get("feature_quantiles")
        for j in np.argsort(-tails_row)[:3]:
            if tails_row[j] < -math.log(0.05):
                break
            typical = f" (typical {q[0][j]:.3g}..{q[1][j]:.3g})" if q else ""
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

    # ------------------------------------------------------------------ API
    def fit(self, events: EventLog | pd.DataFrame | str | Path, *, on_bad_rows: str = "error") -> SeqGuard:
        """Train the encoder on the log (self-supervised), then fit and calibrate the detectors."""
        c = self.config
        t0 = time.perf_counter()
        torch.manual_seed(c.seed)
        log_ = as_log(events, on_bad_rows=on_bad_rows)
        if log_.n_users < 5:
            raise ValueError(f"need at least 5 users to train, got {log_.n_users}")
        self.vocab = Vocab.build(log_.item, log_.action, min_count=c.min_item_count)
        seqs = self._seqs(log_)
        self.stats = ItemStats.fit(seqs, self.vocab.n_items, seed=c.seed, items=self.vocab.items)
        self.model = SeqGuardEncoder(self._model_config())
        history = self.train_encoder_local(seqs)
        t_train = time.perf_counter() - t0
        self.fit_detectors(self.encode(seqs))
        self.metrics.update({
            "train_events": int(log_.n_events), "train_users": int(log_.n_users),
            "vocab_items": len(self.vocab.items), "epochs": len(history),
            "final_loss": history[-1]["loss"] if history else None,
            "encoder_train_s": round(t_train, 2), "fit_s": round(time.perf_counter() - t0, 2),
            "bad_rows_skipped": log_.bad_rows.count,
        })
        return self

    def _model_config(self) -> SeqGuardConfig:
        c = self.config
        return SeqGuardConfig(n_items=self.vocab.n_items, n_actions=self.vocab.n_actions,
                              hidden_size=c.hidden_size, num_layers=c.num_layers, num_heads=c.num_heads,
                              intermediate_size=2 * c.hidden_size, max_len=c.max_len)

    def epochs_for(self, n_windows: int) -> int:
        c = self.config
        if c.epochs is not None:
            return c.epochs
        steps = max(1, math.ceil(n_windows / c.batch_size))
        return int(min(40, max(2, math.ceil(c.target_steps / steps))))

    def train_encoder_local(self, seqs: Seqs) -> list[dict]:
        c = self.config
        starts, lengths, _ = self._windows(seqs)
        tok = self._token_arrays(seqs)
        epochs = self.epochs_for(len(starts))
        steps = max(1, math.ceil(len(starts) / c.batch_size))
        bar = _progress(range(epochs), desc="train encoder", unit="epoch")
        it = iter(bar)

        def make_batches(epoch):
            next(it, None)
            return iter_window_batches(tok, starts, lengths, max_len=c.max_len, batch_size=c.batch_size,
                                       shuffle=True, seed=c.seed + epoch)

        def report(epoch, m):
            bar.set_postfix(loss=f"{m['loss']:.3f}")

        history = train_encoder(self.model, make_batches, epochs=epochs, lr=c.lr, seed=c.seed,
                                steps_per_epoch=steps, on_epoch_end=report)
        bar.close()
        return history

    def fit_detectors(self, enc: Encoded) -> None:
        """Fit the event detector and the user ensemble on encoded training data."""
        c = self.config
        seqs = enc.seqs
        ef = event_features(seqs, self.stats)
        self.event_detector = EventDetector().fit(ef, seed=c.seed)
        local = self.event_detector.score(ef)
        uf, _ = user_features(seqs, self.stats, ef, local)
        enc_cols = tuple(USER_FEATURES.index(f) for f in ("mean_item_surprisal", "mean_timing_surprisal", "max_segment_surprisal"))
        presumed = self._resembles_nobody(seqs, uf)
        n_ev = np.diff(seqs.offsets)

        def detectors(users: np.ndarray) -> UserDetectors:
            return UserDetectors(target_fpr=c.target_fpr, trim_share=c.trim_share, seed=c.seed, encoder_columns=enc_cols,
                                 copy_column=USER_FEATURES.index("copy_overlap"),
                                 part_copy_column=USER_FEATURES.index("part_copy"),
                                 replay_column=USER_FEATURES.index("replay_share")).fit(uf[users], presumed=presumed[users])

        los = self._strata(n_ev)
        self.short_detectors = [(lo, detectors((n_ev >= lo) & (n_ev < hi))) for lo, hi in zip(los, los[1:])]
        self.main_stratum = los[-1]
        self.user_detectors = detectors(n_ev >= los[-1] if len(los) > 1 else np.ones(len(uf), bool))
        # refit the event reference on events of users the ensemble keeps as normal
        score, _ = self._user_scores(uf, n_ev)
        normal_users = score < self.user_detectors.threshold_
        keep_ev = np.repeat(normal_users, np.diff(seqs.offsets))
        if keep_ev.sum() >= 100:
            self.event_detector = EventDetector().fit(ef[keep_ev], seed=c.seed)
        self.residual_check = ResidualCheck.fit(self.event_detector.score(ef), seqs.offsets, normal_users,
                                                cut=self._DOUBTFUL_EVENT)
        # how normal users' features drift with length (the decisive detectors' copy and replay evidence does not)
        drift = [j for j in range(len(USER_FEATURES)) if j not in self.user_detectors.decisive_columns]
        self.length_trend = LengthTrend.fit(uf, n_ev, normal_users & (n_ev >= self.main_stratum), columns=drift)
        self.metrics["value_share"] = float(np.isfinite(seqs.value).mean()) if len(seqs.value) else 0.0
        self.metrics["feature_quantiles"] = np.quantile(uf[normal_users] if normal_users.sum() >= 5 else uf, [0.05, 0.95], axis=0).tolist()
        self.metrics["train_flagged_share"] = float(1 - normal_users.mean())
        self.metrics["trimmed_users"] = self.user_detectors.n_trimmed_ + sum(d.n_trimmed_ for _, d in self.short_detectors)
        self.metrics["length_strata"] = los
        self.metrics["shortest_history"] = int(n_ev.min()) if len(n_ev) else 0
        self.metrics["presumed_users"] = int(presumed.sum())

    # Training users presumed anomalous before any detector is fitted: histories of at least
    # _PRESUME_MIN_ITEMS items that resemble other people's less than random item sets drawn by
    # popularity do (neighbour_lift < 0). Such fake profiles resemble nobody, not even each other,
    # so the test holds however many of them there are; leaving them out of the references keeps
    # them from masking each other, where the trim share alone would have to guess their number
    # (bench/quality.py: docs/metrics.md). A log where more than _MAX_PRESUMED_SHARE of the users
    # fail the test has too little shared taste for it to mean anything, and nobody is presumed.
    _PRESUME_MIN_ITEMS = 10
    _MAX_PRESUMED_SHARE = 0.3

    def _resembles_nobody(self, seqs: Seqs, uf: np.ndarray, *, training: bool = True) -> np.ndarray:
        """(U,) histories whose items resemble other people's less than random item sets do; in
        training, nobody when too many of the users are such (see above)."""
        n_items = np.diff(item_sets(seqs, self.vocab.n_items).indptr)
        presumed = (uf[:, USER_FEATURES.index("neighbour_lift")] < 0) & (n_items >= self._PRESUME_MIN_ITEMS)
        if training and presumed.mean() > self._MAX_PRESUMED_SHARE:
            log.warning("%.0f%% of the training users resemble other users no more than random item sets do: "
                        "too little shared taste to presume any of them anomalous", 100 * presumed.mean())
            return np.zeros(len(uf), bool)
        return presumed

    def _check_fitted(self, need_model: bool = True) -> None:
        if self.vocab is None or (need_model and (self.model is None or self.user_detectors is None)):
            raise RuntimeError("this SeqGuard is not fitted: call fit() or SeqGuard.load(dir)")

    # A model that learned from values (ratings, amounts) on at least this share of its training
    # events judges a log without any value as unusual throughout (MovieLens: 6% of users flagged
    # -> 43%); so does one whose actions it never saw (100%).
    _VALUES_LEARNED = 0.5

    def check_log(self, log_: EventLog, *, once: bool = False) -> list[str]:
        """Warn (and return the warnings) when a log does not match what the model learned from: no
        value at all where it learned from values, none of the actions it knows, or histories
        shorter than any it trained on. Such a log is still scored (a short request may lack them
        legitimately), but most users of a whole log like that, or those short users, will be
        flagged for it. ``once``: each warning at most once per process (a
        server warns once, not per request; a batch worker once, not per bucket)."""
        self._check_fitted(need_model=False)
        out = []
        if log_.n_events == 0:
            return out
        trained = self.metrics.get("value_share")
        if trained is not None and trained >= self._VALUES_LEARNED and not np.isfinite(log_.value).any():
            out.append(f"the model learned from a 'value' column (set on {trained:.0%} of its training events) and "
                       f"this log has no values: its users' value features look unusual, so expect many flagged")
        known = set(self.vocab.actions)
        seen = [str(a) for a in pd.unique(log_.action)]
        if not known.intersection(seen):
            out.append(f"none of this log's actions ({', '.join(seen[:5])}{', ...' if len(seen) > 5 else ''}) is one "
                       f"the model learned ({', '.join(sorted(known)[:5])}): expect many users flagged for it")
        shortest = self.metrics.get("shortest_history", 0)
        if (np.diff(log_.offsets) < shortest).any():
            out.append(f"this log has histories shorter than any the model trained on (fewer than {shortest} events): "
                       f"their pace and regularity lie outside what the detectors learned, so expect them flagged; "
                       f"train on a log that holds histories that short")
        for w in out:
            if not (once and w in _WARNED_ONCE):
                log.warning(w)
            if once:
                _WARNED_ONCE.add(w)
        return out

    def score_log(self, log_: EventLog) -> Scored:
        return self.detect(self.encode(self.tokenize(log_)))

    def score(self, events: EventLog | pd.DataFrame | str | Path, *, on_bad_rows: str = "error") -> ScoreResult:
        """Score a log: per-user and per-event results (events in input order)."""
        log_ = as_log(events, on_bad_rows=on_bad_rows)
        self.check_log(log_)
        scored = self.score_log(log_)
        return ScoreResult(users_frame(log_, scored), events_frame(log_, scored), log_, scored)

    def repair(self, result: ScoreResult) -> RepairResult:
        """Apply the repair policy to a scored log."""
        log_, s = result.log, result.scored
        keep, weight, ev_action, user_action = self.policy.decide(log_.offsets, s)
        repaired = log_.frame.loc[keep].copy()
        repaired["weight"] = weight[keep]
        repaired = repaired.sort_values("_row").drop(columns="_row").reset_index(drop=True)
        dropped = np.add.reduceat((~keep).astype(np.int64), log_.offsets[:-1]) if log_.n_events else np.zeros(0, int)
        acted = np.flatnonzero(user_action != "pass")
        actions = pd.DataFrame({
            "user_id": log_.frame["user_id"].to_numpy()[log_.offsets[:-1]][acted],
            "anomaly_type": s.anomaly_type[acted].astype(str),
            "action": user_action[acted].astype(str),
            "events_dropped": dropped[acted],
        })
        summary = {
            "events_in": int(log_.n_events), "events_kept": int(keep.sum()), "events_dropped": int((~keep).sum()),
            "events_downweighted": int(((weight < 1) & keep).sum()),
            "users_quarantined": int((user_action == "quarantine").sum()),
            "histories_cut": int(((user_action == "cut") & (dropped > 0)).sum()),
            "users_with_events_dropped": int(((user_action == "drop_events") & (dropped > 0)).sum()),
            # flagged, but odd only as histories of their length are (Scored.length_doubt): given the
            # policy's doubtful_action instead of their type's
            "users_length_doubt": int((s.length_doubt & (user_action == self.policy.doubtful_action)).sum()),
        }
        return RepairResult(repaired, actions, summary)

    def save(self, path: str | Path) -> Path:
        from .bundle import save_bundle
        return save_bundle(self, path)

    @classmethod
    def load(cls, path: str | Path) -> SeqGuard:
        from .bundle import load_bundle
        return load_bundle(path)


def _on_targets(uix: np.ndarray, item: np.ndarray, hot: np.ndarray) -> np.ndarray:
    """(N,) events on a user's target items: items with two or more ``hot`` events in that user's
    history. Injected traffic (click farms) pushes a few items many times, and not every injected
    event is odd on its own. ``item``: item keys (Seqs.item_key, where each new item has its own
    negative key); the special ids, the unknown bucket among them, are no item and gather nothing."""
    is_item = (item >= N_SPECIAL) | (item < 0)
    item = item - min(int(item.min(initial=0)), 0)  # >= 0 for the pair key
    key = uix.astype(np.int64) * (int(item.max(initial=0)) + 1) + item
    keys, counts = np.unique(key[hot & is_item], return_counts=True)
    return np.isin(key, keys[counts >= 2])


def _distinct_items(uix: np.ndarray, item: np.ndarray, mask: np.ndarray, n_users: int) -> np.ndarray:
    """(U,) distinct items among each user's ``mask``ed events."""
    first = _prev_occurrences(uix[mask], item[mask]) == 0
    return np.bincount(uix[mask], weights=first, minlength=n_users).astype(np.int64)


def users_frame(log_: EventLog, s: Scored) -> pd.DataFrame:
    """users.parquet: user_id (input value and type), score, anomalous, anomaly_type, reasons."""
    users = log_.frame["user_id"]
    return pd.DataFrame({
        "user_id": users.iloc[log_.offsets[:-1]].astype(users.dtype).reset_index(drop=True),
        "score": s.score.astype(np.float64),
        "anomalous": s.anomalous.astype(bool),
        "anomaly_type": s.anomaly_type.astype(str),
        "reasons": ["; ".join(r) for r in s.reasons],
        "n_events": np.diff(log_.offsets),
    })


def events_frame(log_: EventLog, s: Scored) -> pd.DataFrame:
    """events.parquet in input order: user_id, item_id, ts (input values), event_score, anomalous, row."""
    f = log_.frame
    out = pd.DataFrame({
        "user_id": f["user_id"].to_numpy(), "item_id": f["item_id"].to_numpy(), "ts": f["ts"].to_numpy(),
        "event_score": s.event_score.astype(np.float64), "anomalous": s.event_anomalous.astype(bool),
        "row": f["_row"].to_numpy(),
    })
    for col in ("user_id", "item_id", "ts"):
        out[col] = out[col].astype(f[col].dtype)
    return out.sort_values("row", kind="stable").reset_index(drop=True)
