"""The demo generator: realistic behaviour logs with labelled injected attacks.

``generate`` simulates a clean log and injects attacks; ``inject_attacks`` injects them into any
clean log (e.g. MovieLens); ``write_events`` writes a log as Parquet, CSV or JSON lines;
``inject_campaign`` adds one coordinated campaign (``CAMPAIGN_SETTINGS``) to a clean log.
"""

from .campaigns import CAMPAIGN, CAMPAIGN_SETTINGS, CampaignSetting, LabeledCampaign, inject_campaign
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
    "CAMPAIGN", "CAMPAIGN_SETTINGS", "CampaignSetting", "LabeledCampaign", "inject_campaign",
    "ATTACK_FAMILY", "ATTACK_TYPES", "FAKE_USER_TYPES", "HELD_OUT_TYPES", "NORMAL", "PARTIAL_TYPES",
    "AttackMix", "LabeledEvents", "generate", "inject_attacks", "write_events",
]
