"""Drift: live inputs and scores compared with the training reference, signal by signal.

A :class:`DriftReference` is fitted with the detectors (:meth:`SeqGuard.fit_detectors
<seqguard_ray.core.pipeline.SeqGuard.fit_detectors>`) on the training log's sequences and the
scores :meth:`~seqguard_ray.core.pipeline.SeqGuard.detect` gives them, and stored in the bundle's
manifest (plain JSON). Each signal is a count vector over fixed bins:

========  ======================================================================================
items     events per item-popularity bucket: buckets of the training item counts holding about
          equal shares of the training events (deciles), plus one for items outside the
          vocabulary (new items, and items too rare to get an id)
actions   events per training action, plus one for actions the model never saw
gaps      seconds between a user's consecutive events, log-spaced bins (:data:`GAP_EDGES`)
lengths   events per scored sequence, power-of-two bins (:data:`LENGTH_EDGES`)
scores    user anomaly scores, bins on [0, 1] (:data:`SCORE_EDGES`)
flagged   users not flagged, users flagged
========  ======================================================================================

:meth:`DriftReference.count` bins a scored batch (or a whole log); a :class:`DriftMonitor` adds
batches up (memory fixed by the bins; optionally only the most recent users, :attr:`DriftMonitor.window`)
and :meth:`DriftMonitor.report` gives, per signal, the population stability index of the live
counts against the reference (:func:`psi`), and for the flagged share a two-proportion z and the
live/reference ratio. Verdicts follow the usual PSI convention: below :data:`PSI_WATCH` (0.1) ok,
from 0.1 watch, from :data:`PSI_ACT` (0.25) act. The serving metrics export the same report as
Prometheus gauges and ``seqguard monitor`` prints it for a log.

Scores are in [0, 1]; higher means more anomalous.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from .stage import NotFittedError, check_is_fitted
from .tokens import N_SPECIAL

SIGNALS = ("items", "actions", "gaps", "lengths", "scores", "flagged")
PSI_SIGNALS = SIGNALS[:-1]  # compared by PSI; "flagged" by a two-proportion z and the ratio
PSI_WATCH, PSI_ACT = 0.1, 0.25
Z_SIGNIFICANT = 3.0                # |z| from which a flagged-share change is more than chance
RATIO_WATCH, RATIO_ACT = 1.5, 2.0  # live / reference flagged share (or its inverse) for watch / act
PSI_EPS = 1e-4                     # floor of a bin's share in the PSI (an empty bin is not log 0)
MIN_COUNT = 200                    # fewer live observations of a signal: verdict "too few", no gauge

# fixed bin edges (a bin holds edges[i-1] <= x < edges[i]); the reference stores the edges it used
GAP_EDGES = (1.0, 10.0, 60.0, 600.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0)
LENGTH_EDGES = (2, 3, 5, 9, 17, 33, 65, 129, 257, 513, 1025)
SCORE_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_FORMAT = 1  # of the manifest's "drift" object

DriftCounts = dict[str, np.ndarray]  # signal -> (bins,) int64 counts


def psi(reference: np.ndarray, live: np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index sum((q - p) ln(q / p)) of the live shares q against the reference
    shares p, from counts (bins,); shares below ``eps`` count as ``eps``. 0 when either is empty."""
    ref, cur = np.asarray(reference, np.float64), np.asarray(live, np.float64)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return 0.0
    p = np.maximum(ref / ref.sum(), eps)
    q = np.maximum(cur / cur.sum(), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def two_proportion_z(k_ref: int, n_ref: int, k_live: int, n_live: int) -> float:
    """z of the live share k_live / n_live against the reference share (pooled standard error); 0
    when either side is empty or nothing/everything is flagged on both."""
    if n_ref <= 0 or n_live <= 0:
        return 0.0
    pooled = (k_ref + k_live) / (n_ref + n_live)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_ref + 1 / n_live))
    return 0.0 if se == 0 else (k_live / n_live - k_ref / n_ref) / se


def psi_verdict(value: float) -> str:
    return "act" if value >= PSI_ACT else "watch" if value >= PSI_WATCH else "ok"


def flagged_verdict(z: float, ratio: float) -> str:
    """act: significant (|z| >= 3) and the share at least doubled or halved; watch: significant and
    moved by half or more (x1.5, x2/3); else ok."""
    if abs(z) < Z_SIGNIFICANT:
        return "ok"
    moved = max(ratio, 1 / ratio) if ratio > 0 else math.inf
    return "act" if moved >= RATIO_ACT else "watch" if moved >= RATIO_WATCH else "ok"


def _range_labels(edges, fmt, *, integer: bool = False) -> list[str]:
    """Labels of the bins cut by ``edges``: "<a", "a-b", ..., ">=z" (integers: "a-(b-1)", or "a")."""
    def mid(a, b):
        if not integer:
            return f"{fmt(a)}-{fmt(b)}"
        return fmt(a) if b - 1 == a else f"{fmt(a)}-{fmt(b - 1)}"
    return [f"<{fmt(edges[0])}", *(mid(a, b) for a, b in pairwise(edges)), f">={fmt(edges[-1])}"]


def _seconds(s: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n and s % n == 0:
            return f"{int(s // n)}{unit}"
    return f"{s:g}s"


class DriftReference:
    """The training distribution of each drift signal (see the module docstring).

    Parameters: ``popularity_bins`` (int, default 10): item-popularity buckets of about equal
    training event mass. Fitted: ``pop_edges_`` (training item counts where the buckets start),
    ``actions_`` (the training actions, in id order), ``edges_`` (gaps / lengths / scores bin edges),
    ``counts_`` (signal -> (bins,) int64 training counts). Counting a batch needs ``item_bin_``
    ((n_items,) each item token's bin), built from the vocabulary's counts at fit and load; a
    reference read without them (the Serve ingress, which only compares counts) reports but
    does not count.
    """

    def __init__(self, *, popularity_bins: int = 10) -> None:
        self.popularity_bins = popularity_bins

    def fit(self, seqs, score: np.ndarray, anomalous: np.ndarray, *, token_count: np.ndarray,
            actions: list[str]) -> DriftReference:
        """``seqs``: the training Seqs (token ids); score (U,), anomalous (U,): what ``detect`` gives
        them; token_count (n_items,): each item token's training count (0 for the special tokens);
        actions: the vocabulary's actions in id order."""
        n = self.popularity_bins
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"popularity_bins must be an int >= 1, got {n!r}")
        counts = np.sort(np.asarray(token_count, np.int64)[N_SPECIAL:])
        edges: list[int] = []
        if counts.sum() > 0:  # the counts at the event-mass quantiles k/n, above the smallest count
            mass = np.cumsum(counts) / counts.sum()
            q = counts[np.minimum(np.searchsorted(mass, np.arange(1, n) / n), len(counts) - 1)]
            edges = sorted({int(c) for c in q if c > counts[0]})
        self.pop_edges_ = edges
        self.actions_ = list(actions)
        self.edges_ = {"gaps": list(GAP_EDGES), "lengths": list(LENGTH_EDGES), "scores": list(SCORE_EDGES)}
        self._bind(token_count)
        self.counts_ = self.count(seqs, score, anomalous)
        return self

    def _bind(self, token_count: np.ndarray) -> None:
        """Each item token's bin from the training counts: a popularity bucket, the unknown bin for
        the special tokens (UNK: items outside the vocabulary)."""
        tc = np.asarray(token_count, np.int64)
        bins = np.searchsorted(np.asarray(self.pop_edges_, np.int64), tc, side="right")
        bins[:N_SPECIAL] = len(self.pop_edges_) + 1
        self.item_bin_ = bins.astype(np.int64)

    # ------------------------------------------------------------------ bins
    def sizes(self) -> dict[str, int]:
        """Bins per signal."""
        check_is_fitted(self, ["edges_"])
        return {"items": len(self.pop_edges_) + 2, "actions": len(self.actions_) + 1,
                **{s: len(self.edges_[s]) + 1 for s in ("gaps", "lengths", "scores")}, "flagged": 2}

    def labels(self) -> dict[str, list[str]]:
        """Bin names per signal (for the report)."""
        check_is_fitted(self, ["edges_"])
        pop = ([f"items seen {b}" for b in _range_labels(self.pop_edges_, lambda c: f"{c:g}x", integer=True)] if self.pop_edges_
               else ["items in the vocabulary"])
        return {"items": [*pop, "unknown items"], "actions": [*self.actions_, "unseen actions"],
                "gaps": _range_labels(self.edges_["gaps"], _seconds),
                "lengths": _range_labels(self.edges_["lengths"], "{:g}".format, integer=True),
                "scores": _range_labels(self.edges_["scores"], "{:g}".format), "flagged": ["not flagged", "flagged"]}

    def count(self, seqs, score: np.ndarray, anomalous: np.ndarray) -> DriftCounts:
        """The signals' counts over a batch: ``seqs`` (Seqs, token ids, each user's events in time
        order), score (U,) in [0, 1] and anomalous (U,) of its users."""
        if getattr(self, "item_bin_", None) is None:
            raise NotFittedError("this DriftReference was read without the vocabulary's counts: it reports, "
                                 "it cannot count (load the bundle with SeqGuard.load)")
        size = self.sizes()
        off = np.asarray(seqs.offsets, np.int64)
        item = np.asarray(seqs.item, np.int64)
        action = np.asarray(seqs.action, np.int64) - N_SPECIAL
        action = np.where((action < 0) | (action >= len(self.actions_)), len(self.actions_), action)
        gap = np.diff(np.asarray(seqs.ts, np.float64))
        within = np.ones(len(gap), bool)
        within[off[1:-1][(off[1:-1] > 0) & (off[1:-1] <= len(gap))] - 1] = False  # a user's first event has no gap
        flagged = np.asarray(anomalous, bool)
        score = np.clip(np.asarray(score, np.float64), 0.0, 1.0)
        binned = {
            "items": self.item_bin_[np.clip(item, 0, len(self.item_bin_) - 1)],
            "actions": action,
            "gaps": np.searchsorted(self.edges_["gaps"], gap[within], side="right"),
            "lengths": np.searchsorted(self.edges_["lengths"], np.diff(off), side="right"),
            "scores": np.searchsorted(self.edges_["scores"], score, side="right"),
            "flagged": flagged.astype(np.int64),
        }
        return {s: np.bincount(binned[s], minlength=size[s]).astype(np.int64) for s in SIGNALS}

    # ------------------------------------------------------------------ state
    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """No arrays; meta: the bins and the training counts (the manifest's ``drift``)."""
        check_is_fitted(self, ["counts_"])
        return {}, {"format": _FORMAT, "popularity_bins": self.popularity_bins, "pop_edges": list(self.pop_edges_),
                    "actions": list(self.actions_), "edges": self.edges_,
                    "counts": {s: self.counts_[s].tolist() for s in SIGNALS}}

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> DriftReference:
        """From :meth:`to_state`'s meta; ``arrays["token_count"]`` (n_items,), the vocabulary's
        counts by token, lets it :meth:`count` (without it, it only reports)."""
        if meta.get("format") != _FORMAT:
            raise ValueError(f"drift reference format {meta.get('format')!r} is not {_FORMAT}")
        r = cls(popularity_bins=int(meta["popularity_bins"]))
        r.pop_edges_ = [int(e) for e in meta["pop_edges"]]
        r.actions_ = [str(a) for a in meta["actions"]]
        r.edges_ = {s: [float(e) for e in meta["edges"][s]] for s in ("gaps", "lengths", "scores")}
        r.counts_ = {s: np.asarray(meta["counts"][s], np.int64) for s in SIGNALS}
        for s, n in r.sizes().items():
            if r.counts_[s].shape != (n,) or (r.counts_[s] < 0).any():
                raise ValueError(f"drift reference signal {s!r} has counts of shape {r.counts_[s].shape}, "
                                 f"its bins need ({n},) non-negative counts")
        if "token_count" in arrays:
            r._bind(arrays["token_count"])
        return r


@dataclass(frozen=True)
class SignalDrift:
    """One row of a drift report."""

    signal: str            # one of SIGNALS
    statistic: str         # "PSI", or "z" (flagged)
    value: float | None    # the statistic; None: no reference
    verdict: str           # "ok", "watch", "act", "too few" (fewer than min_count live observations), "no reference"
    n: int                 # live observations (events, gaps or users)
    n_reference: int       # training observations
    detail: str = ""       # what moved most: a bin's live vs training share, or the flagged shares

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DriftMonitor:
    """Live counts of every signal, added up batch by batch, compared with a :class:`DriftReference`.

    Memory is fixed: one count vector of the reference's bins, or with ``window`` (users) at most
    ``blocks`` + 1 of them: the counts are kept in blocks of at least window / blocks users, and the
    oldest block is dropped while the others hold ``window`` users, so the report covers the last
    ``window`` users plus less than one block and one batch. ``min_count``: fewer live observations of a signal report "too few". ``reference``
    None (a bundle without one): :meth:`update` ignores batches and every row says "no reference".
    """

    def __init__(self, reference: DriftReference | None, *, window: int | None = None, blocks: int = 10,
                 min_count: int = MIN_COUNT) -> None:
        for name, v, least in (("window", window, 1), ("blocks", blocks, 1), ("min_count", min_count, 0)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least):
                raise ValueError(f"{name} must be an int >= {least}{' or None' if name == 'window' else ''}, got {v!r}")
        self.reference = reference
        self.window, self.min_count = window, min_count
        self._sizes = reference.sizes() if reference is not None else {}
        cuts = np.cumsum([0, *(self._sizes[s] for s in SIGNALS)]) if reference is not None else np.zeros(len(SIGNALS) + 1, int)
        self._slices = {s: slice(int(a), int(b)) for s, a, b in zip(SIGNALS, cuts[:-1], cuts[1:])}
        self._current = np.zeros(int(cuts[-1]), np.int64)
        self._blocks: deque[tuple[int, np.ndarray]] = deque()  # (users, counts) of full blocks, oldest first
        self._block_users = math.ceil(window / blocks) if window else 0
        self._users = 0  # in the blocks and the current one

    def update(self, counts: Mapping[str, np.ndarray]) -> None:
        """Add one batch's :meth:`DriftReference.count`; a count vector that does not fit the
        reference's bins is a ValueError naming the signal (another bundle's counts)."""
        if self.reference is None:
            return
        for s in SIGNALS:
            c = np.asarray(counts.get(s))
            if c.shape != (self._sizes[s],):
                raise ValueError(f"drift counts for signal {s!r} have shape {c.shape}, the reference's bins "
                                 f"need ({self._sizes[s]},): counted with another bundle's reference?")
        for s in SIGNALS:
            self._current[self._slices[s]] += np.asarray(counts[s]).astype(np.int64)
        self._users += int(np.asarray(counts["flagged"]).sum())
        if not self.window:
            return
        current = int(self._current[self._slices["flagged"]].sum())
        if current >= self._block_users:
            self._blocks.append((current, self._current))
            self._current = np.zeros_like(self._current)
        while self._blocks and self._users - self._blocks[0][0] >= self.window:
            self._users -= self._blocks.popleft()[0]

    def totals(self) -> DriftCounts:
        """The live counts in the window (all since the start without one)."""
        total = self._current + sum((v for _, v in self._blocks), np.zeros_like(self._current))
        return {s: total[sl] for s, sl in self._slices.items()}

    def report(self) -> list[SignalDrift]:
        """A row per signal of :data:`SIGNALS`."""
        if self.reference is None:
            return [SignalDrift(s, "z" if s == "flagged" else "PSI", None, "no reference", 0, 0) for s in SIGNALS]
        live, ref, labels = self.totals(), self.reference.counts_, self.reference.labels()
        rows = []
        for s in PSI_SIGNALS:
            n, value = int(live[s].sum()), psi(ref[s], live[s])
            detail = ""
            if n and ref[s].sum():
                p, q = ref[s] / ref[s].sum(), live[s] / n
                part = (q - p) * np.log(np.maximum(q, PSI_EPS) / np.maximum(p, PSI_EPS))
                b = int(np.argmax(part))
                if part[b] > 1e-4:
                    detail = f"{labels[s][b]}: {q[b]:.1%} live vs {p[b]:.1%} training"
            rows.append(SignalDrift(s, "PSI", value, "too few" if n < self.min_count else psi_verdict(value),
                                    n, int(ref[s].sum()), detail))
        (n0, k), (r0, kr) = live["flagged"], ref["flagged"]
        n, nr = int(n0 + k), int(r0 + kr)
        z = two_proportion_z(int(kr), nr, int(k), n)
        share, share_ref = (k / n if n else 0.0), (kr / nr if nr else 0.0)
        ratio = share / share_ref if share_ref else (math.inf if share else 1.0)
        rows.append(SignalDrift("flagged", "z", z, "too few" if n < self.min_count else flagged_verdict(z, ratio), n, nr,
                                f"{share:.2%} live vs {share_ref:.2%} training" + (f" (x{ratio:.2f})" if math.isfinite(ratio) else "")))
        return rows


def report_table(rows: list[SignalDrift]) -> str:
    """The report as aligned text, one line per signal."""
    head = ("signal", "statistic", "value", "verdict", "live n", "training n", "what moved most")
    body = [(r.signal, r.statistic, "-" if r.value is None else f"{r.value:.3f}", r.verdict, str(r.n),
             str(r.n_reference), r.detail) for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in (head, *body))


__all__ = [
    "MIN_COUNT", "PSI_ACT", "PSI_SIGNALS", "PSI_WATCH", "SIGNALS", "DriftCounts", "DriftMonitor", "DriftReference",
    "SignalDrift", "flagged_verdict", "psi", "psi_verdict", "report_table", "two_proportion_z",
]
