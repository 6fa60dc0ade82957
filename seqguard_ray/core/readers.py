"""Behaviour logs from storage: Parquet files and directories (with Hive partition keys), CSV, JSONL,
on a local disk or an object store (any location :mod:`~seqguard_ray.core.storage` resolves).

A Parquet directory's Hive partition key (``dt=2026-12-01/part-0.parquet``) becomes a string
column ``dt``, carried through like any extra column. Readers keep each column's values as
written (see :func:`_read_csv`, :func:`_read_json`); validation is :func:`~seqguard_ray.core.schema.from_frame`.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from . import storage
from .schema import EventLog, EventsError, from_frame

PARQUET_SUFFIXES = {".parquet", ".pq"}


def parquet_files(root: str | Path) -> list[str]:
    """The Parquet files under a directory (a local one or a URI prefix), as locations, in the
    (sorted) order that numbers the input rows."""
    files = [f for f, _ in storage.list_files(root) if storage.suffix(f) in PARQUET_SUFFIXES]
    if not files:
        raise EventsError(f"events directory {root} holds no .parquet files")
    return files


def read_parquet(path: str | Path, root: str | Path | None = None, row_group: int | None = None) -> pa.Table:
    """One Parquet file (or one of its row groups), with the Hive partition keys of its directories
    below ``root`` (``key=value`` path parts, URI-decoded) as string columns."""
    try:
        with storage.open_input_file(path) as f:
            table = pq.ParquetFile(f).read_row_group(row_group) if row_group is not None else pq.read_table(f)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:  # the message names a buffer, not the file
        raise EventsError(f"cannot read events file {path}: {exc}") from exc
    if root is None:
        return table
    for part in storage.relative_parts(path, root):
        key, eq, value = part.partition("=")
        if not eq or not key:
            continue
        if key in table.column_names:
            raise EventsError(f"{path}: column {key!r} is both in the file and a partition key of its directory {part!r}")
        table = table.append_column(key, pa.array([unquote(value)] * table.num_rows, pa.string()))
    return table


def read_table(path: str | Path) -> pa.Table:
    """Read a Parquet file or directory, a CSV or a JSONL file into an Arrow table; ``path`` is a
    local path or a filesystem URI (:mod:`~seqguard_ray.core.storage`)."""
    p = str(path)
    found = storage.info(p)
    if found.type == FileType.NotFound:
        raise EventsError(f"events path does not exist: {p}")
    try:
        if found.type == FileType.Directory:
            tables = [read_parquet(f, p) for f in parquet_files(p)]
            return pa.concat_tables(tables, promote_options="permissive")
        sfx = storage.suffixes(p)
        suffix = "".join(sfx[-2:]) if sfx[-1:] == [".gz"] else "".join(sfx[-1:])
        if found.size == 0:
            raise EventsError(f"events file is empty: {p}")
        if suffix in PARQUET_SUFFIXES:
            return read_parquet(p)
        if suffix in {".csv", ".csv.gz", ".tsv"}:
            return _read_csv(_text(p), pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","))
        if suffix in {".jsonl", ".json", ".ndjson", ".jsonl.gz"}:
            return _read_json(_text(p))
    except EventsError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
        raise EventsError(f"cannot read events file {p}: {exc}") from exc
    raise EventsError(f"unsupported events format {storage.suffix(p)!r} for {p}: use .parquet, .csv or .jsonl")


def _text(location: str) -> pa.Buffer:
    """A text file's bytes, decompressed (``.gz``), read once (from an object store: one GET)."""
    with storage.open_input_stream(location) as f:
        return f.read_buffer()


_ID_COLUMNS = ("user_id", "item_id")
_CSV_NULLS = pa.array(pacsv.ConvertOptions().null_values, pa.string())  # pyarrow's: "", "NA", "null", ...
_CANONICAL_INT = r"^-?(0|[1-9][0-9]*)$"
_BOOLS = (pa.array(["true", "True", "TRUE"]), pa.array(["false", "False", "FALSE"]))


def _read_csv(data: pa.Buffer, opts: pacsv.ParseOptions) -> pa.Table:
    """A CSV file with each column typed only where its text survives the round trip: integers
    without leading zeros, numbers, booleans; else the text as written. Type inference alone would
    read ids "007" and "7" as one user 7, a zip code "02134" as 2134, and dates into date types,
    so that outputs would neither keep the input's values nor join back to it."""
    with pacsv.open_csv(pa.BufferReader(data), parse_options=opts) as reader:
        names = reader.schema.names
    raw = pacsv.read_csv(pa.BufferReader(data), parse_options=opts,
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


def _read_json(data: pa.Buffer) -> pa.Table:
    """JSON lines; strings stay strings (pyarrow would read ISO-looking ones as timestamps, which
    changes the type of ts and of carried-through columns). A column that mixes numbers and
    strings (ids 7 and "guest-7") becomes text, numbers written as JSON writes them."""
    try:
        table = pajson.read_json(pa.BufferReader(data))
    except pa.ArrowInvalid as exc:
        if not re.search(r"Column\(/[^/)]+\) changed from (number|string|boolean) to (number|string|boolean)", str(exc)):
            raise
        return _read_json_mixed(data)
    stamped = [f for f in table.schema if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)]
    if not stamped:
        return table
    schema = pa.schema([pa.field(f.name, pa.string()) if f in stamped else f for f in table.schema])
    return pajson.read_json(pa.BufferReader(data), parse_options=pajson.ParseOptions(explicit_schema=schema))


def _read_json_mixed(data: pa.Buffer) -> pa.Table:
    """JSON lines whose columns may mix scalar types: those columns as text."""
    df = pd.read_json(io.BytesIO(data.to_pybytes()), lines=True, dtype=False)
    for c in df.columns:
        kinds = {type(v) for v in df[c].dropna()}
        if len(kinds) > 1 and kinds <= {str, int, float, bool}:
            df[c] = df[c].map(lambda v: v if v is None or isinstance(v, str) or pd.isna(v) else json.dumps(v))
    return pa.Table.from_pandas(df, preserve_index=False)


def read_events(path: str | Path, *, on_bad_rows: str = "error") -> EventLog:
    """Read and validate a behaviour log from disk. See :func:`from_frame`."""
    table = read_table(path)
    return from_frame(table.to_pandas(), on_bad_rows=on_bad_rows, source=str(path))
