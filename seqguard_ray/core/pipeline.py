"""The in-process pipeline: :class:`SeqGuard` composes the stages; Ray and Serve adapters call the
same methods, one stage at a time.

1. ``tokenize``: EventLog -> :class:`~seqguard_ray.core.features.Seqs` (:class:`~.tokens.Vocab`)
2. ``encode``: Seqs -> per-event surprisal (N, 3) and per-user embeddings (U, H) (:class:`~.encoder.Encoder`)
3. ``detect``: features (:class:`~.features.ItemStats`), local event scores (:class:`~.event_detector.EventDetector`),
   user scores (:class:`~.strata.LengthStrata` of :class:`~.ensemble.UserDetectors`), then types, reasons
   and event verdicts (:class:`~.explain.Explainer`)
4. ``find_campaigns`` / ``apply_campaigns``: over all users of the scored log at once, groups of
   accounts pushing a few items (:class:`~.campaigns.CampaignDetector`), merged into the verdicts
5. ``repair``: which events survive, with weights and a reason per action (:class:`~.repair.RepairPolicy`)

Score convention: every score is in [0, 1], higher = more anomalous.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .allowlist import AllowList
from .bundle import load_stages, save_bundle
from .calibration import BUDGET, budget_scale, ensemble_share
from .campaigns import CampaignDetector, apply_allow, apply_campaigns, detect_campaigns
from .changepoint import ChangePoint
from .config import TrainConfig
from .drift import DriftReference
from .encoder import Encoder, SeqGuardEncoder
from .ensemble import UserDetectors
from .event_detector import EventDetector
from .explain import Evidence, Explainer, resembles_nobody
from .features import USER_FEATURES, ItemStats, Seqs, event_features, user_features
from .pretrained import init_encoder
from .readers import read_events
from .repair import RepairPolicy
from .results import CampaignResult, Encoded, RepairResult, Scored, ScoreResult, score_result
from .sample import FitSample, fit_sample, take_users
from .schema import EventLog, cap_history, from_frame
from .stage import NotFittedError, is_fitted
from .strata import LengthStrata
from .tokens import N_SPECIAL, Vocab

log = logging.getLogger(__name__)
_WARNED_ONCE: set[str] = set()  # check_log warnings given with once=True in this process

# A model that learned from values (ratings, amounts) on at least this share of its training
# events judges a log without any value as unusual throughout; so does one whose actions it never saw.
_VALUES_LEARNED = 0.5
_ENCODER_COLUMNS = tuple(USER_FEATURES.index(f) for f in ("mean_item_surprisal", "mean_timing_surprisal",
                                                          "max_segment_surprisal"))


def _check_trainable(n_users: int) -> None:
    if n_users < 5:
        raise ValueError(f"need at least 5 users to train, got {n_users}")


def as_log(events: EventLog | pd.DataFrame | str | Path, *, on_bad_rows: str = "error") -> EventLog:
    """An EventLog from a log, a frame or a path (Parquet / CSV / JSONL)."""
    if isinstance(events, EventLog):
        return events
    if isinstance(events, pd.DataFrame):
        return from_frame(events, on_bad_rows=on_bad_rows)
    return read_events(events, on_bad_rows=on_bad_rows)


class SeqGuard:
    """Learn normal behaviour sequences, then score and repair logs.

    >>> sg = SeqGuard(TrainConfig(epochs=2)).fit("train.parquet")
    >>> result = sg.score("today.parquet")        # users / events frames
    >>> repaired = sg.repair(result).repaired     # surviving events with a weight column

    ``config`` sets the stages' parameters when they are built (here, at :meth:`fit`,
    :meth:`fit_detectors` and :meth:`load`); the fitted stages are attributes: ``vocab``,
    ``encoder`` (its model is ``model``), ``stats``, ``event_detector``, ``strata`` (the main
    stratum's ensemble is ``user_detectors``), ``explainer``, ``campaign_detector`` (None when
    ``config.campaigns`` is off); ``policy`` repairs.
    """

    def __init__(self, config: TrainConfig | None = None, policy: RepairPolicy | None = None):
        self.config = config or TrainConfig()
        self.policy = policy or RepairPolicy()
        c = self.config
        self.vocab = Vocab(min_count=c.min_item_count)
        self.encoder = Encoder(**c.encoder_params())
        self.stats = ItemStats(seed=c.seed)
        self.event_detector = EventDetector(seed=c.seed)
        self.strata = LengthStrata(detectors=self._user_detectors())
        self.explainer = Explainer()
        self.campaign_detector: CampaignDetector | None = None
        self.changepoint: ChangePoint | None = None  # None: a format-11 bundle (taste segments stand in)
        self.drift: DriftReference | None = None  # None: a bundle trained before the drift reference
        self.metrics: dict = {}

    def _user_detectors(self) -> UserDetectors:
        c = self.config
        # the ensemble spends what the decisive detectors and the campaign stage leave of the budget
        share = ensemble_share(c.campaign_share if c.campaigns else 0.0)
        return UserDetectors(target_fpr=c.target_fpr, share=share, trim_share=c.trim_share, seed=c.seed,
                             encoder_columns=_ENCODER_COLUMNS, copy_column=USER_FEATURES.index("copy_overlap"),
                             part_copy_column=USER_FEATURES.index("part_copy"),
                             replay_column=USER_FEATURES.index("replay_share"))

    @property
    def model(self) -> SeqGuardEncoder | None:
        """The encoder's model (None before fit or load)."""
        return getattr(self.encoder, "model_", None)

    @model.setter
    def model(self, model: SeqGuardEncoder) -> None:
        self.encoder.model_ = model

    @property
    def user_detectors(self) -> UserDetectors:
        """The main length stratum's ensemble; its ``threshold_`` is the verdict threshold."""
        return self.strata.main_

    def _check_fitted(self, *stages) -> None:
        if not all(is_fitted(s) for s in stages):
            raise NotFittedError("this SeqGuard is not fitted: call fit() or SeqGuard.load(dir)")

    # ------------------------------------------------------------------ stages
    def tokenize(self, log_: EventLog) -> Seqs:
        """Events -> token ids (surprisal left at 0 for :meth:`encode`)."""
        self._check_fitted(self.vocab)
        item, action, key = self.vocab.transform(log_.item, log_.action)
        return Seqs(offsets=log_.offsets, ts=log_.ts, item=item, action=action, value=log_.value,
                    surprisal=np.zeros((log_.n_events, 3), np.float32), key=key)

    def encode(self, seqs: Seqs) -> Encoded:
        """Fill ``seqs.surprisal`` (N, 3) and compute user embeddings (U, H)."""
        return self.encoder.transform(seqs)

    def detect(self, enc: Encoded) -> Scored:
        """Scores, verdicts, types and reasons for users and events."""
        self._check_fitted(self.vocab, self.stats, self.event_detector, self.strata, self.explainer)
        seqs = enc.seqs
        ef = event_features(seqs, self.stats)
        local = self.event_detector.score(ef)
        uf, segments = user_features(seqs, self.stats, ef, local)
        score, per_det = self.strata.score(uf, np.diff(seqs.offsets))
        changes = change_score = None
        if self.changepoint is not None:  # a located change point flags on its own share of the budget
            changes = self.changepoint.transform(seqs, self.stats, local)
            change_score = budget_scale(np.exp(-changes.nats), BUDGET["takeover"], self.config.target_fpr)
            score = np.maximum(score, change_score)
        return self.explainer.explain(Evidence(seqs, ef, local, uf, segments, score, per_det, changes, change_score),
                                      strata=self.strata,
                                      stats=self.stats, n_items=self.vocab.n_items,
                                      known_actions=len(self.vocab.actions_))

    def score_log(self, log_: EventLog) -> Scored:
        return self.detect(self.encode(self.tokenize(log_)))

    def find_campaigns(self, log_: EventLog, scored: Scored, allow: AllowList | None = None) -> CampaignResult:
        """The campaign stage over a whole scored log (every user's :meth:`detect` output, in the
        log's user order): items pushed, by whom. Allowed users are never members, allowed items
        never targets."""
        if self.campaign_detector is None:
            raise NotFittedError("this SeqGuard has no campaign stage: train with TrainConfig(campaigns=True)")
        return detect_campaigns(self.campaign_detector, log_, scored.score, allow)

    def apply_campaigns(self, log_: EventLog, scored: Scored, campaigns: CampaignResult) -> Scored:
        """``scored`` with the campaign evidence merged in: members flagged, typed and given the
        campaign's reason; their events on its targets marked for repair (``event_campaign``)."""
        return apply_campaigns(log_.offsets, scored, campaigns, threshold=self.strata.threshold_)

    # ------------------------------------------------------------------ training
    def fit(self, events: EventLog | pd.DataFrame | str | Path, *, on_bad_rows: str = "error") -> SeqGuard:
        """Train the encoder on the log (self-supervised), then fit and calibrate the detectors on
        the users of the fit sample (:mod:`~.sample`: the whole log unless it holds more than
        ``config.fit_sample_events`` events)."""
        c = self.config
        t0 = time.perf_counter()
        log_ = cap_history(as_log(events, on_bad_rows=on_bad_rows), c.max_events_per_user)
        _check_trainable(log_.n_users)
        self.vocab = Vocab(min_count=c.min_item_count).fit(log_.item, log_.action)
        seqs = self.tokenize(log_)
        self.encoder = Encoder(**c.encoder_params())
        init = init_encoder(self.encoder, self.vocab, c, log_)  # fresh, or c.init_from's encoder adapted
        history = self.encoder.history_ = self.encoder.train(seqs)
        sample, keep = fit_sample(log_.users, np.diff(log_.offsets), c.fit_sample_events, c.seed,
                                   c.fit_sample_min_users)
        self.fit_detectors(self.encode(seqs if sample.whole else take_users(seqs, keep)), history=history,
                           t_train=time.perf_counter() - t0, bad_rows=log_.bad_rows.count, sample=sample)
        self.metrics["fit_s"] = round(time.perf_counter() - t0, 2)
        if init:
            self.metrics["init_from"] = init
        return self

    def epochs_for(self, n_windows: int) -> int:
        """Encoder epochs the current config asks for over ``n_windows`` windows."""
        return Encoder(**self.config.encoder_params()).epochs_for(n_windows)

    def train_encoder_local(self, seqs: Seqs) -> list[dict]:
        """Train the encoder's model (``model``, already initialised) in this process."""
        return self.encoder.train(seqs)

    def fit_detectors(self, enc: Encoded, *, history: list[dict], t_train: float, bad_rows: int,
                      sample: FitSample | None = None) -> None:
        """Fit everything after the encoder on encoded training data: item statistics, the event
        detector, the user detectors and the explainer; record the training metrics. Both engines
        (in-process and Ray Train) end their training here. ``history``: the encoder's per-epoch
        metrics; ``t_train``: seconds spent until the encoder was trained; ``bad_rows``: rows skipped;
        ``sample``: the fit sample ``enc`` holds (None: ``enc`` is the whole training log). Item
        popularity is the whole log's (the vocabulary's counts) when ``enc`` is a sample."""
        c = self.config
        seqs = enc.seqs
        _check_trainable(seqs.n_users)
        sample = sample or FitSample(c.seed, [], seqs.n_users, len(seqs.ts), seqs.n_users, len(seqs.ts))
        counts = None if sample.whole else self._token_counts()
        self.stats = ItemStats(seed=c.seed).fit(seqs, self.vocab.n_items, items=self.vocab.items_, counts=counts)
        ef = event_features(seqs, self.stats)
        event_detector = EventDetector(seed=c.seed).fit(ef)
        uf, _ = user_features(seqs, self.stats, ef, event_detector.score(ef))
        presumed = resembles_nobody(seqs, uf, self.vocab.n_items)
        n_ev = np.diff(seqs.offsets)
        self.strata = LengthStrata(detectors=self._user_detectors()).fit(uf, n_ev, presumed)
        train_score = self.strata.score(uf, n_ev)[0]
        normal = train_score < self.strata.threshold_
        keep_ev = np.repeat(normal, n_ev)
        if keep_ev.sum() >= 100:  # the event reference from events of users the ensemble keeps as normal
            event_detector = EventDetector(seed=c.seed).fit(ef[keep_ev])
        self.event_detector = event_detector
        # the decisive detectors' copy and replay evidence does not drift with length
        drift = [j for j in range(len(USER_FEATURES)) if j not in self.strata.main_.decisive_columns]
        local = event_detector.score(ef)
        self.explainer = Explainer().fit(local, seqs.offsets, uf, normal,
                                         main_stratum=self.strata.main_stratum_, drift_columns=drift)
        self.changepoint = ChangePoint().fit(seqs, self.stats, local)  # its null: these histories' changes
        self.drift = self._fit_drift(enc)
        self.campaign_detector = None
        if c.campaigns:
            _, codes = np.unique(seqs.item_key, return_inverse=True)
            self.campaign_detector = CampaignDetector(target_fpr=c.target_fpr, share=c.campaign_share).fit(
                seqs.offsets, codes.reshape(-1), seqs.ts, seqs.value, train_score, n_items=int(codes.max(initial=-1)) + 1)
            self.metrics["campaign_train"] = self.campaign_detector.train_
        self.metrics.update({
            "train_events": sample.seen_events, "train_users": sample.seen_users,
            "fit_events": len(seqs.ts), "fit_users": int(seqs.n_users), "vocab_items": len(self.vocab.items_),
            "epochs": len(history), "final_loss": history[-1]["loss"] if history else None,
            "encoder_train_s": round(t_train, 2), "bad_rows_skipped": int(bad_rows),
            "value_share": float(np.isfinite(seqs.value).mean()) if len(seqs.value) else 0.0,
            "feature_quantiles": self.explainer.quantiles_.tolist(),
            "train_flagged_share": float(1 - normal.mean()),
            "trimmed_users": sum(d.n_trimmed_ for d in self.strata.detectors_),
            "length_strata": self.strata.bounds_, "shortest_history": int(n_ev.min()) if len(n_ev) else 0,
            "presumed_users": int(presumed.sum()), "max_events_per_user": c.max_events_per_user,
        })
        log.info("detectors fitted on %d of %d users (%d of %d events)%s", seqs.n_users, sample.seen_users,
                 len(seqs.ts), sample.seen_events, "" if sample.whole else " (the fit sample)")

    def _fit_drift(self, enc: Encoded) -> DriftReference:
        """The drift reference of the training sequences, with the scores :meth:`detect` gives them
        (what the serving path counts live; campaign evidence is in neither)."""
        scored = self.detect(enc)
        return DriftReference().fit(enc.seqs, scored.score, scored.anomalous, token_count=self._token_counts(),
                                    actions=self.vocab.actions_)

    def _token_counts(self) -> np.ndarray:
        """(n_items,) each item token's training count (0 for the special tokens)."""
        return np.r_[np.zeros(N_SPECIAL, np.int64), self.vocab.item_counts_]

    # ------------------------------------------------------------------ API
    def check_log(self, log_: EventLog, *, once: bool = False) -> list[str]:
        """Warn (and return the warnings) when a log does not match what the model learned from: no
        value at all where it learned from values, none of the actions it knows, or histories
        shorter than any it trained on. Such a log is still scored (a short request may lack them
        legitimately), but most users of a whole log like that, or those short users, will be
        flagged for it. ``once``: each warning at most once per process (a server warns once, not
        per request; a batch worker once, not per bucket)."""
        self._check_fitted(self.vocab)
        out = []
        if log_.n_events == 0:
            return out
        trained = self.metrics.get("value_share")
        if trained is not None and trained >= _VALUES_LEARNED and not np.isfinite(log_.value).any():
            out.append(f"the model learned from a 'value' column (set on {trained:.0%} of its training events) and "
                       f"this log has no values: its users' value features look unusual, so expect many flagged")
        known = set(self.vocab.actions_)
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

    def score(self, events: EventLog | pd.DataFrame | str | Path, *, on_bad_rows: str = "error",
              allow: AllowList | None = None) -> ScoreResult:
        """Score a log: per-user and per-event results (events in input order), and the campaigns
        found across its users (``campaigns``: None when the stage is off). ``allow``: users never
        flagged nor repaired, items never campaign targets (see :mod:`~.allowlist`)."""
        log_ = cap_history(as_log(events, on_bad_rows=on_bad_rows), self.config.max_events_per_user)
        self.check_log(log_)
        scored = self.score_log(log_)
        campaigns = None
        if self.campaign_detector is not None:
            campaigns = self.find_campaigns(log_, scored, allow)
            scored = self.apply_campaigns(log_, scored, campaigns)
        if allow:
            scored = apply_allow(log_.offsets, scored, allow.user_mask(log_.users))
        return score_result(log_, scored, campaigns)

    def repair(self, result: ScoreResult) -> RepairResult:
        """Apply the repair policy to a scored log."""
        return self.policy.repair(result)

    def save(self, path: str | Path) -> str:
        """Write the model bundle to directory ``path``, a local path or a URI (see
        :mod:`~seqguard_ray.core.bundle`); returns its location."""
        self._check_fitted(self.vocab, self.encoder, self.stats, self.event_detector, self.strata, self.explainer)
        return save_bundle(self, path)

    @classmethod
    def load(cls, path: str | Path) -> SeqGuard:
        """A ready SeqGuard from a model bundle; :class:`~.bundle.BundleError` when it cannot be read."""
        s = load_stages(path)
        sg = cls(s.pop("config"), s.pop("policy"))
        for name, value in s.items():
            setattr(sg, name, value)
        return sg
