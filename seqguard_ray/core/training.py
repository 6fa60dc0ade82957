"""The encoder's training loop: masked-event prediction, gradient accumulation, mixed precision.

Plain PyTorch, run as is in-process (:meth:`~.encoder.Encoder.train`) and by Ray Train's workers
(DDP-wrapped model). One optimiser step adds up the gradients of ``grad_accum`` batches, each
batch's loss weighted by its share of the step's masked events, so ``grad_accum`` batches of ``b``
windows give the update of one batch of ``grad_accum * b`` windows. On a CUDA device the forward
passes run under ``torch.autocast`` (bf16, or fp16 with a gradient scaler); on CPU in fp32.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .tokens import MASK, PAD

log = logging.getLogger(__name__)


def mask_events(items, actions, gaps, masked):
    """Replace masked events' ids by MASK; returns new tensors. masked: (B, T) bool."""
    return (items.masked_fill(masked, MASK), actions.masked_fill(masked, MASK), gaps.masked_fill(masked, MASK))


def draw_mask(batch: dict[str, torch.Tensor], generator: torch.Generator, mask_prob: float) -> torch.Tensor:
    """(B, T) bool: the events a training batch masks; at least one per window."""
    items, gaps = batch["items"], batch["gaps"]
    real = gaps != PAD
    masked = (torch.rand(items.shape, generator=generator) < mask_prob).to(items.device) & real
    # At least one masked event per window keeps every window (and DDP's gradients) in play.
    first = torch.zeros_like(masked)
    first[:, 0] = True
    return masked | (first & real & ~masked.any(dim=1, keepdim=True))


def masked_loss(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                mask_prob: float = 0.2, *, masked: torch.Tensor | None = None) -> torch.Tensor:
    """Masked-event prediction loss on one batch of windows (mean over its masked events). ``model``
    may be DDP-wrapped; ``masked`` (B, T) bool: the mask, else drawn with ``generator``."""
    items, actions, gaps = batch["items"], batch["actions"], batch["gaps"]
    if masked is None:
        masked = draw_mask(batch, generator, mask_prob)
    out = model(*mask_events(items, actions, gaps, masked), select=masked)
    return (
        F.cross_entropy(out["item"].float(), items[masked])
        + F.cross_entropy(out["action"].float(), actions[masked])
        + F.cross_entropy(out["gap"].float(), gaps[masked])
    )


def autocast_dtype(device: torch.device, mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype for ``mixed_precision`` ("bf16", "fp16", "off") on ``device``: None on
    CPU or when off; fp16 where the GPU has no bf16."""
    if device.type != "cuda" or mixed_precision == "off":
        return None
    if mixed_precision == "bf16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX tiles or AVX-512 BF16)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    avx = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return bool(amx() or avx())


def scoring_dtype(device: torch.device, mixed_precision: str, score_precision: str = "fp32") -> torch.dtype | None:
    """The autocast dtype of encoder scoring: ``mixed_precision``'s on a GPU; on a CPU bf16 when
    ``score_precision`` is "bf16" and the CPU has bf16 instructions (else fp32, with a warning)."""
    if device.type == "cuda":
        return autocast_dtype(device, mixed_precision)
    if score_precision != "bf16":
        return None
    if not cpu_has_bf16():
        log.warning("score_precision bf16: this CPU has no bf16 instructions (AMX, AVX-512 BF16); scoring in fp32")
        return None
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context for None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def _groups(batches: Iterable, k: int):
    """Consecutive lists of ``k`` batches (the last may be shorter)."""
    group = []
    for b in batches:
        group.append(b)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def train_encoder(model: nn.Module, make_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]], *,
                  epochs: int, lr: float = 2e-3, weight_decay: float = 0.01, seed: int = 0,
                  steps_per_epoch: int | None = None,
                  on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
                  optimizer: torch.optim.Optimizer | None = None, start_epoch: int = 0,
                  grad_accum: int = 1, mixed_precision: str = "off") -> list[dict[str, float]]:
    """Plain-PyTorch training loop over ``make_batches(epoch)``; Ray Train runs it unchanged.

    ``model`` may be DDP-wrapped. ``steps_per_epoch``: batches per epoch (the lr schedule's length
    is that over ``grad_accum``, in optimiser steps; None: a constant lr). Returns per-epoch
    metrics (loss, windows/s, optimiser steps).
    """
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum!r}")
    inner = model.module if hasattr(model, "module") else model
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    opt_steps = math.ceil(steps_per_epoch / grad_accum) if steps_per_epoch else 0
    total = max(1, epochs * (opt_steps or 1))
    done = start_epoch * opt_steps  # a resumed run continues the schedule, not its warm-up

    def lr_factor(s: int) -> float:
        s += done
        return min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor) if steps_per_epoch else None
    device = next(inner.parameters()).device
    dtype = autocast_dtype(device, mixed_precision)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(start_epoch, epochs):
        model.train()
        t0, n, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
        for group in _groups(make_batches(epoch), grad_accum):
            masks = [draw_mask(b, gen, inner.config.mask_prob) for b in group]
            counts = [int(m.sum()) for m in masks]
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for i, (batch, masked) in enumerate(zip(group, masks)):
                # DDP: gradients are all-reduced once per optimiser step, on its last batch
                sync = model.no_sync() if i < len(group) - 1 and hasattr(model, "no_sync") else contextlib.nullcontext()
                with sync:
                    with autocast(device, dtype):
                        loss = masked_loss(model, batch, masked=masked)
                    if len(group) > 1:  # the step's mean over its masked events
                        loss = loss * (counts[i] / sum(counts))
                    (scaler.scale(loss) if scaler else loss).backward()
                step_loss += float(loss.detach())
                n += int(batch["items"].shape[0])
            if scaler:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if sched is not None:
                sched.step()
            loss_sum += step_loss
            steps += 1
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, "loss": loss_sum / max(1, steps), "windows_per_s": n / seconds,
                   "steps": steps, "seconds": seconds}
        log.info("epoch %d: loss %.4f, %.0f windows/s", epoch, metrics["loss"], metrics["windows_per_s"])
        history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return history
