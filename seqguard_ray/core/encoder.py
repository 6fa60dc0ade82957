"""The sequence encoder: a BERT-style Transformer over events, trained by masked-event prediction.

An event is the sum of an item, an action and a time-gap embedding (positions are added by
BERT). Training masks whole events and predicts their item, action and gap bucket. At scoring
time every event is masked once (``n_mask_groups`` passes, each masking every k-th event) and its
surprisal ``-log p(item, action, gap | context)`` is read off; the sequence embedding is the mean
of the unmasked last hidden states. :class:`Encoder` is the pipeline's stage around the model.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, PretrainedConfig, PreTrainedModel

from .config import ENCODER_PARAMS
from .features import Seqs
from .results import Encoded
from .stage import check_is_fitted
from .tokens import N_GAP_BUCKETS, N_SPECIAL, PAD, gap_buckets, owner_positions, windows
from .training import autocast, mask_events, masked_loss, scoring_dtype, train_encoder

__all__ = ["Encoder", "SeqGuardConfig", "SeqGuardEncoder", "masked_loss", "surprisal", "train_encoder"]

log = logging.getLogger(__name__)


class SeqGuardConfig(PretrainedConfig):
    """Encoder hyper-parameters; the model is built from this alone.

    Args:
        n_items (int, default 1000): item id space incl. specials (PAD, MASK, UNK).
        n_actions (int, default 8): action id space incl. specials.
        n_gaps (int, default tokens.N_GAP_BUCKETS): time-gap buckets.
        hidden_size (int, default 64): width of every layer.
        num_layers (int, default 2): Transformer layers.
        num_heads (int, default 2): attention heads.
        intermediate_size (int, default 128): feed-forward width.
        max_len (int, default 128): events per window.
        dropout (float, default 0.1): dropout in the Transformer.
        mask_prob (float, default 0.2): share of events masked per training window.
        n_mask_groups (int, default 4): scoring passes; pass r masks events at i % n == r.
    """

    model_type = "seqguard-encoder"

    def __init__(self, n_items: int = 1000, n_actions: int = 8, n_gaps: int = N_GAP_BUCKETS,
                 hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2,
                 intermediate_size: int = 128, max_len: int = 128, dropout: float = 0.1,
                 mask_prob: float = 0.2, n_mask_groups: int = 4, **kwargs):
        self.n_items = n_items
        self.n_actions = n_actions
        self.n_gaps = n_gaps
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.max_len = max_len
        self.dropout = dropout
        self.mask_prob = mask_prob
        self.n_mask_groups = n_mask_groups
        super().__init__(**kwargs)


class SeqGuardEncoder(PreTrainedModel):
    config_class = SeqGuardConfig
    base_model_prefix = "seqguard"

    def __init__(self, config: SeqGuardConfig):
        super().__init__(config)
        h = config.hidden_size
        self.item_emb = nn.Embedding(config.n_items, h, padding_idx=PAD)
        self.action_emb = nn.Embedding(config.n_actions, h, padding_idx=PAD)
        self.gap_emb = nn.Embedding(config.n_gaps, h, padding_idx=PAD)
        self.bert = BertModel(BertConfig(
            vocab_size=4, hidden_size=h, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_len, type_vocab_size=1,
            hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
        ), add_pooling_layer=False)
        self.item_proj = nn.Linear(h, h)
        self.item_bias = nn.Parameter(torch.zeros(config.n_items))
        self.action_head = nn.Linear(h, config.n_actions)
        self.gap_head = nn.Linear(h, config.n_gaps)
        self.post_init()

    def forward(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor,
                select: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """items, actions, gaps: (B, T) ids with PAD=0. Returns hidden (B, T, H) and logits.

        The logits are (B, T, V), or (M, V) for the M positions where ``select`` (B, T) bool is set:
        the item head's cost (a matmul over the whole catalogue) is then paid only where it is used.
        """
        hidden = self.hidden_states(items, actions, gaps)
        h = hidden if select is None else hidden[select]
        return {
            "hidden": hidden,
            "item": self.item_proj(h) @ self.item_emb.weight.T + self.item_bias,
            "action": self.action_head(h),
            "gap": self.gap_head(h),
        }

    def hidden_states(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """(B, T, H) last hidden states of (B, T) ids."""
        x = self.item_emb(items) + self.action_emb(actions) + self.gap_emb(gaps)  # (B, T, H)
        mask = (gaps != PAD).long()  # gaps are never PAD for real events, even masked ones
        return self.bert(inputs_embeds=x, attention_mask=mask).last_hidden_state

    def item_nats(self, h: torch.Tensor, target: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """(M,) fp32 ``-log p(target | h)`` under the item head for (M, H) hidden states: the
        cross-entropy of :meth:`forward`'s item logits, computed ``chunk`` rows at a time (bias fused
        into the matmul, log-sum-exp in place) so that the (M, catalogue) logits are never held whole."""
        q = self.item_proj(h)
        w, b = self.item_emb.weight, self.item_bias
        out = torch.empty(len(h), device=h.device)
        for s in range(0, len(h), chunk):
            logits = torch.addmm(b, q[s:s + chunk], w.T).float()  # fp32 (a no-op copy outside autocast)
            top = logits.amax(1, keepdim=True)
            hit = logits.gather(1, target[s:s + chunk, None])
            out[s:s + chunk] = (logits.sub_(top).exp_().sum(1).log_() - hit.squeeze(1).sub_(top.squeeze(1)))
        return out


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> compiled hidden_states, or None
_COMPILE_LOCK = threading.Lock()


def compiled_hidden_states(model: SeqGuardEncoder) -> Callable[..., torch.Tensor]:
    """``model.hidden_states`` under ``torch.compile(dynamic=True)``, made once per model and process
    (the first call compiles: batch size and window length are symbolic, so later shapes reuse the
    graph; torch's own recompile limit bounds the rest, past which a shape runs eager). Where
    compiling fails (e.g. no C++ compiler for the CPU backend) it logs a warning and returns the
    eager method, for this model from then on."""
    with _COMPILE_LOCK:
        fn = _COMPILED.get(model, False)
        if fn is False:
            fn = _COMPILED[model] = _Compiled(model)
    return fn if fn.ok else model.hidden_states


class _Compiled:
    """The compiled hidden states of one model, falling back to eager after a failed compile."""

    def __init__(self, model: SeqGuardEncoder) -> None:
        self.eager = model.hidden_states
        self.fn = torch.compile(model.hidden_states, dynamic=True)
        self.ok = True
        self.lock = threading.Lock()
        self.warm = False

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if not self.ok:
            return self.eager(*args)
        if self.warm:
            return self.fn(*args)
        with self.lock:  # one thread compiles; concurrent first calls wait for it
            try:
                out = self.fn(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: score eager instead
                log.warning("score_compile: torch.compile failed (%s: %s); scoring eager", type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "")
                self.ok = False
                return self.eager(*args)
            self.warm = True
            return out


@torch.inference_mode()
def surprisal(model: SeqGuardEncoder, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor, *,
              hidden_states: Callable[..., torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-event surprisal (B, T, 3) [item, action, gap] in nats and window embeddings (B, H).

    Each event is masked in exactly one of ``n_mask_groups`` passes. ``hidden_states``: the model's
    Transformer pass to use (default ``model.hidden_states``; :func:`compiled_hidden_states`'s).
    """
    hidden_states = hidden_states or model.hidden_states
    model.eval()
    k = model.config.n_mask_groups
    B, T = items.shape
    real = gaps != PAD
    pos = torch.arange(T, device=items.device).expand(B, T)
    groups = [m for m in ((pos % k == r) & real for r in range(k)) if m.any()]
    out = torch.zeros(B, T, 3, device=items.device)
    if not groups:
        return out, torch.zeros(B, model.config.hidden_size, device=items.device)
    emb = None
    # Small batches run several passes in one forward call (pass g of a call is rows g*B:(g+1)*B),
    # where fixed per-call costs dominate; large batches run one pass per call, which is faster there.
    per_call = max(1, _STACK_ROWS // B)
    for c in range(0, len(groups), per_call):
        masked = torch.stack(groups[c:c + per_call])  # (G, B, T), disjoint passes
        G = masked.shape[0]
        flat = masked.reshape(G * B, T)
        tiled = (x.unsqueeze(0).expand(G, B, T).reshape(G * B, T) for x in (items, actions, gaps))
        hidden = hidden_states(*mask_events(*tiled, flat))  # (G*B, T, H)
        h = hidden[flat]  # (M, H): the masked positions, row-major
        _, b, t = masked.nonzero(as_tuple=True)      # the same order
        out[b, t, 0] = model.item_nats(h, items[b, t])
        out[b, t, 1] = F.cross_entropy(model.action_head(h).float(), actions[b, t], reduction="none")
        out[b, t, 2] = F.cross_entropy(model.gap_head(h).float(), gaps[b, t], reduction="none")
        if emb is None:  # the embedding of the first pass: its unmasked events
            keep = (real & ~masked[0]).float().unsqueeze(-1)  # (B, T, 1)
            emb = (hidden[:B] * keep).sum(1) / keep.sum(1).clamp(min=1.0)
    return out, emb


# Most windows one surprisal forward call takes when it stacks several masking passes.
_STACK_ROWS = 64


def batch_windows(tokens: dict[str, np.ndarray], starts: np.ndarray, lengths: np.ndarray, max_len: int) -> dict[str, torch.Tensor]:
    """Stack windows into padded (B, T) tensors. tokens: name -> (N,) int64 event ids."""
    T = int(min(max_len, lengths.max())) if len(lengths) else 1
    idx = starts[:, None] + np.arange(T)[None, :]  # (B, T)
    valid = np.arange(T)[None, :] < lengths[:, None]
    idx = np.where(valid, idx, 0)
    return {k: torch.from_numpy(np.where(valid, v[idx], PAD)) for k, v in tokens.items()}


def iter_window_batches(tokens: dict[str, np.ndarray], starts: np.ndarray, lengths: np.ndarray, *,
                        max_len: int, batch_size: int, shuffle: bool, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of windows; length-sorted buckets keep padding small."""
    order = np.arange(len(starts))
    if shuffle:
        rng = np.random.default_rng(seed)
        order = rng.permutation(order)
        # sort within chunks of 32 batches by length, then shuffle batches
        chunk = batch_size * 32
        parts = [p[np.argsort(lengths[p], kind="stable")] for p in np.array_split(order, max(1, len(order) // chunk))]
        order = np.concatenate(parts) if parts else order
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(batches)
    else:
        order = np.argsort(lengths, kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for b in batches:
        out = batch_windows(tokens, starts[b], lengths[b], max_len)
        out["window"] = torch.from_numpy(b)
        yield out


def token_arrays(seqs: Seqs) -> dict[str, np.ndarray]:
    """The encoder's inputs for every event: ``items``, ``actions``, ``gaps`` (N,) int64 ids."""
    return {"items": seqs.item, "actions": seqs.action, "gaps": gap_buckets(seqs.ts, seqs.offsets)}


def _progress(it, **kw):
    from tqdm.auto import tqdm
    return tqdm(it, disable=not log.isEnabledFor(logging.INFO), **kw)


class Encoder:
    """The encoder stage: ``fit`` trains a :class:`SeqGuardEncoder` self-supervised on the
    sequences; ``transform`` gives per-event surprisal and per-user embeddings.

    Parameters (see :class:`~seqguard_ray.core.config.TrainConfig`, which holds them): ``max_len``,
    ``context`` (windows), ``hidden_size``, ``num_layers``, ``num_heads``, ``intermediate_size``
    (the model; None: 2 x hidden), ``epochs``, ``target_steps``, ``batch_size``, ``grad_accum``,
    ``lr``, ``seed`` (training), ``mixed_precision`` (training and scoring on a GPU), ``score_batch_size``,
    ``score_precision`` ("fp32" or "bf16": scoring on a CPU with bf16 instructions), ``score_compile``
    (scoring through :func:`compiled_hidden_states`).
    Fitted: ``model_`` (a SeqGuardEncoder) and, after :meth:`fit`, ``history_`` (per-epoch metrics).
    """

    def __init__(self, *, max_len: int = 128, context: int = 16, hidden_size: int = 64, num_layers: int = 2,
                 num_heads: int = 2, intermediate_size: int | None = None, epochs: int | None = None,
                 target_steps: int = 300, batch_size: int = 64, grad_accum: int = 1, lr: float = 2e-3,
                 mixed_precision: str = "off", seed: int = 0, score_batch_size: int = 128,
                 score_precision: str = "fp32", score_compile: bool = False) -> None:
        self.max_len = max_len
        self.context = context
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.epochs = epochs
        self.target_steps = target_steps
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.lr = lr
        self.mixed_precision = mixed_precision
        self.seed = seed
        self.score_batch_size = score_batch_size
        self.score_precision = score_precision
        self.score_compile = score_compile

    def model_config(self, n_items: int, n_actions: int) -> SeqGuardConfig:
        """The model's config for a vocabulary of ``n_items`` item and ``n_actions`` action ids."""
        return SeqGuardConfig(n_items=n_items, n_actions=n_actions, hidden_size=self.hidden_size,
                              num_layers=self.num_layers, num_heads=self.num_heads,
                              intermediate_size=self.intermediate_size or 2 * self.hidden_size, max_len=self.max_len)

    def init_model(self, n_items: int, n_actions: int) -> SeqGuardEncoder:
        """A freshly initialised model (torch seeded with ``seed``), kept as ``model_``."""
        if not 0 <= 2 * self.context < self.max_len:
            raise ValueError(f"need 0 <= 2*context < max_len, got context={self.context!r}, max_len={self.max_len!r}")
        torch.manual_seed(self.seed)
        self.model_ = SeqGuardEncoder(self.model_config(n_items, n_actions))
        return self.model_

    def windows(self, seqs: Seqs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W,) starts, lengths and owned offsets of the encoder windows (see tokens.windows)."""
        return windows(seqs.offsets, max_len=self.max_len, context=self.context)

    def epochs_for(self, n_windows: int) -> int:
        """Epochs to train: ``epochs``, or enough for about ``target_steps`` optimiser steps (2..40)."""
        if self.epochs is not None:
            return self.epochs
        steps = max(1, math.ceil(n_windows / (self.batch_size * self.grad_accum)))
        return int(min(40, max(2, math.ceil(self.target_steps / steps))))

    def fit(self, seqs: Seqs, *, n_items: int, n_actions: int) -> Encoder:
        """Initialise a model for the vocabulary sizes and train it on ``seqs``."""
        self.init_model(n_items, n_actions)
        self.history_ = self.train(seqs)
        return self

    def train(self, seqs: Seqs) -> list[dict]:
        """Train ``model_`` in this process (Ray Train runs :func:`train_encoder` on its workers)."""
        check_is_fitted(self, ["model_"])
        starts, lengths, _ = self.windows(seqs)
        tok = token_arrays(seqs)
        epochs = self.epochs_for(len(starts))
        steps = max(1, math.ceil(len(starts) / self.batch_size))
        bar = _progress(range(epochs), desc="train encoder", unit="epoch")
        it = iter(bar)

        def make_batches(epoch):
            next(it, None)
            return iter_window_batches(tok, starts, lengths, max_len=self.max_len, batch_size=self.batch_size,
                                       shuffle=True, seed=self.seed + epoch)

        def report(epoch, m):
            bar.set_postfix(loss=f"{m['loss']:.3f}")

        history = train_encoder(self.model_, make_batches, epochs=epochs, lr=self.lr, seed=self.seed,
                                steps_per_epoch=steps, on_epoch_end=report, grad_accum=self.grad_accum,
                                mixed_precision=self.mixed_precision)
        bar.close()
        return history

    def transform(self, seqs: Seqs) -> Encoded:
        """Fill ``seqs.surprisal`` (N, 3) and compute user embeddings (U, H): each user's the
        length-weighted mean of its windows' embeddings."""
        check_is_fitted(self, ["model_"])
        starts, lengths, own = self.windows(seqs)
        tok = token_arrays(seqs)
        H = self.model_.config.hidden_size
        win_sur = np.zeros((len(starts), self.max_len, 3), np.float32)
        win_emb = np.zeros((len(starts), H), np.float32)
        device = next(self.model_.parameters()).device
        dtype = scoring_dtype(device, self.mixed_precision, self.score_precision)
        hidden = compiled_hidden_states(self.model_) if self.score_compile else None
        for batch in iter_window_batches(tok, starts, lengths, max_len=self.max_len,
                                         batch_size=self.score_batch_size, shuffle=False):
            w = batch.pop("window").numpy()
            with autocast(device, dtype):
                s, e = surprisal(self.model_, **{k: v.to(device) for k, v in batch.items()}, hidden_states=hidden)
            win_sur[w, : s.shape[1]] = s.cpu().numpy()
            win_emb[w] = e.float().cpu().numpy()
        win, pos = owner_positions(starts, lengths, own, len(seqs.ts))
        seqs.surprisal = win_sur[win, pos]
        win_user = np.searchsorted(seqs.offsets, starts, side="right") - 1
        user_emb = np.zeros((seqs.n_users, H), np.float64)
        np.add.at(user_emb, win_user, win_emb * lengths[:, None])
        user_emb /= np.maximum(np.diff(seqs.offsets), 1)[:, None]
        return Encoded(seqs, user_emb.astype(np.float32))

    def warm_up(self) -> None:
        """With ``score_compile``: compile the scoring pass now, on two short dummy windows under the
        scoring dtype, rather than on the first real batch (a server calls this when it loads a
        bundle, so that no request waits for the compile). Without it, nothing."""
        check_is_fitted(self, ["model_"])
        if not self.score_compile:
            return
        device = next(self.model_.parameters()).device
        ids = torch.full((2, min(8, self.max_len)), N_SPECIAL, dtype=torch.long, device=device)
        with autocast(device, scoring_dtype(device, self.mixed_precision, self.score_precision)):
            surprisal(self.model_, ids, ids, ids, hidden_states=compiled_hidden_states(self.model_))

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ENCODER_PARAMS}

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays: the model's weights (state dict as numpy); meta: ``config`` (the model's) and the parameters."""
        check_is_fitted(self, ["model_"])
        arrays = {k: v.detach().cpu().numpy() for k, v in self.model_.state_dict().items()}
        return arrays, {**self.params(), "config": self.model_.config.to_dict()}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Encoder:
        """ValueError when the weights do not fit the config."""
        enc = cls(**{k: v for k, v in meta.items() if k in ENCODER_PARAMS})
        enc.model_ = SeqGuardEncoder(SeqGuardConfig(**meta["config"]))
        weights = {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}
        missing, unexpected = enc.model_.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(f"encoder weights do not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        enc.model_.eval()
        return enc
