"""Request limits of the gRPC API (events per sequence, sequences per batch, message size)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Request limits; all configurable (``seqguard serve --max-...``, app builder args)."""

    max_events_per_sequence: int = 10_000     # events in one ScoreRequest
    max_sequences_per_batch: int = 1_000      # ScoreRequests in one ScoreBatchRequest
    max_message_bytes: int = 16 * 1024 * 1024  # serialized request size (also set on the gRPC server)

    def __post_init__(self) -> None:
        for name in ("max_events_per_sequence", "max_sequences_per_batch", "max_message_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.max_message_bytes > 2**31 - 1:
            raise ValueError(f"max_message_bytes must be < 2 GiB, got {self.max_message_bytes}")

    @classmethod
    def from_dict(cls, d: dict | None) -> Limits:
        d = dict(d or {})
        known = {"max_events_per_sequence", "max_sequences_per_batch", "max_message_bytes"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
