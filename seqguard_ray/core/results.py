"""What the pipeline's stages hand each other and the caller: encoded sequences, scores, repairs,
and the users / events frames that ``seqguard score`` writes.

Score convention: every score here is in [0, 1], higher = more anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .features import Seqs
from .schema import EventLog


@dataclass
class Encoded:
    """Output of the encoder stage for a set of users (``seqs.surprisal`` filled in)."""

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
    length_doubt: np.ndarray     # (U,) bool: flagged, but clearly normal judged at a typical length
    # (N,) bool: members' events on their campaign's targets, which repair removes whatever the
    # member's own action (CampaignResult.event_campaign); None: no campaign stage ran
    event_campaign: np.ndarray | None = None
    # (U,) int64: for takeovers, the position in the user's history of the first event after the
    # located change point (users.parquet's takeover_at); -1 otherwise; None: not located
    takeover_start: np.ndarray | None = None


@dataclass
class CampaignResult:
    """What the campaign stage found in a scored log (:mod:`seqguard_ray.core.campaigns`).

    - ``items``: one row per item of the log: ``item_id`` (input values and dtype),
      ``campaign_score`` (float in [0, 1], higher = more suspicious), ``suspicious`` (bool: a
      campaign's target), ``campaign_id`` (pandas ``Int64``, NA when none), ``reasons`` (str).
    - ``campaigns``: one row per campaign: ``campaign_id`` (int64), ``user_ids`` and
      ``target_item_ids`` (lists of ids as text), ``first_ts`` / ``last_ts`` (the campaign events'
      min / max, the input ``ts`` dtype), ``n_events`` (int64), ``score`` (float in [0, 1]),
      ``reasons`` (str).
    - ``user_campaign``: (U,) int64 each user's campaign, -1 = none (aligned with the log's users).
    - ``event_campaign``: (N,) bool, in the log's sorted event order: members' events on their
      campaign's targets (what repair undoes).
    - ``user_score``: (U,) the campaign's score for members (0 elsewhere), in [0, 1];
      ``user_fake``: (U,) bool, members whose history is mostly the campaign (or an account made
      for it): typed shilling when their own evidence is weak, injection otherwise.
    """

    items: pd.DataFrame
    campaigns: pd.DataFrame
    user_campaign: np.ndarray
    event_campaign: np.ndarray
    user_score: np.ndarray
    user_fake: np.ndarray


@dataclass
class ScoreResult:
    """What ``seqguard score`` writes: users, events (input order) and the log it came from."""

    users: pd.DataFrame
    events: pd.DataFrame
    log: EventLog
    scored: Scored
    campaigns: CampaignResult | None = None  # None when the campaign stage is off


@dataclass
class RepairResult:
    """What the repair policy made of a scored log."""

    repaired: pd.DataFrame       # surviving events, all input columns + weight
    actions: pd.DataFrame        # one row per user that was acted on: user_id, anomaly_type, action, events_dropped
    summary: dict[str, int]


def users_frame(log_: EventLog, s: Scored, campaigns: CampaignResult | None = None) -> pd.DataFrame:
    """users.parquet: user_id (input value and type), score, anomalous, anomaly_type, reasons, n_events,
    campaign_id (``Int64``: the user's campaign, NA when none or when the campaign stage is off),
    takeover_at (the ts of a takeover's first event after its change point, the input ``ts`` dtype;
    null when the user is not a takeover)."""
    users = log_.frame["user_id"]
    cid = pd.array(np.full(log_.n_users, pd.NA), dtype="Int64")
    if campaigns is not None:
        uc = np.asarray(campaigns.user_campaign, np.int64)
        cid = pd.array(np.where(uc >= 0, uc, 0), dtype="Int64")
        cid[uc < 0] = pd.NA
    return pd.DataFrame({
        "user_id": users.iloc[log_.offsets[:-1]].astype(users.dtype).reset_index(drop=True),
        "score": s.score.astype(np.float64),
        "anomalous": s.anomalous.astype(bool),
        "anomaly_type": s.anomaly_type.astype(str),
        "reasons": ["; ".join(r) for r in s.reasons],
        "n_events": np.diff(log_.offsets),
        "campaign_id": cid,
        "takeover_at": _takeover_at(log_, s),
    })


def _takeover_at(log_: EventLog, s: Scored) -> pd.Series:
    """(U,) the input ts of each takeover's first event after its change point, null elsewhere
    (integer ts become pandas ``Int64`` to hold the nulls)."""
    ts = log_.frame["ts"].reset_index(drop=True)
    start = np.full(log_.n_users, -1) if s.takeover_start is None else np.asarray(s.takeover_start, np.int64)
    is_takeover = (start >= 0) & (np.asarray(s.anomaly_type) == "takeover")
    at = ts.iloc[log_.offsets[:-1] + np.where(is_takeover, start, 0)].reset_index(drop=True) if len(ts) else ts
    if pd.api.types.is_integer_dtype(at.dtype):
        at = at.astype("Int64")
    return at.where(pd.Series(is_takeover), None)


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


def score_result(log_: EventLog, s: Scored, campaigns: CampaignResult | None = None) -> ScoreResult:
    """The users and events frames of a scored log, with the log, the scores and the campaigns found."""
    return ScoreResult(users_frame(log_, s, campaigns), events_frame(log_, s), log_, s, campaigns)
