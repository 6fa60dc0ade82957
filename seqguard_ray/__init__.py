"""seqguard: catch and repair anomalous user behaviour sequences in recommender logs.

Public API (imported lazily, so light modules such as ``seqguard_ray.core.schema`` do not pay for torch):
``SeqGuard``, ``TrainConfig``, ``ScoreResult``, ``RepairResult``, ``RepairPolicy``,
``ANOMALY_TYPES``, ``EventsError``, ``read_events``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "SeqGuard": "core.pipeline", "TrainConfig": "core.config", "ScoreResult": "core.results",
    "RepairResult": "core.results", "RepairPolicy": "core.repair", "ANOMALY_TYPES": "core.repair",
    "EventsError": "core.schema", "read_events": "core.readers",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
