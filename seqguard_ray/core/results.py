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


@dataclass
class ScoreResult:
    """What ``seqguard score`` writes: users, events (input order) and the log it came from."""

    users: pd.DataFrame
    events: pd.DataFrame
    log: EventLog
    scored: Scored


@dataclass
class RepairResult:
    """What the repair policy made of a scored log."""

    repaired: pd.DataFrame       # surviving events, all input columns + weight
    actions: pd.DataFrame        # one row per user that was acted on: user_id, anomaly_type, action, events_dropped
    summary: dict[str, int]


def users_frame(log_: EventLog, s: Scored) -> pd.DataFrame:
    """users.parquet: user_id (input value and type), score, anomalous, anomaly_type, reasons, n_events."""
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


def score_result(log_: EventLog, s: Scored) -> ScoreResult:
    """The users and events frames of a scored log, with the log and the scores."""
    return ScoreResult(users_frame(log_, s), events_frame(log_, s), log_, s)
