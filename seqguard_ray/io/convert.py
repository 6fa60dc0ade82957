"""``seqguard convert``: a CSV or JSONL log to one Parquet file, streaming (bounded memory), with the
column types the in-process reader (:mod:`seqguard_ray.core.readers`) gives the same file.

The Ray pipelines read a text file in one task (a CSV cannot be split by byte range safely: a
quoted field may hold a newline, and a column's type depends on every row), so a large text log
is converted once; the Parquet file's row groups are then read in parallel.

Two passes over the file, one block in memory at a time: the first decides each column's type
from all its rows, the second converts every block to it and writes a row group.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..core.readers import _BOOLS, _CANONICAL_INT, _CSV_NULLS, _ID_COLUMNS, read_table
from ..core.schema import EventsError

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 500_000  # rows per Parquet row group: one Ray read task each
BLOCK_BYTES = 64 * 2**20  # text read at a time


@dataclass
class _Kind:
    """What every block of a CSV column held so far (the facts core.readers._typed_text decides on)."""

    utf8: bool = True
    present: bool = False
    digits: bool = True
    canonical: bool = True
    fits_int: bool = True
    floats: bool = True
    bools: bool = True

    def update(self, raw: pa.Array) -> None:
        try:
            col = pc.cast(raw, pa.string())
        except pa.ArrowInvalid:
            self.utf8 = False
            return
        present = pc.drop_null(pc.if_else(pc.is_in(col, value_set=_CSV_NULLS), pa.scalar(None, pa.string()), col))
        if len(present) == 0:
            return
        self.present = True
        digits = pc.all(pc.match_substring_regex(present, r"^-?[0-9]+$")).as_py()
        self.digits &= digits
        if digits:
            self.canonical &= pc.all(pc.match_substring_regex(present, _CANONICAL_INT)).as_py()
            self.fits_int &= _casts(present, pa.int64())
        self.floats &= _casts(present, pa.float64())
        self.bools &= pc.all(pc.or_(pc.is_in(present, value_set=_BOOLS[0]),
                                    pc.is_in(present, value_set=_BOOLS[1]))).as_py()

    def type_for(self, name: str) -> str:
        if not self.utf8:
            return "binary"
        if not self.present:
            return "null"
        if self.digits:
            return "int64" if self.canonical and self.fits_int else "text"
        if name in _ID_COLUMNS:
            return "text"
        return "float64" if self.floats else "bool" if self.bools else "text"


def _casts(a: pa.Array, t: pa.DataType) -> bool:
    try:
        pc.cast(a, t)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def _convert_column(name: str, raw: pa.Array, kind: str) -> pa.Array:
    """One block of a CSV column as core.readers._typed_text types the whole column."""
    if kind == "binary":
        return raw
    if kind == "null":
        return pa.nulls(len(raw))
    col = pc.cast(raw, pa.string())
    vals = pc.if_else(pc.is_in(col, value_set=_CSV_NULLS), pa.scalar(None, pa.string()), col)
    if kind == "int64":
        return pc.cast(vals, pa.int64())
    if kind == "float64":
        return pc.cast(vals, pa.float64())
    if kind == "bool":
        return pc.if_else(pc.is_null(vals), pa.scalar(None, pa.bool_()), pc.is_in(vals, value_set=_BOOLS[0]))
    return vals if name == "ts" else col


def _csv_batches(src: Path, block_bytes: int):
    delimiter = "\t" if src.suffix == ".tsv" else ","
    opts = pacsv.ParseOptions(delimiter=delimiter)
    with pacsv.open_csv(src, parse_options=opts) as reader:
        names = reader.schema.names
    convert = pacsv.ConvertOptions(column_types={n: pa.binary() for n in names})
    with pacsv.open_csv(src, parse_options=opts, convert_options=convert,
                        read_options=pacsv.ReadOptions(block_size=block_bytes)) as reader:
        for batch in reader:
            yield batch


def _convert_csv(src: Path, writer_for, block_bytes: int) -> int:
    kinds: dict[str, _Kind] = {}
    for batch in _csv_batches(src, block_bytes):
        for name, col in zip(batch.schema.names, batch.columns):
            kinds.setdefault(name, _Kind()).update(col)
    types = {n: k.type_for(n) for n, k in kinds.items()}
    rows = 0
    for batch in _csv_batches(src, block_bytes):
        table = pa.Table.from_arrays([_convert_column(n, c, types[n]) for n, c in zip(batch.schema.names, batch.columns)],
                                     names=batch.schema.names)
        writer_for(table.schema).write_table(table)
        rows += table.num_rows
    return rows


def _line_blocks(src: Path, block_bytes: int):
    """The file in blocks of whole lines (JSON lines hold no raw newline), each as a temporary file
    that core.readers.read_table reads as the in-process engine reads the whole file."""
    with open(src, "rb") as f, tempfile.TemporaryDirectory(prefix="seqguard-convert-") as tmp:
        part = Path(tmp) / "block.jsonl"
        rest = b""
        while True:
            data = f.read(block_bytes)
            buf = rest + data
            cut = buf.rfind(b"\n") + 1 if data else len(buf)
            block, rest = buf[:cut], buf[cut:]
            if block.strip():
                part.write_bytes(block)
                yield read_table(part)
            if not data:
                return


def _unified(types: list[pa.DataType]) -> pa.DataType:
    """One type for a JSON column whose blocks were read apart: the in-process reader's answer
    when the blocks agree or mix integers with floats; else text."""
    kinds = {t for t in types if not pa.types.is_null(t)}
    if not kinds:
        return pa.null()
    if len(kinds) == 1:
        return kinds.pop()
    if kinds <= {pa.int64(), pa.float64()}:
        return pa.float64()
    return pa.string()


def _convert_jsonl(src: Path, writer_for, block_bytes: int) -> int:
    seen: dict[str, list[pa.DataType]] = {}
    for table in _line_blocks(src, block_bytes):
        for f in table.schema:
            seen.setdefault(f.name, []).append(f.type)
    schema = pa.schema([(n, _unified(ts)) for n, ts in seen.items()])
    rows = 0
    for table in _line_blocks(src, block_bytes):
        cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
                for f in schema]
        writer_for(schema).write_table(pa.Table.from_arrays(cols, schema=schema))
        rows += table.num_rows
    return rows


def convert_to_parquet(src: str | Path, out: str | Path, *, row_group_rows: int = ROW_GROUP_ROWS,
                       block_bytes: int = BLOCK_BYTES) -> int:
    """Write the CSV/TSV/JSONL log ``src`` as the Parquet file ``out`` (row groups of at most
    ``row_group_rows`` rows); returns the rows written. Memory: a few blocks of ``block_bytes``."""
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise EventsError(f"events file does not exist: {src}")
    suffix = src.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        convert = _convert_csv
    elif suffix in {".jsonl", ".ndjson", ".json"}:
        convert = _convert_jsonl
    else:
        raise EventsError(f"convert reads .csv, .tsv or .jsonl files, got {src.name!r}")
    if out.suffix not in {".parquet", ".pq"}:
        raise EventsError(f"--out must name a .parquet file, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    state: dict = {}

    def writer_for(schema: pa.Schema) -> pq.ParquetWriter:
        if "w" not in state:
            state["w"] = pq.ParquetWriter(tmp, schema)
        return _RowGroups(state["w"], row_group_rows)

    try:
        try:
            rows = convert(src, writer_for, block_bytes)
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
            raise EventsError(f"cannot convert events file {src}: {exc}") from exc
        finally:
            if "w" in state:
                state["w"].close()
        if not rows:
            raise EventsError(f"{src}: the log holds no events")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("converted %s: %d rows -> %s", src, rows, out)
    return rows


@dataclass
class _RowGroups:
    writer: pq.ParquetWriter
    rows: int

    def write_table(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=self.rows)
