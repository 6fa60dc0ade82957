"""A log read in parallel pieces: read units planned from file metadata, each read and validated on
its own with the in-process reader and validator, its rows numbered as in the whole log, its
users assigned to buckets that keep each user's history together (the Ray pipelines' input)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from ..core import storage
from ..core.readers import PARQUET_SUFFIXES, parquet_files, read_parquet, read_table
from ..core.schema import EventLog, EventsError, cap_history, from_frame

TEXT_BYTES_PER_EVENT = 40  # a CSV/JSONL event's size, to size buckets before the file is read
# the largest CSV/JSONL file the Ray pipelines read (in one task: a text file is not split); a larger
# one is refused with the `seqguard convert` command that makes it Parquet (docs/decisions.md)
TEXT_SINGLE_TASK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ReadUnit:
    """One read task: a Parquet row group (or a whole CSV/JSONL file) and its first input row."""

    path: str       # a location (absolute path or URI: core.storage)
    row_group: int  # -1 = the whole file
    row0: int       # input row number of its first row (files in sorted order, as events.read_table)
    n_rows: int     # -1 for a text file: known only once it is read
    root: str = ""  # the events directory, whose Hive partition keys the file's rows carry; "" for a file


def plan_reads(path: str | Path, *, single_text_limit: int | None = None) -> list[ReadUnit]:
    """Read units in input-row order, from file metadata only (no data is read here). ``path``: a
    local path or a filesystem URI; the units name their files so that every node reads the same.
    ``single_text_limit``: an EventsError for a CSV/JSONL file larger than this many bytes."""
    p = storage.absolute(path)
    found = storage.info(p)
    if found.type == FileType.NotFound:
        raise EventsError(f"events path does not exist: {path}")
    if found.type == FileType.Directory:
        files, root = parquet_files(p), p
    else:
        files, root = [p], ""
    units, row0 = [], 0
    for f in files:
        if storage.suffix(f) in PARQUET_SUFFIXES:
            try:
                with storage.open_input_file(f) as fh:
                    md = pq.ParquetFile(fh).metadata
            except (pa.ArrowInvalid, OSError) as exc:
                raise EventsError(f"cannot read events file {f}: {exc}") from exc
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                if n:  # an empty row group would be an empty log to the validator
                    units.append(ReadUnit(f, g, row0, n, root))
                row0 += n
        else:
            # a text file's row count is known only after reading it, so it is one unit (convert
            # large logs to Parquet for parallel reads)
            units.append(ReadUnit(f, -1, row0, -1))
            if single_text_limit is not None and storage.info(f).size > single_text_limit:
                raise EventsError(too_big_text(f, single_text_limit))
    if len(units) > 1 and any(u.n_rows < 0 for u in units):
        raise EventsError(f"{path}: mixing text and Parquet files is not supported")
    if not units or (units[0].n_rows >= 0 and row0 == 0):
        raise EventsError(f"{path}: the log holds no events")
    return units


def too_big_text(f: str, limit: int) -> str:
    """Why a large text log is refused on Ray, and the command that converts it."""
    parquet = f.rsplit(".", 1)[0] + ".parquet"
    return (f"{f} is {storage.info(f).size / 2**20:.0f} MiB of text, over the {limit / 2**20:.0f} MiB that one Ray task "
            f"reads (a CSV/JSONL file is not split across tasks; Parquet row groups are): convert it once with "
            f"`seqguard convert --events {f} --out {parquet}` (streaming, same column types) "
            f"and pass the Parquet file")


def estimate_rows(units: list[ReadUnit]) -> int:
    """Input rows: exact for Parquet, estimated from the file size for a text file."""
    if units[0].n_rows < 0:
        return max(1, (storage.info(units[0].path).size or 0) // TEXT_BYTES_PER_EVENT)
    return sum(u.n_rows for u in units)


def count_rows(units: list[ReadUnit]) -> int:
    """Input rows, exactly (a text file is read to count them)."""
    if units[0].n_rows < 0:
        return read_table(units[0].path).num_rows
    return sum(u.n_rows for u in units)


def user_bucket(user: np.ndarray, n_buckets: int) -> np.ndarray:
    """(N,) a stable bucket per normalised user id string (same on every process and node)."""
    h = pd.util.hash_array(np.asarray(user, dtype=object))
    return (h % np.uint64(n_buckets)).astype(np.int64)


def read_unit(unit: dict, *, n_buckets: int, on_bad_rows: str, max_events: int | None = None) -> pa.Table:
    """Read and validate one unit (a :class:`ReadUnit` as a dict); rows keep their input values
    plus ``_in_row`` (the row number in the whole log) and ``_bucket``.

    ``max_events`` (the history cap): each user's most recent ``max_events`` events of this unit are
    kept (a superset of the user's most recent ones in the whole log, so capping again after the
    shuffle gives the whole log's answer) and ``_cut`` counts the events left out here, on the
    user's first kept event (0 elsewhere): a runaway user brings at most ``max_events`` events per
    read unit into the shuffle, not the whole history."""
    path, g, row0 = unit["path"], int(unit["row_group"]), int(unit["row0"])
    table = read_parquet(path, unit.get("root") or None, g) if g >= 0 else read_table(path)
    src = path if g < 0 else f"{path} (row group {g}; row numbers below count from input row {row0})"
    lg = from_frame(table.to_pandas(), on_bad_rows=on_bad_rows, source=src)
    if max_events is not None:
        lg = cap_history(lg, max_events)
    frame = lg.frame
    frame["_in_row"] = frame.pop("_row").to_numpy() + row0
    frame["_bucket"] = user_bucket(lg.user, n_buckets)
    if max_events is not None:
        frame["_cut"] = cut_column(lg)
    return pa.Table.from_pandas(frame, preserve_index=False)


def cut_column(lg: EventLog) -> np.ndarray:
    """(N,) int64: ``lg.cut`` on each user's first event, 0 elsewhere (how a block carries it)."""
    out = np.zeros(lg.n_events, np.int64)
    if lg.cut is not None and lg.n_users:
        out[lg.offsets[:-1]] = lg.cut
    return out


def cap_block(lg: EventLog, max_events: int | None) -> EventLog:
    """A block of whole users rebuilt from the shuffle or a later stage (``_cut`` still in
    ``lg.frame``): the cuts carried per user added up into ``lg.cut`` and ``_cut`` dropped from the
    frame; then the cap applied again (``max_events`` None: a block capped already)."""
    if "_cut" in lg.frame.columns:
        cut = lg.frame.pop("_cut").to_numpy(np.int64)
        lg.cut = np.add.reduceat(cut, lg.offsets[:-1]) if lg.n_users else np.zeros(0, np.int64)
    return lg if max_events is None else cap_history(lg, max_events)
