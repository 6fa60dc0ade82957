"""`seqguard convert`: a text log to Parquet in small blocks gives the table the in-process reader
gives the whole file (types decided over every block), in several row groups."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from seqguard_ray.cli.main import main
from seqguard_ray.core.readers import read_table
from seqguard_ray.core.schema import EventsError
from seqguard_ray.io.convert import convert_to_parquet
from seqguard_ray.io.read_plan import plan_reads

N = 3000


def _csv_text() -> str:
    rows = ["user_id,item_id,ts,action,value,zip,flag,note,late"]
    for i in range(N):
        user = f"{i % 50:03d}"                    # zero-padded ids stay text
        item = str(i % 70) if i < N - 5 else f"guest-{i}"  # numbers, then text at the very end: text
        value = "NA" if i % 11 == 0 else (str(i) if i < N // 2 else f"{i}.5")  # ints, then floats: float
        flag = "true" if i % 3 else "False"
        late = "" if i < N - 1 else "x"           # empty until the last row
        rows.append(f"{user},{item},{1_700_000_000 + i},view,{value},0{i % 9}134,{flag},n{i},{late}")
    return "\n".join(rows) + "\n"


def _assert_same(a, b) -> None:
    assert a.schema.equals(b.schema), (a.schema, b.schema)
    assert a.to_pandas().equals(b.to_pandas())


def test_csv_converted_in_blocks_reads_as_the_whole_file(tmp_path):
    src = tmp_path / "ev.csv"
    src.write_text(_csv_text())
    out = tmp_path / "ev.parquet"
    assert convert_to_parquet(src, out, row_group_rows=500, block_bytes=4096) == N
    _assert_same(read_table(out), read_table(src))
    assert pq.ParquetFile(out).metadata.num_row_groups >= 6
    assert len(plan_reads(out)) >= 6  # Ray reads it in that many tasks


def test_jsonl_converted_in_blocks_reads_as_the_whole_file(tmp_path):
    src = tmp_path / "ev.jsonl"
    lines = []
    for i in range(N):
        d = {"user_id": f"u{i % 40}", "item_id": i % 60, "ts": 1_700_000_000 + i, "when": "2026-01-02T03:04:05",
             "value": i if i < N // 2 else i + 0.5}
        if i > N - 10:
            d["extra"] = "late key"
        lines.append(json.dumps(d))
    src.write_text("\n".join(lines))  # no final newline
    out = tmp_path / "ev.parquet"
    assert convert_to_parquet(src, out, row_group_rows=1000, block_bytes=8192) == N
    _assert_same(read_table(out), read_table(src))


def test_cli_convert_and_its_errors(tmp_path, capsys):
    src = tmp_path / "ev.csv"
    pd.DataFrame({"user_id": ["a", "b"], "item_id": [1, 2], "ts": [1_700_000_000, 1_700_000_001]}).to_csv(src, index=False)
    assert main(["-q", "convert", "--events", str(src), "--out", str(tmp_path / "ev.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "ev.parquet")) == 2
    assert main(["-q", "convert", "--events", str(src), "--out", str(tmp_path / "ev.csv2")]) == 2
    assert "must name a .parquet file" in capsys.readouterr().err
    with pytest.raises(EventsError, match="does not exist"):
        convert_to_parquet(tmp_path / "nope.csv", tmp_path / "x.parquet")
    (tmp_path / "empty.csv").write_text("user_id,item_id,ts\n")
    with pytest.raises(EventsError, match="no events"):
        convert_to_parquet(tmp_path / "empty.csv", tmp_path / "e.parquet")
    assert not (tmp_path / "e.parquet").exists() and not (tmp_path / "e.parquet.partial").exists()


def test_ray_plan_refuses_a_large_text_file_naming_the_convert_command(tmp_path):
    src = tmp_path / "ev.csv"
    src.write_text(_csv_text())
    assert len(plan_reads(src)) == 1  # the in-process path and small files: read as before
    with pytest.raises(EventsError, match=r"over the 0 MiB that one Ray task reads .*`seqguard convert --events "
                                          r".*ev\.csv --out .*ev\.parquet`"):
        plan_reads(src, single_text_limit=1000)
