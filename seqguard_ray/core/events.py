"""Behaviour logs in: reading, validation and per-user time-ordered sequences.

Required columns: ``user_id``, ``item_id``, ``ts`` (int seconds or milliseconds, a timestamp
type, or date-time text). Optional: ``action`` (string, default ``"click"``) and ``value``
(float). Any other column is carried through unchanged to the repaired output, and so is a
Parquet directory's Hive partition key (``dt=2026-12-01/part-0.parquet``: a string column
``dt``). Rows that cannot be used are counted and shown; with ``on_bad_rows="error"`` (the
default) they stop the run, with ``"skip"`` they are left out and reported. Nothing is dropped
silently.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id", "ts")
RESERVED = ("_row", "weight")  # columns seqguard adds: rejected in the input rather than overwritten
DEFAULT_ACTION = "click"
# Largest accepted timestamp after unit detection: 2100-01-01 in seconds.
MAX_TS_SECONDS = 4_102_444_800
# A timestamp column (or gRPC sequence) whose median is above this is read as milliseconds (1e11 s is the year 5138).
MS_THRESHOLD = 100_000_000_000
MAX_ID_LENGTH = 256
# Largest accepted |value|: squares and sums over millions of such values stay finite in float64.
MAX_ABS_VALUE = 1e15
BAD_ROW_EXAMPLES = 5
PARQUET_SUFFIXES = {".parquet", ".pq"}


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
        shown = "\n  ".join(self.examples)
        return f"{self.count} bad row(s) ({by_reason}); first ones:\n  {shown}"


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

    @property
    def n_events(self) -> int:
        return len(self.ts)

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def users(self) -> np.ndarray:
        """(U,) the user id string of each sequence."""
        return self.user[self.offsets[:-1]]

    def user_index(self) -> np.ndarray:
        """(N,) the sequence number of each event."""
        return np.repeat(np.arange(self.n_users), np.diff(self.offsets))


def parquet_files(root: Path) -> list[Path]:
    """The Parquet files under a directory, in the (sorted) order that numbers the input rows."""
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix in PARQUET_SUFFIXES)
    if not files:
        raise EventsError(f"events directory {root} holds no .parquet files")
    return files


def read_parquet(path: str | Path, root: str | Path | None = None, row_group: int | None = None) -> pa.Table:
    """One Parquet file (or one of its row groups), with the Hive partition keys of its directories
    below ``root`` (``key=value`` path parts, URI-decoded) as string columns."""
    f = Path(path)
    table = pq.ParquetFile(f).read_row_group(row_group) if row_group is not None else pq.read_table(f)
    if root is None:
        return table
    for part in f.parent.relative_to(root).parts:
        key, eq, value = part.partition("=")
        if not eq or not key:
            continue
        if key in table.column_names:
            raise EventsError(f"{f}: column {key!r} is both in the file and a partition key of its directory {part!r}")
        table = table.append_column(key, pa.array([unquote(value)] * table.num_rows, pa.string()))
    return table


def read_table(path: str | Path) -> pa.Table:
    """Read a Parquet file or directory, a CSV or a JSONL file into an Arrow table."""
    p = Path(path)
    if not p.exists():
        raise EventsError(f"events path does not exist: {p}")
    try:
        if p.is_dir():
            tables = [read_parquet(f, p) for f in parquet_files(p)]
            return pa.concat_tables(tables, promote_options="permissive")
        suffix = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
        if p.stat().st_size == 0:
            raise EventsError(f"events file is empty: {p}")
        if suffix in PARQUET_SUFFIXES:
            return read_parquet(p)
        if suffix in {".csv", ".csv.gz", ".tsv"}:
            return _read_csv(p, pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
        if suffix in {".jsonl", ".json", ".ndjson", ".jsonl.gz"}:
            return _read_json(p)
    except EventsError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
        raise EventsError(f"cannot read events file {p}: {exc}") from exc
    raise EventsError(f"unsupported events format {p.suffix!r} for {p}: use .parquet, .csv or .jsonl")


_ID_COLUMNS = ("user_id", "item_id")
_CSV_NULLS = pa.array(pacsv.ConvertOptions().null_values, pa.string())  # pyarrow's: "", "NA", "null", ...
_CANONICAL_INT = r"^-?(0|[1-9][0-9]*)$"
_BOOLS = (pa.array(["true", "True", "TRUE"]), pa.array(["false", "False", "FALSE"]))


def _read_csv(p: Path, opts: pacsv.ParseOptions) -> pa.Table:
    """A CSV file with each column typed only where its text survives the round trip: integers
    without leading zeros, numbers, booleans; else the text as written. Type inference alone would
    read ids "007" and "7" as one user 7, a zip code "02134" as 2134, and dates into date types,
    so that outputs would neither keep the input's values nor join back to it."""
    with pacsv.open_csv(p, parse_options=opts) as reader:
        names = reader.schema.names
    raw = pacsv.read_csv(p, parse_options=opts,
                         convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names}))
    return pa.Table.from_arrays([_typed_text(n, raw.column(i)) for i, n in enumerate(raw.column_names)],
                                names=raw.column_names)


def _typed_text(name: str, raw: pa.ChunkedArray) -> pa.ChunkedArray:
    """One CSV column: int64, float64 or bool where every non-null cell is one (ids: int64 or
    text), else the text unchanged (ts with its null cells as nulls, so they are named); bytes
    that are not UTF-8 stay bytes, for validation to name the rows."""
    try:
        col = pc.cast(raw, pa.string())
    except pa.ArrowInvalid:
        return raw
    null = pc.is_in(col, value_set=_CSV_NULLS)
    vals = pc.if_else(null, pa.scalar(None, pa.string()), col)
    present = pc.drop_null(vals)
    if len(present) == 0:
        return pa.chunked_array([pa.nulls(len(col))])
    text = vals if name == "ts" else col
    if pc.all(pc.match_substring_regex(present, r"^-?[0-9]+$")).as_py():
        if pc.all(pc.match_substring_regex(present, _CANONICAL_INT)).as_py():
            try:
                return pc.cast(vals, pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # beyond int64
        return text  # zero-padded codes ("02134") or beyond int64: the digits as written
    if name in _ID_COLUMNS:
        return col
    try:
        return pc.cast(vals, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    true, false = (pc.is_in(present, value_set=v) for v in _BOOLS)
    if pc.all(pc.or_(true, false)).as_py():
        return pc.if_else(pc.is_null(vals), pa.scalar(None, pa.bool_()), pc.is_in(vals, value_set=_BOOLS[0]))
    return text


def _read_json(p: Path) -> pa.Table:
    """JSON lines; strings stay strings (pyarrow would read ISO-looking ones as timestamps, which
    changes the type of ts and of carried-through columns). A column that mixes numbers and
    strings (ids 7 and "guest-7") becomes text, numbers written as JSON writes them."""
    try:
        table = pajson.read_json(p)
    except pa.ArrowInvalid as exc:
        if not re.search(r"Column\(/[^/)]+\) changed from (number|string|boolean) to (number|string|boolean)", str(exc)):
            raise
        return _read_json_mixed(p)
    stamped = [f for f in table.schema if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)]
    if not stamped:
        return table
    schema = pa.schema([pa.field(f.name, pa.string()) if f in stamped else f for f in table.schema])
    return pajson.read_json(p, parse_options=pajson.ParseOptions(explicit_schema=schema))


def _read_json_mixed(p: Path) -> pa.Table:
    """JSON lines whose columns may mix scalar types: those columns as text."""
    df = pd.read_json(p, lines=True, dtype=False)
    for c in df.columns:
        kinds = {type(v) for v in df[c].dropna()}
        if len(kinds) > 1 and kinds <= {str, int, float, bool}:
            df[c] = df[c].map(lambda v: v if v is None or isinstance(v, str) or pd.isna(v) else json.dumps(v))
    return pa.Table.from_pandas(df, preserve_index=False)


def read_events(path: str | Path, *, on_bad_rows: str = "error") -> EventLog:
    """Read and validate a behaviour log from disk. See :func:`from_frame`."""
    table = read_table(path)
    return from_frame(table.to_pandas(), on_bad_rows=on_bad_rows, source=str(path))


def from_frame(df: pd.DataFrame, *, on_bad_rows: str = "error", source: str = "events") -> EventLog:
    """Validate a frame of events and sort it into per-user sequences.

    Raises :class:`EventsError` for a missing column, an empty log, or (with
    ``on_bad_rows="error"``) any bad row; the message counts them and shows the first ones.
    """
    if on_bad_rows not in ("error", "skip"):
        raise EventsError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")
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
    df = df.reset_index(drop=True)
    df["_row"] = np.arange(len(df), dtype=np.int64)

    bad = pd.Series("", index=df.index, dtype=object)

    def mark(mask: np.ndarray | pd.Series, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool) & (bad.to_numpy() == "")
        bad[mask] = reason

    user = _ids_to_str(df["user_id"], "user_id", mark)
    item = _ids_to_str(df["item_id"], "item_id", mark)
    ts = _ts_to_seconds(df["ts"], mark)
    if "action" in df.columns:
        a = df["action"]
        action = _text(a.astype(object).where(a.notna(), DEFAULT_ACTION), "action", mark)
        mark(np.fromiter((len(s) > 64 for s in action), bool, len(action)), "action longer than 64 characters")
    else:
        action = np.full(len(df), DEFAULT_ACTION, dtype=object)
    if "value" in df.columns:
        v = pd.to_numeric(df["value"], errors="coerce")
        mark(v.isna() & df["value"].notna(), "value is not a number")
        value = v.to_numpy(dtype=np.float64)
        mark(np.isinf(value), "value is infinite")
        mark(value_out_of_range(value), f"value is out of range (|value| > {MAX_ABS_VALUE:g})")
    else:
        value = np.full(len(df), np.nan)

    bad_mask = bad.to_numpy() != ""
    report = BadRows()
    if bad_mask.any():
        report.count = int(bad_mask.sum())
        report.reasons = bad[bad_mask].value_counts().to_dict()
        shown = [c for c in (*REQUIRED, "action", "value") if c in df.columns]
        for i in np.flatnonzero(bad_mask)[:BAD_ROW_EXAMPLES]:
            row = ", ".join(f"{c}={_shown(df.at[i, c])}" for c in shown)
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


def _shown(v: object, limit: int = 60) -> str:
    """A cell as a person reads it in an error: numbers plain, text quoted and cut at ``limit``."""
    if isinstance(v, np.generic):
        v = v.item()
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _ids_to_str(col: pd.Series, name: str, mark) -> np.ndarray:
    """Ids as strings; integral floats (CSV ints with gaps) print without decimals."""
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
    out = _text(col.astype(object).where(col.notna(), ""), name, mark)
    lengths = np.fromiter((len(s) for s in out), dtype=np.int64, count=len(out))
    mark(col.notna() & (lengths == 0), f"{name} is empty")
    mark(lengths > MAX_ID_LENGTH, f"{name} longer than {MAX_ID_LENGTH} characters")
    return out


def _text(col: pd.Series, name: str, mark) -> np.ndarray:
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


def value_out_of_range(value: np.ndarray) -> np.ndarray:
    """(N,) bool: |value| above MAX_ABS_VALUE (infinities included; NaN = no value is fine)."""
    return np.abs(np.nan_to_num(value)) > MAX_ABS_VALUE


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


def _ts_to_seconds(col: pd.Series, mark) -> np.ndarray:
    """Timestamps as float seconds since the epoch; int ms are detected by magnitude."""
    mark(col.isna(), "ts is null")
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_complex_dtype(col):
        mark(np.ones(len(col), bool), f"ts must be a number or a timestamp, not {col.dtype}")
        return np.zeros(len(col))
    if pd.api.types.is_datetime64_any_dtype(col):
        ts = col.dt.tz_localize(None) if getattr(col.dt, "tz", None) is not None else col
        secs = ts.astype("datetime64[ns]").astype("int64").to_numpy() / 1e9
        secs = np.where(col.isna().to_numpy(), np.nan, secs)
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
        mark(other_unit, "ts looks like seconds in a column of milliseconds (mixed units)")
    mark(~np.isfinite(secs) & col.notna().to_numpy(), "ts is not finite")
    mark(secs < 0, "ts is negative")
    mark(secs > MAX_TS_SECONDS, "ts is after the year 2100")
    return np.nan_to_num(secs, nan=0.0)
