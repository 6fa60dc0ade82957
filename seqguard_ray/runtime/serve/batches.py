"""The data the serving stages pass along, as flat numpy columns (no protobuf).

A :class:`SeqBatch` holds many sequences cut by ``offsets``, so concurrent requests merge into
one engine call (the engine is vectorised over users) and each stage hop carries arrays, not
per-request objects. The Encoder stage turns it into an :class:`EncodedBatch`, the detectors into a
:class:`ScoredBatch`, the repair policy into a :class:`RepairedBatch`; each splits back into the
parts that were merged.

Scores are in [0, 1]; higher means more anomalous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...core.schema import EventLog

# Width of the internal per-sequence ids (they sort as strings in batch order).
_ID_WIDTH = 9


@dataclass
class SeqBatch:
    """Validated sequences as flat columns, in the order they were sent.

    Sequence ``r`` owns rows ``offsets[r]:offsets[r+1]``.
    """

    user_ids: list[str]    # (R,) the callers' user ids (echoed back, not used for scoring)
    offsets: np.ndarray    # (R + 1,) int64
    item: np.ndarray       # (N,) object str
    ts: np.ndarray         # (N,) float64 seconds
    action: np.ndarray     # (N,) object str
    value: np.ndarray      # (N,) float64, NaN where unset

    @property
    def n_seqs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.ts)

    @staticmethod
    def concat(batches: Sequence[SeqBatch]) -> tuple[SeqBatch, np.ndarray]:
        """One batch of all sequences, and the sequence bounds (len(batches) + 1,) of each part."""
        if len(batches) == 1:
            return batches[0], np.array([0, batches[0].n_seqs])
        counts = np.concatenate([np.diff(b.offsets) for b in batches])
        bounds = np.r_[0, np.cumsum([b.n_seqs for b in batches])]
        return SeqBatch(
            [u for b in batches for u in b.user_ids], np.r_[0, np.cumsum(counts)].astype(np.int64),
            np.concatenate([b.item for b in batches]), np.concatenate([b.ts for b in batches]),
            np.concatenate([b.action for b in batches]), np.concatenate([b.value for b in batches]),
        ), bounds

    def take(self, rows: np.ndarray) -> SeqBatch:
        """The sequences ``rows`` (int indices, in that order) as a batch of their own."""
        counts = np.diff(self.offsets)[rows]
        ev = np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]) if len(rows) else \
            np.zeros(0, np.int64)
        return SeqBatch([self.user_ids[r] for r in rows], np.r_[0, np.cumsum(counts)].astype(np.int64),
                        self.item[ev], self.ts[ev], self.action[ev], self.value[ev])

    def to_log(self) -> EventLog:
        """The engine's input, straight from these validated columns (no second validation pass):
        each sequence sorted by time, ties kept in the order sent. ``frame`` holds only ``_row``,
        the position in this batch of each sorted event. User ids are internal per-sequence numbers."""
        import pandas as pd

        seq = np.repeat(np.arange(self.n_seqs), np.diff(self.offsets))
        order = np.lexsort((np.arange(self.n_events), self.ts, seq))
        ids = np.array([f"{r:0{_ID_WIDTH}d}" for r in range(self.n_seqs)], dtype=object)
        return EventLog(pd.DataFrame({"_row": order}), ids[seq], self.item[order], self.ts[order],
                        self.action[order], self.value[order], self.offsets.copy())

@dataclass
class EncodedBatch:
    """Encoder stage output: the engine's Encoded plus what later stages need to map back."""

    encoded: Any               # engine.Encoded (sorted by sequence, then time)
    order: np.ndarray          # (N,) sorted event position -> row in the SeqBatch
    model_version: str
    model_dir: str
    user_ids: list[str] | None = None  # (R,) the callers' user ids (a published campaign's members)
    items: np.ndarray | None = None    # (N,) object str item ids, sorted order (a campaign's targets)

    def split(self, bounds: np.ndarray) -> list[EncodedBatch]:
        """Per-part views for sequence bounds (P + 1,) (the parts were concatenated in order)."""
        from ...core.results import Encoded
        from ...core.features import Seqs

        if len(bounds) == 2:
            return [self]
        s, off = self.encoded.seqs, self.encoded.seqs.offsets
        out = []
        for r0, r1 in zip(bounds[:-1], bounds[1:]):
            e0, e1 = off[r0], off[r1]
            seqs = Seqs(off[r0:r1 + 1] - e0, s.ts[e0:e1], s.item[e0:e1], s.action[e0:e1], s.value[e0:e1], s.surprisal[e0:e1],
                        None if s.key is None else s.key[e0:e1])
            out.append(EncodedBatch(Encoded(seqs, self.encoded.user_emb[r0:r1]), self.order[e0:e1] - e0,
                                    self.model_version, self.model_dir,
                                    None if self.user_ids is None else self.user_ids[r0:r1],
                                    None if self.items is None else self.items[e0:e1]))
        return out


@dataclass
class ScoredBatch:
    """Detector stage output for R sequences; event arrays in sorted order (see ``order``)."""

    offsets: np.ndarray          # (R + 1,)
    order: np.ndarray            # (N,) sorted position -> input row
    score: np.ndarray            # (R,) in [0, 1], higher = more anomalous
    anomalous: np.ndarray        # (R,) bool
    anomaly_type: np.ndarray     # (R,) str
    reasons: list[list[str]]     # (R,)
    event_score: np.ndarray      # (N,) in [0, 1]
    event_anomalous: np.ndarray  # (N,) bool
    detector_scores: np.ndarray  # (R, D)
    length_doubt: np.ndarray     # (R,) bool, see Scored.length_doubt
    detector_names: tuple[str, ...]
    threshold: float
    model_version: str
    model_dir: str
    # a published campaign table's evidence (None / "": none is published)
    event_campaign: np.ndarray | None = None  # (N,) bool: members' events on their campaign's targets
    campaign_id: np.ndarray | None = None     # (R,) int64 each sequence's campaign, -1 = none
    targeted: list[list[int]] | None = None   # (R,) campaigns whose targets each sequence has events on
    campaigns_version: str = ""
    # the batch's drift counts (DriftReference.count: signal -> (bins,) int64); None: the bundle has no
    # drift reference. Counts of the whole batch: a slice has none (they would be counted twice)
    drift_counts: dict[str, np.ndarray] | None = None

    def input_order(self) -> np.ndarray:
        """(N,) for each input row, its sorted position."""
        inv = np.empty(len(self.order), np.int64)
        inv[self.order] = np.arange(len(self.order))
        return inv

    def slice(self, r0: int, r1: int) -> ScoredBatch:
        e0, e1 = int(self.offsets[r0]), int(self.offsets[r1])
        return replace(self, offsets=self.offsets[r0:r1 + 1] - e0, order=self.order[e0:e1] - e0,
                       score=self.score[r0:r1], anomalous=self.anomalous[r0:r1], anomaly_type=self.anomaly_type[r0:r1],
                       reasons=self.reasons[r0:r1], event_score=self.event_score[e0:e1],
                       event_anomalous=self.event_anomalous[e0:e1], detector_scores=self.detector_scores[r0:r1],
                       length_doubt=self.length_doubt[r0:r1],
                       event_campaign=None if self.event_campaign is None else self.event_campaign[e0:e1],
                       campaign_id=None if self.campaign_id is None else self.campaign_id[r0:r1],
                       targeted=None if self.targeted is None else self.targeted[r0:r1], drift_counts=None)

    def split(self, bounds: np.ndarray) -> list[ScoredBatch]:
        return [self] if len(bounds) == 2 else [self.slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class RepairedBatch:
    """Repair stage output: the scores plus each event's fate (sorted order, like ``scored``)."""

    scored: ScoredBatch
    keep: np.ndarray          # (N,) bool
    weight: np.ndarray        # (N,) float, 0 for dropped events
    event_action: np.ndarray  # (N,) str, "" when unchanged
    user_action: np.ndarray   # (R,) str

    def slice(self, r0: int, r1: int) -> RepairedBatch:
        e0, e1 = int(self.scored.offsets[r0]), int(self.scored.offsets[r1])
        return RepairedBatch(self.scored.slice(r0, r1), self.keep[e0:e1], self.weight[e0:e1],
                             self.event_action[e0:e1], self.user_action[r0:r1])

    def split(self, bounds: np.ndarray) -> list[RepairedBatch]:
        return [self] if len(bounds) == 2 else [self.slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

