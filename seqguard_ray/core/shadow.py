"""Shadow rollout, framework-free: which users a candidate bundle scores beside the live one, how
their answers agree, and whether the candidate may replace the live bundle.

    share = check_share(0.25)
    mask = in_shadow(user_ids, share)                   # (R,) bool, the same users every time
    stats = ShadowStats()
    stats.add(live_score[mask], live_flag[mask], cand_score, cand_flag)
    stats.add_latency(live_s=0.012, candidate_s=0.015)
    decision = PromotionGuard(max_flag_ratio=3.0, min_users=200).decide(stats)
    decision.ok, decision.reason

Scores are in [0, 1]; higher means more anomalous. The serving front ends (the plain gRPC server
and the Ray Serve ingress) hold these objects; nothing here knows about either.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SPEARMAN_WINDOW = 10_000   # most recent shadowed users whose scores the rank correlation is computed over
MAX_FLAG_RATIO = 3.0       # default guard: the candidate may flag at most this many times the live share
MIN_USERS = 200            # default guard: fewer shadowed users than this are no evidence


def check_share(share) -> float:
    """``share`` as a float in [0, 1] (the share of users scored by the candidate too), or ValueError."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) or not 0 <= share <= 1:
        raise ValueError(f"share must be a number in [0, 1], got {share!r}")
    return float(share)


def shadow_key(user_id: str) -> float:
    """The user's fixed position in [0, 1): a hash of the id, so a user is shadowed on every request
    or on none (the share picks the users below it), on every replica and after a restart."""
    digest = hashlib.blake2b(str(user_id).encode("utf-8"), digest_size=8, person=b"sg-shadow").digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def in_shadow(user_ids: Sequence[str], share: float) -> np.ndarray:
    """(R,) bool: the users the candidate scores too at ``share`` (0: none, 1: all)."""
    if share <= 0:
        return np.zeros(len(user_ids), bool)
    if share >= 1:
        return np.ones(len(user_ids), bool)
    return np.fromiter((shadow_key(u) < share for u in user_ids), bool, count=len(user_ids))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two (n,) score arrays (ties get their average rank); None
    when it is undefined (fewer than 2 pairs, or one side constant)."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2:
        return None
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return None if den == 0 else float(np.clip((ra @ rb) / den, -1.0, 1.0))


@dataclass
class ShadowStats:
    """Agreement of the candidate with the live bundle over the users both scored.

    Counts are over every shadowed user since the candidate was set; the rank correlation over the
    last ``window`` users. Latencies are per shadowed batch (the live batch's, then the candidate's
    on the shadowed part of it)."""

    window: int = SPEARMAN_WINDOW
    users: int = 0              # users scored by both
    live_flagged: int = 0       # of them, flagged by the live bundle
    candidate_flagged: int = 0  # ... by the candidate
    both_flagged: int = 0
    agreed: int = 0             # users both flagged or both passed
    batches: int = 0            # shadowed batches the candidate answered
    live_s: float = 0.0         # their live latency, summed (seconds)
    candidate_s: float = 0.0    # and the candidate's
    errors: int = 0             # shadowed batches the candidate failed on (counted, never raised)
    skipped: int = 0            # users not shadowed because the shadow was still busy with earlier ones
    _live: deque = field(default=None, repr=False)
    _cand: deque = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"window must be >= 2, got {self.window!r}")
        self._live, self._cand = deque(maxlen=self.window), deque(maxlen=self.window)

    def add(self, live_score: np.ndarray, live_flag: np.ndarray, cand_score: np.ndarray, cand_flag: np.ndarray) -> None:
        """R users scored by both: scores (R,) in [0, 1], flags (R,) bool, aligned."""
        lf, cf = np.asarray(live_flag, bool), np.asarray(cand_flag, bool)
        if not len(lf) == len(cf) == len(live_score) == len(cand_score):
            raise ValueError(f"live and candidate answers differ in length: {len(lf)} vs {len(cf)}")
        self.users += len(lf)
        self.live_flagged += int(lf.sum())
        self.candidate_flagged += int(cf.sum())
        self.both_flagged += int((lf & cf).sum())
        self.agreed += int((lf == cf).sum())
        self._live.extend(np.asarray(live_score, np.float64).tolist())
        self._cand.extend(np.asarray(cand_score, np.float64).tolist())

    def add_latency(self, live_s: float, candidate_s: float) -> None:
        self.batches += 1
        self.live_s += float(live_s)
        self.candidate_s += float(candidate_s)

    @property
    def flag_agreement(self) -> float | None:
        """Share of shadowed users both flagged or both passed (None: none yet)."""
        return self.agreed / self.users if self.users else None

    @property
    def spearman(self) -> float | None:
        return spearman(np.fromiter(self._live, np.float64), np.fromiter(self._cand, np.float64))

    def flagged_share(self, which: str) -> float | None:
        """Share of shadowed users flagged by ``which`` ("live" or "candidate"); None: none yet."""
        n = {"live": self.live_flagged, "candidate": self.candidate_flagged}[which]
        return n / self.users if self.users else None

    def mean_latency_s(self, which: str) -> float | None:
        """Mean latency of a shadowed batch for ``which`` ("live" or "candidate"); None: none yet."""
        total = {"live": self.live_s, "candidate": self.candidate_s}[which]
        return total / self.batches if self.batches else None


@dataclass(frozen=True)
class GuardDecision:
    ok: bool
    reason: str


@dataclass(frozen=True)
class PromotionGuard:
    """Blocks promoting a candidate that flags far more users than the live bundle, or one judged on
    too few users. The candidate's flagged count may be at most ``max_flag_ratio`` times the live
    one's, the live count taken as at least 1 (so a live bundle that flagged nobody still allows a
    few candidate flags)."""

    max_flag_ratio: float = MAX_FLAG_RATIO  # > 0
    min_users: int = MIN_USERS              # >= 0 shadowed users before the ratio counts as evidence

    def __post_init__(self) -> None:
        if isinstance(self.max_flag_ratio, bool) or not isinstance(self.max_flag_ratio, (int, float)) \
                or not math.isfinite(self.max_flag_ratio) or self.max_flag_ratio <= 0:
            raise ValueError(f"max_flag_ratio must be a number > 0, got {self.max_flag_ratio!r}")
        if isinstance(self.min_users, bool) or not isinstance(self.min_users, int) or self.min_users < 0:
            raise ValueError(f"min_users must be an int >= 0, got {self.min_users!r}")

    def decide(self, stats: ShadowStats) -> GuardDecision:
        n = stats.users
        if n < self.min_users or n == 0:
            return GuardDecision(False, f"only {n} users shadowed so far, the guard needs at least "
                                        f"{max(self.min_users, 1)}: send more traffic or raise the share")
        live, cand = stats.live_flagged, stats.candidate_flagged
        ratio = cand / max(live, 1)
        shares = (f"the candidate flags {cand / n:.1%} of {n} shadowed users, the live bundle {live / n:.1%} "
                  f"({ratio:.1f}x{'' if live else ', live taken as 1 user'})")
        if ratio > self.max_flag_ratio:
            return GuardDecision(False, f"{shares}: above the {self.max_flag_ratio:g}x limit")
        return GuardDecision(True, f"{shares}: within the {self.max_flag_ratio:g}x limit")
