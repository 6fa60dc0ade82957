"""Online scoring, framework-free: limits and validation, proto <-> domain conversion, the three
pipeline stages, errors -> gRPC status codes, and the bearer-token check.

Both front ends use this module and nothing else for these concerns: the plain ``grpc.aio`` server
(:mod:`seqguard_ray.runtime.grpc_server`) and the Ray Serve application (``deployments/``). Protobuf types
stop here: everything past :func:`parse_score_request` is numpy.

Scores are in [0, 1]; higher means more anomalous.

The unit of work is a :class:`SeqBatch`: many sequences as flat columns cut by ``offsets``, so
concurrent requests are merged into one engine call (the engine is vectorised over users) and
each stage hop carries arrays, not per-request objects.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from ..core.events import (
    DEFAULT_ACTION,
    MAX_ABS_VALUE,
    MAX_ID_LENGTH,
    MAX_TS_SECONDS,
    EventLog,
    EventsError,
    to_seconds,
    value_out_of_range,
)
from ..proto.seqguard.v1 import seqguard_pb2 as pb

log = logging.getLogger(__name__)

TOKEN_ENV = "SEQGUARD_TOKEN"
MAX_ACTION_LENGTH = 64
# Width of the internal per-sequence ids (they sort as strings in batch order).
_ID_WIDTH = 9


# --------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """Request limits; all configurable (``seqguard serve --max-...``, app builder args)."""

    max_events_per_sequence: int = 10_000     # events in one ScoreRequest
    max_sequences_per_batch: int = 1_000      # ScoreRequests in one ScoreBatchRequest
    max_message_bytes: int = 16 * 1024 * 1024  # serialized request size (also set on the gRPC server)

    def __post_init__(self) -> None:
        for name in ("max_events_per_sequence", "max_sequences_per_batch", "max_message_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.max_message_bytes > 2**31 - 1:
            raise ValueError(f"max_message_bytes must be < 2 GiB, got {self.max_message_bytes}")

    @classmethod
    def from_dict(cls, d: dict | None) -> Limits:
        d = dict(d or {})
        known = {"max_events_per_sequence", "max_sequences_per_batch", "max_message_bytes"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


# --------------------------------------------------------------------------- errors
class ServingError(Exception):
    """An error with a gRPC status code; its message is safe to show to the client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


# Ray exceptions, by class name so this module does not import Ray.
_RAY_UNAVAILABLE = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "DeploymentUnavailableError",
                    "ActorUnschedulableError", "RaySystemError", "ObjectLostError", "OwnerDiedError"}
_RAY_OVERLOAD = {"BackPressureError"}
_RAY_TIMEOUT = {"GetTimeoutError", "RequestTimeoutError"}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place errors become gRPC status codes. Never returns a stack trace."""
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, ServingError):
        return exc.code, str(exc)
    if isinstance(exc, EventsError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if "BundleError" in names:
        log.error("model bundle error: %s", exc)
        return grpc.StatusCode.UNAVAILABLE, "the model bundle cannot be loaded on the server"
    if names & _RAY_OVERLOAD:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded: retry with backoff"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or names & _RAY_TIMEOUT:
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the request did not finish in time"
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the request was cancelled"
    if names & _RAY_UNAVAILABLE:
        log.warning("a serving replica failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return grpc.StatusCode.UNAVAILABLE, "a serving replica is unavailable or restarting: retry"
    # Ray wraps the real failure: RayTaskError.cause, or `raise ... from` (e.g. an upstream replica died)
    for cause in (getattr(exc, "cause", None), exc.__cause__):
        if isinstance(cause, BaseException) and cause is not exc:
            return status_for(cause)
    ref = uuid.uuid4().hex[:12]
    log.error("internal error %s", ref, exc_info=(type(exc), exc, exc.__traceback__))
    return grpc.StatusCode.INTERNAL, f"internal error (reference {ref}); the server log has the details"


# --------------------------------------------------------------------------- auth
def token_digest(token: str) -> str:
    """sha256 hex of a token: servers keep this, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_token(token_file: str | Path | None = None, env: dict | None = None) -> str | None:
    """The server token: from ``token_file`` if given, else ``$SEQGUARD_TOKEN``; None if neither."""
    if token_file:
        p = Path(token_file)
        if not p.is_file():
            raise ValueError(f"--token-file {p} does not exist")
        tok = p.read_text().strip()
        if not tok:
            raise ValueError(f"--token-file {p} is empty")
        return tok
    tok = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
    return tok or None


class Authenticator:
    """Checks ``authorization: Bearer <token>`` call metadata in constant time.

    ``token_sha256=None`` turns auth off (only with ``--insecure-no-auth``).
    """

    def __init__(self, token_sha256: str | None):
        if token_sha256 is not None and (len(token_sha256) != 64 or any(c not in "0123456789abcdef" for c in token_sha256)):
            raise ValueError("token_sha256 must be 64 lowercase hex characters (see serving.token_digest)")
        self._digest = bytes.fromhex(token_sha256) if token_sha256 else None

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, metadata: Iterable[tuple[str, Any]] | None) -> None:
        if self._digest is None:
            return
        presented = None
        for key, value in metadata or ():
            if key.lower() == "authorization":
                presented = value.decode() if isinstance(value, bytes) else str(value)
                break
        if presented is None:
            raise Unauthenticated("missing `authorization: Bearer <token>` call metadata")
        scheme, _, token = presented.partition(" ")
        # compare fixed-length digests: the time taken does not depend on the token's content
        ok = hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), self._digest)
        if scheme.lower() != "bearer" or not ok:
            raise Unauthenticated("invalid bearer token")


# --------------------------------------------------------------------------- domain batch
@dataclass
class SeqBatch:
    """Validated sequences as flat columns, in the order they were sent.

    Sequence ``r`` owns rows ``offsets[r]:offsets[r+1]``.
    """

    user_ids: list[str]    # (R,) the callers' user ids (echoed back, not used for scoring)
    offsets: np.ndarray    # (R + 1,) int64
    item: np.ndarray       # (N,) object str
    ts: np.ndarray         # (N,) float64 seconds
    action: np.ndarray     # (N,) object str
    value: np.ndarray      # (N,) float64, NaN where unset

    @property
    def n_seqs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.ts)

    @staticmethod
    def concat(batches: Sequence[SeqBatch]) -> tuple[SeqBatch, np.ndarray]:
        """One batch of all sequences, and the sequence bounds (len(batches) + 1,) of each part."""
        if len(batches) == 1:
            return batches[0], np.array([0, batches[0].n_seqs])
        counts = np.concatenate([np.diff(b.offsets) for b in batches])
        bounds = np.r_[0, np.cumsum([b.n_seqs for b in batches])]
        return SeqBatch(
            [u for b in batches for u in b.user_ids], np.r_[0, np.cumsum(counts)].astype(np.int64),
            np.concatenate([b.item for b in batches]), np.concatenate([b.ts for b in batches]),
            np.concatenate([b.action for b in batches]), np.concatenate([b.value for b in batches]),
        ), bounds

    def to_log(self) -> EventLog:
        """The engine's input, straight from these validated columns (no second validation pass):
        each sequence sorted by time, ties kept in the order sent. ``frame`` holds only ``_row``,
        the position in this batch of each sorted event. User ids are internal per-sequence numbers."""
        import pandas as pd

        seq = np.repeat(np.arange(self.n_seqs), np.diff(self.offsets))
        order = np.lexsort((np.arange(self.n_events), self.ts, seq))
        ids = np.array([f"{r:0{_ID_WIDTH}d}" for r in range(self.n_seqs)], dtype=object)
        return EventLog(pd.DataFrame({"_row": order}), ids[seq], self.item[order], self.ts[order],
                        self.action[order], self.value[order], self.offsets.copy())


def parse_score_request(req: pb.ScoreRequest, limits: Limits, where: str = "") -> SeqBatch:
    """Validate one ScoreRequest; errors name the field (``events[3].item_id``) and the bad value."""
    evs = req.events
    n = len(evs)
    if not req.user_id:
        raise InvalidArgument(f"{where}user_id is empty")
    if len(req.user_id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{where}user_id is longer than {MAX_ID_LENGTH} characters")
    if n == 0:
        raise InvalidArgument(f"{where}events is empty: send at least one event")
    if n > limits.max_events_per_sequence:
        raise InvalidArgument(f"{where}events has {n} events, over the limit of {limits.max_events_per_sequence} per sequence")
    item = np.array([e.item_id for e in evs], dtype=object)
    ts_raw = np.fromiter((e.ts for e in evs), dtype=np.int64, count=n)
    action = np.array([e.action or DEFAULT_ACTION for e in evs], dtype=object)
    value = np.fromiter((e.value if e.HasField("value") else np.nan for e in evs), dtype=np.float64, count=n)

    def fail(i: int, msg: str):
        raise InvalidArgument(f"{where}events[{i}].{msg}")

    item_len = np.fromiter((len(s) for s in item), dtype=np.int64, count=n)
    if (item_len == 0).any():
        fail(int(np.argmax(item_len == 0)), "item_id is empty (missing)")
    if (item_len > MAX_ID_LENGTH).any():
        fail(int(np.argmax(item_len > MAX_ID_LENGTH)), f"item_id is longer than {MAX_ID_LENGTH} characters")
    if (ts_raw <= 0).any():
        i = int(np.argmax(ts_raw <= 0))
        fail(i, f"ts = {ts_raw[i]} is missing or not positive: send Unix time in seconds or milliseconds")
    # the batch path's unit rule, applied per sequence (milliseconds when most values are above 1e11)
    ts, other_unit = to_seconds(ts_raw)
    if other_unit.any():
        i = int(np.argmax(other_unit))
        fail(i, f"ts = {ts_raw[i]} looks like seconds while the other events are in milliseconds: use one unit")
    if (ts > MAX_TS_SECONDS).any():
        i = int(np.argmax(ts > MAX_TS_SECONDS))
        fail(i, f"ts = {ts_raw[i]} is out of range (after the year 2100)")
    if np.isinf(value).any():
        fail(int(np.argmax(np.isinf(value))), "value is infinite")
    too_large = value_out_of_range(value)
    if too_large.any():
        i = int(np.argmax(too_large))
        fail(i, f"value = {value[i]:g} is out of range (|value| > {MAX_ABS_VALUE:g})")
    if max((len(a) for a in action), default=0) > MAX_ACTION_LENGTH:
        fail(next(i for i, a in enumerate(action) if len(a) > MAX_ACTION_LENGTH), f"action is longer than {MAX_ACTION_LENGTH} characters")
    return SeqBatch([req.user_id], np.array([0, n], np.int64), item, ts, action, value)


def parse_batch_request(req: pb.ScoreBatchRequest, limits: Limits) -> SeqBatch:
    n = len(req.requests)
    if n == 0:
        raise InvalidArgument("requests is empty: send at least one ScoreRequest")
    if n > limits.max_sequences_per_batch:
        raise InvalidArgument(f"requests has {n} sequences, over the limit of {limits.max_sequences_per_batch} per batch")
    return SeqBatch.concat([parse_score_request(r, limits, f"requests[{i}].") for i, r in enumerate(req.requests)])[0]


@dataclass(frozen=True)
class UndecodableRequest:
    """Handed to the service in place of a request whose bytes are not the expected message."""

    message_type: str
    reason: str


def lenient_deserializer(message_cls) -> Callable[[bytes], Any]:
    """``message_cls.FromString``, but bytes that do not parse become an :class:`UndecodableRequest`
    (answered INVALID_ARGUMENT) instead of an exception inside grpc (answered UNKNOWN)."""
    from google.protobuf.message import DecodeError

    def parse(data: bytes):
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return UndecodableRequest(message_cls.DESCRIPTOR.full_name, str(exc).split(": ")[-1])
    return parse


def check_size(req, limits: Limits) -> None:
    size = req.ByteSize()
    if size > limits.max_message_bytes:
        raise ResourceExhausted(f"request is {size} bytes, over the limit of {limits.max_message_bytes}")


# --------------------------------------------------------------------------- stages
@dataclass
class EncodedBatch:
    """Encoder stage output: the engine's Encoded plus what later stages need to map back."""

    encoded: Any               # engine.Encoded (sorted by sequence, then time)
    order: np.ndarray          # (N,) sorted event position -> row in the SeqBatch
    model_version: str
    model_dir: str

    def split(self, bounds: np.ndarray) -> list[EncodedBatch]:
        """Per-part views for sequence bounds (P + 1,) (the parts were concatenated in order)."""
        from ..core.pipeline import Encoded
        from ..core.features import Seqs

        if len(bounds) == 2:
            return [self]
        s, off = self.encoded.seqs, self.encoded.seqs.offsets
        out = []
        for r0, r1 in zip(bounds[:-1], bounds[1:]):
            e0, e1 = off[r0], off[r1]
            seqs = Seqs(off[r0:r1 + 1] - e0, s.ts[e0:e1], s.item[e0:e1], s.action[e0:e1], s.value[e0:e1], s.surprisal[e0:e1],
                        None if s.key is None else s.key[e0:e1])
            out.append(EncodedBatch(Encoded(seqs, self.encoded.user_emb[r0:r1]), self.order[e0:e1] - e0,
                                    self.model_version, self.model_dir))
        return out


@dataclass
class ScoredBatch:
    """Detector stage output for R sequences; event arrays in sorted order (see ``order``)."""

    offsets: np.ndarray          # (R + 1,)
    order: np.ndarray            # (N,) sorted position -> input row
    score: np.ndarray            # (R,) in [0, 1], higher = more anomalous
    anomalous: np.ndarray        # (R,) bool
    anomaly_type: np.ndarray     # (R,) str
    reasons: list[list[str]]     # (R,)
    event_score: np.ndarray      # (N,) in [0, 1]
    event_anomalous: np.ndarray  # (N,) bool
    detector_scores: np.ndarray  # (R, D)
    length_doubt: np.ndarray     # (R,) bool, see Scored.length_doubt
    detector_names: tuple[str, ...]
    threshold: float
    model_version: str
    model_dir: str

    def input_order(self) -> np.ndarray:
        """(N,) for each input row, its sorted position."""
        inv = np.empty(len(self.order), np.int64)
        inv[self.order] = np.arange(len(self.order))
        return inv

    def slice(self, r0: int, r1: int) -> ScoredBatch:
        e0, e1 = int(self.offsets[r0]), int(self.offsets[r1])
        return replace(self, offsets=self.offsets[r0:r1 + 1] - e0, order=self.order[e0:e1] - e0,
                       score=self.score[r0:r1], anomalous=self.anomalous[r0:r1], anomaly_type=self.anomaly_type[r0:r1],
                       reasons=self.reasons[r0:r1], event_score=self.event_score[e0:e1],
                       event_anomalous=self.event_anomalous[e0:e1], detector_scores=self.detector_scores[r0:r1],
                       length_doubt=self.length_doubt[r0:r1])

    def split(self, bounds: np.ndarray) -> list[ScoredBatch]:
        return [self] if len(bounds) == 2 else [self.slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class RepairedBatch:
    """Repair stage output: the scores plus each event's fate (sorted order, like ``scored``)."""

    scored: ScoredBatch
    keep: np.ndarray          # (N,) bool
    weight: np.ndarray        # (N,) float, 0 for dropped events
    event_action: np.ndarray  # (N,) str, "" when unchanged
    user_action: np.ndarray   # (R,) str

    def slice(self, r0: int, r1: int) -> RepairedBatch:
        e0, e1 = int(self.scored.offsets[r0]), int(self.scored.offsets[r1])
        return RepairedBatch(self.scored.slice(r0, r1), self.keep[e0:e1], self.weight[e0:e1],
                             self.event_action[e0:e1], self.user_action[r0:r1])

    def split(self, bounds: np.ndarray) -> list[RepairedBatch]:
        return [self] if len(bounds) == 2 else [self.slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def encode_stage(sg, batch: SeqBatch, model_dir: str = "") -> EncodedBatch:
    """Tokenize and encode (the Encoder deployment's work). ``sg`` is a loaded SeqGuard."""
    log_ = batch.to_log()
    sg.check_log(log_, once=True)
    enc = sg.encode(sg.tokenize(log_))
    return EncodedBatch(enc, log_.frame["_row"].to_numpy(), getattr(sg, "model_version", ""),
                        getattr(sg, "model_dir", model_dir))


def detect_stage(sg, eb: EncodedBatch) -> ScoredBatch:
    """Score with the calibrated ensemble (the DetectorEnsemble deployment's work)."""
    from ..core.detectors import DETECTORS

    s = sg.detect(eb.encoded)
    return ScoredBatch(eb.encoded.seqs.offsets, eb.order, s.score, s.anomalous, s.anomaly_type, s.reasons,
                       s.event_score, s.event_anomalous, s.detector_scores, s.length_doubt, tuple(DETECTORS),
                       float(sg.user_detectors.threshold_), eb.model_version, eb.model_dir)


def repair_stage(policy, sb: ScoredBatch) -> RepairedBatch:
    """Apply the repair policy (the RepairPolicy deployment's work)."""
    keep, weight, ev_action, user_action = policy.decide(sb.offsets, sb)
    return RepairedBatch(sb, keep, weight, ev_action, user_action)


# --------------------------------------------------------------------------- models in a replica
class ModelStore:
    """The bundle a stage serves, plus recently replaced ones, keyed by model version.

    During a rollout, upstream stages may still send work encoded with the previous bundle: a
    stage looks the version up here (loading it from ``model_dir`` if needed), so stages never mix
    two bundles in one request.
    """

    def __init__(self, loader: Callable[[str], Any], *, keep: int = 2):
        self._loader = loader
        self._keep = keep
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._current: str | None = None
        self._lock = threading.Lock()

    def load(self, model_dir: str) -> Any:
        """Load ``model_dir`` and make it current (blocking; run it off the event loop)."""
        with self._lock:
            m = self._loader(str(model_dir))
            self._put(m)
            self._current = m.model_version
            log.info("serving model %s from %s", m.model_version, model_dir)
            return m

    def _put(self, m) -> None:
        self._models[m.model_version] = m
        self._models.move_to_end(m.model_version)
        for old in [v for v in self._models if v not in (m.model_version, self._current)]:
            if len(self._models) <= self._keep:
                break
            del self._models[old]

    @property
    def current(self) -> Any:
        if self._current is None:
            raise Unavailable("no model is loaded yet: retry shortly")
        return self._models[self._current]

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def get(self, version: str, model_dir: str) -> Any:
        m = self._models.get(version)
        if m is not None:
            return m
        with self._lock:
            m = self._models.get(version)
            if m is None:
                m = self._loader(str(model_dir))
                if m.model_version != version:
                    raise Unavailable(f"model {version} is no longer available (bundle {model_dir} now holds {m.model_version}): retry")
                self._put(m)
            return m


@dataclass
class PolicyModel:
    """What the repair stage needs from a bundle: only its policy (no weights are loaded)."""

    policy: Any
    model_version: str


def load_policy(model_dir: str) -> PolicyModel:
    from ..core.bundle import read_manifest
    from ..core.repair import RepairPolicy

    m = read_manifest(model_dir)
    return PolicyModel(RepairPolicy(**m["repair_policy"]), m["model_version"])


def load_engine(model_dir: str, *, device: str | None = None, torch_threads: int | None = None):
    """A SeqGuard from a bundle for a serving process (encoder on ``device``, few torch threads)."""
    import torch

    from ..core.pipeline import SeqGuard

    if torch_threads:
        torch.set_num_threads(torch_threads)
    sg = SeqGuard.load(model_dir)
    if device and device != "cpu":
        sg.model.to(device)
    sg.model_dir = str(model_dir)
    return sg


@dataclass
class ModelInfo:
    """ModelInfo fields that come from the bundle."""

    model_version: str
    format_version: str
    threshold: float
    target_fpr: float
    repair_actions: dict[str, str]

    @classmethod
    def from_dir(cls, model_dir: str) -> ModelInfo:
        from ..core.bundle import read_manifest

        m = read_manifest(model_dir)
        return cls(m["model_version"], str(m["format_version"]), float(m["detectors"]["threshold"]),
                   float(m["detectors"]["target_fpr"]), dict(m["repair_policy"]["actions"]))


# --------------------------------------------------------------------------- domain -> proto
def score_responses(batch: SeqBatch, sb: ScoredBatch) -> list[pb.ScoreResponse]:
    """One ScoreResponse per sequence; per-event fields in the order the events were sent."""
    inv = sb.input_order()
    ev_score = sb.event_score[inv].astype(np.float64).tolist()
    ev_anom = sb.event_anomalous[inv].astype(bool).tolist()
    off = batch.offsets.tolist()
    out = []
    for r in range(batch.n_seqs):
        a, b = off[r], off[r + 1]
        out.append(pb.ScoreResponse(
            user_id=batch.user_ids[r], score=float(sb.score[r]), anomalous=bool(sb.anomalous[r]),
            anomaly_type=str(sb.anomaly_type[r]), event_scores=ev_score[a:b], reasons=[str(x) for x in sb.reasons[r]],
            event_anomalous=ev_anom[a:b], model_version=sb.model_version, threshold=sb.threshold,
            detector_scores=dict(zip(sb.detector_names, sb.detector_scores[r].astype(float).tolist())),
        ))
    return out


def repair_response(req: pb.ScoreRequest, batch: SeqBatch, rb: RepairedBatch) -> pb.RepairResponse:
    """The repair of one sequence: survivors (in sent order) with weights, and every event's action."""
    inv = rb.scored.input_order()
    keep = rb.keep[inv]
    weight = rb.weight[inv]
    actions = rb.event_action[inv]
    kept_idx = np.flatnonzero(keep).tolist()
    return pb.RepairResponse(
        score=score_responses(batch, rb.scored)[0],
        events=[req.events[i] for i in kept_idx], weights=weight[kept_idx].astype(float).tolist(),
        actions=[str(a) for a in actions], user_action=str(rb.user_action[0]), kept=keep.astype(bool).tolist(),
    )


def model_info_response(info: ModelInfo, limits: Limits) -> pb.ModelInfoResponse:
    from .. import __version__
    from ..core.repair import ANOMALY_TYPES

    return pb.ModelInfoResponse(
        model_version=info.model_version, format_version=info.format_version, threshold=info.threshold,
        target_fpr=info.target_fpr, server_version=__version__,
        max_events_per_sequence=limits.max_events_per_sequence, max_sequences_per_batch=limits.max_sequences_per_batch,
        max_message_bytes=limits.max_message_bytes, anomaly_types=list(ANOMALY_TYPES),
        repair_actions=[f"{t}={a}" for t, a in info.repair_actions.items()],
    )


# --------------------------------------------------------------------------- batching
@dataclass
class _Job:
    batch: SeqBatch
    repair: bool
    future: asyncio.Future


class ContinuousBatcher:
    """Merges concurrent requests into stage calls, batching while busy: up to ``concurrency``
    batches run at once, and each one takes every request queued by the time it starts (up to
    ``max_batch`` requests). Nothing waits for a batch to fill: an idle server answers at once,
    a busy one merges what piled up during the previous call.

    (Serve's ``@serve.batch`` forms a batch within ``batch_wait_timeout_s`` and only then waits for
    a free slot, so under load it made batches of 1.1 requests here.)

    ``run(merged, repair)`` runs the stages on one merged batch and returns a ScoredBatch, or a
    RepairedBatch when ``repair`` is true (any request in the batch asked for a repair);
    ``on_batch(n)``, if given, is told how many requests each call merged.
    """

    def __init__(self, run: Callable[[SeqBatch, bool], Awaitable[ScoredBatch | RepairedBatch]], *,
                 max_batch: int = 64, concurrency: int = 1, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or concurrency < 1:
            raise ValueError(f"max_batch and concurrency must be >= 1, got {max_batch}, {concurrency}")
        self._run = run
        self._on_batch = on_batch
        self.max_batch = max_batch
        self.concurrency = concurrency
        self._queue: asyncio.Queue[_Job] | None = None
        self._workers: list[asyncio.Task] = []

    async def submit(self, batch: SeqBatch, repair: bool = False) -> ScoredBatch | RepairedBatch:
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._workers = [w for w in self._workers if not w.done()]  # a cancelled worker is replaced
        while len(self._workers) < self.concurrency:
            self._workers.append(loop.create_task(self._drain()))
        fut = loop.create_future()
        self._queue.put_nowait(_Job(batch, repair, fut))
        return await fut

    async def _drain(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self.max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [j for j in jobs if not j.future.done()]  # cancelled by the client meanwhile
            if not jobs:
                continue
            merged, bounds = SeqBatch.concat([j.batch for j in jobs])
            if self._on_batch is not None:
                self._on_batch(len(jobs))
            try:
                parts = (await self._run(merged, any(j.repair for j in jobs))).split(bounds)
            except BaseException as exc:  # noqa: BLE001 - handed to every caller
                cancelled = isinstance(exc, asyncio.CancelledError)
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(Unavailable("the batch was cancelled: retry") if cancelled else exc)
                if cancelled:  # this worker ends; the next submit() starts another
                    raise
                continue
            for j, part in zip(jobs, parts):
                if not j.future.done():
                    j.future.set_result(part if j.repair or not isinstance(part, RepairedBatch) else part.scored)

    def close(self) -> None:
        """Stop the workers. Requests in a running batch and requests still queued fail with
        UNAVAILABLE (their clients may retry elsewhere) rather than wait for their deadline."""
        for w in self._workers:
            w.cancel()
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Unavailable("the server is shutting down: retry"))
        self._queue, self._workers = None, []


# --------------------------------------------------------------------------- the service
class Backend(Protocol):
    """How a front end runs the stages: in process, or through Ray Serve deployment handles."""

    async def score(self, batch: SeqBatch) -> ScoredBatch: ...

    async def repair(self, batch: SeqBatch) -> RepairedBatch: ...

    async def model_info(self) -> ModelInfo: ...


@dataclass
class Reply:
    """A response message, or the status to send instead (then ``message`` is an empty one)."""

    message: Any
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""


_EMPTY = {"Score": pb.ScoreResponse, "ScoreBatch": pb.ScoreBatchResponse, "Repair": pb.RepairResponse,
          "ModelInfo": pb.ModelInfoResponse}


@dataclass
class ScoringService:
    """The SeqGuard rpcs over a :class:`Backend`: auth, limits, conversion, status codes."""

    backend: Backend
    auth: Authenticator
    limits: Limits = field(default_factory=Limits)
    timeout_s: float | None = None   # server-side limit on one call (None: no limit)

    async def call(self, rpc: str, request, metadata: Iterable[tuple[str, Any]] | None) -> Reply:
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
            return Reply(_EMPTY[rpc](), code, details)

    async def _run(self, rpc: str, request) -> Awaitable:
        if rpc == "Score":
            batch = parse_score_request(request, self.limits)
            return score_responses(batch, await self.backend.score(batch))[0]
        if rpc == "ScoreBatch":
            batch = parse_batch_request(request, self.limits)
            return pb.ScoreBatchResponse(responses=score_responses(batch, await self.backend.score(batch)))
        if rpc == "Repair":
            batch = parse_score_request(request, self.limits)
            return repair_response(request, batch, await self.backend.repair(batch))
        if rpc == "ModelInfo":
            return model_info_response(await self.backend.model_info(), self.limits)
        raise InvalidArgument(f"unknown method {rpc}")


# --------------------------------------------------------------------------- frames -> proto (clients)
def _is_null(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and np.isnan(v))


def _id_text(v) -> str:
    """An id as the batch path prints it: integers (and integral floats) without decimals."""
    if _is_null(v):
        raise ValueError("is null")
    if isinstance(v, (bool, np.bool_)):
        raise ValueError(f"ids must be integers or strings, not bool ({v!r})")
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return str(v)


def _ts_int(v) -> int:
    import pandas as pd

    if _is_null(v) or v is pd.NaT:
        raise ValueError("is null")
    if isinstance(v, (pd.Timestamp, np.datetime64)):
        return int(pd.Timestamp(v).value // 1_000_000)  # milliseconds
    return int(v)


def events_to_proto(records: Iterable[dict]) -> list[pb.Event]:
    """Events from dicts with item_id, ts and optional action, value (None/NaN = unset).

    Raises ValueError naming the event and field (``events[3].ts``) for a value that cannot be sent.
    """
    out = []
    for i, r in enumerate(records):
        name = "item_id"
        try:
            ev = pb.Event(item_id=_id_text(r["item_id"]))
            name = "ts"
            ev.ts = _ts_int(r["ts"])
            name = "action"
            if not _is_null(r.get("action")):
                ev.action = str(r["action"])
            name = "value"
            if not _is_null(r.get("value")):
                ev.value = float(r["value"])
        except KeyError:
            raise ValueError(f"events[{i}] has no {name}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"events[{i}].{name} = {r.get(name)!r} cannot be sent: {exc}") from None
        out.append(ev)
    return out


def requests_from_frame(df) -> list[pb.ScoreRequest]:
    """One ScoreRequest per user of a frame with user_id, item_id, ts[, action, value], in first-seen order."""
    missing = [c for c in ("user_id", "item_id", "ts") if c not in df.columns]
    if missing:
        raise ValueError(f"events need columns user_id, item_id, ts; missing {missing}")
    cols = [c for c in ("item_id", "ts", "action", "value") if c in df.columns]
    reqs = []
    for uid, g in df.groupby("user_id", sort=False, dropna=False):
        try:
            user_id = _id_text(uid)
        except ValueError as exc:
            raise ValueError(f"user_id {exc} in {len(g)} row(s)") from None
        reqs.append(pb.ScoreRequest(user_id=user_id, events=events_to_proto(g[cols].to_dict("records"))))
    return reqs
