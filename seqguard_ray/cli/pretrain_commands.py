"""``seqguard pretrain``: train the encoder alone on a large log, for `seqguard train --init-from`."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("seqguard")


def add_parser(sub, add_config_args, add_on_bad_rows) -> None:
    """Add the ``pretrain`` subcommand; it sets ``handler`` (call ``args.handler(args)``)."""
    p = sub.add_parser("pretrain", help="pretrain the sequence encoder alone on a large behaviour log",
                       description="Train the encoder (self-supervised) on a large log and write it, with its "
                                   "vocabulary, config and its items' text embeddings (where the log has title/"
                                   "category columns and the [text] extra is installed), to ENCODER_DIR; "
                                   "`seqguard train --init-from ENCODER_DIR` fine-tunes it on a target log.")
    p.add_argument("--events", required=True, help="Parquet file or directory, CSV or JSONL with user_id, item_id, ts")
    p.add_argument("--out", required=True, metavar="ENCODER_DIR", help="output directory of the pretrained encoder")
    add_config_args(p)
    add_on_bad_rows(p)
    from .ray_commands import add_ray_args
    add_ray_args(p, command="train")
    p.set_defaults(handler=cmd_pretrain)


def cmd_pretrain(args) -> int:
    from .common import check_out_dir, train_config
    from .ray_commands import choose_engine, ray_session, ray_train_options

    check_out_dir(args.out, "--out")
    cfg = train_config(args)
    t0 = time.perf_counter()
    if choose_engine(args) == "ray":
        from ..runtime.ray.train import pretrain
        with ray_session(args.address):
            m = pretrain(args.events, args.out, cfg, on_bad_rows=args.on_bad_rows, options=ray_train_options(args))
    else:
        from ..core.pretrained import pretrain
        m = pretrain(args.events, args.out, cfg, on_bad_rows=args.on_bad_rows)
    log.info("pretrained a %s encoder (%d layers x %d) on %d events in %.1f s: final loss %.3f, "
             "%d items (%d with text); encoder in %s", cfg.preset, cfg.num_layers, cfg.hidden_size, m["train_events"],
             time.perf_counter() - t0, m["final_loss"] or float("nan"), m["vocab_items"],
             m["items_with_text"], args.out)
    return 0
