"""Scoring outputs: OUT/users, events, repaired and actions (Parquet) and OUT/summary.json.

One writer serves both engines. The in-process engine writes each output as one file
(:func:`write_outputs`); the Ray pipeline writes each block of whole users as one part of a
directory of the same name (:func:`write_scored` with ``part``) and adds the blocks' summaries
up (:func:`merge_summaries`). ``OUT`` is a local path or a pyarrow filesystem URI (``s3://...``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

OUTPUTS = ("users", "events", "repaired", "actions")


def _fs(out: str | Path) -> tuple[fs.FileSystem, str]:
    out = str(out)
    if "://" in out:
        return fs.FileSystem.from_uri(out)
    return fs.LocalFileSystem(), os.path.abspath(out)


def summarize(result, rep) -> dict:
    """The summary of a scored log, or of one block of whole users: ``rep.summary`` (the repair's
    counts) plus users, users flagged, and the flagged users by anomaly type (most first)."""
    users = result.users
    flagged = users["anomalous"].to_numpy(bool)
    return {**rep.summary, "users": int(len(users)), "users_flagged": int(flagged.sum()),
            "by_type": users.loc[flagged, "anomaly_type"].value_counts().to_dict()}


def write_scored(sg, result, out: str | Path, *, part: str | None = None) -> dict:
    """Repair a scored log (a ``ScoreResult``), write its four outputs and return :func:`summarize`.

    ``part``: write ``OUT/<name>.parquet/<part>`` (one block of the Ray pipeline; a retried block
    overwrites its part instead of adding one) instead of the file ``OUT/<name>.parquet``.
    """
    rep = sg.repair(result)
    filesystem, base = _fs(out)
    frames = {"users": result.users, "events": result.events, "repaired": rep.repaired, "actions": rep.actions}
    for name in OUTPUTS:
        path = f"{base}/{name}.parquet" + (f"/{part}" if part else "")
        pq.write_table(pa.Table.from_pandas(frames[name], preserve_index=False), path, filesystem=filesystem)
    return summarize(result, rep)


def write_summary(summary: dict, out: str | Path) -> None:
    """OUT/summary.json."""
    filesystem, base = _fs(out)
    with filesystem.open_output_stream(f"{base}/summary.json") as f:
        f.write(json.dumps(summary, indent=1).encode())


def write_outputs(sg, result, out: str | Path) -> dict:
    """Write users/events/repaired/actions Parquet and summary.json into ``out``; returns the summary."""
    filesystem, base = _fs(out)
    filesystem.create_dir(base, recursive=True)
    summary = write_scored(sg, result, out)
    summary["bad_rows_skipped"] = result.log.bad_rows.count
    write_summary(summary, out)
    return summary


def merge_summaries(rows: list[dict]) -> dict:
    """Add up block summaries (:func:`summarize`, plus lists such as the Ray nodes a block ran on):
    counts are summed, counts by type merged (most first), lists united and sorted; ``blocks``
    is the number of rows."""
    total: dict = {}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, dict):
                into = total.setdefault(k, {})
                for t, c in v.items():
                    into[t] = into.get(t, 0) + c
            elif isinstance(v, list):
                total[k] = sorted(set(total.get(k, [])).union(v))
            else:
                total[k] = total.get(k, 0) + v
    for k, v in total.items():
        if isinstance(v, dict):
            total[k] = dict(sorted(v.items(), key=lambda kv: -kv[1]))
    total["blocks"] = len(rows)
    return total


def prepare_parts(out: str | Path) -> None:
    """Empty OUT/<name>.parquet/ directories for :func:`write_scored`'s parts; earlier outputs of
    those names (files or directories) are removed."""
    filesystem, base = _fs(out)
    for name in OUTPUTS:
        p = f"{base}/{name}.parquet"
        info = filesystem.get_file_info(p)
        if info.type == fs.FileType.File:
            filesystem.delete_file(p)
        elif info.type == fs.FileType.Directory:
            filesystem.delete_dir(p)
        filesystem.create_dir(p, recursive=True)


def read_output(out: str | Path, name: str) -> pd.DataFrame:
    """One output (a file or a directory of parts) as a frame; events sorted by input row."""
    df = pd.read_parquet(Path(out) / f"{name}.parquet")
    if name == "events":
        df = df.sort_values("row", kind="stable").reset_index(drop=True)
    return df
