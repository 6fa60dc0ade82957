"""Shadow rollout in a serving process: a candidate bundle scores a share of the users beside the
live one, off the request's path, and its agreement with the live answers is counted.

:class:`Shadow` is held by a :class:`~seqguard_ray.runtime.serve.service.StagedBackend`: after each
live batch it picks the shadowed users (:func:`~seqguard_ray.core.shadow.in_shadow`) and scores
them with the candidate's :class:`~seqguard_ray.runtime.serve.stages.StageCalls` in a background
task. The live answer is sent without waiting; a candidate error is counted, never raised; while
``max_in_flight`` shadow batches are running, the next shadowed users are skipped (and counted),
so a slow candidate cannot pile work up behind the live traffic. The sampling, the accumulators
and the promotion guard are :mod:`seqguard_ray.core.shadow`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from ...core.shadow import GuardDecision, PromotionGuard, ShadowStats, check_share, in_shadow
from .batches import ScoredBatch, SeqBatch
from .errors import InvalidArgument
from .metrics import NullMetrics, ServingMetrics
from .stages import ModelInfo, StageCalls, run_stages

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """The bundle held beside the live one, how to score with it, and its agreement so far."""

    info: ModelInfo
    calls: StageCalls
    share: float
    stats: ShadowStats


@dataclass
class RolloutStatus:
    """What ``seqguard rollout status`` shows (the Rollout rpc's answer, as domain values)."""

    live: ModelInfo | None
    candidate: ModelInfo | None
    share: float
    stats: ShadowStats
    guard: GuardDecision | None   # the guard's verdict now (None: no candidate)
    message: str = ""             # what the action did
    server: str = ""              # which serving process answered (a Serve ingress replica's id)


@dataclass(frozen=True)
class RolloutCommand:
    """A Rollout request: ``action`` is status | start | promote | abort."""

    action: str
    candidate_dir: str = ""
    share: float = 0.0
    force: bool = False
    guard: PromotionGuard = PromotionGuard()


class Shadow:
    """The candidate of one serving process (None: no rollout in progress)."""

    def __init__(self, metrics: ServingMetrics | None = None, *, max_in_flight: int = 1):
        self.metrics = metrics or NullMetrics()
        self.max_in_flight = max_in_flight
        self.candidate: Candidate | None = None
        self._tasks: set[asyncio.Task] = set()
        self._failures_logged = 0

    # ------------------------------------------------------------------ control
    def start(self, info: ModelInfo, calls: StageCalls, share: float) -> Candidate:
        """Hold ``info``'s bundle as the candidate at ``share``; the same version keeps its counts."""
        share = check_share(share)
        old = self.candidate
        same = old is not None and old.info.model_version == info.model_version
        if old is not None and not same:
            self.metrics.shadow_candidate(old.info.model_version, 0.0)
        self.candidate = Candidate(info, calls, share, old.stats if same else ShadowStats())
        self.metrics.shadow_candidate(info.model_version, share)
        return self.candidate

    def stop(self) -> Candidate | None:
        """Drop the candidate (its running shadow batches finish uncounted); returns it."""
        old, self.candidate = self.candidate, None
        if old is not None:
            self.metrics.shadow_candidate(old.info.model_version, 0.0)
        return old

    def status(self, live: ModelInfo | None, message: str = "", guard: PromotionGuard | None = None) -> RolloutStatus:
        c = self.candidate
        stats = c.stats if c is not None else ShadowStats()
        decision = (guard or PromotionGuard()).decide(stats) if c is not None else None
        return RolloutStatus(live, c.info if c else None, c.share if c else 0.0, stats, decision, message)

    def refresh(self) -> None:
        """Export the candidate's gauge again (Ray drops a gauge series not set for a while)."""
        if self.candidate is not None:
            self.metrics.shadow_candidate(self.candidate.info.model_version, self.candidate.share)

    # ------------------------------------------------------------------ traffic
    def observe(self, batch: SeqBatch, live: ScoredBatch, live_s: float) -> None:
        """A live batch was answered in ``live_s`` seconds: shadow its sampled users in the background.
        Never raises (the live answer must not depend on the shadow)."""
        c = self.candidate
        if c is None or c.share <= 0:
            return
        try:
            rows = np.flatnonzero(in_shadow(batch.user_ids, c.share))
            if not len(rows):
                return
            if len(self._tasks) >= self.max_in_flight:
                c.stats.skipped += len(rows)
                self.metrics.shadow_missed(len(rows), "busy")
                return
            task = asyncio.get_running_loop().create_task(
                self._score(c, batch.take(rows), live.score[rows], live.anomalous[rows], live_s))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception:  # noqa: BLE001 - the shadow never fails a live request
            log.exception("shadow scoring could not start")

    async def _score(self, c: Candidate, sub: SeqBatch, live_score: np.ndarray, live_flag: np.ndarray,
                     live_s: float) -> None:
        t0 = time.perf_counter()
        try:
            sb = await run_stages(c.calls, sub, False)
        except Exception as exc:  # noqa: BLE001 - counted, never raised
            c.stats.errors += sub.n_seqs
            self.metrics.shadow_missed(sub.n_seqs, "error")
            if self._failures_logged < 5:
                self._failures_logged += 1
                log.warning("candidate %s failed on %d shadowed users: %s: %s", c.info.model_version, sub.n_seqs,
                            type(exc).__name__, exc)
            return
        cand_s = time.perf_counter() - t0
        if self.candidate is not c:  # aborted or replaced meanwhile
            return
        c.stats.add(live_score, live_flag, sb.score, sb.anomalous)
        c.stats.add_latency(live_s, cand_s)
        self.metrics.shadowed(live_flag, sb.anomalous, live_s, cand_s,
                              {"flag_agreement": c.stats.flag_agreement, "spearman": c.stats.spearman})

    async def drain(self) -> None:
        """Wait for the shadow batches running now (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def check_candidate(candidate_dir: str, live: ModelInfo | None) -> ModelInfo:
    """The candidate bundle's info, or InvalidArgument saying why it cannot shadow ``live``: missing
    or unreadable, the live bundle itself, or unable to score every request the live one takes."""
    from ...core.bundle import BundleError

    if not candidate_dir or not str(candidate_dir).strip():
        raise InvalidArgument("candidate_dir is empty: name the candidate model bundle directory")
    try:
        info = ModelInfo.from_dir(str(candidate_dir))
    except (BundleError, FileNotFoundError, NotADirectoryError, KeyError, ValueError) as exc:
        raise InvalidArgument(f"candidate_dir {candidate_dir}: not a model bundle this server can load ({exc})") from None
    if live is not None:
        if info.model_version == live.model_version:
            raise InvalidArgument(f"candidate_dir {candidate_dir} holds model {info.model_version}, the live "
                                  "one: nothing to compare")
        cap, live_cap = info.max_events_per_user, live.max_events_per_user
        if cap is not None and live_cap is not None and cap < live_cap:
            raise InvalidArgument(f"candidate_dir {candidate_dir}: incompatible bundle: its history cap "
                                  f"(max_events_per_user {cap}) is below the live bundle's ({live_cap}), so it "
                                  "would reject requests the live one answers")
    return info


def check_rollout_share(share) -> float:
    """:func:`~seqguard_ray.core.shadow.check_share` with the field named for the client."""
    try:
        return check_share(share)
    except ValueError:
        raise InvalidArgument(f"share must be in [0, 1], got {share!r}") from None
