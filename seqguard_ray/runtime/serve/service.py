"""The SeqGuard rpcs over a backend that runs the stages, for every front end.

:class:`ScoringService` does what does not depend on the transport: auth, limits, conversion,
status codes, request counting. A :class:`Backend` runs the stages: :class:`StagedBackend` over any
:class:`~seqguard_ray.runtime.serve.stages.StageCalls` (the Ray Serve ingress gives it deployment
handles), :class:`InProcessBackend` in this process (the plain grpc.aio server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from .auth import Authenticator
from .batches import RepairedBatch, ScoredBatch, SeqBatch
from .batching import ContinuousBatcher
from .convert import (
    UndecodableRequest,
    answer_frame,
    check_size,
    empty_response,
    model_info_response,
    parse_batch_request,
    parse_rollout_request,
    parse_score_request,
    repair_response,
    rollout_response,
    score_batch_response,
    score_responses,
)
from .errors import FailedPrecondition, InvalidArgument, Unavailable, status_for
from .limits import Limits
from .metrics import NullMetrics, ServingMetrics
from .sessions import SessionStore, StreamConfig, open_store
from .shadow import Candidate, RolloutCommand, RolloutStatus, Shadow, check_candidate, check_rollout_share
from .stages import ModelInfo, StageCalls, load_engine, local_stage_calls, run_stages
from .streaming import StreamGate, run_stream, unframed


class Backend(Protocol):
    """How a front end runs the stages: in process, or through Ray Serve deployment handles."""

    async def score(self, batch: SeqBatch) -> ScoredBatch: ...

    async def repair(self, batch: SeqBatch) -> RepairedBatch: ...

    async def model_info(self) -> ModelInfo: ...


class RolloutControl(Protocol):
    """How a front end changes the bundles it serves for a rollout (:meth:`StagedBackend.rollout`
    checks the request and the guard first): in this process, or through the Serve app's config."""

    async def start(self, info: ModelInfo, share: float) -> str: ...

    async def abort(self) -> str: ...

    async def promote(self, candidate: Candidate) -> str: ...


class StagedBackend:
    """A :class:`Backend` over ``calls``: concurrent requests are merged by a
    :class:`ContinuousBatcher` (unless ``batching`` is off) and each merged batch goes through
    :func:`run_stages`. ``info`` describes the bundle served; its owner sets it once one is loaded.
    """

    def __init__(self, calls: StageCalls, *, info: ModelInfo | None = None, batching: bool = True,
                 max_batch: int = 64, concurrency: int = 1, metrics: ServingMetrics | None = None,
                 control: RolloutControl | None = None):
        self.calls = calls
        self.info = info
        self.batching = batching
        self.metrics = metrics or NullMetrics()
        self.shadow = Shadow(self.metrics)   # a rollout's candidate, scoring a share of the users
        self.control = control               # None: rollouts can only be read here (status)
        self._batcher = ContinuousBatcher(self._run, max_batch=max_batch, concurrency=concurrency,
                                          on_batch=self.metrics.batched)

    async def _run(self, batch: SeqBatch, repair: bool) -> ScoredBatch | RepairedBatch:
        t0 = time.perf_counter()
        out = await run_stages(self.calls, batch, repair, self.metrics)
        self.shadow.observe(batch, out.scored if repair else out, time.perf_counter() - t0)  # never raises
        return out

    # ------------------------------------------------------------------ rollout
    async def live_info(self) -> ModelInfo | None:
        return self.info

    async def rollout(self, cmd: RolloutCommand) -> RolloutStatus:
        """The Rollout rpc: status, or start / promote / abort through :attr:`control`."""
        live = await self.live_info()
        if cmd.action == "status":
            return self.shadow.status(live, guard=cmd.guard)
        if cmd.action not in ("start", "promote", "abort"):
            raise InvalidArgument(f"action: {cmd.action}")
        if self.control is None:
            raise FailedPrecondition("this server cannot change its bundles: rollouts are read-only here")
        if cmd.action == "start":
            share = check_rollout_share(cmd.share)
            info = await asyncio.to_thread(check_candidate, cmd.candidate_dir, live)
            message = await self.control.start(info, share)
        elif cmd.action == "abort":
            if self.shadow.candidate is None:
                return self.shadow.status(live, "no candidate held: nothing to abort", cmd.guard)
            message = await self.control.abort()
        else:
            c = self.shadow.candidate
            if c is None:
                raise FailedPrecondition("no candidate to promote: start a rollout first (seqguard rollout start)")
            decision = cmd.guard.decide(c.stats)
            if not decision.ok and not cmd.force:
                raise FailedPrecondition(f"promotion of {c.info.model_version} blocked: {decision.reason}. "
                                         "Abort the rollout, or promote with --force")
            message = await self.control.promote(c)
        return self.shadow.status(await self.live_info(), message, cmd.guard)

    async def _submit(self, batch: SeqBatch, repair: bool) -> ScoredBatch | RepairedBatch:
        return await (self._batcher.submit(batch, repair) if self.batching else self._run(batch, repair))

    async def score(self, batch: SeqBatch) -> ScoredBatch:
        return await self._submit(batch, False)

    async def repair(self, batch: SeqBatch) -> RepairedBatch:
        return await self._submit(batch, True)

    def history_cap(self) -> int | None:
        """The served bundle's ``max_events_per_user`` (None: no bundle loaded yet)."""
        return None if self.info is None else self.info.max_events_per_user

    def encoder_window(self) -> int | None:
        """The served bundle's encoder window ``max_len`` (None: no bundle loaded yet)."""
        return None if self.info is None else self.info.max_len

    async def model_info(self) -> ModelInfo:
        """The bundle's info, with the campaign table published with it now."""
        if self.info is None:
            raise Unavailable("no model is loaded yet: retry shortly")
        return await asyncio.to_thread(self.info.with_campaigns)

    def close(self) -> None:
        self._batcher.close()

    async def aclose(self) -> None:
        """:meth:`close`, once the batcher's workers and the shadow's batches have stopped."""
        await self._batcher.aclose()
        await self.shadow.drain()
        self.close()


class InProcessBackend(StagedBackend):
    """Runs the three stages in this process, on one worker thread (the engine is not shared
    between threads). With ``batching``, requests that arrive while a batch runs are merged into
    the next engine call (up to ``max_batch`` requests). ``sg=None``: no model yet (UNAVAILABLE).
    """

    def __init__(self, sg=None, *, model_dir: str = "", batching: bool = True, max_batch: int = 64,
                 metrics: ServingMetrics | None = None):
        self.sg = sg
        self.model_dir = str(model_dir)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="seqguard-engine")
        super().__init__(local_stage_calls(self._engine, self._pool, self.model_dir), batching=batching,
                         max_batch=max_batch, metrics=metrics, control=InProcessRollout(self))
        if sg is not None:
            self.metrics.model_loaded(getattr(sg, "model_version", ""), drift=getattr(sg, "drift", None))

    @classmethod
    def from_dir(cls, model_dir: str, *, torch_threads: int | None = 1, **kw) -> InProcessBackend:
        return cls(load_engine(model_dir, torch_threads=torch_threads, warm_up=True), model_dir=model_dir, **kw)

    def _engine(self):
        if self.sg is None:
            raise Unavailable("no model is loaded yet: retry shortly")
        return self.sg

    async def _submit(self, batch: SeqBatch, repair: bool) -> ScoredBatch | RepairedBatch:
        self._engine()  # fail before queueing
        return await super()._submit(batch, repair)

    def history_cap(self) -> int | None:
        return None if self.sg is None else self.sg.config.max_events_per_user

    def encoder_window(self) -> int | None:
        return None if self.sg is None else self.sg.config.max_len

    async def model_info(self) -> ModelInfo:
        if self.info is None:
            self._engine()
            self.info = ModelInfo.from_dir(self.model_dir)
        return await super().model_info()

    async def live_info(self) -> ModelInfo | None:
        if self.info is None and self.sg is not None:
            self.info = await asyncio.to_thread(ModelInfo.from_dir, self.model_dir)
        return self.info

    def close(self) -> None:
        super().close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.control.close()


class InProcessRollout:
    """A :class:`RolloutControl` in this process: the candidate engine runs on a thread of its own
    (the live engine's thread never waits for it); promotion makes it the engine (batches already
    encoded finish on the engine that encoded them)."""

    def __init__(self, backend: InProcessBackend):
        self.backend = backend
        self.sg = None        # the candidate engine
        self._pool: ThreadPoolExecutor | None = None

    async def start(self, info: ModelInfo, share: float) -> str:
        if self.sg is None or self.sg.model_version != info.model_version:
            sg = await asyncio.to_thread(load_engine, info.model_dir, torch_threads=1, warm_up=True)
            self.close()
            self.sg, self._pool = sg, ThreadPoolExecutor(1, thread_name_prefix="seqguard-candidate")
        sg = self.sg
        self.backend.shadow.start(info, local_stage_calls(lambda: sg, self._pool, info.model_dir), share)
        return f"candidate {info.model_version} ({info.model_dir}) shadows {share:.0%} of users"

    async def abort(self) -> str:
        c = self.backend.shadow.stop()
        await self.backend.shadow.drain()
        self.close()
        return f"rollout of {c.info.model_version} aborted; {self.backend.info.model_version} stays live"

    async def promote(self, candidate: Candidate) -> str:
        b = self.backend
        b.shadow.stop()
        await b.shadow.drain()  # the candidate engine then runs on the live thread only
        old = b.info.model_version if b.info else "?"
        b.sg, b.model_dir, b.info = self.sg, candidate.info.model_dir, candidate.info
        self.sg = None
        self.close()
        b.metrics.model_loaded(candidate.info.model_version, drift=candidate.info.drift)
        return f"promoted {candidate.info.model_version} (was {old}): it now answers every request"

    def close(self) -> None:
        """Drop the candidate engine and its thread."""
        self.sg = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


@dataclass
class Reply:
    """A response message, or the status to send instead (then ``message`` is an empty one)."""

    message: Any
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""


@dataclass
class ScoringService:
    """The SeqGuard rpcs over a :class:`Backend`: auth, limits, conversion, status codes, and
    one ``metrics.request`` per answered call; ScoreStream (:meth:`score_stream`) keeps its per-user
    state in ``store`` (:mod:`.sessions`)."""

    backend: Backend
    auth: Authenticator
    limits: Limits = field(default_factory=Limits)
    timeout_s: float | None = None   # server-side limit on one call; on a stream, on one batch (None: no limit)
    metrics: ServingMetrics = field(default_factory=NullMetrics)
    stream: StreamConfig = field(default_factory=StreamConfig)  # ScoreStream's window, state store and bounds
    store: SessionStore | None = None  # ScoreStream's state; None: opened from ``stream`` on the first stream
    _gate: StreamGate | None = field(default=None, init=False, repr=False)  # streams open, events pending
    _store_lock: asyncio.Lock | None = field(default=None, init=False, repr=False)

    async def call(self, rpc: str, request, metadata: Iterable[tuple[str, Any]] | None) -> Reply:
        reply = await self._reply(rpc, request, metadata)
        self.metrics.request(rpc, reply.code.name)
        return reply

    async def _reply(self, rpc: str, request, metadata: Iterable[tuple[str, Any]] | None) -> Reply:
        try:
            self.auth.check(metadata)
            if isinstance(request, UndecodableRequest):
                raise InvalidArgument(f"the request is not a valid {request.message_type} message ({request.reason})")
            check_size(request, self.limits)
            work = self._run(rpc, request)
            msg = await (asyncio.wait_for(work, self.timeout_s) if self.timeout_s else work)
            return Reply(msg)
        except BaseException as exc:  # noqa: BLE001 - every error becomes a status, never a trace
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            code, details = status_for(exc)
            return Reply(empty_response(rpc), code, details)

    # ---------------------------------------------------------------- ScoreStream
    async def score_stream(self, requests: AsyncIterable, metadata: Iterable[tuple[str, Any]] | None, *,
                           framed: bool = False) -> AsyncIterator[Reply]:
        """The ScoreStream rpc (``framed``: ScoreStreamFrames, StreamFrame messages in and
        StreamAnswerFrame messages out): a Reply per answer (per frame of the answers ready
        together), in the order the requests came; a call that ends in an error ends with one
        Reply carrying its status (answers sent before it stand). Auth is checked on the call's
        metadata before anything is read."""
        rpc = "ScoreStreamFrames" if framed else "ScoreStream"
        code, details = grpc.StatusCode.OK, ""
        opened = False
        try:
            self.auth.check(metadata)
            if self._gate is None:
                self._gate = StreamGate(self.stream.max_open_streams, self.stream.max_pending_events)
            self._gate.enter()
            opened = True
            store = await self._session_store()
            limits = self._limits()
            window = self.stream.window_for(_ask(self.backend, "encoder_window"), _ask(self.backend, "history_cap"))
            source = unframed(requests, self.stream.max_in_flight) if framed else requests
            async for answers in run_stream(source, backend=self.backend, store=store, config=self.stream,
                                            limits=limits, window=window, timeout_s=self.timeout_s,
                                            gate=self._gate):
                if framed:
                    yield Reply(answer_frame(answers))
                    continue
                for answer in answers:
                    yield Reply(answer)
        except BaseException as exc:  # noqa: BLE001 - every error becomes a status, never a trace
            if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):  # the client went away: nothing to send
                code = grpc.StatusCode.CANCELLED
                raise
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            code, details = status_for(exc)
            yield Reply(empty_response(rpc), code, details)
        finally:
            if opened:
                self._gate.leave()
            self.metrics.request(rpc, code.name)

    async def _session_store(self) -> SessionStore:
        if self.store is None:
            if self._store_lock is None:
                self._store_lock = asyncio.Lock()
            async with self._store_lock:
                if self.store is None:
                    self.store = await open_store(self.stream)
        return self.store

    async def aclose(self) -> None:
        """Close the stream state store (a Redis connection pool), if one was opened."""
        if self.store is not None:
            await self.store.close()

    def _limits(self) -> Limits:
        """The configured limits with the served bundle's history cap (a backend without one: as configured)."""
        cap = getattr(self.backend, "history_cap", None)
        return self.limits.capped(cap() if cap is not None else None)

    async def _run(self, rpc: str, request) -> Any:
        limits = self._limits()
        if rpc == "Score":
            batch = parse_score_request(request, limits)
            return score_responses(batch, await self.backend.score(batch))[0]
        if rpc == "ScoreBatch":
            batch = parse_batch_request(request, limits)
            return score_batch_response(batch, await self.backend.score(batch))
        if rpc == "Repair":
            batch = parse_score_request(request, limits)
            return repair_response(request, batch, await self.backend.repair(batch))
        if rpc == "ModelInfo":
            info = await self.backend.model_info()
            return model_info_response(info, self.limits.capped(info.max_events_per_user), self.stream.max_in_flight)
        if rpc == "Rollout":
            if not hasattr(self.backend, "rollout"):
                raise FailedPrecondition("this server does not hold rollouts")
            return rollout_response(await self.backend.rollout(parse_rollout_request(request)))
        raise InvalidArgument(f"unknown method {rpc}")


def _ask(backend, method: str) -> int | None:
    """``backend.<method>()`` where the backend has it (a test double may not)."""
    fn = getattr(backend, method, None)
    return None if fn is None else fn()
