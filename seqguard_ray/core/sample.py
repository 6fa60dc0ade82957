"""The bounded fit sample: which users the detectors and their calibration are fitted on.

The encoder trains on the whole log; everything fitted after it (item statistics, the event and
user detectors, the length strata, the explainer, the change points, the campaign stage) is fitted
on at most ``TrainConfig.fit_sample_events`` events of whole users, so that the process that fits
them (the Ray driver) holds O(sample + vocabulary), never O(log).

A user is in the sample when a seeded hash of its id falls below its length stratum's threshold:
the decision needs only the user's id and (capped) history length, so it is the same whatever the
partitioning or row order, and Ray workers make it before anything reaches the driver. The
thresholds come from one global reduction, :func:`sample_counts` (users and events per length
stratum and hash bin; blocks' counts add up), planned by :func:`plan_sample`:

- a log within the budget is used whole (every threshold at N_BINS): results are unchanged;
- otherwise every length stratum (:data:`~.strata.STRATA`) keeps at least ``min_users`` users
  (``TrainConfig.fit_sample_min_users``, all it has if fewer), so every stratum the full log would
  fit is fitted, on enough users to calibrate its 1% tail; the rest of the budget is one uniform rate;
- the sample's events exceed the budget only as far as those floors need (thresholds are whole bins
  whose events are counted): at most ``min_users`` x strata x the history cap, whatever the log's size.

The floor on every stratum, the main one included, came from measuring: with the budget alone, a
35% sample of ~1,000-2,000 users (332-778 in the sample) kept ROC within 0.004 but flagged 6-15
points fewer attacked users, its 1% tail calibrated on a handful of users (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from .features import Seqs
from .strata import STRATA

N_BINS = 1024               # hash bins: the sampling rate's resolution
MIN_STRATUM_USERS = 5_000   # default floor: users each length stratum keeps (all, if it has fewer)


def user_bins(users: np.ndarray, seed: int) -> np.ndarray:
    """(U,) int64 each user id's hash bin in [0, N_BINS): BLAKE2b of the id string, salted with the seed."""
    salt = int(seed).to_bytes(8, "little", signed=True)
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(u).encode(), digest_size=8, salt=salt).digest(), "little")
                        % N_BINS for u in users), dtype=np.int64, count=len(users))


def length_strata(n_events: np.ndarray) -> np.ndarray:
    """(U,) each history's length stratum: index into STRATA (the last: the main stratum)."""
    return np.searchsorted(STRATA, np.asarray(n_events), side="right") - 1


def sample_counts(users: np.ndarray, n_events: np.ndarray, seed: int) -> np.ndarray:
    """(len(STRATA), N_BINS, 2) int64 users and events per length stratum and hash bin of whole
    users ``users`` (U,) with ``n_events`` (U,) events each (after the history cap). The counts of
    a log's parts add up to the whole log's."""
    n = np.asarray(n_events, np.int64)
    flat = length_strata(n) * N_BINS + user_bins(users, seed)
    size = len(STRATA) * N_BINS
    counts = np.stack([np.bincount(flat, minlength=size), np.bincount(flat, weights=n, minlength=size)], axis=1)
    return counts.astype(np.int64).reshape(len(STRATA), N_BINS, 2)


@dataclass
class FitSample:
    """Which users the detectors are fitted on: those whose hash bin is below their length
    stratum's ``thresholds`` entry; with the log's and the sample's sizes."""

    seed: int
    thresholds: list[int]   # (len(STRATA),) bins kept per stratum; N_BINS: all its users
    seen_users: int
    seen_events: int
    fit_users: int
    fit_events: int

    @property
    def whole(self) -> bool:
        """Every user is in the sample."""
        return self.fit_users == self.seen_users

    def keep(self, users: np.ndarray, n_events: np.ndarray) -> np.ndarray:
        """(U,) bool: which of these whole users (ids, capped event counts) are in the sample."""
        if self.whole:
            return np.ones(len(users), bool)
        return user_bins(users, self.seed) < np.asarray(self.thresholds)[length_strata(n_events)]

    def metrics(self) -> dict:
        """The sizes, for the bundle's metrics."""
        return {k: v for k, v in asdict(self).items() if k not in ("seed", "thresholds")}


def plan_sample(counts: np.ndarray, budget: int, seed: int, min_users: int = MIN_STRATUM_USERS) -> FitSample:
    """The sample of a log with these :func:`sample_counts`: the largest in a growing family of
    thresholds (first up to each stratum's floor of ``min_users`` users, then one common rate)
    whose events fit ``budget``, and never less than the floors."""
    users, events = counts[..., 0], counts[..., 1]  # (S, N_BINS)
    cum_users = np.c_[np.zeros(len(users), np.int64), np.cumsum(users, 1)]  # (S, N_BINS + 1): kept below t bins
    cum_events = np.c_[np.zeros(len(events), np.int64), np.cumsum(events, 1)]
    floor = np.array([np.searchsorted(cu, min(cu[-1], min_users)) for cu in cum_users])
    t = np.arange(N_BINS + 1)[:, None]
    family = np.r_[np.minimum(floor[None, :], t), np.maximum(floor[None, :], t)]  # (2 (N_BINS + 1), S), growing
    rows = np.arange(len(users))
    fit_events = cum_events[rows, family].sum(1)
    ok = fit_events <= budget
    ok[N_BINS + 1] = True  # the floors alone (t = 0 of the second half), whatever the budget
    best = family[np.flatnonzero(ok)[-1]]
    return FitSample(seed=int(seed), thresholds=best.tolist(), seen_users=int(users.sum()),
                     seen_events=int(events.sum()), fit_users=int(cum_users[rows, best].sum()),
                     fit_events=int(cum_events[rows, best].sum()))


def fit_sample(users: np.ndarray, n_events: np.ndarray, budget: int, seed: int,
               min_users: int = MIN_STRATUM_USERS) -> tuple[FitSample, np.ndarray]:
    """The plan and (U,) bool users kept, for a whole log held in one process."""
    plan = plan_sample(sample_counts(users, n_events, seed), budget, seed, min_users)
    return plan, plan.keep(users, n_events)


def take_users(seqs: Seqs, keep: np.ndarray) -> Seqs:
    """The users of ``seqs`` where ``keep`` (U,) is True, whole."""
    n = np.diff(seqs.offsets)
    ev = np.repeat(keep, n)
    return Seqs(np.r_[0, np.cumsum(n[keep])].astype(np.int64), seqs.ts[ev], seqs.item[ev], seqs.action[ev],
                seqs.value[ev], seqs.surprisal[ev], None if seqs.key is None else seqs.key[ev])
