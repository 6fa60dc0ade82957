"""Does a bigger encoder find more? The scaling curve of issue 31, item 3.

Each size preset (small = today's default, base, large) is trained on a fixed compute budget
(``--budget`` seconds of encoder training on this machine: the bench times a few optimiser steps of
each size first and sets its epochs so that training takes about the budget), on the generator's
log and on MovieLens-100k, each with the default attack mix injected; every run trains on the
poisoned log and scores it (the "repair my training data" use, as bench/quality.py). Today's
default, the small preset at its usual ~300 optimiser steps, is the baseline in the same run.

Pretrain-then-adapt (``--pretrain``): the encoder of each size in ``--pretrain-sizes`` is pretrained
on ``--pretrain-events`` generator events for the budget (``seqguard pretrain``'s code), then
fine-tuned on the poisoned MovieLens log for the budget (``train --init-from``); compared with the
same size trained from scratch on MovieLens for the same budget. Generator and MovieLens items share
nothing, so what carries over is behaviour (order, gaps, actions), not item identities; with the
``[text]`` extra installed, MovieLens films are placed by their titles' nearest generator items.

Columns: user ROC-AUC and PR-AUC (attacked vs normal users), event PR-AUC (injected events inside
attacked users), clean users flagged, encoder train seconds and optimiser steps, final masked-event
loss, scoring throughput (events/s of ``SeqGuard.score``, the whole pipeline).

    python bench/scaling_curve.py --budget 300 --data both               # ~50 min on 2 cores
    python bench/scaling_curve.py --budget 300 --pretrain-only --pretrain-sizes small,base
    python bench/scaling_curve.py --budget 300 --pretrain-only --pretrain-sizes small --text-ablation
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import load, user_metrics  # noqa: E402

from seqguard_ray import SeqGuard, TrainConfig  # noqa: E402
from seqguard_ray.core.encoder import Encoder, iter_window_batches, token_arrays  # noqa: E402
from seqguard_ray.core.pipeline import as_log  # noqa: E402
from seqguard_ray.core.pretrained import pretrain  # noqa: E402
from seqguard_ray.core.tokens import N_SPECIAL, Vocab  # noqa: E402
from seqguard_ray.core.training import train_encoder  # noqa: E402
from seqguard_ray.synth import AttackMix, generate  # noqa: E402

NORMAL = "normal"


def step_seconds(events, cfg: TrainConfig, steps: int = 6) -> tuple[float, int]:
    """Seconds per optimiser step of ``cfg``'s encoder on ``events`` (after two warm-up steps), and
    the optimiser steps of one epoch."""
    log_ = as_log(events)
    vocab = Vocab(min_count=cfg.min_item_count).fit(log_.item, log_.action)
    sg = SeqGuard(cfg)
    sg.vocab = vocab
    seqs = sg.tokenize(log_)
    enc = Encoder(**cfg.encoder_params())
    enc.init_model(len(vocab.items_) + N_SPECIAL, len(vocab.actions_) + N_SPECIAL)
    starts, lengths, _ = enc.windows(seqs)
    tok = token_arrays(seqs)
    per_epoch = math.ceil(len(starts) / (cfg.batch_size * cfg.grad_accum))

    def batches(n):
        def make(epoch):
            it = iter_window_batches(tok, starts, lengths, max_len=enc.max_len, batch_size=cfg.batch_size,
                                     shuffle=True, seed=epoch)
            return (b for _, b in zip(range(n * cfg.grad_accum), it))
        return make

    train_encoder(enc.model_, batches(2), epochs=1, grad_accum=cfg.grad_accum)
    t = time.perf_counter()
    train_encoder(enc.model_, batches(steps), epochs=1, grad_accum=cfg.grad_accum)
    return (time.perf_counter() - t) / steps, per_epoch


def budget_config(events, preset: str, budget: float, seed: int, **kw) -> tuple[TrainConfig, dict]:
    """``preset``'s config with the epochs that fit ``budget`` seconds of encoder training."""
    cfg = TrainConfig(preset=preset, seed=seed, **kw)
    s, per_epoch = step_seconds(events, cfg)
    epochs = max(2, round(budget / (s * per_epoch)))
    return TrainConfig(preset=preset, seed=seed, epochs=epochs, **kw), {"step_s": s, "steps_per_epoch": per_epoch}


def evaluate(labeled, cfg: TrainConfig) -> dict:
    """Train on the poisoned log, score it; the metrics of one row."""
    ev, ut = labeled.events, labeled.user_type.copy()
    ut.index = ut.index.astype(str)
    t0 = time.perf_counter()
    sg = SeqGuard(cfg).fit(ev)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = sg.score(ev)
    t_score = time.perf_counter() - t0
    users = r.users.set_index(r.users["user_id"].astype(str))
    um = user_metrics(users["score"], ut)["all"]
    ev_score = np.zeros(len(ev))
    ev_score[r.events["row"].to_numpy()] = r.events["event_score"].to_numpy()
    attacked = ev["user_id"].astype(str).map(ut != NORMAL).to_numpy(bool)
    flagged = users["anomalous"].reindex(ut.index).fillna(False).to_numpy(bool)
    hist = sg.encoder.history_
    return {"roc": um["roc"], "pr": um["pr"],
            "event_pr": float(average_precision_score(labeled.event_injected[attacked], ev_score[attacked])),
            "clean_flagged": float(flagged[(ut == NORMAL).to_numpy()].mean()),
            "train_s": float(sum(h.get("seconds", 0.0) for h in hist)) or t_fit,
            "fit_s": t_fit, "steps": int(sum(h.get("steps", 0) for h in hist)), "epochs": len(hist),
            "loss": float(hist[-1]["loss"]), "events_per_s": len(ev) / t_score}


def show(data: str, name: str, m: dict) -> None:
    print(f"{data:<10}{name:<24}{m['roc']:>7.3f}{m['pr']:>7.3f}{m['event_pr']:>8.3f}{m['clean_flagged']:>8.3f}"
          f"{m['train_s']:>8.0f}{m['steps']:>7}{m['loss']:>7.3f}{m['events_per_s']:>9.0f}", flush=True)


def header() -> None:
    print(f"{'data':<10}{'encoder':<24}{'ROC':>7}{'PR':>7}{'evPR':>8}{'cleanFl':>8}{'train s':>8}{'steps':>7}"
          f"{'loss':>7}{'ev/s':>9}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=["gen", "movielens", "both"], default="both")
    ap.add_argument("--sizes", default="small,base,large")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of encoder training per run")
    ap.add_argument("--users", type=int, default=1000, help="generator users")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain", action="store_true", help="also pretrain on the generator, adapt on MovieLens")
    ap.add_argument("--pretrain-only", action="store_true", help="only the pretrain-then-adapt comparison")
    ap.add_argument("--pretrain-sizes", default="small,base")
    ap.add_argument("--pretrain-events", type=int, default=1_000_000)
    ap.add_argument("--text-ablation", action="store_true",
                    help="also adapt without item text (new films as the unknown bucket), to measure what text gives")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; budget {args.budget:.0f} s of encoder "
          f"training per run", flush=True)
    rows = []
    header()
    datas = [] if args.pretrain_only else (["gen", "movielens"] if args.data == "both" else [args.data])
    for data in datas:
        labeled = load(data, users=args.users, seed=args.seed, holdout=False)
        m = evaluate(labeled, TrainConfig(seed=args.seed))
        rows.append({"data": data, "encoder": "small, default steps", **m})
        show(data, "small, default steps", m)
        for size in args.sizes.split(","):
            cfg, cal = budget_config(labeled.events, size, args.budget, args.seed)
            m = evaluate(labeled, cfg)
            rows.append({"data": data, "encoder": f"{size}, budget", **cal, **m})
            show(data, f"{size}, {args.budget:.0f} s", m)
    if args.pretrain or args.pretrain_only:
        labeled = load("movielens", users=args.users, seed=args.seed, holdout=False)
        big = generate(n_users=max(1000, args.pretrain_events // 80), mix=AttackMix.none(), seed=args.seed + 1).events
        print(f"pretraining on {len(big)} generator events", flush=True)
        for size in args.pretrain_sizes.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                pcfg, _ = budget_config(big, size, args.budget, args.seed)
                t0 = time.perf_counter()
                pretrain(big, tmp, pcfg)
                t_pre = time.perf_counter() - t0
                cfg, cal = budget_config(labeled.events, size, args.budget, args.seed, init_from=tmp)
                m = evaluate(labeled, cfg)
                m["pretrain_s"] = t_pre
                rows.append({"data": "movielens", "encoder": f"{size}, pretrained+adapted", **cal, **m})
                show("movielens", f"{size}, pre {t_pre:.0f}s+adapt", m)
                if args.text_ablation:  # the same adaptation with every film as the unknown bucket
                    nt = evaluate(labeled, TrainConfig(**{**cfg.__dict__, "item_text": False}))
                    rows.append({"data": "movielens", "encoder": f"{size}, pretrained+adapted, no text", **cal, **nt})
                    show("movielens", f"{size}, adapt without text", nt)
            if args.pretrain_only:
                cfg, cal = budget_config(labeled.events, size, args.budget, args.seed)
                m = evaluate(labeled, cfg)
                rows.append({"data": "movielens", "encoder": f"{size}, scratch", **cal, **m})
                show("movielens", f"{size}, {args.budget:.0f} s scratch", m)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
