"""seqguard: catch and repair anomalous user behaviour sequences in recommender logs."""

__version__ = "0.1.0"

from .engine import RepairResult, ScoreResult, SeqGuard, TrainConfig  # noqa: E402
from .events import EventsError, read_events  # noqa: E402
from .repair import ANOMALY_TYPES, RepairPolicy  # noqa: E402

__all__ = ["SeqGuard", "TrainConfig", "ScoreResult", "RepairResult", "RepairPolicy", "ANOMALY_TYPES",
           "EventsError", "read_events", "__version__"]
