"""Behaviour logs as validated, per-user time-ordered sequences.

Required columns: ``user_id``, ``item_id``, ``ts`` (int seconds or milliseconds, a timestamp
type, or date-time text). Optional: ``action`` (string, default ``"click"``) and ``value``
(float). Any other column is carried through unchanged to the repaired output. Rows that cannot
be used are counted and shown; with ``on_bad_rows="error"`` (the default) they stop the run, with
``"skip"`` they are left out and reported. Nothing is dropped silently. The limits and the text of
each reason are in :mod:`seqguard_ray.core.validate`; reading files is :mod:`seqguard_ray.core.readers`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .validate import DEFAULT_ACTION, actions_to_str, ids_to_str, repeated, shown, ts_to_seconds, values_to_float

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id", "ts")
RESERVED = ("_row", "weight")  # columns seqguard adds: rejected in the input rather than overwritten
BAD_ROW_EXAMPLES = 5


class EventsError(ValueError):
    """The behaviour log cannot be used as given; the message names the problem."""


@dataclass
class BadRows:
    """Rows that could not be used: count, a reason per row and the first few examples."""

    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def describe(self) -> str:
        by_reason = ", ".join(f"{n} {r}" for r, n in self.reasons.items())
        shown_rows = "\n  ".join(self.examples)
        return f"{self.count} bad row(s) ({by_reason}); first ones:\n  {shown_rows}"


@dataclass
class EventLog:
    """A validated log, sorted by user then time.

    ``frame`` keeps every input column with its original values and types, plus ``_row`` (the
    input row number). The normalised arrays below are aligned with ``frame`` rows:

    - ``user`` (N,) str, ``item`` (N,) str: ids as strings (integers printed without decimals)
    - ``ts`` (N,) float64 seconds, ``action`` (N,) str, ``value`` (N,) float64 (NaN if absent)
    - ``offsets`` (U + 1,) int64: events of user ``u`` are rows ``offsets[u]:offsets[u+1]``
    """

    frame: pd.DataFrame
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    action: np.ndarray
    value: np.ndarray
    offsets: np.ndarray
    bad_rows: BadRows = field(default_factory=BadRows)
    # (U,) int64: each user's oldest events left out by :func:`cap_history` (None: no cap applied yet)
    cut: np.ndarray | None = None

    @property
    def n_events(self) -> int:
        return len(self.ts)

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def truncated(self) -> dict[str, int]:
        """Users over the history cap and the events of theirs left out (the summary's counts)."""
        cut = np.zeros(0, np.int64) if self.cut is None else self.cut
        return {"users_truncated": int((cut > 0).sum()), "events_truncated": int(cut.sum())}

    @property
    def users(self) -> np.ndarray:
        """(U,) the user id string of each sequence."""
        return self.user[self.offsets[:-1]]

    def user_index(self) -> np.ndarray:
        """(N,) the sequence number of each event."""
        return np.repeat(np.arange(self.n_users), np.diff(self.offsets))


def _check_columns(df: pd.DataFrame, source: str) -> None:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise EventsError(
            f"{source}: missing required column(s) {missing}; found columns {list(df.columns)}"
        )
    clash = [c for c in RESERVED if c in df.columns]
    if clash:
        raise EventsError(f"{source}: column name(s) {clash} are reserved ('weight' is the repair weight seqguard "
                          f"adds to repaired.parquet, '_row' its row number): rename them, e.g. to 'input_weight'")
    dup = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
    if dup:
        raise EventsError(f"{source}: duplicate column name(s) {dup}; each column must appear once")
    if len(df) == 0:
        raise EventsError(f"{source}: the log holds no events")


def from_frame(df: pd.DataFrame, *, on_bad_rows: str = "error", source: str = "events") -> EventLog:
    """Validate a frame of events and sort it into per-user sequences.

    Raises :class:`EventsError` for a missing column, an empty log, or (with
    ``on_bad_rows="error"``) any bad row; the message counts them and shows the first ones.
    """
    if on_bad_rows not in ("error", "skip"):
        raise EventsError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
    _check_columns(df, source)
    df = df.reset_index(drop=True)
    df["_row"] = np.arange(len(df), dtype=np.int64)

    bad = pd.Series("", index=df.index, dtype=object)

    def mark(mask: np.ndarray | pd.Series, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool) & (bad.to_numpy() == "")
        bad[mask] = reason

    user = ids_to_str(df["user_id"], "user_id", mark)
    item = ids_to_str(df["item_id"], "item_id", mark)
    ts = ts_to_seconds(df["ts"], mark)
    action = actions_to_str(df["action"], mark) if "action" in df.columns else repeated(DEFAULT_ACTION, len(df))
    value = values_to_float(df["value"], mark) if "value" in df.columns else np.full(len(df), np.nan)

    bad_mask = bad.to_numpy() != ""
    report = BadRows()
    if bad_mask.any():
        report.count = int(bad_mask.sum())
        report.reasons = bad[bad_mask].value_counts().to_dict()
        cols = [c for c in (*REQUIRED, "action", "value") if c in df.columns]
        for i in np.flatnonzero(bad_mask)[:BAD_ROW_EXAMPLES]:
            row = ", ".join(f"{c}={shown(df.at[i, c])}" for c in cols)
            report.examples.append(f"row {i}: {bad[i]}: {row}")
        if on_bad_rows == "error":
            raise EventsError(f"{source}: {report.describe()}\n(use --on-bad-rows skip to leave them out)")
        log.warning("%s: skipping %s", source, report.describe())
        keep = ~bad_mask
        if not keep.any():
            raise EventsError(f"{source}: every row is bad: {report.describe()}")
        df, user, item, ts, action, value = (
            df[keep].reset_index(drop=True), user[keep], item[keep], ts[keep], action[keep], value[keep]
        )

    order = np.lexsort((df["_row"].to_numpy(), ts, user))
    df = df.iloc[order].reset_index(drop=True)
    user, item, ts, action, value = user[order], item[order], ts[order], action[order], value[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    offsets = np.r_[starts, len(user)].astype(np.int64)
    return EventLog(df, user, item, ts, action.astype(object), value, offsets, report)


def cap_history(lg: EventLog, max_events: int) -> EventLog:
    """Each user's ``max_events`` most recent events (by ts, then input row); the older ones are left
    out, and counted per user in ``cut`` (added to the counts ``lg.cut`` already holds, e.g. from a
    read task that capped its part of the log). Returns ``lg`` (with ``cut`` set) when no user is over."""
    n = np.diff(lg.offsets)
    cut = np.zeros(len(n), np.int64) if lg.cut is None else np.asarray(lg.cut, np.int64)
    over = n > max_events
    if not over.any():
        lg.cut = cut
        return lg
    kept = np.minimum(n, max_events)
    pos = np.arange(lg.n_events) - np.repeat(lg.offsets[:-1], n)  # (N,) event's place in its history
    keep = pos >= np.repeat(n - kept, n)
    log.warning("%d user(s) over the cap of %d events per user (max_events_per_user): their %d oldest events are "
                "left out, e.g. user %s with %d events", int(over.sum()), max_events, int((n - kept).sum()),
                shown(lg.users[np.argmax(n)]), int(n.max()))
    return EventLog(lg.frame[keep].reset_index(drop=True), lg.user[keep], lg.item[keep], lg.ts[keep],
                    lg.action[keep], lg.value[keep], np.r_[0, np.cumsum(kept)].astype(np.int64), lg.bad_rows,
                    cut + (n - kept))
