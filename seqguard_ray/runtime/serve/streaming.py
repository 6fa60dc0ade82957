"""ScoreStream: many users' events on one stream, each scored against its user's recent window held
in a :class:`~seqguard_ray.runtime.serve.sessions.SessionStore`. Transport-free: both front ends
call :meth:`ScoringService.score_stream <seqguard_ray.runtime.serve.service.ScoringService.score_stream>`, which
runs :func:`run_stream`.

An event's answer is the Repair of the user's window ending with it: the user's last ``window``
events as sent (oldest dropped first), scored as one ScoreRequest of those events would be, so its
cost does not grow with the user's history. Per call:

1. a reader task takes messages off the stream into a queue; each one read holds a permit of the
   stream's own ``max_in_flight`` and of the server's :class:`StreamGate` (``max_pending_events``
   over all streams) until its answer is sent. Without a permit reading stops, and the transport's
   flow control holds the client back; a new stream when the server is already over its pending
   limit is refused with RESOURCE_EXHAUSTED, as Serve refuses a unary call over its queue;
2. what has arrived (up to ``max_batch`` messages) is one batch: its users' state is loaded, each
   event gets its own window (events of one user in a batch see the earlier ones), and all windows
   go through the backend's repair path as ONE batch (merged with unary traffic by the batcher);
3. the users' new windows and the stream's record (last seq, the answers) are committed in one
   write, and only then are the answers sent, in the order received: an answer acknowledges a seq
   whose effect is stored. A resent seq at or below the last applied one is answered from the
   record (``replayed``), not scored again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from .batches import SeqBatch
from .convert import (
    StreamMessage,
    parse_stream_message,
    parse_window,
    replayed_answer,
    stream_answer,
    stream_note,
)
from .errors import InvalidArgument, ResourceExhausted, Unavailable
from .limits import Limits
from .sessions import (
    Conflict,
    Loaded,
    SessionStore,
    StreamConfig,
    StreamRecord,
    UserWindow,
)

log = logging.getLogger(__name__)

_END = object()
COMMIT_TRIES = 5   # optimistic commits tried before a batch gives up (UNAVAILABLE: the client resumes)


@dataclass
class _Failed:
    exc: BaseException


@dataclass
class _Call:
    """What one call of a stream knows: its id, whether it resumed a stream the store had lost."""

    stream_id: str = ""
    first: bool = True
    lost: bool = False
    lost_users: set[str] = field(default_factory=set)


class StreamGate:
    """The server-wide bounds of ScoreStream, shared by all streams of one server (one Serve ingress
    replica): streams open at once, and events read off them whose answers are not sent yet."""

    def __init__(self, max_open_streams: int, max_pending_events: int):
        self.max_open_streams, self.max_pending_events = max_open_streams, max_pending_events
        self.open = 0       # streams open now
        self.pending = 0    # events read off streams and not answered yet
        self._waiters: list[asyncio.Future] = []

    def enter(self) -> None:
        """Count a new stream in, or refuse it (RESOURCE_EXHAUSTED) when the server is full."""
        if self.open >= self.max_open_streams:
            raise ResourceExhausted(f"{self.open} streams are open, the most this server takes: retry with backoff")
        if self.pending >= self.max_pending_events:
            raise ResourceExhausted(f"server overloaded: {self.pending} stream events are pending, the most this "
                                    "server holds: retry with backoff")
        self.open += 1

    def leave(self) -> None:
        self.open -= 1

    async def acquire(self) -> None:
        """One pending event's permit; waits while the server holds ``max_pending_events``."""
        while self.pending >= self.max_pending_events:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                self._waiters.remove(fut)
        self.pending += 1

    def release(self, n: int) -> None:
        """Give back ``n`` permits (synchronous: safe in a closing generator's ``finally``)."""
        self.pending -= n
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)


async def _read(requests: AsyncIterable, queue: asyncio.Queue, own: asyncio.Semaphore, gate: StreamGate) -> None:
    """Messages of ``requests`` into ``queue``, each holding a permit of ``own`` (the stream's
    ``max_in_flight``) and of ``gate`` (the server's) until it is answered."""
    try:
        async for m in requests:
            await own.acquire()
            await gate.acquire()
            await queue.put(m)
        await queue.put(_END)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - handed to the processing loop
        await queue.put(_Failed(exc))


async def run_stream(requests: AsyncIterable, *, backend, store: SessionStore, config: StreamConfig,
                     limits: Limits, window: int, timeout_s: float | None = None,
                     gate: StreamGate | None = None) -> AsyncIterator[list]:
    """Answers (StreamAnswer messages) to ``requests`` (StreamRequest messages), in their order: a
    list per batch, the answers sent together.
    Raises a ServingError (or a backend's error) that ends the call; answers sent before it stand.
    ``gate``: the server's bounds, shared with its other streams (None: this stream's own)."""
    gate = gate or StreamGate(1, config.max_in_flight)
    own = asyncio.Semaphore(config.max_in_flight)
    queue: asyncio.Queue = asyncio.Queue()  # bounded by the permits
    reader = asyncio.get_running_loop().create_task(_read(requests, queue, own, gate))
    call = _Call()
    held = 0  # permits of messages taken off the queue and not answered yet
    try:
        done = False
        while not done:
            raw = [await queue.get()]
            while len(raw) < config.max_batch and not queue.empty():
                raw.append(queue.get_nowait())
            last = raw[-1]
            if last is _END or isinstance(last, _Failed):
                raw.pop()
                done = True
            held += len(raw)
            if isinstance(last, _Failed):
                raise last.exc
            if not raw:
                break
            msgs = [parse_stream_message(m, limits) for m in raw]
            _check_stream_ids(call, msgs)
            work = _apply(call, msgs, backend=backend, store=store, config=config, limits=limits, window=window)
            yield await (asyncio.wait_for(work, timeout_s) if timeout_s else work)
            held -= len(raw)
            for _ in raw:
                own.release()
            gate.release(len(raw))
    finally:
        reader.cancel()
        # permits of messages read but never answered (the call ended): back to the server
        queued = sum(1 for m in _drain(queue) if not (m is _END or isinstance(m, _Failed)))
        gate.release(held + queued)


async def unframed(frames: AsyncIterable, max_frame: int) -> AsyncIterator:
    """The StreamRequest messages of ScoreStreamFrames' StreamFrame messages, in order. A frame
    must hold 1 to ``max_frame`` requests (the stream's ``max_in_flight``): else INVALID_ARGUMENT."""
    async for frame in frames:
        n = len(frame.requests)
        if not 1 <= n <= max_frame:
            raise InvalidArgument(f"a StreamFrame holds {n} requests: it must hold 1 to {max_frame} "
                                  "(ModelInfo's max_stream_frame)")
        for m in frame.requests:
            yield m


def _drain(queue: asyncio.Queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def _check_stream_ids(call: _Call, msgs: list[StreamMessage]) -> None:
    for m in msgs:
        if not call.stream_id:
            if not m.stream_id:
                raise InvalidArgument(f"seq {m.seq}: stream_id is empty on the first message of the call: "
                                      "name the stream (resuming = a new call with the same stream_id)")
            call.stream_id = m.stream_id
        elif m.stream_id and m.stream_id != call.stream_id:
            raise InvalidArgument(f"seq {m.seq}: stream_id {m.stream_id!r} differs from this call's {call.stream_id!r}")


@dataclass
class _Planned:
    """One message's fate in a batch: an answer already made, a window to score, or the same seq
    earlier in the batch (``echo``: answered like it, as a replay)."""

    msg: StreamMessage
    answer: object = None        # a StreamAnswer, once known
    window: SeqBatch | None = None
    state: str = ""              # new | continued | lost, for a scored event
    echo: _Planned | None = None


async def _apply(call: _Call, msgs: list[StreamMessage], *, backend, store: SessionStore, config: StreamConfig,
                 limits: Limits, window: int) -> list:
    users = list(OrderedDict.fromkeys(m.user_id for m in msgs if not m.error))
    win_limits = limits if limits.max_events_per_sequence >= window else Limits(
        window, limits.max_sequences_per_batch, limits.max_message_bytes)
    for _ in range(COMMIT_TRIES):
        loaded = await store.load(call.stream_id, users)
        lost = call.lost
        if call.first:  # a resumed stream the store holds no record of: its users' earlier events are gone
            lost = msgs[0].resume and loaded.stream is None
        plan, record, changed, lost_users = _plan(call, lost, msgs, loaded, store.epoch, config, win_limits, window)
        scored = [p for p in plan if p.window is not None]
        if scored:
            merged, _ = SeqBatch.concat([p.window for p in scored])
            parts = (await backend.repair(merged)).split(np.arange(len(scored) + 1))
            for p, rb in zip(scored, parts):
                p.answer = stream_answer(p.msg, rb, p.state, store.epoch)
        for p in plan:
            if p.echo is not None:
                p.answer = replayed_answer(p.echo.answer.SerializeToString())
            elif not p.answer.replayed:
                record.add(p.msg.seq, p.answer.SerializeToString(), config.answers_kept)
        try:
            await store.commit(call.stream_id, loaded, record, changed)
        except Conflict:
            log.info("stream %r: state changed under a batch; scoring it again", call.stream_id)
            continue
        if call.first and lost:
            log.warning("stream %r resumed but no record of it is held: its users' earlier state is lost",
                        call.stream_id)
        call.first, call.lost, call.lost_users = False, lost, lost_users
        return [p.answer for p in plan]
    raise Unavailable("these users' state kept changing under this stream (other streams update them): retry")


def _plan(call: _Call, lost: bool, msgs: list[StreamMessage], loaded: Loaded, epoch: str, config: StreamConfig,
          limits: Limits, window: int):
    """Each message's fate against ``loaded``: replayed, refused (error), deleted, or a window to
    score. Returns (plan, the stream's new record, the users' new windows (None: deleted), the
    users answered LOST in this call)."""
    rec = loaded.stream
    record = StreamRecord() if rec is None else StreamRecord(rec.last_seq, OrderedDict(rec.answers), rec.version)
    windows: dict[str, UserWindow | None] = dict(loaded.users)
    changed: dict[str, UserWindow | None] = {}
    lost_users = set(call.lost_users)
    in_batch: dict[int, _Planned] = {}
    plan = []
    for m in msgs:
        p = _Planned(m)
        plan.append(p)
        if m.seq in in_batch:  # sent twice in one batch: answered like the first, as a replay
            p.echo = in_batch[m.seq]
            continue
        if m.seq <= record.last_seq:
            if m.seq in record.answers:
                p.answer = replayed_answer(record.answers[m.seq])
            else:
                p.answer = stream_note(m, epoch, error=(
                    f"seq {m.seq} is not above the stream's last applied seq {record.last_seq} and no answer is "
                    f"kept for it (the last {config.answers_kept} are): it was applied long ago, or sent out of order"))
                p.answer.replayed = True
            continue
        in_batch[m.seq] = p
        record.last_seq = m.seq
        if m.error:
            p.answer = stream_note(m, epoch, error=m.error)
            continue
        if m.delete:
            windows[m.user_id] = changed[m.user_id] = None
            lost_users.discard(m.user_id)
            p.answer = stream_note(m, epoch, deleted=True)
            continue
        w = windows.get(m.user_id)
        if m.user_id in lost_users:
            state = "lost"
        elif w is not None and len(w):
            state = "continued"
        else:
            state = "lost" if lost else "new"
        base = w if w is not None else UserWindow(version=_version(loaded, m.user_id))
        nxt = base.appended(m.item, m.ts, m.action, m.value, window)
        try:
            p.window = parse_window(m.user_id, nxt.item, nxt.ts, nxt.action, nxt.value, limits)
        except InvalidArgument as exc:
            p.answer = stream_note(m, epoch, error=str(exc))
            continue
        p.state = state
        if state == "lost":
            lost_users.add(m.user_id)
        windows[m.user_id] = changed[m.user_id] = nxt
    return plan, record, changed, lost_users


def _version(loaded: Loaded, user: str) -> int:
    w = loaded.users.get(user)
    return 0 if w is None else w.version
