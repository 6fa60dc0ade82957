from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StreamState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_STATE_UNSPECIFIED: _ClassVar[StreamState]
    STREAM_STATE_NEW: _ClassVar[StreamState]
    STREAM_STATE_CONTINUED: _ClassVar[StreamState]
    STREAM_STATE_LOST: _ClassVar[StreamState]

class RolloutAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_ACTION_STATUS: _ClassVar[RolloutAction]
    ROLLOUT_ACTION_START: _ClassVar[RolloutAction]
    ROLLOUT_ACTION_PROMOTE: _ClassVar[RolloutAction]
    ROLLOUT_ACTION_ABORT: _ClassVar[RolloutAction]
STREAM_STATE_UNSPECIFIED: StreamState
STREAM_STATE_NEW: StreamState
STREAM_STATE_CONTINUED: StreamState
STREAM_STATE_LOST: StreamState
ROLLOUT_ACTION_STATUS: RolloutAction
ROLLOUT_ACTION_START: RolloutAction
ROLLOUT_ACTION_PROMOTE: RolloutAction
ROLLOUT_ACTION_ABORT: RolloutAction

class Event(_message.Message):
    __slots__ = ("item_id", "ts", "action", "value")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    ts: int
    action: str
    value: float
    def __init__(self, item_id: _Optional[str] = ..., ts: _Optional[int] = ..., action: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("user_id", "events")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, user_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("user_id", "score", "anomalous", "anomaly_type", "event_scores", "reasons", "event_anomalous", "model_version", "threshold", "detector_scores", "campaign_id", "event_campaign", "targeted_campaigns", "campaigns_version")
    class DetectorScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ANOMALOUS_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_SCORES_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    EVENT_ANOMALOUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_SCORES_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    TARGETED_CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGNS_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    score: float
    anomalous: bool
    anomaly_type: str
    event_scores: _containers.RepeatedScalarFieldContainer[float]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    event_anomalous: _containers.RepeatedScalarFieldContainer[bool]
    model_version: str
    threshold: float
    detector_scores: _containers.ScalarMap[str, float]
    campaign_id: int
    event_campaign: _containers.RepeatedScalarFieldContainer[bool]
    targeted_campaigns: _containers.RepeatedScalarFieldContainer[int]
    campaigns_version: str
    def __init__(self, user_id: _Optional[str] = ..., score: _Optional[float] = ..., anomalous: _Optional[bool] = ..., anomaly_type: _Optional[str] = ..., event_scores: _Optional[_Iterable[float]] = ..., reasons: _Optional[_Iterable[str]] = ..., event_anomalous: _Optional[_Iterable[bool]] = ..., model_version: _Optional[str] = ..., threshold: _Optional[float] = ..., detector_scores: _Optional[_Mapping[str, float]] = ..., campaign_id: _Optional[int] = ..., event_campaign: _Optional[_Iterable[bool]] = ..., targeted_campaigns: _Optional[_Iterable[int]] = ..., campaigns_version: _Optional[str] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ScoreRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ScoreRequest, _Mapping]]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ScoreResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[ScoreResponse, _Mapping]]] = ...) -> None: ...

class RepairResponse(_message.Message):
    __slots__ = ("score", "events", "weights", "actions", "user_action", "kept")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    USER_ACTION_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    score: ScoreResponse
    events: _containers.RepeatedCompositeFieldContainer[Event]
    weights: _containers.RepeatedScalarFieldContainer[float]
    actions: _containers.RepeatedScalarFieldContainer[str]
    user_action: str
    kept: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, score: _Optional[_Union[ScoreResponse, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., weights: _Optional[_Iterable[float]] = ..., actions: _Optional[_Iterable[str]] = ..., user_action: _Optional[str] = ..., kept: _Optional[_Iterable[bool]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model_version", "format_version", "threshold", "target_fpr", "server_version", "max_events_per_sequence", "max_sequences_per_batch", "max_message_bytes", "anomaly_types", "repair_actions", "campaigns_version", "campaigns", "campaign_members", "campaign_targets", "max_stream_frame")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCES_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_TYPES_FIELD_NUMBER: _ClassVar[int]
    REPAIR_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGNS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_TARGETS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_FRAME_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    format_version: str
    threshold: float
    target_fpr: float
    server_version: str
    max_events_per_sequence: int
    max_sequences_per_batch: int
    max_message_bytes: int
    anomaly_types: _containers.RepeatedScalarFieldContainer[str]
    repair_actions: _containers.RepeatedScalarFieldContainer[str]
    campaigns_version: str
    campaigns: int
    campaign_members: int
    campaign_targets: int
    max_stream_frame: int
    def __init__(self, model_version: _Optional[str] = ..., format_version: _Optional[str] = ..., threshold: _Optional[float] = ..., target_fpr: _Optional[float] = ..., server_version: _Optional[str] = ..., max_events_per_sequence: _Optional[int] = ..., max_sequences_per_batch: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., anomaly_types: _Optional[_Iterable[str]] = ..., repair_actions: _Optional[_Iterable[str]] = ..., campaigns_version: _Optional[str] = ..., campaigns: _Optional[int] = ..., campaign_members: _Optional[int] = ..., campaign_targets: _Optional[int] = ..., max_stream_frame: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("seq", "user_id", "event", "delete_user", "stream_id", "resume")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DELETE_USER_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    seq: int
    user_id: str
    event: Event
    delete_user: bool
    stream_id: str
    resume: bool
    def __init__(self, seq: _Optional[int] = ..., user_id: _Optional[str] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., delete_user: _Optional[bool] = ..., stream_id: _Optional[str] = ..., resume: _Optional[bool] = ...) -> None: ...

class StreamFrame(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[StreamRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[StreamRequest, _Mapping]]] = ...) -> None: ...

class StreamAnswerFrame(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[StreamAnswer]
    def __init__(self, answers: _Optional[_Iterable[_Union[StreamAnswer, _Mapping]]] = ...) -> None: ...

class StreamAnswer(_message.Message):
    __slots__ = ("seq", "user_id", "event_score", "user_score", "anomalous", "anomaly_type", "action", "reasons", "window_events", "model_version", "threshold", "replayed", "state", "state_epoch", "deleted", "weight", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_SCORE_FIELD_NUMBER: _ClassVar[int]
    USER_SCORE_FIELD_NUMBER: _ClassVar[int]
    ANOMALOUS_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    user_id: str
    event_score: float
    user_score: float
    anomalous: bool
    anomaly_type: str
    action: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    window_events: int
    model_version: str
    threshold: float
    replayed: bool
    state: StreamState
    state_epoch: str
    deleted: bool
    weight: float
    error: str
    def __init__(self, seq: _Optional[int] = ..., user_id: _Optional[str] = ..., event_score: _Optional[float] = ..., user_score: _Optional[float] = ..., anomalous: _Optional[bool] = ..., anomaly_type: _Optional[str] = ..., action: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., window_events: _Optional[int] = ..., model_version: _Optional[str] = ..., threshold: _Optional[float] = ..., replayed: _Optional[bool] = ..., state: _Optional[_Union[StreamState, str]] = ..., state_epoch: _Optional[str] = ..., deleted: _Optional[bool] = ..., weight: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("action", "candidate_dir", "share", "force", "max_flag_ratio", "min_users")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_DIR_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    MAX_FLAG_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_USERS_FIELD_NUMBER: _ClassVar[int]
    action: RolloutAction
    candidate_dir: str
    share: float
    force: bool
    max_flag_ratio: float
    min_users: int
    def __init__(self, action: _Optional[_Union[RolloutAction, str]] = ..., candidate_dir: _Optional[str] = ..., share: _Optional[float] = ..., force: _Optional[bool] = ..., max_flag_ratio: _Optional[float] = ..., min_users: _Optional[int] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("live_version", "live_dir", "candidate_version", "candidate_dir", "share", "shadowed_users", "live_flagged", "candidate_flagged", "flag_agreement", "spearman", "live_latency_ms", "candidate_latency_ms", "candidate_errors", "skipped_users", "promotable", "guard", "message", "server")
    LIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIVE_DIR_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_DIR_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    SHADOWED_USERS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FLAGGED_FIELD_NUMBER: _ClassVar[int]
    FLAG_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    SPEARMAN_FIELD_NUMBER: _ClassVar[int]
    LIVE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_USERS_FIELD_NUMBER: _ClassVar[int]
    PROMOTABLE_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    live_version: str
    live_dir: str
    candidate_version: str
    candidate_dir: str
    share: float
    shadowed_users: int
    live_flagged: int
    candidate_flagged: int
    flag_agreement: float
    spearman: float
    live_latency_ms: float
    candidate_latency_ms: float
    candidate_errors: int
    skipped_users: int
    promotable: bool
    guard: str
    message: str
    server: str
    def __init__(self, live_version: _Optional[str] = ..., live_dir: _Optional[str] = ..., candidate_version: _Optional[str] = ..., candidate_dir: _Optional[str] = ..., share: _Optional[float] = ..., shadowed_users: _Optional[int] = ..., live_flagged: _Optional[int] = ..., candidate_flagged: _Optional[int] = ..., flag_agreement: _Optional[float] = ..., spearman: _Optional[float] = ..., live_latency_ms: _Optional[float] = ..., candidate_latency_ms: _Optional[float] = ..., candidate_errors: _Optional[int] = ..., skipped_users: _Optional[int] = ..., promotable: _Optional[bool] = ..., guard: _Optional[str] = ..., message: _Optional[str] = ..., server: _Optional[str] = ...) -> None: ...
