"""How a model is trained: one typed config, stored in the bundle it builds, and its one loader
(defaults -> size preset -> config file -> command-line flags, later ones winning)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .validate import MAX_EVENTS_PER_USER

# Encoder sizes by preset. small is the encoder seqguard has always trained (2 x 64, feed-forward
# 2x wide); base and large are BERT's compact shapes (BERT-mini 4 x 256 and BERT-medium 8 x 512:
# 64-wide heads, feed-forward 4x wide), each sized for one GPU, with a smaller learning rate as
# models grow.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128, "lr": 2e-3},
    "base": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024, "lr": 1e-3},
    "large": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 2048, "lr": 5e-4},
}
SIZE_KEYS = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_len")
PRECISIONS = ("bf16", "fp16", "off")
SCORE_PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """How a model is trained. Every field is stored in the bundle; unknown keys are errors.

    Fields left None take the value of ``preset`` (see :data:`PRESETS`), so the stored config is
    always the resolved one.
    """

    preset: str = "small"       # encoder size preset: small (2 x 64), base (4 x 256) or large (8 x 512)
    epochs: int | None = None   # encoder epochs; None = enough for ~target_steps optimiser steps (2..40)
    target_steps: int = 300     # optimiser steps aimed at when epochs is None
    batch_size: int = 64        # windows per training batch (one forward/backward pass)
    grad_accum: int = 1         # batches whose gradients add up to one optimiser step (batch_size * grad_accum windows)
    lr: float | None = None     # AdamW learning rate (cosine decay, short warm-up); None = the preset's
    # autocast dtype of training and scoring on a CUDA GPU ("off": fp32); ignored on CPU
    mixed_precision: str = "bf16"
    seed: int = 0               # seeds torch, numpy and the detectors
    max_len: int = 128          # events per encoder window
    context: int = 16           # events of overlap on each side between windows of a long history
    hidden_size: int | None = None        # encoder width; None = the preset's
    num_layers: int | None = None         # encoder layers; None = the preset's
    num_heads: int | None = None          # attention heads; None = the preset's
    intermediate_size: int | None = None  # feed-forward width; None = hidden_size x the preset's ratio
    # a pretrained encoder directory (`seqguard pretrain`) to start from and fine-tune; None = random init
    init_from: str | None = None
    # embed the titles/categories of items new to a pretrained encoder with the item-text model
    # (the [text] extra) when it is installed and the log has text; False: new items start as the unknown bucket
    item_text: bool = True
    min_item_count: int = 2     # items seen fewer times share the unknown bucket
    target_fpr: float = 0.01    # share of normal users flagged at the threshold (clean logs: more, docs/metrics.md)
    # share of training users presumed anomalous, left out of the normal references, besides those
    # whose items resemble nobody (explain.resembles_nobody)
    trim_share: float = 0.05
    score_batch_size: int = 128  # windows per scoring batch
    # encoder scoring on a CPU: "fp32", or "bf16" autocast where the CPU has bf16 instructions (AMX,
    # AVX-512 BF16): 1.3x (small) to 2.4x (base) the windows/s, surprisal within ~0.005 nats
    # (docs/benchmarks.md); a CPU without them scores in fp32. A GPU follows mixed_precision.
    score_precision: str = "fp32"
    # torch.compile the encoder's Transformer for scoring (opt-in): compiled once per process on its
    # first scoring call (~20-60 s of one core for small), then faster (small: 1.2x fp32, 1.7x with
    # bf16; docs/benchmarks.md); where compiling fails (no C++ compiler) scoring stays eager, with a warning
    score_compile: bool = False
    # the campaign stage (core/campaigns): groups of accounts pushing a few items; False: no stage
    campaigns: bool = True
    # share of the target false-positive rate the campaign stage spends: on a log without
    # campaigns about campaign_share * target_fpr of users are flagged by membership alone
    campaign_share: float = 0.2
    # most events of one user trained on and scored (validate.MAX_EVENTS_PER_USER): batch paths keep
    # the most recent ones and count the rest in the summary; gRPC rejects a longer sequence
    max_events_per_user: int = MAX_EVENTS_PER_USER
    # most events of whole users the detectors and their calibration are fitted on (core/sample.py:
    # users picked by a seeded hash of their id, stratified by history length); the encoder trains
    # on the whole log. A log within it is used whole
    fit_sample_events: int = 2_000_000
    # fewest users of each history-length stratum in that sample (all it has, if fewer), budget or
    # not: the calibrated 1% tail needs them (core/sample.py)
    fit_sample_min_users: int = 5_000

    def __post_init__(self) -> None:
        _check_types(self)
        if self.preset not in PRESETS:
            raise ValueError(f"invalid training config: preset={self.preset!r}; known presets: {sorted(PRESETS)}")
        p = PRESETS[self.preset]
        for k in ("hidden_size", "num_layers", "num_heads", "lr"):
            if getattr(self, k) is None:
                setattr(self, k, p[k])
        if self.intermediate_size is None:
            self.intermediate_size = self.hidden_size * p["intermediate_size"] // p["hidden_size"]
        checks = {
            "epochs": self.epochs is None or self.epochs >= 1,
            "target_steps": self.target_steps >= 1, "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1, "mixed_precision": self.mixed_precision in PRECISIONS,
            "lr": self.lr > 0, "max_len": 8 <= self.max_len <= 4096,
            "context": 0 <= 2 * self.context < self.max_len, "hidden_size": self.hidden_size >= 8,
            "num_layers": self.num_layers >= 1,
            "num_heads": self.num_heads >= 1 and self.hidden_size % self.num_heads == 0,
            "intermediate_size": self.intermediate_size >= 1,
            "init_from": self.init_from is None or self.init_from != "",
            "min_item_count": self.min_item_count >= 1, "target_fpr": 0 < self.target_fpr < 0.5,
            "trim_share": 0 <= self.trim_share < 0.5,
            "score_batch_size": self.score_batch_size >= 1,
            "score_precision": self.score_precision in SCORE_PRECISIONS, "campaign_share": 0 < self.campaign_share < 1,
            "max_events_per_user": self.max_events_per_user >= 1,
            "fit_sample_events": self.fit_sample_events >= 1, "fit_sample_min_users": self.fit_sample_min_users >= 1,
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
        return {k: getattr(self, k) for k in ENCODER_PARAMS}


ENCODER_PARAMS = ("max_len", "context", "hidden_size", "num_layers", "num_heads", "intermediate_size", "epochs",
                  "target_steps", "batch_size", "grad_accum", "lr", "mixed_precision", "seed", "score_batch_size", "score_precision",
                  "score_compile")


def _allowed(hint) -> tuple[type, ...]:
    """The runtime types a field's annotation admits (``int | None`` -> (int, NoneType))."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for a in typing.get_args(hint) for t in _allowed(a))
    return (hint,)


def _check_types(cfg: TrainConfig) -> None:
    """ValueError naming the field whose value has the wrong type (ints pass for floats, bools never for numbers)."""
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        v, allowed = getattr(cfg, f.name), _allowed(hints[f.name])
        ok = isinstance(v, allowed) and not (isinstance(v, bool) and bool not in allowed)
        ok = ok or (float in allowed and isinstance(v, int) and not isinstance(v, bool))
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"invalid training config: {f.name} must be {names}, got {v!r} ({type(v).__name__})")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A training config file (YAML, or JSON by its .json suffix) as a flat dict; ValueError naming
    the file when it cannot be read or is not a mapping. Numbers YAML leaves as text (``1e-3``) are
    read as numbers where the field is a float."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"training config file {p} does not exist")
    try:
        if p.suffix.lower() == ".json":
            d = json.loads(p.read_text())
        else:
            import yaml
            d = yaml.safe_load(p.read_text())
    except Exception as exc:  # json / yaml parse errors of every kind
        raise ValueError(f"training config file {p} cannot be parsed: {exc}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"training config file {p} must hold a mapping of field: value, got {type(d).__name__}")
    hints = typing.get_type_hints(TrainConfig)
    for k, v in d.items():
        if isinstance(v, str) and k in hints and float in _allowed(hints[k]):
            try:
                d[k] = float(v)
            except ValueError:
                pass  # reported by the type check, naming the field
    return d


def resolve_config(file: str | Path | None = None, flags: dict[str, Any] | None = None,
                   below: dict[str, Any] | None = None) -> TrainConfig:
    """The one training config: ``below`` (e.g. a pretrained encoder's sizes, taken only where
    neither the file nor the flags set the preset or a size), then the file, then ``flags`` (None
    values: not given). Errors name the file and the field."""
    from_file = read_config_file(file) if file is not None else {}
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    merged = {**from_file, **given}
    if below and not any(k in merged for k in ("preset", *SIZE_KEYS)):
        merged = {**below, **merged}
    if file is not None:
        try:
            TrainConfig.from_dict(from_file)  # the file's own errors name the file
        except ValueError as exc:
            raise ValueError(f"training config file {file}: {exc}") from None
    return TrainConfig.from_dict(merged)
