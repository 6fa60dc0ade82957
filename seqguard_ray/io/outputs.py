"""Scoring outputs: users, events, repaired and actions Parquet plus summary.json in one directory."""

from __future__ import annotations

import json
from pathlib import Path


def write_outputs(sg, result, out: str | Path) -> dict:
    """Write users/events/repaired Parquet (+ actions, summary) into ``out``; returns the repair summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = sg.repair(result)
    pq.write_table(pa.Table.from_pandas(result.users, preserve_index=False), out / "users.parquet")
    pq.write_table(pa.Table.from_pandas(result.events, preserve_index=False), out / "events.parquet")
    pq.write_table(pa.Table.from_pandas(rep.repaired, preserve_index=False), out / "repaired.parquet")
    pq.write_table(pa.Table.from_pandas(rep.actions, preserve_index=False), out / "actions.parquet")
    summary = {**rep.summary, "users": int(len(result.users)), "users_flagged": int(result.users["anomalous"].sum()),
               "by_type": result.users.loc[result.users["anomalous"], "anomaly_type"].value_counts().to_dict(),
               "bad_rows_skipped": result.log.bad_rows.count}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
