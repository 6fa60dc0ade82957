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
    """Fail before the work, not after it, when an output directory (a local path or a URI)
    cannot be created, or its URI cannot be resolved."""
    from ..core import storage

    if storage.is_file(path):
        raise ValueError(f"{flag} {path} exists and is not a directory")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The training config's options (`seqguard train` and `seqguard pretrain`): a config file,
    a size preset and the flags that override them."""
    from ..core.config import PRECISIONS, PRESETS, SCORE_PRECISIONS

    g = p.add_argument_group("training config (flags override --config, which overrides --preset)")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="training config, YAML or JSON: any TrainConfig field (seqguard_ray/core/config.py)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="encoder size: small (2 layers x 64, the default), base (4 x 256), large (8 x 512)")
    g.add_argument("--epochs", type=positive_int, default=None, help="encoder epochs (default: sized to the data)")
    g.add_argument("--batch-size", type=positive_int, default=None, dest="train_batch_size", metavar="N",
                   help="windows per training batch (default 64)")
    g.add_argument("--grad-accum", type=positive_int, default=None,
                   help="batches per optimiser step (gradient accumulation; default 1)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    g.add_argument("--mixed-precision", choices=PRECISIONS, default=None,
                   help="autocast dtype on a CUDA GPU (default bf16; ignored on CPU)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    g.add_argument("--score-precision", choices=SCORE_PRECISIONS, default=None,
                   help="encoder scoring on a CPU: fp32 (default) or bf16 where the CPU has bf16 instructions "
                        "(AMX, AVX-512 BF16): faster, surprisal within ~0.005 nats; stored in the bundle")
    g.add_argument("--score-compile", action="store_const", const=True, default=None,
                   help="score through torch.compile: compiled once per process on its first batch (tens of "
                        "seconds), faster after (docs/benchmarks.md); stored in the bundle")
    g.add_argument("--max-events-per-user", type=positive_int, default=None, metavar="N",
                   help="most events of one user trained on and scored with this bundle: older ones are left out "
                        "and counted in the summary, longer gRPC sequences rejected (default 10000)")
    g.add_argument("--fit-sample-events", type=positive_int, default=None, metavar="N",
                   help="most events of whole users the detectors are fitted on (a seeded, length-stratified "
                        "user sample; the encoder trains on everything; default 2000000: ordinary logs whole)")
    g.add_argument("--init-from", default=None, metavar="ENCODER_DIR",
                   help="start from a pretrained encoder (`seqguard pretrain --out`) and fine-tune it; "
                        "without --preset or sizes its sizes are taken")


def train_config(args):
    """The TrainConfig of a command's options (both engines): defaults, then --preset, then
    --config FILE, then the other flags; a pretrained encoder's sizes where none are given."""
    from ..core.config import resolve_config

    flags = {"preset": args.preset, "epochs": args.epochs, "batch_size": args.train_batch_size,
             "grad_accum": args.grad_accum, "lr": args.lr, "mixed_precision": args.mixed_precision,
             "seed": args.seed, "score_precision": args.score_precision,
             "score_compile": args.score_compile, "init_from": args.init_from, "max_events_per_user": args.max_events_per_user,
             "fit_sample_events": args.fit_sample_events,
             "target_fpr": getattr(args, "target_fpr", None), "trim_share": getattr(args, "trim_share", None)}
    cfg = resolve_config(args.config, flags)
    if cfg.init_from is not None:
        from ..core.pretrained import pretrained_sizes
        cfg = resolve_config(args.config, flags, below=pretrained_sizes(cfg.init_from))
    return cfg


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
