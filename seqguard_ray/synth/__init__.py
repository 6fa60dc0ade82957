"""The demo generator: realistic behaviour logs with labelled injected attacks.

``generate`` simulates a clean log and injects attacks; ``inject_attacks`` injects them into any
clean log (e.g. MovieLens); ``write_events`` writes a log as Parquet, CSV or JSON lines.
"""

from .generator import generate, inject_attacks, write_events
from .mix import (
    ATTACK_FAMILY,
    ATTACK_TYPES,
    FAKE_USER_TYPES,
    HELD_OUT_TYPES,
    NORMAL,
    PARTIAL_TYPES,
    AttackMix,
    LabeledEvents,
)

__all__ = [
    "ATTACK_FAMILY", "ATTACK_TYPES", "FAKE_USER_TYPES", "HELD_OUT_TYPES", "NORMAL", "PARTIAL_TYPES",
    "AttackMix", "LabeledEvents", "generate", "inject_attacks", "write_events",
]
