"""What the ``seqguard`` subcommands share: argument types, the training config of the options,
output checks, and the numbers a report shows."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("seqguard")


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


def read_allow_list(path: str | None):
    """The ``AllowList`` of ``--allow-list FILE`` (None without one); a ValueError names the file
    and what is wrong with it (the CLI's exit 2)."""
    if path is None:
        return None
    from ..core.allowlist import AllowList
    try:
        allow = AllowList.read(path)
    except ValueError as exc:  # every message names the file, not only the parse errors
        raise ValueError(str(exc) if str(path) in str(exc) else f"the allow-list {path}: {exc}") from None
    log.info("allow-list %s: %d users, %d items", path, len(allow.users), len(allow.items))
    return allow


def campaign_frames(result) -> tuple:
    """(items, campaigns) frames of a ScoreResult, (None, None) when the campaign stage did not run."""
    c = getattr(result, "campaigns", None)
    return (None, None) if c is None else (c.items, c.campaigns)


def campaign_lines(campaigns, k: int = 5, ids: int = 4) -> list[str]:
    """Up to ``k`` campaigns (strongest first) as one line each, for a printout."""
    if campaigns is None:
        return []
    top = campaigns.sort_values("score", ascending=False, kind="stable").head(k)
    lines = []
    for _, c in top.iterrows():
        members, targets = list(c["user_ids"]), list(c["target_item_ids"])
        more = f" +{len(members) - ids}" if len(members) > ids else ""
        lines.append(f"campaign {c['campaign_id']}: score {c['score']:.3f}, {len(members)} members "
                     f"({', '.join(map(str, members[:ids]))}{more}) on {len(targets)} target(s) "
                     f"{', '.join(map(str, targets[:ids]))}{' ...' if len(targets) > ids else ''}; {c['n_events']} events")
    if len(campaigns) > k:
        lines.append(f"... and {len(campaigns) - k} more campaigns")
    return lines


def summary_counts(summary: dict) -> dict[str, int]:
    """The integer counts of a scoring summary (what the report's repair table shows)."""
    return {k: v for k, v in summary.items() if isinstance(v, int)}


def model_info(sg) -> dict:
    """What the report says about the model."""
    return {"model version": getattr(sg, "model_version", "in memory"), "threshold": sg.user_detectors.threshold_,
            "target FPR": sg.config.target_fpr, "training users flagged": sg.metrics.get("train_flagged_share"),
            "training events": sg.metrics.get("train_events"),
            "training users": sg.metrics.get("train_users"), "encoder epochs": sg.metrics.get("epochs"),
            "final loss": sg.metrics.get("final_loss"),
            "campaign stage": "on" if getattr(sg, "campaign_detector", None) is not None else "off"}
