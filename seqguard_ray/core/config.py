"""How a model is trained: one typed config, stored in the bundle it builds."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class TrainConfig:
    """How a model is trained. Every field is stored in the bundle; unknown keys are errors."""

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
    target_fpr: float = 0.01    # share of normal users flagged at the threshold (clean logs: more, docs/metrics.md)
    # share of training users presumed anomalous, left out of the normal references, besides those
    # whose items resemble nobody (explain.resembles_nobody)
    trim_share: float = 0.05
    score_batch_size: int = 128  # windows per scoring batch
    # the campaign stage (core/campaigns): groups of accounts pushing a few items; False: no stage
    campaigns: bool = True
    # share of the target false-positive rate the campaign stage spends: on a log without
    # campaigns about campaign_share * target_fpr of users are flagged by membership alone
    campaign_share: float = 0.2

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
            "campaigns": isinstance(self.campaigns, bool), "campaign_share": 0 < self.campaign_share < 1,
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

    def encoder_params(self) -> dict:
        """The :class:`~seqguard_ray.core.encoder.Encoder` stage's parameters."""
        return {k: getattr(self, k) for k in ("max_len", "context", "hidden_size", "num_layers", "num_heads", "epochs",
                                              "target_steps", "batch_size", "lr", "seed", "score_batch_size")}
