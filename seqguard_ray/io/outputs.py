"""Scoring outputs: OUT/users, events, repaired and actions (Parquet), the campaign stage's
OUT/items and OUT/campaigns (Parquet) and OUT/summary.json.

One writer serves both engines. The in-process engine writes each output as one file
(:func:`write_outputs`); the Ray pipeline writes each block of whole users as one part of a
directory of the same name (:func:`write_scored` with ``part``) and adds the blocks' summaries
up (:func:`merge_summaries`). ``OUT`` is a local path or a pyarrow filesystem URI (``s3://...``),
resolved by :func:`seqguard_ray.core.storage.resolve` like every other location.

The campaign tables are global: a block of users cannot write them. The in-process engine
writes them in :func:`write_outputs`; the Ray pipeline's global campaign pass, which runs after
the per-user blocks, writes them with :func:`write_campaigns` and adds
:func:`campaign_summary` to the merged summary (``prepare_parts`` clears earlier ones first).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

from ..core import storage

OUTPUTS = ("users", "events", "repaired", "actions")
CAMPAIGN_OUTPUTS = ("items", "campaigns")  # written only when the campaign stage ran
ITEM_COLUMNS = ("item_id", "campaign_score", "suspicious", "campaign_id", "reasons")
CAMPAIGN_COLUMNS = ("campaign_id", "user_ids", "target_item_ids", "first_ts", "last_ts", "n_events", "score", "reasons")
_LIST_COLUMNS = ("user_ids", "target_item_ids")  # list<string>: ids as text


def summarize(result, rep) -> dict:
    """The summary of a scored log, or of one block of whole users: ``rep.summary`` (the repair's
    counts) plus users, users flagged, the flagged users by anomaly type (most first), and the users
    over the history cap with their events left out (``users_truncated``, ``events_truncated``); with
    campaigns (``result.campaigns`` not None) also :func:`campaign_summary`."""
    users = result.users
    flagged = users["anomalous"].to_numpy(bool)
    out = {**rep.summary, "users": int(len(users)), "users_flagged": int(flagged.sum()),
           "by_type": users.loc[flagged, "anomaly_type"].value_counts().to_dict(), **result.log.truncated}
    campaigns = getattr(result, "campaigns", None)
    if campaigns is not None:
        out.update(campaign_summary(campaigns, rep.summary))
    return out


def campaign_summary(campaigns, repair_summary: dict) -> dict[str, int]:
    """campaigns, campaign_members (users in a campaign), suspicious_items and
    campaign_events_removed (the repair's count; 0 when it reports none) of a ``CampaignResult``."""
    return {"campaigns": int(len(campaigns.campaigns)),
            "campaign_members": int((np.asarray(campaigns.user_campaign) >= 0).sum()),
            "suspicious_items": int(campaigns.items["suspicious"].to_numpy(bool).sum()),
            "campaign_events_removed": int(repair_summary.get("campaign_events_removed", 0))}


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; has {list(map(str, frame.columns))}")


def items_table(items: pd.DataFrame) -> pa.Table:
    """OUT/items.parquet: item_id (input type), campaign_score, suspicious, campaign_id (nullable
    int64: no campaign), reasons; extra columns follow."""
    _require(items, ITEM_COLUMNS, "campaign items")
    cols = list(ITEM_COLUMNS) + [c for c in items.columns if c not in ITEM_COLUMNS]
    frame = items[cols].assign(campaign_score=items["campaign_score"].astype(np.float64),
                               suspicious=items["suspicious"].astype(bool),
                               campaign_id=items["campaign_id"].astype("Int64"),
                               reasons=items["reasons"].astype(str))
    return pa.Table.from_pandas(frame, preserve_index=False)


def campaigns_table(campaigns: pd.DataFrame) -> pa.Table:
    """OUT/campaigns.parquet: campaign_id (int64), user_ids and target_item_ids (list<string>),
    first_ts / last_ts (the input ts type), n_events (int64), score, reasons; extra columns follow.
    Typed explicitly so that a log without campaigns still writes a typed, empty table."""
    _require(campaigns, CAMPAIGN_COLUMNS, "campaigns")
    cols = list(CAMPAIGN_COLUMNS) + [c for c in campaigns.columns if c not in CAMPAIGN_COLUMNS]
    frame = campaigns[cols].reset_index(drop=True)
    for c in _LIST_COLUMNS:
        frame[c] = pd.Series([[str(v) for v in ids] for ids in frame[c]], index=frame.index, dtype=object)
    frame = frame.astype({"campaign_id": np.int64, "n_events": np.int64, "score": np.float64, "reasons": str})
    schema = pa.Schema.from_pandas(frame.drop(columns=list(_LIST_COLUMNS)), preserve_index=False)
    for i, f in enumerate(schema):  # an empty text column (no campaigns) has no type to infer
        if pa.types.is_null(f.type):
            schema = schema.set(i, pa.field(f.name, pa.string()))
    for c in _LIST_COLUMNS:
        schema = schema.insert(cols.index(c), pa.field(c, pa.list_(pa.string())))
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def write_campaigns(campaigns, out: str | Path) -> None:
    """OUT/items.parquet and OUT/campaigns.parquet of a ``CampaignResult`` (one file each: the
    tables are global, written once by whichever engine ran the campaign pass)."""
    filesystem, base = storage.resolve(out)
    _clear(filesystem, base, CAMPAIGN_OUTPUTS)
    pq.write_table(items_table(campaigns.items), f"{base}/items.parquet", filesystem=filesystem)
    pq.write_table(campaigns_table(campaigns.campaigns), f"{base}/campaigns.parquet", filesystem=filesystem)


def _clear(filesystem: fs.FileSystem, base: str, names: tuple[str, ...]) -> None:
    """Remove OUT/<name>.parquet (file or directory of parts) left by an earlier run."""
    for name in names:
        p = f"{base}/{name}.parquet"
        info = filesystem.get_file_info(p)
        if info.type == fs.FileType.File:
            filesystem.delete_file(p)
        elif info.type == fs.FileType.Directory:
            filesystem.delete_dir(p)


def write_scored(sg, result, out: str | Path, *, part: str | None = None) -> dict:
    """Repair a scored log (a ``ScoreResult``), write its four outputs and return :func:`summarize`.

    ``part``: write ``OUT/<name>.parquet/<part>`` (one block of the Ray pipeline; a retried block
    overwrites its part instead of adding one) instead of the file ``OUT/<name>.parquet``.
    """
    rep = sg.repair(result)
    filesystem, base = storage.resolve(out)
    frames = {"users": result.users, "events": result.events, "repaired": rep.repaired, "actions": rep.actions}
    for name in OUTPUTS:
        path = f"{base}/{name}.parquet" + (f"/{part}" if part else "")
        pq.write_table(pa.Table.from_pandas(frames[name], preserve_index=False), path, filesystem=filesystem)
    return summarize(result, rep)


def write_summary(summary: dict, out: str | Path) -> None:
    """OUT/summary.json."""
    filesystem, base = storage.resolve(out)
    with filesystem.open_output_stream(f"{base}/summary.json") as f:
        f.write(json.dumps(summary, indent=1).encode())


def write_outputs(sg, result, out: str | Path) -> dict:
    """Write users/events/repaired/actions Parquet, items/campaigns Parquet when the campaign stage
    ran (earlier ones are removed when it did not) and summary.json into ``out``; returns the summary."""
    filesystem, base = storage.resolve(out)
    filesystem.create_dir(base, recursive=True)
    summary = write_scored(sg, result, out)
    campaigns = getattr(result, "campaigns", None)
    if campaigns is not None:
        write_campaigns(campaigns, out)
    else:  # a stale table from an earlier run would read as this run's answer
        _clear(filesystem, base, CAMPAIGN_OUTPUTS)
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
    those names (files or directories) are removed, and so are earlier campaign tables (the
    global campaign pass writes them afresh with :func:`write_campaigns`)."""
    filesystem, base = storage.resolve(out)
    _clear(filesystem, base, OUTPUTS + CAMPAIGN_OUTPUTS)
    for name in OUTPUTS:
        filesystem.create_dir(f"{base}/{name}.parquet", recursive=True)


def read_output(out: str | Path, name: str) -> pd.DataFrame | None:
    """One output (a file or a directory of parts) as a frame; events sorted by input row. None
    for a campaign table that was not written (the stage did not run)."""
    filesystem, base = storage.resolve(out)
    path = f"{base}/{name}.parquet"
    if name in CAMPAIGN_OUTPUTS and filesystem.get_file_info(path).type == fs.FileType.NotFound:
        return None
    df = pd.read_parquet(path, filesystem=filesystem)
    if name == "events":
        df = df.sort_values("row", kind="stable").reset_index(drop=True)
    return df
