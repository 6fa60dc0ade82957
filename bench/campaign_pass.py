"""The campaign stage's global task: what it holds at its peak, gathered events against visits.

The Ray batch path runs the campaign stage's one global step on one task (runtime/ray/campaigns.py).
That task used to receive every event (user, item, ts, value, input row, user score) and build the
whole log there; it now receives each block's visits (``core.campaigns.visit_part``, made per block
of users by their own tasks) and joins them (``find_in_parts``). This measures both on the same
log, in one run, with ``tracemalloc`` (numpy and Python allocations; Arrow buffers are not seen):

- **gathered**: the global task as it was: the whole log's ``EventLog`` (``from_frame``) and the
  stage over it (``detect_campaigns``, the in-process engine's call);
- **visits**: the global task as it is: the blocks' ``VisitPart``s as it receives them (unpickled,
  as Ray hands them over) and ``find_in_parts``. The blocks' own work (their ``EventLog`` and
  ``visit_part``) is outside the measurement: it runs per block, bounded by the block.

Both must give the same items and campaigns (checked). Prints peak MB and B per event (and per
visit) at each size, and the slope between sizes. Usage:

    python bench/campaign_pass.py --events 1000000,2000000,4000000 [--log bench_work/ev4000000]

``--log``: a Parquet log of bench/batch.py's generator (its first N rows in row order, which
hold whole users' ranges); without it the generator makes the log in memory. ``--ratings``
keeps each (user, item) pair's first event of those N rows, as a ratings log (ML-100k) has one
event per pair: visits = events (the sizes printed are then the events kept).
"""

from __future__ import annotations

import argparse
import gc
import pickle
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqguard_ray.core.campaigns import CampaignDetector, detect_campaigns, find_in_parts, visit_part  # noqa: E402
from seqguard_ray.core.campaigns.parts import item_codes  # noqa: E402
from seqguard_ray.core.schema import from_frame  # noqa: E402
from seqguard_ray.io.read_plan import user_bucket  # noqa: E402

EVENTS_PER_BUCKET = 20_000  # runtime/ray/batch.py's default block of users


def load(n: int, log: str | None) -> pd.DataFrame:
    if log:
        import pyarrow.dataset as ds

        table = ds.dataset(log, format="parquet").head(n)
        df = table.to_pandas()
    else:
        from batch import make_events

        df = make_events(n, seed=1)
    return df[["user_id", "item_id", "ts", "value"]].reset_index(drop=True)


def first_rows(df: pd.DataFrame, n: int, ratings: bool) -> pd.DataFrame:
    """The log's first ``n`` rows; with ``ratings``, each (user, item) pair's first event only."""
    df = df.head(n) if n < len(df) else df
    if ratings:
        df = df.sort_values("ts", kind="stable").drop_duplicates(["user_id", "item_id"]).sort_index()
    return df.reset_index(drop=True)


def score_of(users: np.ndarray) -> np.ndarray:
    """A user's score as a fixed function of its id (any partition gives each user the same)."""
    h = pd.util.hash_array(np.asarray(users, dtype=object)).astype(np.float64)
    return (h % 1_000_003) / 1_000_003


def fitted_detector(df: pd.DataFrame) -> CampaignDetector:
    lg = from_frame(df.head(min(len(df), 300_000)).copy())
    codes, first = item_codes(lg.item)
    return CampaignDetector().fit(lg.offsets, codes, lg.ts, lg.value, score_of(lg.users), n_items=len(first))


def peak_mb(fn) -> tuple[object, float, float]:
    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak / 1e6, wall


def measure(df: pd.DataFrame, det: CampaignDetector) -> dict:
    n = len(df)

    def gathered():
        lg = from_frame(df.copy())
        cr = detect_campaigns(det, lg, score_of(lg.users))
        return cr.items, cr.campaigns

    (items_a, camps_a), mb_a, s_a = peak_mb(gathered)
    # the blocks' visits, made outside the measurement (per-block tasks) and serialized as Ray would
    users = df["user_id"].astype(str).to_numpy()
    n_blocks = max(1, n // EVENTS_PER_BUCKET)
    bucket = user_bucket(users, n_blocks)
    blobs, visits = [], 0
    for b in range(n_blocks):
        sub = df[bucket == b]
        if not len(sub):
            continue
        lg = from_frame(sub.reset_index().rename(columns={"index": "_in_row"}))
        lg.frame["_row"] = lg.frame.pop("_in_row").to_numpy()
        part = visit_part(lg, score_of(lg.users))
        visits += len(part.v_row)
        blobs.append(pickle.dumps(part, protocol=5))
    wire = sum(len(b) for b in blobs)

    def partitioned():
        parts = [pickle.loads(b) for b in blobs]
        return find_in_parts(det, parts)

    (items_b, ms), mb_b, s_b = peak_mb(partitioned)
    pd.testing.assert_frame_equal(items_a, items_b)
    pd.testing.assert_frame_equal(camps_a, ms.campaigns)
    return {"events": n, "visits": visits, "blocks": len(blobs), "wire_mb": wire / 1e6,
            "gathered_mb": mb_a, "gathered_s": s_a, "visits_mb": mb_b, "visits_s": s_b,
            "campaigns": len(ms.campaigns), "suspicious_items": int(items_b["suspicious"].sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", default="250000,500000,1000000", help="comma-separated log sizes")
    p.add_argument("--log", default=None, help="a Parquet log (bench/batch.py's); default: generate")
    p.add_argument("--ratings", action="store_true", help="one event per (user, item), as a ratings log")
    a = p.parse_args()
    sizes = [int(x) for x in a.events.split(",")]
    full = load(max(sizes), a.log)
    det = fitted_detector(first_rows(full, max(sizes), a.ratings))
    rows = []
    print("| events | visits | blocks | gathered peak MB | B/event | s | visits peak MB | B/event | B/visit | s | "
          "parts on the wire MB | campaigns |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        r = measure(first_rows(full, n, a.ratings), det)
        rows.append(r)
        print(f"| {r['events']:,} | {r['visits']:,} | {r['blocks']} | {r['gathered_mb']:,.0f} | "
              f"{r['gathered_mb'] * 1e6 / r['events']:.0f} | {r['gathered_s']:.1f} | {r['visits_mb']:,.0f} | "
              f"{r['visits_mb'] * 1e6 / r['events']:.0f} | {r['visits_mb'] * 1e6 / max(r['visits'], 1):.0f} | "
              f"{r['visits_s']:.1f} | {r['wire_mb']:,.0f} | {r['campaigns']} |", flush=True)
    for a_, b_ in zip(rows, rows[1:]):
        de = b_["events"] - a_["events"]
        print(f"slope {a_['events']:,} -> {b_['events']:,} events: gathered "
              f"{(b_['gathered_mb'] - a_['gathered_mb']) * 1e6 / de:.0f} B per further event, visits "
              f"{(b_['visits_mb'] - a_['visits_mb']) * 1e6 / de:.0f} B per further event")


if __name__ == "__main__":
    main()
