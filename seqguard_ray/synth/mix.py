"""What to inject and what comes out: the attack mix, attack type names, and labelled events."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

NORMAL = "normal"
# attack types that add new (fake) users: all their events are injected
FAKE_USER_TYPES = (
    "bot", "shilling_random", "shilling_average", "shilling_bandwagon", "segment", "love_hate", "slow_bot",
    "account_copy",
)
# attack types that alter real users' histories: some, not all, of their events are injected
PARTIAL_TYPES = ("click_farm", "takeover", "replay", "mid_takeover")
# attack types left out of the default mix, to test that detectors generalise
HELD_OUT_TYPES = ("segment", "love_hate", "slow_bot", "mid_takeover", "account_copy")


@dataclass
class LabeledEvents:
    """A behaviour log with ground truth.

    - ``events``: one row per event, columns user_id (str), item_id (int64), ts (int64 unix
      seconds), action (str), value (float64), plus optional item text (title, category);
      sorted by (user_id, ts), RangeIndex.
    - ``event_injected``: (n_events,) bool, True where an attack injected the event.
    - ``user_type``: index user_id, value an attack type name or ``"normal"``, for every user.
    - ``target_items``: item ids pushed or nuked by attacks (sorted, unique, int64).
    """

    events: pd.DataFrame
    event_injected: np.ndarray
    user_type: pd.Series
    target_items: np.ndarray

    @property
    def user_is_attacked(self) -> pd.Series:
        """Bool per user (index user_id): True if the user is fake or was attacked."""
        return self.user_type != NORMAL


@dataclass(frozen=True)
class AttackMix:
    """How much of each attack to inject: a fraction of the clean log's user count, per type.

    A positive fraction injects at least one attack. Fake-profile types add new users; partial
    types (click_farm, takeover, replay, mid_takeover) alter distinct real users.
    """

    bot: float = 0.02  # crawler bots: new users, very regular fast gaps, breadth-first over the catalogue, views only
    click_farm: float = 0.02  # bursts of clicks/carts on 1-3 target items inside real users' histories
    shilling_random: float = 0.01  # fake profiles: targets at max value + random fillers with random values
    shilling_average: float = 0.01  # fake profiles: fillers valued near each item's mean value
    shilling_bandwagon: float = 0.01  # fake profiles: most popular items at high values + targets
    takeover: float = 0.02  # a real user's tail (last 20-50%) replaced or extended by another taste and timing
    replay: float = 0.02  # a segment of a real user's own history copied later in time
    # held-out types (default 0): to test that detectors generalise to attacks they were not tuned on
    segment: float = 0.0  # fake profiles rating one category highly plus targets
    love_hate: float = 0.0  # nuke: targets at min value, fillers at max value
    slow_bot: float = 0.0  # bot with human-looking lognormal gaps but uniform random items over the catalogue
    mid_takeover: float = 0.0  # an intruder uses the account in a long gap mid-history, then the owner returns
    account_copy: float = 0.0  # replayed traffic: a new account replays 60-100% of a real user's history, later

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"AttackMix.{f.name} must be a number >= 0, got {v!r}")
            if not math.isfinite(float(v)) or v < 0:
                raise ValueError(f"AttackMix.{f.name} must be a finite number >= 0, got {v!r}")

    @classmethod
    def none(cls) -> AttackMix:
        """A mix that injects nothing."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    @classmethod
    def only(cls, attack: str, fraction: float) -> AttackMix:
        """A mix with one attack type at ``fraction`` and every other type at 0."""
        if attack not in ATTACK_TYPES:
            raise ValueError(f"attack must be one of {ATTACK_TYPES}, got {attack!r}")
        return cls(**{f.name: (fraction if f.name == attack else 0.0) for f in fields(cls)})

    @classmethod
    def all(cls, fraction: float = 0.02) -> AttackMix:
        """Every attack type, held-out ones included, at ``fraction``."""
        return cls(**{f.name: fraction for f in fields(cls)})


ATTACK_TYPES = tuple(f.name for f in fields(AttackMix))
# coarse anomaly family of each user type (the repair policy's vocabulary)
ATTACK_FAMILY = {
    NORMAL: "normal", "bot": "bot", "slow_bot": "bot", "click_farm": "injection",
    "shilling_random": "shilling", "shilling_average": "shilling", "shilling_bandwagon": "shilling",
    "segment": "shilling", "love_hate": "shilling", "takeover": "takeover", "mid_takeover": "takeover",
    "replay": "replay", "account_copy": "replay",
}
