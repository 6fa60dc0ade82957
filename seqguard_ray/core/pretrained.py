"""Pretrain the encoder alone on a large log, then start a model's training from it (init-from).

A pretrained encoder is a directory (nothing in it is unpickled):

```
encoder.json         format and version, package versions, the training config (preset and sizes),
                     the model's config, the vocabulary (item and action strings), the item-text
                     model's name (None: no item text was embedded), metrics, sha256 of the other files
encoder.safetensors  the model's weights
items.npz            item_counts (V,); text_ids (K,) vocab ids of the items with text and text (K, D)
                     their unit text embeddings (allow_pickle=False)
```

Adapting to a target log (:func:`adapt_model`): the target's own vocabulary is kept (its detectors
are fitted on it); every weight is copied from the pretrained encoder, the item and action rows by
name. An item the pretrained encoder never saw starts either from the items its text resembles
most (the similarity-weighted mean of its nearest pretrained items' rows, where both logs carry
item text and the item-text model is installed: rows that already live in the encoder's space, so
nothing has to be learned before fine-tuning), or from the pretrained unknown bucket's row (what
the pretrained encoder would have made of it). Fine-tuning then trains every row.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import storage
from .bundle import file_sha256
from .config import SIZE_KEYS, TrainConfig
from .encoder import Encoder, SeqGuardEncoder
from .features import Seqs
from .itemtext import ItemTextModel, item_texts, nearest_rows
from .tokens import N_SPECIAL, UNK, Vocab

log = logging.getLogger(__name__)

FORMAT = "seqguard-encoder"
FORMAT_VERSION = "1"
MANIFEST = "encoder.json"
FILES = ("encoder.safetensors", "items.npz")
# rows indexed by item / action id, remapped by name when adapting
ITEM_ROWS = ("item_emb.weight", "item_bias")
ACTION_ROWS = ("action_emb.weight", "action_head.weight", "action_head.bias")


class CheckpointError(ValueError):
    """A pretrained encoder that is missing, corrupt, of another format, or does not fit the training."""


@dataclass
class Pretrained:
    """A loaded pretrained encoder: ``model``, ``vocab``, the ``config`` it was trained with, the
    text embeddings of its items (``text`` (K, D) for vocab ids ``text_ids`` (K,); None: none)."""

    path: str  # a local path or a URI
    config: TrainConfig
    model: SeqGuardEncoder
    vocab: Vocab
    text: np.ndarray | None
    text_ids: np.ndarray | None
    text_model: str | None
    encoder_id: str


def text_embeddings(vocab: Vocab, texts: dict[str, str], embedder) -> tuple[np.ndarray, np.ndarray] | None:
    """(K,) vocab ids of the vocabulary's items that have text and (K, D) their embeddings; None
    without text or embedder."""
    ids = [i + N_SPECIAL for i, s in enumerate(vocab.items_) if s in texts]
    if not ids or embedder is None:
        return None
    log.info("embedding the text of %d items with %s", len(ids), embedder.name)
    return np.asarray(ids, np.int64), embedder.encode([texts[vocab.items_[i - N_SPECIAL]] for i in ids])


def save_pretrained(path: str | Path, *, config: TrainConfig, encoder: Encoder, vocab: Vocab,
                    text: tuple[np.ndarray, np.ndarray] | None = None, text_model: str | None = None,
                    metrics: dict | None = None) -> str:
    """Write a trained encoder, its vocabulary and config (and its items' text embeddings) to ``path``."""
    from safetensors.numpy import save as safetensors_bytes

    from .bundle import _versions

    out = storage.absolute(path)  # a local path or a URI, as a model bundle
    storage.make_dirs(out)
    weights, _ = encoder.to_state()
    arrays = {"item_counts": vocab.item_counts_}
    if text is not None:
        arrays.update(text_ids=text[0], text=text[1].astype(np.float32))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blobs = {"encoder.safetensors": safetensors_bytes({k: np.ascontiguousarray(v) for k, v in weights.items()}),
             "items.npz": buf.getvalue()}
    for f in FILES:
        storage.write_bytes(storage.join(out, f), blobs[f])
    _, vocab_meta = vocab.to_state()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": _versions(),
                "train_config": asdict(config), "encoder_config": encoder.model_.config.to_dict(),
                "vocab": vocab_meta, "item_text": text_model if text is not None else None,
                "metrics": metrics or {}, "files": {f: hashlib.sha256(blobs[f]).hexdigest() for f in FILES}}
    manifest["encoder_id"] = hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()[:12]
    storage.write_text(storage.join(out, MANIFEST), json.dumps(manifest, indent=1, default=lambda o: o.item()), atomic=True)
    log.info("wrote pretrained encoder %s (id %s)", out, manifest["encoder_id"])
    return out


def read_pretrained_manifest(path: str | Path) -> dict:
    """The pretrained encoder's manifest, after checking its format and every file's hash."""
    p = str(path)
    hint = "a directory written by `seqguard pretrain --out`"
    if not storage.is_dir(p):
        raise CheckpointError(f"pretrained encoder {p} does not exist or is not a directory ({hint})")
    mf = storage.join(p, MANIFEST)
    if not storage.is_file(mf):
        what = ("a model bundle, not a pretrained encoder" if storage.is_file(storage.join(p, "manifest.json"))
                else f"missing {MANIFEST}")
        raise CheckpointError(f"pretrained encoder {p}: {what}; --init-from takes {hint}")
    try:
        m = json.loads(storage.read_text(mf))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"pretrained encoder {p}: {MANIFEST} is corrupt ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CheckpointError(f"pretrained encoder {p}: {MANIFEST} is not a {FORMAT} manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"pretrained encoder {p} has format version {m.get('format_version')!r}; this seqguard "
                              f"reads {FORMAT_VERSION!r}: pretrain again with this version")
    for f in FILES:
        if not storage.is_file(storage.join(p, f)):
            raise CheckpointError(f"pretrained encoder {p} is missing {f}")
        if (m.get("files") or {}).get(f) != file_sha256(storage.join(p, f)):
            raise CheckpointError(f"pretrained encoder {p}: {f} does not match the manifest's checksum (corrupt or tampered with)")
    return m


def pretrained_sizes(path: str | Path) -> dict[str, Any]:
    """The preset, sizes and window overlap a pretrained encoder was trained with (what `seqguard
    train --init-from` takes when neither a preset nor a size is given)."""
    tc = read_pretrained_manifest(path)["train_config"]
    return {k: tc[k] for k in ("preset", *SIZE_KEYS, "context") if k in tc}


def load_pretrained(path: str | Path) -> Pretrained:
    """A :class:`Pretrained` from ``path``; :class:`CheckpointError` when it cannot be read."""
    from safetensors.numpy import load as safetensors_load

    p = str(path)
    m = read_pretrained_manifest(p)
    try:
        config = TrainConfig.from_dict(m["train_config"])
        with np.load(io.BytesIO(storage.read_bytes(storage.join(p, "items.npz"))), allow_pickle=False) as npz:
            a = {k: npz[k] for k in npz.files}
        vocab = Vocab.from_state({"item_counts": a["item_counts"]}, m["vocab"])
        enc = Encoder.from_state(safetensors_load(storage.read_bytes(storage.join(p, "encoder.safetensors"))),
                                 {**config.encoder_params(), "config": m["encoder_config"]})
        if enc.model_.config.n_items != vocab.n_items or enc.model_.config.n_actions != vocab.n_actions:
            raise ValueError(f"its vocabulary ({vocab.n_items} item ids, {vocab.n_actions} action ids) does not fit the "
                             f"encoder ({enc.model_.config.n_items}, {enc.model_.config.n_actions})")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"pretrained encoder {p} cannot be read: {type(exc).__name__}: {exc}") from None
    text = a.get("text")
    return Pretrained(p, config, enc.model_, vocab, text, a.get("text_ids"), m.get("item_text"), m.get("encoder_id", ""))


def check_compatible(pre: Pretrained, config: TrainConfig) -> None:
    """CheckpointError naming every size where ``config`` asks for another encoder than ``pre``."""
    have = {k: getattr(pre.model.config, k) for k in SIZE_KEYS}
    want = {k: getattr(config, k) for k in SIZE_KEYS}
    diff = [k for k in SIZE_KEYS if have[k] != want[k]]
    if diff:
        def show(d: dict) -> str:
            return ", ".join(f"{k}={d[k]}" for k in diff)

        raise CheckpointError(f"pretrained encoder {pre.path} has {show(have)} (preset {pre.config.preset}); this training "
                              f"asks for {show(want)} (preset {config.preset}): use --preset {pre.config.preset} "
                              f"or give no preset or size, which takes the encoder's")


def _id_map(old: list[str], new: list[str]) -> np.ndarray:
    """(N_SPECIAL + len(new),) the old id of each new id; UNK where the old list lacks the name."""
    ix = {s: i + N_SPECIAL for i, s in enumerate(old)}
    return np.r_[np.arange(N_SPECIAL), [ix.get(s, UNK) for s in new]].astype(np.int64)


def adapt_model(pre: Pretrained, vocab: Vocab, *, texts: dict[str, str] | None = None,
                embedder=None) -> tuple[SeqGuardEncoder, dict[str, Any]]:
    """A model for ``vocab`` (a target log's) with ``pre``'s weights; new items start from their
    text's nearest pretrained items (``texts``: item -> text, ``embedder``: an ItemTextModel) or the
    unknown bucket. Returns the model and what was done (counts of kept, new and text-mapped items)."""
    cfg = copy.deepcopy(pre.model.config)
    cfg.n_items, cfg.n_actions = vocab.n_items, vocab.n_actions
    model = SeqGuardEncoder(cfg)
    old = {k: v.detach().cpu().numpy() for k, v in pre.model.state_dict().items()}
    item_src, action_src = _id_map(pre.vocab.items_, vocab.items_), _id_map(pre.vocab.actions_, vocab.actions_)
    state = dict(old)
    for k in ITEM_ROWS:
        state[k] = old[k][item_src]
    for k in ACTION_ROWS:
        state[k] = old[k][action_src]
    new = np.flatnonzero(item_src == UNK)
    new = new[new >= N_SPECIAL]
    by_text = np.zeros(0, np.int64)
    texts = texts or {}
    query = [i for i in new if vocab.items_[i - N_SPECIAL] in texts]
    if query and embedder is not None:
        ref_ids, ref = _reference(pre, texts, embedder)
        if len(ref_ids):
            q = embedder.encode([texts[vocab.items_[i - N_SPECIAL]] for i in query])
            rows = np.concatenate([old["item_emb.weight"][ref_ids], old["item_bias"][ref_ids, None]], axis=1)
            init, _ = nearest_rows(q, ref, rows)
            by_text = np.asarray(query, np.int64)
            state["item_emb.weight"][by_text] = init[:, :-1]
            state["item_bias"][by_text] = init[:, -1]
    model.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in state.items()})
    info = {"path": str(pre.path), "encoder_id": pre.encoder_id, "items_kept": int(len(vocab.items_) - len(new)),
            "items_new": len(new), "items_new_by_text": len(by_text),
            "items_new_unknown": int(len(new) - len(by_text)),
            "actions_new": int((action_src[N_SPECIAL:] == UNK).sum()),
            "text_model": getattr(embedder, "name", None) if len(by_text) else None}
    log.info("init from pretrained encoder %s: %d items kept, %d new (%d placed by their text, %d as the unknown bucket)",
             pre.path, info["items_kept"], info["items_new"], info["items_new_by_text"], info["items_new_unknown"])
    return model, info


def _reference(pre: Pretrained, texts: dict[str, str], embedder) -> tuple[np.ndarray, np.ndarray]:
    """Pretrained items with a text embedding: the checkpoint's, plus those whose text only the
    target log carries. (K,) old vocab ids and (K, D) embeddings."""
    ids = [] if pre.text_ids is None else list(pre.text_ids)
    embs = [] if pre.text is None or pre.text_model != embedder.name else [pre.text]
    if not embs:
        ids = []
    have = set(ids)
    extra = [i + N_SPECIAL for i, s in enumerate(pre.vocab.items_) if s in texts and i + N_SPECIAL not in have]
    if extra:
        embs.append(embedder.encode([texts[pre.vocab.items_[i - N_SPECIAL]] for i in extra]))
        ids += extra
    return np.asarray(ids, np.int64), (np.concatenate(embs) if embs else np.zeros((0, 1), np.float32))


def init_encoder(encoder: Encoder, vocab: Vocab, config: TrainConfig, log_=None, *, embedder=None) -> dict:
    """Give ``encoder`` its initial model (``model_``) for ``vocab``: fresh, or ``config.init_from``'s
    pretrained encoder adapted (new items placed by their text where ``log_`` carries it and
    ``config.item_text``). Both engines call this. Returns what adapting did ({} for a fresh model)."""
    if config.init_from is None:
        encoder.init_model(vocab.n_items, vocab.n_actions)
        return {}
    pre = load_pretrained(config.init_from)
    check_compatible(pre, config)
    texts = item_texts(log_.frame, log_.item) if log_ is not None and config.item_text else {}
    if embedder is None and texts and ItemTextModel.available():
        embedder = ItemTextModel()
    encoder.model_, info = adapt_model(pre, vocab, texts=texts, embedder=embedder)
    return info


def pretrain(events, out: str | Path, config: TrainConfig | None = None, *, on_bad_rows: str = "error",
             embedder=None) -> dict:
    """Train the encoder alone on a log and save it to ``out`` (see the module doc); returns its
    metrics. With ``config.init_from``, pretraining continues from that encoder."""
    import time

    import pandas as pd

    from .readers import read_events
    from .schema import EventLog, from_frame

    c = config or TrainConfig()
    t0 = time.perf_counter()
    log_ = (events if isinstance(events, EventLog) else from_frame(events, on_bad_rows=on_bad_rows)
            if isinstance(events, pd.DataFrame) else read_events(events, on_bad_rows=on_bad_rows))
    vocab = Vocab(min_count=c.min_item_count).fit(log_.item, log_.action)
    item, action, key = vocab.transform(log_.item, log_.action)
    seqs = Seqs(offsets=log_.offsets, ts=log_.ts, item=item, action=action, value=log_.value,
                surprisal=np.zeros((log_.n_events, 3), np.float32), key=key)
    encoder = Encoder(**c.encoder_params())
    texts = item_texts(log_.frame, log_.item) if c.item_text else {}
    if embedder is None and texts and ItemTextModel.available():
        embedder = ItemTextModel()
    init = init_encoder(encoder, vocab, c, log_, embedder=embedder)
    history = encoder.train(seqs)
    text = text_embeddings(vocab, texts, embedder)
    metrics = {"train_events": int(log_.n_events), "train_users": int(log_.n_users), "vocab_items": len(vocab.items_),
               "windows": len(encoder.windows(seqs)[0]), "epochs": len(history),
               "final_loss": history[-1]["loss"] if history else None, "history": history,
               "items_with_text": 0 if text is None else len(text[0]), "init_from": init,
               "fit_s": round(time.perf_counter() - t0, 2)}
    save_pretrained(out, config=c, encoder=encoder, vocab=vocab, text=text,
                    text_model=getattr(embedder, "name", None), metrics=metrics)
    return metrics
