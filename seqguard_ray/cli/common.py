"""What the ``seqguard`` subcommands share: argument types, the training config of the options,
output checks, and the numbers a report shows."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


def fpr(s: str) -> float:
    v = float(s)
    if not 0 < v < 0.5:
        raise argparse.ArgumentTypeError(f"must be in (0, 0.5), got {s}")
    return v


def share(s: str) -> float:
    v = float(s)
    if not 0 <= v < 0.5:
        raise argparse.ArgumentTypeError(f"must be in [0, 0.5), got {s}")
    return v


def check_out_dir(path: str | Path, flag: str) -> None:
    """Fail before the work, not after it, when an output directory cannot be created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p} exists and is not a directory")


def train_config(args):
    """The TrainConfig of `seqguard train`'s options (both engines); unset options keep its defaults."""
    from ..core.config import TrainConfig
    given = {"epochs": args.epochs, "seed": args.seed, "target_fpr": args.target_fpr, "trim_share": args.trim_share}
    return TrainConfig(**{k: v for k, v in given.items() if v is not None})


def summary_counts(summary: dict) -> dict[str, int]:
    """The integer counts of a scoring summary (what the report's repair table shows)."""
    return {k: v for k, v in summary.items() if isinstance(v, int)}


def model_info(sg) -> dict:
    """What the report says about the model."""
    return {"model version": getattr(sg, "model_version", "in memory"), "threshold": sg.user_detectors.threshold_,
            "target FPR": sg.config.target_fpr, "training users flagged": sg.metrics.get("train_flagged_share"),
            "training events": sg.metrics.get("train_events"),
            "training users": sg.metrics.get("train_users"), "encoder epochs": sg.metrics.get("epochs"),
            "final loss": sg.metrics.get("final_loss")}
