"""Input limits and their checks: one limit, one check and one text each, for every entry point.

A check gives an (N,) bool mask of the failing events and a reason that starts with the field
name (``"ts is after the year 2100"``). The batch path (:func:`~seqguard_ray.core.schema.from_frame`:
files, frames, Ray Data blocks) marks the rows with it and reports count and examples; the gRPC
parser stops at the first failing event and puts the field path in front and the bad value
after (``"events[3].ts is after the year 2100: got 5000000000"``).

The column parsers below (ids, text, timestamps) turn a frame's columns into the normalised
arrays, marking what cannot be read through a ``mark(mask, reason)`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

DEFAULT_ACTION = "click"
MAX_ID_LENGTH = 256
MAX_ACTION_LENGTH = 64
# Largest accepted timestamp after unit detection: 2100-01-01 in seconds.
MAX_TS_SECONDS = 4_102_444_800
# A timestamp column (or gRPC sequence) whose median is above this is read as milliseconds (1e11 s is the year 5138).
MS_THRESHOLD = 100_000_000_000
# Largest accepted |value|: squares and sums over millions of such values stay finite in float64.
MAX_ABS_VALUE = 1e15
# Most events of one user that any path scores or trains on (TrainConfig.max_events_per_user, stored in
# the bundle): the batch paths keep each user's most recent ones and count the rest in the summary;
# the gRPC API rejects a longer sequence (docs/decisions.md, "One cap on a user's history").
MAX_EVENTS_PER_USER = 10_000

Check = tuple[np.ndarray, str]  # ((N,) bool: the events that fail, the reason)
Mark = Callable[[np.ndarray, str], None]  # marks rows as bad with a reason (the first reason a row gets stays)


def _lengths(text: np.ndarray) -> np.ndarray:
    return np.fromiter((len(s) for s in text), dtype=np.int64, count=len(text))


def id_checks(name: str, ids: np.ndarray) -> list[Check]:
    """Ids (N,) as text: empty, or longer than MAX_ID_LENGTH characters."""
    n = _lengths(ids)
    return [(n == 0, f"{name} is empty"), (n > MAX_ID_LENGTH, f"{name} is longer than {MAX_ID_LENGTH} characters")]


def action_checks(action: np.ndarray) -> list[Check]:
    """Actions (N,) as text: longer than MAX_ACTION_LENGTH characters."""
    return [(_lengths(action) > MAX_ACTION_LENGTH, f"action is longer than {MAX_ACTION_LENGTH} characters")]


def ts_checks(secs: np.ndarray, other_unit: np.ndarray) -> list[Check]:
    """Timestamps (N,) in seconds and (N,) bool from :func:`to_seconds`: not finite, negative, in the
    other unit than the rest, or after the year 2100 (which is also where milliseconds land in a
    column of seconds)."""
    with np.errstate(invalid="ignore"):
        return [
            (~np.isfinite(secs), "ts is not finite"),
            (secs < 0, "ts is negative"),
            (np.asarray(other_unit, bool), "ts looks like seconds while the other timestamps are in milliseconds: use one unit"),
            (secs > MAX_TS_SECONDS, "ts is after the year 2100"),
        ]


def value_checks(value: np.ndarray) -> list[Check]:
    """Values (N,) float (NaN = no value, which is fine): infinite, or |value| above MAX_ABS_VALUE."""
    return [(np.isinf(value), "value is infinite"),
            (value_out_of_range(value), f"value is out of range (|value| > {MAX_ABS_VALUE:g})")]


def value_out_of_range(value: np.ndarray) -> np.ndarray:
    """(N,) bool: |value| above MAX_ABS_VALUE (infinities included; NaN = no value is fine)."""
    return np.abs(np.nan_to_num(value)) > MAX_ABS_VALUE


def first_failure(checks: Iterable[Check]) -> tuple[int, str] | None:
    """(event index, reason) of the first failing check's first event, or None when all pass."""
    for mask, reason in checks:
        if mask.any():
            return int(np.argmax(mask)), reason
    return None


def shown(v: object, limit: int = 60) -> str:
    """A value as a person reads it in an error: numbers plain, text quoted and cut at ``limit``."""
    if isinstance(v, np.generic):
        v = v.item()
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def to_seconds(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numeric timestamps (N,) -> (float seconds (N,), (N,) bool: in the other unit than most).

    The unit is chosen once for the whole column (or sequence): milliseconds when the median
    magnitude is above ``MS_THRESHOLD``, else seconds. In a millisecond column, values that look
    like seconds (1e11 ms is 1973) are flagged rather than silently read as 1970; in a seconds
    column, millisecond values land after 2100 and are flagged by the range check.
    """
    raw = np.asarray(raw, dtype=np.float64)
    finite = np.abs(raw[np.isfinite(raw)])
    if finite.size and np.median(finite) > MS_THRESHOLD:
        return raw / 1000.0, np.isfinite(raw) & (np.abs(raw) <= MS_THRESHOLD)
    return raw, np.zeros(len(raw), bool)


def mark_all(mark: Mark, checks: Iterable[Check]) -> None:
    """Mark the failing rows of each check, in order (a row keeps the first reason it gets)."""
    for mask, reason in checks:
        mark(mask, reason)


# --------------------------------------------------------------------------- frame columns
def ids_to_str(col: pd.Series, name: str, mark: Mark) -> np.ndarray:
    """(N,) object str ids; integral floats (CSV ints with gaps) print without decimals. Each
    distinct id is read and checked once, and its rows share one str object (:func:`per_distinct`)."""
    return per_distinct(col, mark, lambda c, m: _ids_to_str(c, name, m))


def _ids_to_str(col: pd.Series, name: str, mark: Mark) -> np.ndarray:
    mark(col.isna(), f"{name} is null")
    if pd.api.types.is_float_dtype(col):
        vals = col.to_numpy()
        integral = np.isfinite(vals) & (np.floor(vals) == vals)
        mark(col.notna() & ~integral, f"{name} is not an integer or string")
        out = np.where(integral, np.nan_to_num(vals).astype(np.int64).astype(str), "")
        return out.astype(object)
    if pd.api.types.is_bool_dtype(col):
        mark(np.ones(len(col), bool), f"{name} must be an integer or a string, not bool")
        return col.astype(str).to_numpy(dtype=object)
    out = text(col.astype(object).where(col.notna(), ""), name, mark)
    mark_all(mark, id_checks(name, out))  # null rows are marked already: their "" is not "empty"
    return out


def actions_to_str(col: pd.Series, mark: Mark) -> np.ndarray:
    """(N,) object str actions; null ones are DEFAULT_ACTION (read once per distinct action, as ids)."""
    def read(c: pd.Series, m: Mark) -> np.ndarray:
        out = text(c.astype(object).where(c.notna(), DEFAULT_ACTION), "action", m)
        mark_all(m, action_checks(out))
        return out

    return per_distinct(col, mark, read)


def repeated(text_: str, n: int) -> np.ndarray:
    """(n,) object array holding one str object ``n`` times (``np.full(n, s, dtype=object)`` makes
    n copies of it: ~55 bytes an event for a default action)."""
    out = np.empty(n, dtype=object)
    out.fill(text_)
    return out


def per_distinct(col: pd.Series, mark: Mark, read: Callable[[pd.Series, Mark], np.ndarray]) -> np.ndarray:
    """``read(col, mark)`` (N,) object str, computed on the distinct values of ``col`` and taken back
    to its rows: a log's ids and actions repeat, so each is converted and checked once and its rows
    share one str object (8 bytes a row instead of ~60 for a str of its own). Marks land on every
    row of a failing value. Object columns that are not all text or all integers (a bool beside
    ints would hash equal to 1; lists cannot be hashed) are read row by row, as before."""
    if col.dtype == object and pd.api.types.infer_dtype(col, skipna=True) not in ("string", "integer", "empty"):
        return read(col, mark)
    codes, uniques = pd.factorize(col, use_na_sentinel=False)
    distinct = pd.Series(uniques, dtype=col.dtype)

    def mark_rows(mask, reason: str) -> None:
        mark(np.asarray(mask, dtype=bool)[codes], reason)

    return np.asarray(read(distinct, mark_rows), dtype=object)[codes]


def values_to_float(col: pd.Series, mark: Mark) -> np.ndarray:
    """(N,) float64 values, NaN where there is none."""
    v = pd.to_numeric(col, errors="coerce")
    mark(v.isna() & col.notna(), "value is not a number")
    value = v.to_numpy(dtype=np.float64)
    mark_all(mark, value_checks(value))
    return value


def text(col: pd.Series, name: str, mark: Mark) -> np.ndarray:
    """(N,) object str: strings and numbers as text, UTF-8 bytes decoded. Other values (lists,
    dicts, bools, undecodable bytes) are marked bad with their type, never turned into a repr."""
    if pd.api.types.infer_dtype(col, skipna=True) in ("string", "integer", "empty"):
        return col.astype(str).to_numpy(dtype=object)
    out = np.empty(len(col), dtype=object)
    why = np.full(len(col), "", dtype=object)
    for i, v in enumerate(col.to_numpy(dtype=object)):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                why[i], v = "non-UTF-8 bytes", ""
        elif isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, float, np.integer, np.floating)):
            why[i], v = "list" if isinstance(v, (list, tuple, np.ndarray)) else type(v).__name__, ""
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = str(int(v))
        out[i] = str(v)
    for w in sorted(set(why) - {""}):
        mark(why == w, f"{name} must be text or an integer, not {w}")
    return out


def ts_to_seconds(col: pd.Series, mark: Mark) -> np.ndarray:
    """(N,) float seconds since the epoch from numbers (int ms detected by magnitude), timestamps or
    date-time text; rows that cannot be read or fail :func:`ts_checks` are marked (and read as 0)."""
    mark(col.isna(), "ts is null")
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_complex_dtype(col):
        mark(np.ones(len(col), bool), f"ts must be a number or a timestamp, not {col.dtype}")
        return np.zeros(len(col))
    if pd.api.types.is_datetime64_any_dtype(col):
        ts = col.dt.tz_localize(None) if getattr(col.dt, "tz", None) is not None else col
        secs = ts.astype("datetime64[ns]").astype("int64").to_numpy() / 1e9
        secs = np.where(col.isna().to_numpy(), np.nan, secs)
        other_unit = np.zeros(len(col), bool)
    else:
        num = pd.to_numeric(col, errors="coerce")
        unparsed = num.isna() & col.notna()
        if unparsed.any() and not pd.api.types.is_numeric_dtype(col):
            parsed = pd.to_datetime(col[unparsed], errors="coerce", utc=True, format="mixed")
            ok = parsed.notna()
            num = num.astype(np.float64)
            # seconds whatever the parsed resolution (pandas 3 parses text to microseconds)
            num[parsed.index[ok]] = ((parsed[ok] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy()
            unparsed = num.isna() & col.notna()
        mark(unparsed, "ts is not a number or a timestamp")
        secs, other_unit = to_seconds(num.to_numpy(dtype=np.float64))
    mark_all(mark, ts_checks(secs, other_unit))  # null and unreadable rows are marked already
    return np.nan_to_num(secs, nan=0.0)
