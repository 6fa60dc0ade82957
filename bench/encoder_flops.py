"""Encoder scoring near the hardware's limit (issue 31, item 4): windows/s and useful GFLOP/s of
the scoring pass (``core.encoder.surprisal``: every event masked in one of the passes) for each size
preset, beside an fp32 matmul peak measured in the same run, with the variants tried here.

Windows are batched as the product batches them (sorted by length, each batch cut to its longest
window, ``score_batch_size`` windows). The baseline, run in the same process, is the scoring pass
as it was before this bench (``surprisal_before``: the item head's (M, catalogue) logits held whole,
then ``F.cross_entropy``); the product's pass computes the same cross-entropy in chunks with the
bias fused into the matmul and the log-sum-exp in place (``SeqGuardEncoder.item_nats``).

Useful work counts real events only (padding excluded): per event and pass, the Transformer layers
(Q, K, V, output projections 8H^2, feed-forward 4HI, attention scores and mixing 4TH, multiply-adds
counted as 2 FLOPs) and, at the masked positions only, the heads (item projection 2H^2 plus the
catalogue 2HV, action and gap heads). Windows come from the demo generator's history lengths.

    python bench/encoder_flops.py                      # small and base, 2000 items
    python bench/encoder_flops.py --presets small --windows 512 --batch 64,256
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch
import torch.nn.functional as F

from seqguard_ray.core.config import PRESETS
from seqguard_ray.core.encoder import (
    SeqGuardConfig,
    SeqGuardEncoder,
    compiled_hidden_states,
    surprisal,
)
from seqguard_ray.core.tokens import N_SPECIAL, PAD
from seqguard_ray.core.training import mask_events


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """fp32 GFLOP/s of an n x n matmul on this machine's torch threads (best of ``reps``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def windows(n: int, max_len: int, n_items: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` windows with lengths drawn from the demo generator's histories (capped at max_len)."""
    from seqguard_ray.synth import generate

    lengths = generate(n_users=300, seed=seed).events.groupby("user_id").size().to_numpy()
    rng = np.random.default_rng(seed)
    lens = np.minimum(rng.choice(lengths, n), max_len)
    items = np.zeros((n, max_len), np.int64)
    actions, gaps = np.zeros_like(items), np.zeros_like(items)
    for i, m in enumerate(lens):
        items[i, :m] = rng.integers(N_SPECIAL, n_items, m)
        actions[i, :m] = rng.integers(N_SPECIAL, N_SPECIAL + 4, m)
        gaps[i, :m] = rng.integers(N_SPECIAL, N_SPECIAL + 16, m)
    return {"items": torch.from_numpy(items), "actions": torch.from_numpy(actions), "gaps": torch.from_numpy(gaps)}


def useful_flops(cfg: SeqGuardConfig, lengths: np.ndarray) -> float:
    """FLOPs of one scoring of windows with these real lengths (every event masked once)."""
    H, I, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.n_items
    k = cfg.n_mask_groups
    per_pass = sum(L * m * (2 * 4 * H * H + 2 * 2 * H * I + 2 * 2 * m * H) for m in lengths)
    heads = sum(m * (2 * H * H + 2 * H * V + 2 * H * (cfg.n_actions + cfg.n_gaps)) for m in lengths)
    return k * per_pass + heads


@torch.inference_mode()
def surprisal_before(model: SeqGuardEncoder, items, actions, gaps):
    """The scoring pass before the chunked item head (the baseline): full logits, then cross-entropy."""
    model.eval()
    k = model.config.n_mask_groups
    B, T = items.shape
    real = gaps != PAD
    pos = torch.arange(T).expand(B, T)
    out = torch.zeros(B, T, 3)
    for r in range(k):
        masked = (pos % k == r) & real
        if not masked.any():
            continue
        o = model(*mask_events(items, actions, gaps, masked), select=masked)
        b, t = masked.nonzero(as_tuple=True)
        for j, target in enumerate((items, actions, gaps)):
            name = ("item", "action", "gap")[j]
            out[b, t, j] = F.cross_entropy(o[name].float(), target[b, t], reduction="none")
    return out, None


def product_batches(data: dict[str, torch.Tensor], batch: int) -> list[dict[str, torch.Tensor]]:
    """The windows in the product's scoring order: sorted by length, each batch cut to its longest."""
    lengths = (data["gaps"] != PAD).sum(1)
    order = torch.argsort(lengths, stable=True)
    out = []
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        T = int(lengths[idx].max())
        out.append({k: v[idx, :T] for k, v in data.items()})
    return out


def timed(fn, model, batches, *, dtype: torch.dtype | None, reps: int = 2) -> tuple[float, torch.Tensor, float]:
    """Best seconds of ``reps`` scorings of every batch (one warm-up batch first), the outputs
    of the first batch (for the equal-outputs check) and the warm-up's seconds (a compile's cost)."""
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else (lambda: torch.autocast("cpu", enabled=False))
    best = float("inf")
    with ctx():
        t = time.perf_counter()
        first = fn(model, **batches[0])[0]
        warm = time.perf_counter() - t
        for _ in range(reps):
            t = time.perf_counter()
            for b in batches:
                fn(model, **b)
            best = min(best, time.perf_counter() - t)
    return best, first, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="small,base")
    ap.add_argument("--windows", type=int, default=1024)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--compile", action="store_true",
                    help="also score through the product's compiled pass (score_compile: "
                         "core.encoder.compiled_hidden_states), in fp32 and bf16")
    ap.add_argument("--batch", default="128", help="windows per scoring call, comma-separated")
    args = ap.parse_args()
    torch.manual_seed(0)
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul peak {peak:.1f} GFLOP/s "
          f"(bf16 on this CPU: {torch.backends.cpu.get_cpu_capability()})")
    data = windows(args.windows, args.max_len, args.items)
    lengths = (data["gaps"] != 0).sum(1).numpy()
    print(f"{args.windows} windows, mean length {lengths.mean():.1f} of {args.max_len} "
          f"({lengths.sum() / (args.windows * args.max_len):.0%} real events)")
    print(f"{'preset':<7}{'variant':<22}{'batch':>6}{'windows/s':>11}{'GFLOP/s':>9}{'% peak':>8}{'vs before':>10}  max |diff|")
    variants = (("before: full logits", surprisal_before, None), ("chunked head fp32", surprisal, None),
                ("chunked head bf16", surprisal, torch.bfloat16))
    for name in args.presets.split(","):
        p = PRESETS[name]
        cfg = SeqGuardConfig(n_items=args.items, n_actions=N_SPECIAL + 4, hidden_size=p["hidden_size"],
                             num_layers=p["num_layers"], num_heads=p["num_heads"],
                             intermediate_size=p["intermediate_size"], max_len=args.max_len)
        model = SeqGuardEncoder(cfg).eval()
        flops = useful_flops(model.config, lengths)
        runs = variants
        if args.compile:
            hidden = compiled_hidden_states(model)
            compiled = functools.partial(surprisal, hidden_states=hidden)
            runs = (*variants, ("compiled fp32", compiled, None), ("compiled bf16", compiled, torch.bfloat16))
        for batch in (int(b) for b in args.batch.split(",")):
            batches = product_batches(data, batch)
            base = ref = None
            for variant, fn, dtype in runs:
                s, out, warm = timed(fn, model, batches, dtype=dtype)
                base, ref = base or s, out if ref is None else ref
                diff = float((out - ref).abs().max())
                print(f"{name:<7}{variant:<22}{batch:>6}{args.windows / s:>11.0f}{flops / s / 1e9:>9.1f}"
                      f"{100 * flops / s / 1e9 / peak:>7.0f}%{base / s:>9.2f}x  {diff:.2g} nats"
                      + (f"  (first call {warm:.1f} s: compiling)" if "compiled" in variant else ""), flush=True)


if __name__ == "__main__":
    main()
