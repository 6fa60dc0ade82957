"""Protobuf <-> domain conversion: protobuf types stop here.

Server side: requests are validated and parsed into :class:`SeqBatch` columns (errors name the
field and the bad value), stage results become response messages. Client side: frames and
event dicts become request messages, ids printed as the batch path prints them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...core.validate import (
    DEFAULT_ACTION,
    action_checks,
    first_failure,
    id_checks,
    shown,
    to_seconds,
    ts_checks,
    value_checks,
)
from ...proto.seqguard.v1 import seqguard_pb2 as pb
from .batches import RepairedBatch, ScoredBatch, SeqBatch
from .errors import InvalidArgument, ResourceExhausted
from .limits import Limits
from .shadow import RolloutCommand, RolloutStatus
from .stages import ModelInfo


# --------------------------------------------------------------------------- proto -> domain
def parse_score_request(req: pb.ScoreRequest, limits: Limits, where: str = "") -> SeqBatch:
    """Validate one ScoreRequest with the batch path's checks (:mod:`seqguard_ray.core.validate`);
    errors name the field (``events[3].item_id``) and the bad value."""
    evs = req.events
    n = len(evs)
    return parse_events(req.user_id, np.array([e.item_id for e in evs], dtype=object),
                        np.fromiter((e.ts for e in evs), dtype=np.int64, count=n),
                        np.array([e.action for e in evs], dtype=object),
                        np.fromiter((e.value if e.HasField("value") else np.nan for e in evs), dtype=np.float64, count=n),
                        limits, where)


def parse_events(user_id: str, item: np.ndarray, ts_raw: np.ndarray, action: np.ndarray, value: np.ndarray,
                 limits: Limits, where: str = "", event_name: Callable[[int], str] = lambda i: f"events[{i}]") -> SeqBatch:
    """One user's events as sent (item (N,) str, ts_raw (N,) int64 seconds or ms, action (N,) str
    with "" = unset, value (N,) float64 with NaN = unset), validated like a ScoreRequest: the one
    parse that every rpc's sequences go through. ``event_name(i)`` names event i in errors."""
    n = len(ts_raw)

    def fail(path: str, reason: str, v: object) -> None:
        raise InvalidArgument(f"{where}{path}{reason}" + ("" if isinstance(v, str) and not v else f": got {shown(v)}"))

    bad = first_failure(id_checks("user_id", np.array([user_id], dtype=object)))
    if bad:
        fail("", bad[1], user_id)
    if n == 0:
        raise InvalidArgument(f"{where}events is empty: send at least one event")
    if n > limits.max_events_per_sequence:
        raise InvalidArgument(f"{where}events has {n} events, over the limit of {limits.max_events_per_sequence} per sequence")
    action = np.array([a or DEFAULT_ACTION for a in action], dtype=object)
    # the batch path's unit rule, applied per sequence (milliseconds when most values are above 1e11)
    ts, other_unit = to_seconds(ts_raw)
    # proto3 sends an unset ts as 0
    unset = [(ts_raw == 0, "ts is missing (0): send Unix time in seconds or milliseconds")]
    for raw, checks in ((item, id_checks("item_id", item)), (ts_raw, unset + ts_checks(ts, other_unit)),
                        (value, value_checks(value)), (action, action_checks(action))):
        bad = first_failure(checks)
        if bad:
            fail(f"{event_name(bad[0])}.", bad[1], raw[bad[0]])
    return SeqBatch([user_id], np.array([0, n], np.int64), item, ts, action, value)


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


# --------------------------------------------------------------------------- domain -> proto
def score_responses(batch: SeqBatch, sb: ScoredBatch) -> list[pb.ScoreResponse]:
    """One ScoreResponse per sequence; per-event fields in the order the events were sent."""
    inv = sb.input_order()
    ev_score = sb.event_score[inv].astype(np.float64).tolist()
    ev_anom = sb.event_anomalous[inv].astype(bool).tolist()
    ev_campaign = [] if sb.event_campaign is None else np.asarray(sb.event_campaign, bool)[inv].tolist()
    off = batch.offsets.tolist()
    out = []
    for r in range(batch.n_seqs):
        a, b = off[r], off[r + 1]
        msg = pb.ScoreResponse(
            user_id=batch.user_ids[r], score=float(sb.score[r]), anomalous=bool(sb.anomalous[r]),
            anomaly_type=str(sb.anomaly_type[r]), event_scores=ev_score[a:b], reasons=[str(x) for x in sb.reasons[r]],
            event_anomalous=ev_anom[a:b], model_version=sb.model_version, threshold=sb.threshold,
            detector_scores=dict(zip(sb.detector_names, sb.detector_scores[r].astype(float).tolist())),
            event_campaign=ev_campaign[a:b], targeted_campaigns=[] if sb.targeted is None else sb.targeted[r],
            campaigns_version=sb.campaigns_version,
        )
        if sb.campaign_id is not None and sb.campaign_id[r] >= 0:
            msg.campaign_id = int(sb.campaign_id[r])
        out.append(msg)
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


def score_batch_response(batch: SeqBatch, sb: ScoredBatch) -> pb.ScoreBatchResponse:
    return pb.ScoreBatchResponse(responses=score_responses(batch, sb))


def model_info_response(info: ModelInfo, limits: Limits, max_stream_frame: int = 0) -> pb.ModelInfoResponse:
    from ... import __version__
    from ...core.repair import ANOMALY_TYPES

    return pb.ModelInfoResponse(
        model_version=info.model_version, format_version=info.format_version, threshold=info.threshold,
        target_fpr=info.target_fpr, server_version=__version__,
        max_events_per_sequence=limits.max_events_per_sequence, max_sequences_per_batch=limits.max_sequences_per_batch,
        max_message_bytes=limits.max_message_bytes, anomaly_types=list(ANOMALY_TYPES),
        repair_actions=[f"{t}={a}" for t, a in info.repair_actions.items()],
        campaigns_version=info.campaigns_version, campaigns=info.campaigns, campaign_members=info.campaign_members,
        campaign_targets=info.campaign_targets, max_stream_frame=max_stream_frame,
    )


def parse_rollout_request(msg: pb.RolloutRequest) -> RolloutCommand:
    """A Rollout request as a :class:`~.shadow.RolloutCommand` (the guard's limits checked)."""
    from ...core.shadow import MAX_FLAG_RATIO, MIN_USERS, PromotionGuard

    action = pb.RolloutAction.Name(msg.action).removeprefix("ROLLOUT_ACTION_").lower() \
        if msg.action in pb.RolloutAction.values() else f"unknown action {msg.action}"
    try:
        guard = PromotionGuard(msg.max_flag_ratio if msg.HasField("max_flag_ratio") else MAX_FLAG_RATIO,
                               msg.min_users if msg.HasField("min_users") else MIN_USERS)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    return RolloutCommand(action, msg.candidate_dir, msg.share, msg.force, guard)


def rollout_response(st: RolloutStatus) -> pb.RolloutStatus:
    s, c, live = st.stats, st.candidate, st.live
    ms = {w: s.mean_latency_s(w) for w in ("live", "candidate")}
    out = pb.RolloutStatus(
        live_version=live.model_version if live else "", live_dir=live.model_dir if live else "",
        candidate_version=c.model_version if c else "", candidate_dir=c.model_dir if c else "", share=st.share,
        shadowed_users=s.users, live_flagged=s.live_flagged, candidate_flagged=s.candidate_flagged,
        live_latency_ms=1e3 * (ms["live"] or 0.0), candidate_latency_ms=1e3 * (ms["candidate"] or 0.0),
        candidate_errors=s.errors, skipped_users=s.skipped, promotable=bool(st.guard and st.guard.ok),
        guard=st.guard.reason if st.guard else "no candidate", message=st.message, server=st.server)
    for name, v in (("flag_agreement", s.flag_agreement), ("spearman", s.spearman)):
        if v is not None:
            setattr(out, name, v)
    return out


_EMPTY = {"Score": pb.ScoreResponse, "ScoreBatch": pb.ScoreBatchResponse, "Repair": pb.RepairResponse,
          "ModelInfo": pb.ModelInfoResponse, "ScoreStream": pb.StreamAnswer,
          "ScoreStreamFrames": pb.StreamAnswerFrame, "Rollout": pb.RolloutStatus}


def empty_response(rpc: str) -> Any:
    """The empty response message of ``rpc``, sent along with a non-OK status."""
    return _EMPTY[rpc]()


# --------------------------------------------------------------------------- ScoreStream
MAX_STREAM_ID = 128   # characters of a StreamRequest.stream_id


@dataclass(frozen=True)
class StreamMessage:
    """A StreamRequest as domain values. ``error``: why it cannot be applied (names the field); the
    seq is still consumed and answered with it."""

    seq: int
    user_id: str
    stream_id: str
    resume: bool
    delete: bool = False
    item: str = ""
    ts: int = 0
    action: str = ""
    value: float | None = None
    error: str = ""


def parse_stream_message(msg: pb.StreamRequest, limits: Limits) -> StreamMessage:
    """Validate one StreamRequest. A broken protocol (seq 0, a stream_id too long, an undecodable or
    oversized message) raises InvalidArgument / ResourceExhausted and ends the call; bad data (user_id,
    the event's fields, no event) comes back as ``error``, naming the field as Score does."""
    if isinstance(msg, UndecodableRequest):
        raise InvalidArgument(f"a message is not a valid {msg.message_type} message ({msg.reason})")
    check_size(msg, limits)
    if msg.seq == 0:
        raise InvalidArgument("seq is 0 (unset): number the messages of a stream from 1, increasing")
    if len(msg.stream_id) > MAX_STREAM_ID:
        raise InvalidArgument(f"seq {msg.seq}: stream_id is longer than {MAX_STREAM_ID} characters")
    base = StreamMessage(int(msg.seq), msg.user_id, msg.stream_id, bool(msg.resume))
    bad = first_failure(id_checks("user_id", np.array([msg.user_id], dtype=object)))
    if bad:
        return replace(base, error=f"{bad[1]}" + (f": got {shown(msg.user_id)}" if msg.user_id else ""))
    kind = msg.WhichOneof("kind")
    if kind == "delete_user":
        return replace(base, delete=bool(msg.delete_user),
                       error="" if msg.delete_user else "delete_user is false: send an event or delete_user = true")
    if kind != "event":
        return replace(base, error="event is missing: send an event or delete_user = true")
    e = msg.event
    value = e.value if e.HasField("value") else None
    try:
        parse_events(msg.user_id, np.array([e.item_id], dtype=object), np.array([e.ts], np.int64),
                     np.array([e.action], dtype=object), np.array([np.nan if value is None else value]), limits,
                     event_name=lambda i: "event")
    except InvalidArgument as exc:
        return replace(base, error=str(exc))
    return replace(base, item=e.item_id, ts=int(e.ts), action=e.action, value=value)


def parse_window(user_id: str, item: list[str], ts: list[int], action: list[str], value: list[float | None],
                 limits: Limits) -> SeqBatch:
    """A user's stream window (oldest first, as sent) as the sequence Score would get for the same
    events. Each event passed its own checks, so an error here is the new event's ts disagreeing
    with the earlier ones' (the per-sequence unit rule)."""
    n = len(ts)
    try:
        return parse_events(user_id, np.array(item, dtype=object), np.array(ts, np.int64), np.array(action, dtype=object),
                            np.array([np.nan if v is None else v for v in value], np.float64), limits,
                            event_name=lambda i: "event" if i == n - 1 else f"window[{i}]")
    except InvalidArgument as exc:
        raise InvalidArgument(f"event.ts disagrees with the user's window of its last {n} events: {exc}") from None


def answer_frame(answers: list[pb.StreamAnswer]) -> pb.StreamAnswerFrame:
    """ScoreStreamFrames' message of answers sent together."""
    return pb.StreamAnswerFrame(answers=answers)


# what a stream answer says to do with its event; "block_user" wins over the event's own fate
STREAM_ACTIONS = ("keep", "down_weight", "drop", "block_user")


def stream_action(kept: bool, weight: float, user_action: str) -> str:
    """The repair of one event, in the stream's words (one of :data:`STREAM_ACTIONS`)."""
    if user_action == "quarantine":
        return "block_user"
    if not kept:
        return "drop"
    return "down_weight" if weight < 1.0 else "keep"


_STATES = {"new": pb.STREAM_STATE_NEW, "continued": pb.STREAM_STATE_CONTINUED, "lost": pb.STREAM_STATE_LOST}


def stream_answer(m: StreamMessage, rb: RepairedBatch, state: str, epoch: str) -> pb.StreamAnswer:
    """The answer to event ``m`` from the repair of its window (``rb``: one sequence, ``m``'s event
    the last one sent). ``state``: new | continued | lost (see the proto's StreamState)."""
    sb = rb.scored
    n = len(sb.order)
    last = int(sb.input_order()[n - 1])  # sorted position of the event just sent
    kept, weight, text = bool(rb.keep[last]), float(rb.weight[last]), str(rb.event_action[last])
    return pb.StreamAnswer(
        seq=m.seq, user_id=m.user_id, event_score=float(sb.event_score[last]), user_score=float(sb.score[0]),
        anomalous=bool(sb.anomalous[0]), anomaly_type=str(sb.anomaly_type[0]),
        action=stream_action(kept, weight, str(rb.user_action[0])),
        reasons=[str(x) for x in sb.reasons[0]] + ([text] if text else []), window_events=n,
        model_version=sb.model_version, threshold=sb.threshold, state=_STATES[state], state_epoch=epoch, weight=weight,
    )


def stream_note(m: StreamMessage, epoch: str, *, error: str = "", deleted: bool = False) -> pb.StreamAnswer:
    """The answer to a message that is not scored: a delete, or one that cannot be applied (``error``)."""
    return pb.StreamAnswer(seq=m.seq, user_id=m.user_id, state_epoch=epoch, deleted=deleted, error=error)


def replayed_answer(stored: bytes) -> pb.StreamAnswer:
    """A stored answer, sent again for a resent seq."""
    a = pb.StreamAnswer.FromString(stored)
    a.replayed = True
    return a


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
