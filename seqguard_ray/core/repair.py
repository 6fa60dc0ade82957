"""Repair policy: what to do with each anomaly type, and the per-event outcome with a reason."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .results import RepairResult, ScoreResult

# The documented set of anomaly types (users.parquet anomaly_type).
ANOMALY_TYPES = {
    "normal": "nothing unusual at the target false-positive rate",
    "bot": "the whole history is automated: timing, rate or action mix unlike people",
    "shilling": "the whole history is a fake profile: item, popularity or value pattern unlike people",
    "injection": "a real history with injected events (e.g. click-farm bursts); the injected events are marked",
    "takeover": "a real history with a contiguous stretch in another taste (account takeover); the stretch is marked",
    "replay": "replayed traffic: a real history with copied segments (the copies are marked), or an account copying an earlier one's history or nearly all of its items from another person's",
    "other": "the whole history is anomalous in a way none of the types above describes",
}

ACTIONS = {
    "quarantine": "drop every event of the user",
    "drop_events": "drop the anomalous events, down-weight doubtful ones",
    "cut": "drop the history from the first to the last anomalous event (the takeover stretch)",
    "downweight": "keep every event; anomalous and doubtful ones get a lower weight",
    "pass": "keep everything unchanged",
}


_CAMPAIGN_ACTIONS = ("drop_events", "downweight", "pass")


def _default_actions() -> dict[str, str]:
    return {"normal": "pass", "bot": "quarantine", "shilling": "quarantine", "other": "quarantine",
            "injection": "drop_events", "replay": "drop_events", "takeover": "cut"}


@dataclass
class RepairPolicy:
    """A repair action per anomaly type.

    Args:
        actions: anomaly type -> one of ACTIONS.
        doubt_threshold: kept events of flagged users with an event score at least this are
            down-weighted (default 0.9).
        doubt_weight: weight given to doubtful events (default 0.5).
        anomalous_weight: weight given to anomalous events that a "downweight" action keeps
            (default 0.1).
        doubtful_action: the action, instead of its type's, for a flagged user whose verdict does
            not hold at a typical history length (Scored.length_doubt: a heavy user odd only in
            the ways heavy users are); default "downweight": keep its events at lower weights
            rather than delete a real power user's history. None: its type's action.
        campaign_action: what happens to a campaign's events on its targets (Scored.event_campaign),
            whatever their user's own action: "drop_events" (default: undo the push),
            "downweight" (keep them at ``anomalous_weight``) or "pass".
    """

    actions: dict[str, str] = field(default_factory=_default_actions)
    doubt_threshold: float = 0.9
    doubt_weight: float = 0.5
    anomalous_weight: float = 0.1
    doubtful_action: str | None = "downweight"
    campaign_action: str = "drop_events"

    def __post_init__(self) -> None:
        unknown_types = set(self.actions) - set(ANOMALY_TYPES)
        if unknown_types:
            raise ValueError(f"repair policy names unknown anomaly type(s) {sorted(unknown_types)}; known: {sorted(ANOMALY_TYPES)}")
        bad = {t: a for t, a in self.actions.items() if a not in ACTIONS}
        if bad:
            raise ValueError(f"repair policy has unknown action(s) {bad}; known: {sorted(ACTIONS)}")
        if self.doubtful_action is not None and self.doubtful_action not in ACTIONS:
            raise ValueError(f"repair policy has unknown doubtful_action {self.doubtful_action!r}; known: {sorted(ACTIONS)}")
        if self.campaign_action not in _CAMPAIGN_ACTIONS:
            raise ValueError(f"repair policy has unknown campaign_action {self.campaign_action!r}; "
                             f"known: {list(_CAMPAIGN_ACTIONS)}")
        for name in ("doubt_threshold", "doubt_weight", "anomalous_weight"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.actions = {**_default_actions(), **self.actions}

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """No arrays; meta: the fields (what a bundle's ``repair_policy`` holds)."""
        return {}, asdict(self)

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> RepairPolicy:
        return cls(**meta)

    def repair(self, result: ScoreResult) -> RepairResult:
        """Apply the policy to a scored log: the surviving events (input order, every input column
        and a ``weight``), one action row per user acted on, and a summary of counts."""
        log_, s = result.log, result.scored
        keep, weight, _, user_action = self.decide(log_.offsets, s)
        pushed = np.zeros(len(keep), bool) if s.event_campaign is None else np.asarray(s.event_campaign, bool)
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
            # flagged, but odd only as histories of their length are: given doubtful_action instead of their type's
            "users_length_doubt": int((s.length_doubt & (user_action == self.doubtful_action)).sum()),
            # a campaign's events on its targets that did not survive (any action took them)
            "campaign_events_removed": int((pushed & ~keep).sum()),
        }
        return RepairResult(repaired, actions, summary)

    def decide(self, offsets: np.ndarray, scored) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`apply` to a detector stage's output (results.Scored, or the serving path's batch),
        with its campaign events (``event_campaign``) where it has them."""
        return self.apply(offsets, scored.anomaly_type, scored.event_score, scored.event_anomalous, scored.length_doubt,
                          getattr(scored, "event_campaign", None))

    def apply(self, offsets: np.ndarray, anomaly_type: np.ndarray, event_score: np.ndarray,
              event_anomalous: np.ndarray, length_doubt: np.ndarray | None = None,
              event_campaign: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Decide each event's fate.

        offsets (U + 1,), anomaly_type (U,) str, event_score (N,), event_anomalous (N,) bool,
        length_doubt (U,) bool (default none): flagged users that get ``doubtful_action``;
        event_campaign (N,) bool (default none): a campaign's events on its targets, which get
        ``campaign_action`` whatever their user's action.
        Returns keep (N,) bool, weight (N,) float, event_action (N,) str reason, user_action (U,) str.
        """
        n = len(event_score)
        keep = np.ones(n, bool)
        weight = np.ones(n)
        ev_action = np.full(n, "", dtype=object)
        user_action = np.empty(len(anomaly_type), dtype=object)
        doubt_user = np.zeros(len(anomaly_type), bool) if length_doubt is None else np.asarray(length_doubt, bool)
        if doubt_user.shape != (len(anomaly_type),):
            raise ValueError(f"length_doubt must be a bool per user ({len(anomaly_type)}), got shape {doubt_user.shape}")
        for u, t in enumerate(anomaly_type):
            a, b = int(offsets[u]), int(offsets[u + 1])
            act = self.actions.get(t, "pass")
            if doubt_user[u] and act != "pass" and self.doubtful_action is not None:
                act = self.doubtful_action
            user_action[u] = act
            if act == "pass" or b == a:
                continue
            anom = event_anomalous[a:b]
            doubt = ~anom & (event_score[a:b] >= self.doubt_threshold)
            if act == "quarantine":
                keep[a:b] = False
                ev_action[a:b] = f"dropped: user quarantined as {t}"
                continue
            if act == "cut" and anom.any():
                idx = np.flatnonzero(anom)
                cut = np.zeros(b - a, bool)
                cut[idx[0]:idx[-1] + 1] = True
                keep[a:b] &= ~cut
                ev_action[a:b][cut] = f"dropped: cut at {t} point"
            elif act == "drop_events":
                keep[a:b] &= ~anom
                ev_action[a:b][anom] = f"dropped: anomalous event ({t})"
            elif act == "downweight":
                weight[a:b][anom] = self.anomalous_weight
                ev_action[a:b][anom] = f"down-weighted: anomalous event ({t})"
            kept_doubt = doubt & keep[a:b]
            weight[a:b][kept_doubt] = np.minimum(weight[a:b][kept_doubt], self.doubt_weight)
            ev_action[a:b][kept_doubt] = f"down-weighted: doubtful event ({t})"
        if event_campaign is not None and self.campaign_action != "pass":
            push = np.asarray(event_campaign, bool)
            if push.shape != (n,):
                raise ValueError(f"event_campaign must be a bool per event ({n}), got shape {push.shape}")
            push = push & keep
            if self.campaign_action == "drop_events":
                keep &= ~push
                ev_action[push] = "dropped: a campaign's event on its target"
            else:
                weight[push] = np.minimum(weight[push], self.anomalous_weight)
                ev_action[push] = "down-weighted: a campaign's event on its target"
        weight[~keep] = 0.0
        return keep, weight, ev_action, user_action
