"""Request limits of the gRPC API (events per sequence, sequences per batch, message size)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...core.validate import MAX_EVENTS_PER_USER


@dataclass(frozen=True)
class Limits:
    """Request limits; all configurable (``seqguard serve --max-...``, app builder args)."""

    # events in one ScoreRequest; the bundle's max_events_per_user also applies (see :meth:`capped`)
    max_events_per_sequence: int = MAX_EVENTS_PER_USER
    max_sequences_per_batch: int = 1_000      # ScoreRequests in one ScoreBatchRequest
    max_message_bytes: int = 16 * 1024 * 1024  # serialized request size (also set on the gRPC server)

    def __post_init__(self) -> None:
        for name in ("max_events_per_sequence", "max_sequences_per_batch", "max_message_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.max_message_bytes > 2**31 - 1:
            raise ValueError(f"max_message_bytes must be < 2 GiB, got {self.max_message_bytes}")

    def capped(self, max_events_per_user: int | None) -> Limits:
        """These limits with the served bundle's history cap (``TrainConfig.max_events_per_user``,
        the one the batch paths cut histories to) as the most events per sequence: a model is
        never asked about a history longer than it would score in a batch job."""
        if max_events_per_user is None or max_events_per_user >= self.max_events_per_sequence:
            return self
        return replace(self, max_events_per_sequence=int(max_events_per_user))

    @classmethod
    def from_dict(cls, d: dict | None) -> Limits:
        d = dict(d or {})
        known = {"max_events_per_sequence", "max_sequences_per_batch", "max_message_bytes"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
