"""Online scoring: the gRPC service that both front ends compose, the plain ``grpc.aio`` server
(:mod:`.grpc_server`) and the Ray Serve deployments (top-level ``deployments/``, arguments and
deploy in :mod:`.app`). Scores are in [0, 1]; higher means more anomalous.

One concern a module: :mod:`.errors` (errors -> gRPC status codes, in one place), :mod:`.auth`
(bearer token), :mod:`.limits`, :mod:`.batches` (the numpy data passed between stages),
:mod:`.convert` (protobuf <-> domain; protobuf types stop there), :mod:`.stages` (the three stage
functions and their one sequencing, models in a replica), :mod:`.batching` (ContinuousBatcher),
:mod:`.service` (ScoringService and its backends), :mod:`.sessions` (ScoreStream's per-user state
stores) and :mod:`.streaming` (ScoreStream's batches, replays and commits), :mod:`.metrics`.
"""

from .auth import TOKEN_ENV, Authenticator, load_token, token_digest
from .batches import EncodedBatch, RepairedBatch, ScoredBatch, SeqBatch
from .batching import ContinuousBatcher
from .convert import (
    UndecodableRequest,
    check_size,
    events_to_proto,
    lenient_deserializer,
    parse_batch_request,
    parse_score_request,
    requests_from_frame,
)
from .errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    ServingError,
    Unauthenticated,
    Unavailable,
    status_for,
)
from .limits import Limits
from .sessions import MemoryStore, RedisStore, SessionStore, StreamConfig, open_store
from .service import Backend, InProcessBackend, Reply, ScoringService, StagedBackend
from .stages import (
    ModelInfo,
    ModelStore,
    StageCalls,
    detect_stage,
    encode_stage,
    load_engine,
    load_policy,
    repair_stage,
    run_stages,
)

__all__ = [
    "TOKEN_ENV", "Authenticator", "load_token", "token_digest",
    "EncodedBatch", "RepairedBatch", "ScoredBatch", "SeqBatch",
    "ContinuousBatcher",
    "UndecodableRequest", "check_size", "events_to_proto", "lenient_deserializer", "parse_batch_request",
    "parse_score_request", "requests_from_frame",
    "DeadlineExceeded", "InvalidArgument", "ResourceExhausted", "ServingError", "Unauthenticated", "Unavailable",
    "status_for",
    "Limits",
    "MemoryStore", "RedisStore", "SessionStore", "StreamConfig", "open_store",
    "Backend", "InProcessBackend", "Reply", "ScoringService", "StagedBackend",
    "ModelInfo", "ModelStore", "StageCalls", "detect_stage", "encode_stage", "load_engine", "load_policy",
    "repair_stage", "run_stages",
]
