"""Python client for the seqguard gRPC API, with bounded retries (``seqguard client`` is in
:mod:`seqguard_ray.cli.client_commands`).

    with SeqGuardClient("localhost:9000", token=os.environ["SEQGUARD_TOKEN"]) as c:
        r = c.score("u42", [{"item_id": "123", "ts": 1718000000, "action": "view"}])
        print(r.score, r.anomalous, r.anomaly_type, list(r.event_scores))

Every rpc is a read, so retrying is safe: UNAVAILABLE (replica restarting), RESOURCE_EXHAUSTED
(overload) and DEADLINE_EXCEEDED (per attempt) are retried with exponential backoff and jitter,
at most ``retries`` times, and so is the INTERNAL that Ray Serve's gRPC proxy answers when the
ingress replica it called died mid-call (a node or replica lost: see :func:`replica_lost`).
Other codes raise :class:`grpc.RpcError` at once. :class:`StreamSession` (``client.stream()``)
runs ScoreStream and resumes it after such errors without scoring an event twice.
"""

from __future__ import annotations

import logging
import queue
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import grpc

from .proto.seqguard.v1 import seqguard_pb2 as pb
from .proto.seqguard.v1 import seqguard_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED})

# Ray Serve's gRPC proxy answers INTERNAL with the text of a RayActorError when the replica it called
# died or became unreachable (ray/serve/_private/grpc_util.py, Ray 2.60); seqguard's own errors never
# start like this (the ingress maps every error it sees to a status with its own message).
_REPLICA_LOST = re.compile(r"The actor (?:\S+ )?(?:is unavailable|died|experienced an error)")


def replica_lost(code: grpc.StatusCode, details: str | None) -> bool:
    """True for the proxy's INTERNAL answer to a lost replica: as retryable as UNAVAILABLE."""
    return code == grpc.StatusCode.INTERNAL and bool(_REPLICA_LOST.match(details or ""))


class SeqGuardClient:
    """A blocking client. Thread-safe (one channel, shared by threads).

    Args:
        target: ``host:port`` of the server (Serve's gRPC proxy or the plain server).
        token: bearer token, sent as ``authorization: Bearer <token>``; None sends none.
        timeout_s: deadline of one attempt.
        retries: extra attempts on a retryable status (0 = no retry).
        backoff_s: first backoff; doubled each retry, with jitter, capped at ``max_backoff_s``.
        tls: use TLS (e.g. to an Envoy in front of Serve); ``root_certs`` (PEM bytes) to trust.
        application: Serve application name, needed only when several apps share the proxy.
        max_message_bytes: largest request or response this client sends or accepts.
    """

    def __init__(self, target: str, token: str | None = None, *, timeout_s: float = 10.0, retries: int = 4,
                 backoff_s: float = 0.2, max_backoff_s: float = 5.0, tls: bool = False, root_certs: bytes | None = None,
                 application: str | None = None, max_message_bytes: int = 64 * 1024 * 1024,
                 retry_on: Iterable[grpc.StatusCode] = RETRYABLE):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        opts = [("grpc.max_send_message_length", max_message_bytes), ("grpc.max_receive_message_length", max_message_bytes)]
        if tls:
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certs), options=opts)
        else:
            self._channel = grpc.insecure_channel(target, options=opts)
        self._stub = pb_grpc.SeqGuardStub(self._channel)
        md = []
        if token:
            md.append(("authorization", f"Bearer {token}"))
        if application:
            md.append(("application", application))
        self._metadata = tuple(md)
        self.timeout_s, self.retries, self.backoff_s, self.max_backoff_s = timeout_s, retries, backoff_s, max_backoff_s
        self.retry_on = frozenset(retry_on)
        self.attempts = 0  # total attempts made (for tests and metrics)
        self.retried = 0   # attempts that were retries (attempts - retried = calls made)

    def _call(self, rpc: str, request):
        method = getattr(self._stub, rpc)
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                return method(request, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as exc:
                if not self._retryable(exc) or attempt == self.retries:
                    raise
                log.info("%s: %s (%s); retry %d/%d in %.2fs", rpc, exc.code().name, exc.details(), attempt + 1,
                         self.retries, delay)
                self.retried += 1
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    def _retryable(self, exc: grpc.RpcError) -> bool:
        code = exc.code()
        return code in self.retry_on or (grpc.StatusCode.UNAVAILABLE in self.retry_on
                                         and replica_lost(code, exc.details()))

    # ---------------------------------------------------------------- rpcs
    def score(self, user_id: str, events: Sequence[dict] | Sequence[pb.Event]) -> pb.ScoreResponse:
        """Score one sequence. ``events``: dicts with item_id, ts[, action, value] or Event messages."""
        return self._call("Score", _request(user_id, events))

    def score_batch(self, requests: Sequence[pb.ScoreRequest]) -> pb.ScoreBatchResponse:
        return self._call("ScoreBatch", pb.ScoreBatchRequest(requests=requests))

    def score_frame(self, df) -> pb.ScoreBatchResponse:
        """Score every user of a frame (user_id, item_id, ts[, action, value]) in one call."""
        from .runtime.serve.convert import requests_from_frame

        return self.score_batch(requests_from_frame(df))

    def repair(self, user_id: str, events: Sequence[dict] | Sequence[pb.Event]) -> pb.RepairResponse:
        return self._call("Repair", _request(user_id, events))

    def model_info(self) -> pb.ModelInfoResponse:
        return self._call("ModelInfo", pb.ModelInfoRequest())

    def rollout(self, action: str = "status", *, candidate_dir: str = "", share: float = 0.0, force: bool = False,
                max_flag_ratio: float | None = None, min_users: int | None = None) -> pb.RolloutStatus:
        """The Rollout rpc: ``action`` status | start | promote | abort (docs/serving.md, "Shadow rollout").
        A promotion the guard blocks raises ``grpc.RpcError`` FAILED_PRECONDITION, naming why."""
        req = pb.RolloutRequest(action=pb.RolloutAction.Value(f"ROLLOUT_ACTION_{action.upper()}"),
                                candidate_dir=candidate_dir, share=share, force=force)
        if max_flag_ratio is not None:
            req.max_flag_ratio = max_flag_ratio
        if min_users is not None:
            req.min_users = min_users
        return self._call("Rollout", req)

    def stream(self, stream_id: str | None = None, *, max_unacked: int = 64, frame: int | None = None) -> StreamSession:
        """A :class:`StreamSession` (ScoreStream, or ScoreStreamFrames: see its ``frame``) on this
        client's channel, token and retries."""
        return StreamSession(self, stream_id, max_unacked=max_unacked, frame=frame)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SeqGuardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StreamSession:
    """One logical ScoreStream: events of many users in, one answer per message out, in order.

        with SeqGuardClient(target, token) as c:
            s = c.stream()
            for a in s.run([("u1", {"item_id": "9", "ts": 1718000000}), ("u2", ev), ("u1", None)]):
                print(a.seq, a.user_id, a.user_score, a.action)   # ("u1", None): delete u1's state

    Messages are numbered ``seq`` 1, 2, ...; the ones not yet answered are kept (at most
    ``max_unacked``: sending waits beyond that). ``frame``: the most messages sent in one gRPC
    message (ScoreStreamFrames; 1: ScoreStream, one each). A frame holds what the source has
    ready, never waiting for more: a background thread reads the source, and each frame takes
    the first message it has and whatever else it holds then. None (default): up to FRAME, or the
    server's ModelInfo max_stream_frame if lower (1 against a server without frames). On a retryable error (the client's ``retry_on``
    codes, and a lost Serve replica) it reconnects with the same ``stream_id`` and ``resume`` set
    and sends the unanswered ones again; the server answers an already applied seq from its record,
    so no event is scored twice and none is lost. Each message's answer is yielded once. The
    client's ``retries`` bound the reconnects in a row without an answer in between.
    ``state_reset`` turns true when the server's ``state_epoch`` changes (its state was lost);
    answers with ``state == STREAM_STATE_LOST`` say which users were affected.
    """

    FRAME = 32  # most messages in a frame by default

    def __init__(self, client: SeqGuardClient, stream_id: str | None = None, *, max_unacked: int = 64,
                 frame: int | None = None):
        if max_unacked < 1:
            raise ValueError(f"max_unacked must be >= 1, got {max_unacked}")
        if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 1):
            raise ValueError(f"frame must be a positive integer or None, got {frame!r}")
        self.frame = frame
        self.client = client
        self.stream_id = stream_id or uuid.uuid4().hex
        self.max_unacked = max_unacked
        self.next_seq = 1
        self.delivered = 0        # highest seq whose answer was yielded
        self.reconnects = 0
        self.epoch: str | None = None
        self.state_reset = False
        self._unacked: OrderedDict[int, pb.StreamRequest] = OrderedDict()
        self._cv = threading.Condition()
        self._call_no = 0
        self._stash: list = []    # an item pulled from the source by a call that ended meanwhile
        # one puller of the source at a time, from the pull until the item is numbered or stashed:
        # a call that ended mid-pull stashes its item before the next call pulls, so order holds
        self._pull = threading.Lock()

    def _message(self, user_id: str, event) -> pb.StreamRequest:
        from .runtime.serve.convert import events_to_proto

        m = pb.StreamRequest(seq=self.next_seq, user_id=str(user_id), stream_id=self.stream_id)
        if event is None:
            m.delete_user = True
        else:
            m.event.CopyFrom(event if isinstance(event, pb.Event) else events_to_proto([event])[0])
        self.next_seq += 1
        return m

    def _requests(self, source: Iterator, call_no: int, state: dict) -> Iterator[pb.StreamRequest]:
        with self._cv:
            resend = list(self._unacked.values())
        for i, m in enumerate(resend):
            if i == 0 and call_no > 1:
                m = pb.StreamRequest.FromString(m.SerializeToString())
                m.resume = True
            yield m
        first = not resend
        while True:
            with self._cv:
                while len(self._unacked) >= self.max_unacked and self._call_no == call_no:
                    self._cv.wait(0.5)
                if self._call_no != call_no:
                    return  # a newer call took over, or run() ended
            with self._pull:
                with self._cv:
                    if self._call_no != call_no:
                        return
                    item = self._stash.pop() if self._stash else None
                try:
                    if item is None:  # outside the condition: a live source may block here while answers come in
                        item = next(source)
                    with self._cv:
                        if self._call_no != call_no:  # pulled for a call that ended: the next call sends it
                            self._stash.append(item)
                            return
                        m = self._message(*item)
                        self._unacked[m.seq] = m
                except StopIteration:
                    state["exhausted"] = True
                    return
                except Exception as exc:  # noqa: BLE001 - the source's (or a bad item's): run() raises it
                    state["error"] = exc  # once the answers to what was sent are in
                    return
            if first and call_no > 1:
                m = pb.StreamRequest.FromString(m.SerializeToString())
                m.resume = True
            first = False
            yield m

    def _frame_size(self) -> int:
        if self.frame is None:
            most = self.client.model_info().max_stream_frame  # 0: a server without ScoreStreamFrames
            self.frame = min(self.FRAME, most) if most > 0 else 1
        return self.frame

    def _frames(self, source: Iterator, call_no: int, state: dict, frame: int) -> Iterator[pb.StreamFrame]:
        """:meth:`_requests` in frames of at most ``frame``: what a reader thread has ready."""
        ready: queue.Queue = queue.Queue()

        def read():
            try:
                for m in self._requests(source, call_no, state):
                    ready.put(m)
            except BaseException as exc:  # noqa: BLE001 - raised in the frame generator, as without frames
                ready.put(_Raised(exc))
            ready.put(_DONE)

        threading.Thread(target=read, name=f"stream-{self.stream_id[:8]}-{call_no}", daemon=True).start()
        while True:
            batch = [ready.get()]
            while len(batch) < frame and isinstance(batch[-1], pb.StreamRequest):
                try:
                    batch.append(ready.get_nowait())
                except queue.Empty:
                    break
            msgs = [m for m in batch if isinstance(m, pb.StreamRequest)]
            if msgs:
                yield pb.StreamFrame(requests=msgs)
            if isinstance(batch[-1], _Raised):
                raise batch[-1].exc
            if batch[-1] is _DONE:
                return

    def _answers(self, source: Iterator, call_no: int, state: dict) -> Iterator[pb.StreamAnswer]:
        """One call's answers: ScoreStreamFrames' flattened, or ScoreStream's."""
        frame, stub, meta = self._frame_size(), self.client._stub, self.client._metadata
        if frame == 1:
            yield from stub.ScoreStream(self._requests(source, call_no, state), metadata=meta)
            return
        for f in stub.ScoreStreamFrames(self._frames(source, call_no, state, frame), metadata=meta):
            yield from f.answers

    def run(self, messages: Iterable[tuple[str, dict | pb.Event | None]]) -> Iterator[pb.StreamAnswer]:
        """Send ``(user_id, event)`` pairs (``event=None``: delete the user's state) and yield each
        message's answer, in order. Raises :class:`grpc.RpcError` on a non-retryable status, or
        when ``retries`` reconnects in a row got no answer; an exception of ``messages`` (or a
        message it gave that cannot be sent) is raised after the answers to the messages before it."""
        source = iter(messages)
        state = {"exhausted": False}
        delay, failures = self.client.backoff_s, 0
        try:
            while True:
                with self._cv:
                    self._call_no += 1
                    call_no = self._call_no
                self.client.attempts += 1
                try:
                    for a in self._answers(source, call_no, state):
                        failures, delay = 0, self.client.backoff_s
                        with self._cv:
                            self._unacked.pop(a.seq, None)
                            self._cv.notify_all()
                        if a.state_epoch:
                            if self.epoch is not None and a.state_epoch != self.epoch:
                                self.state_reset = True
                            self.epoch = a.state_epoch
                        if a.seq > self.delivered:
                            self.delivered = a.seq
                            yield a
                    if state.get("error") is not None:
                        raise state["error"]
                    if state["exhausted"] and not self._unacked and not self._stash:
                        return
                    err = None  # the server ended the call early: go on in a new one
                except grpc.RpcError as exc:
                    if not self.client._retryable(exc):
                        raise
                    err = exc
                failures += 1
                if failures > self.client.retries:
                    if err is not None:
                        raise err
                    raise RuntimeError(f"stream {self.stream_id}: the server ended {failures} calls in a row "
                                       "without answering")
                self.reconnects += 1
                self.client.retried += 1
                log.info("stream %s: %s; resuming (%d unanswered) in %.2fs", self.stream_id,
                         err.code().name if err is not None else "ended early", len(self._unacked), delay)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.client.max_backoff_s)
        finally:  # the reader of the last call (frames) stops pulling the source
            with self._cv:
                self._call_no += 1
                self._cv.notify_all()


_DONE = object()


class _Raised:
    """An exception of the source, carried from the reader thread to the frame generator."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _request(user_id: str, events) -> pb.ScoreRequest:
    from .runtime.serve.convert import events_to_proto

    evs = list(events)
    if evs and not isinstance(evs[0], pb.Event):
        evs = events_to_proto(evs)
    return pb.ScoreRequest(user_id=str(user_id), events=evs)
