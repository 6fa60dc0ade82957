"""GPU smoke test of the encoder, standalone: torch only (transformers' BertModel when installed).

A GPU machine may have torch and nothing else of seqguard (no Ray, no pandas), so this file
imports no seqguard module: it rebuilds the encoder's shape here (item + action + gap embeddings
-> a BERT encoder -> item/action/gap heads, as seqguard_ray/core/encoder.py) at the base preset
(4 layers x 256 hidden, 4 heads, feed-forward 1024, windows of 128 events), trains it on synthetic
windows with masked-event prediction for a few hundred steps under mixed precision (bf16 autocast,
fp16 + a gradient scaler where the GPU has no bf16), and times scoring (one masked forward pass per
window). The same is run on the CPU, fewer steps, fp32, for the ratio.

    bench/gpu_smoke.sh                     # exits 2 with a message where no CUDA GPU exists
    bench/gpu_smoke.sh --steps 300 --json out.json
    python bench/gpu_smoke.py --cpu-only --steps 3 --cpu-steps 3 --score-batches 2   # the script itself, on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

PRESETS = {  # seqguard_ray/core/config.py PRESETS (sizes only)
    "small": dict(hidden=64, layers=2, heads=2, ffn=128),
    "base": dict(hidden=256, layers=4, heads=4, ffn=1024),
    "large": dict(hidden=512, layers=8, heads=8, ffn=2048),
}
PAD, MASK, N_SPECIAL, N_GAPS, N_ACTIONS = 0, 1, 3, 28, 7


class Encoder(nn.Module):
    """The seqguard encoder's shape: summed event embeddings -> Transformer -> three heads."""

    def __init__(self, n_items: int, hidden: int, layers: int, heads: int, ffn: int, max_len: int):
        super().__init__()
        self.item_emb = nn.Embedding(n_items, hidden, padding_idx=PAD)
        self.action_emb = nn.Embedding(N_ACTIONS, hidden, padding_idx=PAD)
        self.gap_emb = nn.Embedding(N_GAPS, hidden, padding_idx=PAD)
        try:
            from transformers import BertConfig, BertModel
            self.bert = BertModel(BertConfig(vocab_size=4, hidden_size=hidden, num_hidden_layers=layers,
                                             num_attention_heads=heads, intermediate_size=ffn,
                                             max_position_embeddings=max_len, type_vocab_size=1), add_pooling_layer=False)
            self.kind = "transformers BertModel"
        except ImportError:
            self.bert = None
            self.pos = nn.Embedding(max_len, hidden)
            layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.1, activation="gelu", batch_first=True)
            self.torch_encoder = nn.TransformerEncoder(layer, layers)
            self.kind = "torch TransformerEncoder (transformers not installed)"
        self.item_proj = nn.Linear(hidden, hidden)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.action_head = nn.Linear(hidden, N_ACTIONS)
        self.gap_head = nn.Linear(hidden, N_GAPS)
        for e in (self.item_emb, self.action_emb, self.gap_emb):  # BERT's init, as PreTrainedModel.post_init
            nn.init.normal_(e.weight, std=0.02)

    def forward(self, items, actions, gaps, select):
        x = self.item_emb(items) + self.action_emb(actions) + self.gap_emb(gaps)  # (B, T, H)
        mask = gaps != PAD
        if self.bert is not None:
            h = self.bert(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
        else:
            x = x + self.pos(torch.arange(x.shape[1], device=x.device))
            h = self.torch_encoder(x, src_key_padding_mask=~mask)
        h = h[select]  # (M, H): the masked events only
        return self.item_proj(h) @ self.item_emb.weight.T + self.item_bias, self.action_head(h), self.gap_head(h)


def windows(n: int, T: int, n_items: int, device, gen: torch.Generator):
    """n synthetic windows of T events: each a walk through a few item 'topics' (learnable)."""
    topic = torch.randint(0, 50, (n, 1), generator=gen)
    step = torch.randint(1, 4, (n, 1), generator=gen)
    pos = torch.arange(T)[None, :]
    items = N_SPECIAL + (topic * 97 + step * pos) % (n_items - N_SPECIAL)
    actions = N_SPECIAL + (pos % 4).expand(n, T)
    gaps = 2 + torch.randint(0, 12, (n, T), generator=gen)
    return items.to(device), actions.to(device), gaps.to(device)


def loss_of(model, items, actions, gaps, gen, mask_prob=0.2):
    masked = (torch.rand(items.shape, generator=gen) < mask_prob).to(items.device)
    masked[:, 0] = True
    m = lambda x: x.masked_fill(masked, MASK)
    li, la, lg = model(m(items), m(actions), m(gaps), masked)
    return F.cross_entropy(li.float(), items[masked]) + F.cross_entropy(la.float(), actions[masked]) \
        + F.cross_entropy(lg.float(), gaps[masked])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(device: torch.device, args, steps: int, score_batches: int, dtype) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    p = PRESETS[args.preset]
    model = Encoder(args.items, p["hidden"], p["layers"], p["heads"], p["ffn"], args.max_len).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def ac():
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    data = [windows(args.batch, args.max_len, args.items, device, gen) for _ in range(8)]
    losses = []
    model.train()
    for s in range(steps + 2):  # two warm-up steps, not timed
        if s == 2:
            sync(device)
            t0 = time.perf_counter()
        with ac():
            loss = loss_of(model, *data[s % len(data)], gen)
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        losses.append(float(loss.detach()))
    sync(device)
    train_s = time.perf_counter() - t0
    model.eval()
    sb = args.score_batch
    score_data = [windows(sb, args.max_len, args.items, device, gen) for _ in range(2)]
    with torch.inference_mode():
        for b in range(score_batches + 1):
            if b == 1:
                sync(device)
                t1 = time.perf_counter()
            items, actions, gaps = score_data[b % 2]
            sel = (torch.arange(args.max_len, device=device) % 4 == 0).expand(sb, -1)  # one of the 4 masking passes
            with ac():
                model(items.masked_fill(sel, MASK), actions.masked_fill(sel, MASK), gaps.masked_fill(sel, MASK), sel)
    sync(device)
    score_s = time.perf_counter() - t1
    # 4 masking passes per window: windows scored per second = forward rows per second / 4
    return {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "precision": str(dtype).replace("torch.", "") if dtype is not None else "fp32", "encoder": model.kind,
            "params_m": round(sum(q.numel() for q in model.parameters()) / 1e6, 2),
            "train_steps": steps, "train_s": round(train_s, 3), "train_windows_per_s": round(steps * args.batch / train_s, 1),
            "loss_first": round(losses[0], 3), "loss_last": round(losses[-1], 3),
            "score_windows_per_s": round(score_batches * sb / score_s / 4, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="base")
    ap.add_argument("--steps", type=int, default=300, help="GPU training steps (default 300)")
    ap.add_argument("--cpu-steps", type=int, default=10, help="CPU training steps for the ratio (default 10)")
    ap.add_argument("--score-batches", type=int, default=50, help="GPU scoring batches (CPU: a tenth, at least 2)")
    ap.add_argument("--batch", type=int, default=64, help="training windows per step (default 64)")
    ap.add_argument("--score-batch", type=int, default=256, help="windows per scoring batch (default 256)")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--items", type=int, default=20_000, help="item vocabulary (default 20000)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--precision", choices=("bf16", "fp16", "off"), default="bf16", help="GPU autocast dtype")
    ap.add_argument("--cpu-only", action="store_true", help="run the CPU half only (to check the script without a GPU)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, threads {torch.get_num_threads()}")
    if not args.cpu_only and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU here (torch.cuda.is_available() is False): nothing to measure. "
              "Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --cpu-only "
              "to check the script on the CPU.", file=sys.stderr)
        return 2
    results = []
    if not args.cpu_only:
        dev = torch.device("cuda")
        dtype = None if args.precision == "off" else (
            torch.bfloat16 if args.precision == "bf16" and torch.cuda.is_bf16_supported() else torch.float16)
        results.append(run(dev, args, args.steps, args.score_batches, dtype))
    results.append(run(torch.device("cpu"), args, args.cpu_steps, max(2, args.score_batches // 10), None))
    for r in results:
        print(f"{r['name']:>28} {r['precision']:>8}  {r['params_m']} M params  train {r['train_windows_per_s']:>9} windows/s "
              f"({r['train_steps']} steps, loss {r['loss_first']} -> {r['loss_last']})  "
              f"score {r['score_windows_per_s']:>9} windows/s")
    if len(results) == 2:
        g, c = results
        print(f"GPU / CPU: training {g['train_windows_per_s'] / c['train_windows_per_s']:.1f}x, "
              f"scoring {g['score_windows_per_s'] / c['score_windows_per_s']:.1f}x "
              f"({args.preset} preset, {results[0]['encoder']})")
        if not math.isfinite(g["loss_last"]) or g["loss_last"] >= g["loss_first"]:
            print("gpu_smoke: WARNING: the GPU run's loss did not fall", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
