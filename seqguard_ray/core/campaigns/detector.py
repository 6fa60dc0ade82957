"""The campaign stage: :class:`CampaignDetector` (stage protocol) finds groups of accounts pushing
a few items, over all users of a scored log at once.

Fit (on the training log and its in-sample user scores) learns what the tests need: the per-user
evidence's null (its moments), the log's extreme values, the null of the item statistic over the
training items (a :class:`~..calibration.Calibrator`, clear outliers left out so that a
campaign in the training log does not become the reference) and the threshold that spends the
stage's share of the false-positive budget: about ``share * target_fpr`` of the users of a log
without campaigns are flagged by membership alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..calibration import Calibrator
from ..stage import check_is_fitted
from .adoptions import Adoptions, build_adoptions
from .audience import WINDOWS, Audiences, ItemContext, candidate_audiences
from .groups import Groups, group_campaigns, pushed

log = logging.getLogger(__name__)

Z_CAP = 5.0          # per-user evidence counts up to -log(1 - 0.993): one flagged user is one vote
LGO_TOP = 50         # largest block at the top of a training null that can be left out as outliers
MIN_VALUES = 20      # valued adoptions needed to learn the log's extreme values


def user_evidence(score: np.ndarray) -> np.ndarray:
    """(U,) per-user evidence in nats from calibrated user scores in [0, 1]: -log(1 - score), capped."""
    s = np.clip(np.asarray(score, np.float64), 0.0, 1.0)
    return np.minimum(-np.log(np.maximum(1.0 - s, np.exp(-Z_CAP))), Z_CAP)


class CampaignDetector:
    """Groups of accounts whose adoptions of a few items are denser, more synchronous or more
    uniform in value than chance and than those items' normal audiences.

    Parameters (stored unchanged, checked in :meth:`fit`):
        target_fpr (float, 0.01): the pipeline's target false-positive rate (the score scale:
            a campaign at the threshold scores ``1 - target_fpr``).
        share (float, 0.2): share of ``target_fpr`` spent by membership.
        windows (tuple of seconds, WINDOWS): window widths tried on timed logs.
        taste_lift (float, 20.0): how many times chance organic taste may raise co-adoption.
        min_members (int, 3): fewest accounts in a campaign (and in a tested audience).

    Fitted: ``calibrators_`` (kind of audience -> :class:`NatsCalibrator` of its statistic:
    ``core`` lockstep cores, ``w<seconds>`` windows), ``tau_`` (threshold in calibrated nats),
    ``z_mean_``, ``z_var_`` (moments of the training users' evidence), ``value_lo_``, ``value_hi_``,
    ``value_mean_``, ``g_lo_``, ``g_hi_`` (extreme values, their shares, the mean; NaN: no values),
    ``n_reference_`` (items in the reference), ``train_`` (in-sample counts).
    """

    def __init__(self, *, target_fpr: float = 0.01, share: float = 0.2, windows: tuple[float, ...] = WINDOWS,
                 taste_lift: float = 20.0, min_members: int = 3) -> None:
        self.target_fpr = target_fpr
        self.share = share
        self.windows = windows
        self.taste_lift = taste_lift
        self.min_members = min_members

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("target_fpr", "share", "windows", "taste_lift", "min_members")}

    def _check_params(self) -> None:
        if not 0 < self.target_fpr < 0.5:
            raise ValueError(f"target_fpr must be in (0, 0.5), got {self.target_fpr!r}")
        if not 0 < self.share < 1:
            raise ValueError(f"share must be in (0, 1), got {self.share!r}")
        if any(not (w > 0) for w in self.windows):
            raise ValueError(f"windows must be positive seconds, got {self.windows!r}")
        if not self.taste_lift >= 1:
            raise ValueError(f"taste_lift must be >= 1, got {self.taste_lift!r}")
        if isinstance(self.min_members, bool) or not isinstance(self.min_members, (int, np.integer)) \
                or self.min_members < 2:
            raise ValueError(f"min_members must be an integer >= 2, got {self.min_members!r}")

    # ------------------------------------------------------------------ evidence
    def context(self, user_score: np.ndarray) -> ItemContext:
        """The item-side tests' context for users with these scores (U,)."""
        check_is_fitted(self, ["z_mean_"])
        return ItemContext(user_evidence(user_score), self.z_mean_, self.z_var_, self.value_lo_, self.value_hi_,
                           self.g_lo_, self.g_hi_, float(self.taste_lift), int(self.min_members))

    def evidence(self, ad: Adoptions, ctx: ItemContext) -> Audiences:
        """Every item's candidate audiences with every test (see :mod:`.audience`)."""
        return candidate_audiences(ad, ctx, tuple(self.windows))

    def calibrate(self, ad: Adoptions, aud: Audiences) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each audience's calibrated evidence in nats (C,): its statistic against the training
        items' for its kind (a lockstep core, or a window width), less log(kinds tried); each
        item's best audience (I,) (index into ``aud``, -1: none) and its evidence (I,)."""
        check_is_fitted(self, ["calibrators_"])
        kinds = _kinds(aud)
        cand = np.full(len(aud.item), -np.inf)
        raw = aud.raw
        for kind, cal in self.calibrators_.items():
            m = kinds == kind
            if m.any():
                cand[m] = cal.nats(raw[m])
        ok = np.isfinite(cand)
        tried = max(len(set(kinds[ok].tolist())), 1)
        order = np.lexsort((-aud.size, -cand, aud.item))
        order = order[ok[order]]
        first = order[np.r_[True, aud.item[order][1:] != aud.item[order][:-1]]] if len(order) else order
        best = np.full(ad.n_items, -1, np.int64)
        nats = np.zeros(ad.n_items)
        cand = cand - np.log(tried)
        best[aud.item[first]] = first
        nats[aud.item[first]] = np.maximum(cand[first], 0.0)
        return cand, best, nats

    def pushing(self, ad: Adoptions, aud: Audiences, cand: np.ndarray, best: np.ndarray) -> np.ndarray:
        """(I,) the audience each item is judged by on the group side: among its audiences past the
        threshold, the strongest that pushes it (a nuke shows over the week its accounts are in,
        while its densest day holds only some of them); else its best."""
        out = best.copy()
        passing = np.flatnonzero(cand >= self.tau_)
        if len(passing) == 0:
            return out
        push = passing[pushed(ad, aud, passing, self.value_mean_)]
        order = np.lexsort((-aud.size[push], -cand[push], aud.item[push]))
        first = order[np.r_[True, aud.item[push][order][1:] != aud.item[push][order][:-1]]] if len(order) else order
        out[aud.item[push][first]] = push[first]
        return out

    def item_score(self, nats: np.ndarray) -> np.ndarray:
        """(I,) campaign score in [0, 1], higher = more suspicious; ``1 - target_fpr`` at the threshold."""
        return np.clip(1.0 - self.target_fpr * np.exp(-(nats - self.tau_)), 0.0, 1.0)

    # ------------------------------------------------------------------ fit / find
    def fit(self, offsets: np.ndarray, item_codes: np.ndarray, ts: np.ndarray, value: np.ndarray,
            user_score: np.ndarray, *, n_items: int) -> CampaignDetector:
        """Learn from the training log (offsets (U + 1,), item_codes (N,) in [0, n_items), ts (N,),
        value (N,)) and its users' in-sample scores (U,) in [0, 1]."""
        self._check_params()
        ad = build_adoptions(offsets, item_codes, ts, value, n_items=n_items)
        z = user_evidence(user_score)
        mean, var = float(z.mean()) if len(z) else 1.0, float(z.var()) if len(z) > 1 else 1.0
        self.z_mean_, self.z_var_ = max(mean, 1e-3), max(var, 1e-6)
        v = ad.value[np.isfinite(ad.value)]
        self.value_lo_ = self.value_hi_ = self.value_mean_ = self.g_lo_ = self.g_hi_ = float("nan")
        if len(v) >= MIN_VALUES:
            lo, hi = np.quantile(v, [0.1, 0.9])
            if hi > lo:
                self.value_lo_, self.value_mean_, self.value_hi_ = float(lo), float(v.mean()), float(hi)
                self.g_lo_, self.g_hi_ = float((v <= lo).mean()), float((v >= hi).mean())
        aud = self.evidence(ad, self.context(user_score))
        kinds, raw = _kinds(aud), aud.raw
        eligible_items = int((ad.item_size >= self.min_members).sum())
        refs = {}
        for kind in np.unique(kinds):
            # every eligible item is in each kind's null: one without such an audience scores 0
            idx = np.flatnonzero(kinds == kind)
            refs[str(kind)] = (idx, np.r_[raw[idx], np.zeros(max(eligible_items - len(idx), 0))])
        self.calibrators_ = {k: NatsCalibrator().fit(ref) for k, (_, ref) in refs.items()}
        if not self.calibrators_:
            log.warning("no item has %d adopters: the campaign stage has nothing to learn from", self.min_members)
            self.calibrators_["core"] = NatsCalibrator().fit(np.zeros(1))
        _, best, nats = self.calibrate(ad, aud)
        eligible = best >= 0
        # the threshold: items beyond it are rare enough that their audiences (those of the top
        # tenth of training items, where a chance excess would come from) add up to the budget
        sizes = aud.size[best[eligible]] if eligible.any() else np.full(1, self.min_members)
        top = nats[eligible] >= np.quantile(nats[eligible], 0.9) if eligible.any() else np.ones(1, bool)
        audience = float(np.mean(sizes[top]))
        budget = self.share * self.target_fpr * max(ad.n_users, 1)
        self.tau_ = float(max(np.log(max(int(eligible.sum()), 1) * audience / budget), 0.0))
        self.n_reference_ = int(eligible.sum())
        # what the training log's own campaigns would hide: the top of each kind's null judged
        # without itself; a block past the threshold leaves the stored null, so scoring this log
        # again finds it (organic items get there as often as the budget allows)
        left_out = 0
        for kind, (_, ref) in refs.items():
            out = _outlying_top(ref, self.tau_ + np.log(len(refs)))
            if out.any():
                left_out += int(out.sum())
                self.calibrators_[kind] = NatsCalibrator().fit(ref[~out])
        cand, best, nats = self.calibrate(ad, aud)
        groups = self._groups(ad, aud, self.pushing(ad, aud, cand, best), nats)
        self.train_ = {"items": self.n_reference_, "trimmed": left_out, "campaigns": len(groups.nats),
                       "members": int((groups.user_campaign >= 0).sum()), "users": int(ad.n_users),
                       "timed": bool(ad.timed)}
        log.info("campaign stage: threshold %.2f nats over %d items (%d left out); in-sample %d campaign(s), "
                 "%d member(s) of %d users", self.tau_, self.n_reference_, left_out, self.train_["campaigns"],
                 self.train_["members"], ad.n_users)
        return self

    def _groups(self, ad: Adoptions, aud: Audiences, best: np.ndarray, nats: np.ndarray,
                target_ok: np.ndarray | None = None) -> Groups:
        return group_campaigns(ad, aud, best, nats, self.tau_, min_members=int(self.min_members),
                               value_mean=self.value_mean_, target_ok=target_ok)

    def find(self, ad: Adoptions, user_score: np.ndarray, target_ok: np.ndarray | None = None) -> Found:
        """Campaigns of a scored log's adoptions (assembled from its partitions' visits:
        parts.find_in_parts); ``user_score`` the detectors' (U,); ``target_ok`` (I,): items that
        may be targets (users left out are already out of the adoptions)."""
        check_is_fitted(self, ["tau_"])
        aud = self.evidence(ad, self.context(user_score))
        cand, best, nats = self.calibrate(ad, aud)
        best = self.pushing(ad, aud, cand, best)
        groups = self._groups(ad, aud, best, nats, target_ok)
        return Found(ad, aud, best, nats, self.item_score(nats), groups, self.item_score(groups.nats), self.tau_)

    # ------------------------------------------------------------------ state
    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``reference.<kind>`` (the null of each kind of audience's statistic: ``core``,
        ``w<seconds>``); meta the parameters, the kinds and the fitted scalars."""
        check_is_fitted(self, ["tau_"])
        arrays = {f"reference.{k}": cal.to_state()[0]["reference"] for k, cal in self.calibrators_.items()}
        meta = {**self.get_params(), "windows": list(self.windows), "kinds": sorted(self.calibrators_)}
        for k in ("tau_", "z_mean_", "z_var_", "value_lo_", "value_hi_", "value_mean_", "g_lo_", "g_hi_",
                  "n_reference_", "train_"):
            v = getattr(self, k)
            meta[k] = None if isinstance(v, float) and not np.isfinite(v) else v
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> CampaignDetector:
        params = {k: meta[k] for k in ("target_fpr", "share", "taste_lift", "min_members")}
        det = cls(**params, windows=tuple(float(w) for w in meta["windows"]))
        det._check_params()
        det.calibrators_ = {str(k): NatsCalibrator.from_state({"reference": arrays[f"reference.{k}"]}, {})
                            for k in meta["kinds"]}
        for k in ("tau_", "z_mean_", "z_var_", "value_lo_", "value_hi_", "value_mean_", "g_lo_", "g_hi_"):
            v = meta[k]
            setattr(det, k, float("nan") if v is None else float(v))
        det.n_reference_ = int(meta["n_reference_"])
        det.train_ = dict(meta.get("train_") or {})
        return det


@dataclass
class Found:
    """What :meth:`CampaignDetector.find` saw: adoptions, audiences, each item's best audience
    (I,), calibrated nats and score (I,), the campaigns (:class:`~.groups.Groups`), each
    campaign's score (K,) and the threshold in nats."""

    ad: Adoptions
    aud: Audiences
    best: np.ndarray
    nats: np.ndarray
    score: np.ndarray
    groups: Groups
    campaign_score: np.ndarray
    tau: float


def _kinds(aud: Audiences) -> np.ndarray:
    """(C,) each audience's kind: ``core`` (a lockstep core) or ``w<seconds>`` (a window)."""
    return np.where(aud.width > 0, np.char.add("w", aud.width.astype(np.int64).astype(str)), "core")


class NatsCalibrator(Calibrator):
    """A :class:`Calibrator` of a statistic that is itself in nats: past the largest reference
    value each further nat of the statistic adds at most one calibrated nat (a thin or tied
    reference top would otherwise extrapolate steeply)."""

    def nats(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, np.float64)
        out = super().nats(raw)
        top, m = self.reference_[-1], len(self.reference_)
        beyond = raw > top
        out[beyond] = np.minimum(out[beyond], np.log(m + 1) + (raw[beyond] - top))
        return out


def _outlying_top(ref: np.ndarray, tau: float) -> np.ndarray:
    """(n,) which values of a null are a block of outliers at its top: the largest k (up to
    LGO_TOP) for which the k-th largest value, judged against the null without the top k, passes
    ``tau`` nats and log(LGO_TOP) more for the block sizes tried (a generalised ESD test: one
    campaign's several targets cannot mask each other)."""
    n = len(ref)
    out = np.zeros(n, bool)
    order = np.argsort(-ref, kind="stable")
    tau = tau + np.log(LGO_TOP)  # LGO_TOP block sizes tried
    for k in range(min(LGO_TOP, n - 2), 0, -1):
        rest = ref[order[k:]]
        if NatsCalibrator().fit(rest).nats(ref[order[k - 1:k]])[0] >= tau:
            out[order[:k]] = True
            break
    return out
