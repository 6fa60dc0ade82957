"""Seeded demo data with ground truth: a realistic clean behaviour log plus injected attacks.

``generate`` simulates a clean e-commerce log (taste clusters, Zipf item popularity, sessions with
a daily rhythm, a view -> click -> cart -> purchase funnel) and then calls ``inject_attacks``.
``inject_attacks`` works on any clean log with columns user_id, item_id, ts, action, value
(e.g. MovieLens ratings): it learns item popularity, values, actions, timing and categories from
the log itself so that injected events look like the log they are injected into.

Every injected event is labelled (``LabeledEvents.event_injected``) and every user has a type
(``LabeledEvents.user_type``: an attack type name or ``"normal"``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .assemble import assemble
from .attacks import Injector
from .logstats import LogStats, normalize_log
from .mix import AttackMix, LabeledEvents
from .simulate import simulate_clean

log = logging.getLogger(__name__)


def generate(
    *,
    n_users: int = 1000,
    n_items: int = 2000,
    events_per_user: float = 80.0,
    mix: AttackMix = AttackMix(),
    seed: int = 0,
) -> LabeledEvents:
    """Simulate a clean ~60-day e-commerce log of ``n_users`` users, then inject ``mix`` attacks.

    Actions are view/click/cart/purchase; ``value`` is dwell seconds (view, click) or the item
    price (cart, purchase); items carry ``title`` and ``category``.
    """
    _check_int("n_users", n_users, 1)
    _check_int("n_items", n_items, 1)
    if isinstance(events_per_user, bool) or not isinstance(events_per_user, (int, float, np.integer, np.floating)) \
            or not math.isfinite(events_per_user) or events_per_user < 1:
        raise ValueError(f"events_per_user must be a finite number >= 1, got {events_per_user!r}")
    if not isinstance(mix, AttackMix):
        raise ValueError(f"mix must be an AttackMix, got {type(mix).__name__}")
    _check_int("seed", seed, 0)
    rng = np.random.default_rng([seed, 0x5EED])
    clean = simulate_clean(rng, n_users=n_users, n_items=n_items, events_per_user=float(events_per_user))
    log.info("simulated clean log: %d users, %d items, %d events", n_users, n_items, len(clean))
    return inject_attacks(clean, mix=mix, seed=seed)


def inject_attacks(
    events: pd.DataFrame,
    *,
    mix: AttackMix = AttackMix(),
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    actions: tuple[str, ...] | None = None,
) -> LabeledEvents:
    """Inject ``mix`` attacks into a clean log (columns user_id, item_id, ts, action, value).

    Item popularity, item mean values, value range, actions, timing and categories (the
    ``category`` column, else co-occurrence clusters) are learned from ``events``.
    ``value_range`` bounds injected values (default: the log's min and max); ``actions`` is the
    vocabulary injected events may use, weakest first (default: the log's actions; a known
    view/click/cart/purchase funnel keeps its order, others go from most to least frequent).
    Injected timestamps lie within the log's time range. Same seed, same output.
    """
    if not isinstance(mix, AttackMix):
        raise ValueError(f"mix must be an AttackMix, got {type(mix).__name__}")
    _check_int("seed", seed, 0)
    if value_range is not None:
        try:
            vlo, vhi = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise ValueError(f"value_range must be a (low, high) pair of numbers, got {value_range!r}") from None
        if not (math.isfinite(vlo) and math.isfinite(vhi) and vlo <= vhi):
            raise ValueError(f"value_range must be finite with low <= high, got {value_range!r}")
    if actions is not None and (
        isinstance(actions, str) or not isinstance(actions, (tuple, list)) or not actions
        or not all(isinstance(a, str) and a for a in actions) or len(set(actions)) != len(actions)
    ):
        raise ValueError(f"actions must be a non-empty tuple of distinct non-empty strings, got {actions!r}")
    clean = normalize_log(events)
    rng = np.random.default_rng(seed)
    st = LogStats.build(clean, rng=rng, value_range=value_range, actions=actions)
    inj = Injector(st, rng)
    inj.run(mix)
    return assemble(inj)


def write_events(events: pd.DataFrame, path: str | Path) -> None:
    """Write ``events`` to ``path`` as Parquet (.parquet/.pq), CSV (.csv) or JSON lines (.jsonl/.json)."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".jsonl", ".json"):
        raise ValueError(f"path must end in .parquet, .pq, .csv, .jsonl or .json, got {str(path)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".parquet", ".pq"):
        events.to_parquet(p, index=False)
    elif suffix == ".csv":
        events.to_csv(p, index=False)
    else:
        events.to_json(p, orient="records", lines=True, force_ascii=False)


def _check_int(name: str, v: object, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
