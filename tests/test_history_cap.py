"""The one cap on a user's history (TrainConfig.max_events_per_user), without Ray: the core cut,
the in-process engine's outputs and summary, the Ray read units' partial cuts adding up to the
in-process answer, and the gRPC limit that follows the served bundle's cap."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_events

from seqguard_ray.core.schema import cap_history, from_frame
from seqguard_ray.io.outputs import write_outputs
from seqguard_ray.io.read_plan import plan_reads, read_unit

CAP = 25


def runaway_log(seed: int = 0) -> pd.DataFrame:
    """make_events plus one bot with 300 events (ties in ts included), shuffled."""
    ev = make_events(seed=seed)
    bot = pd.DataFrame({"user_id": "bot", "item_id": np.arange(300) % 7, "ts": 1_600_000_000 + np.arange(300) // 2,
                        "action": "view", "value": 0.5})
    return pd.concat([ev, bot]).sample(frac=1, random_state=seed).reset_index(drop=True)


def capped(sg, cap: int = CAP):
    out = copy.copy(sg)
    out.config = replace(sg.config, max_events_per_user=cap)
    return out


def test_cap_keeps_each_users_most_recent_events_and_counts_the_rest():
    df = runaway_log()
    lg = from_frame(df)
    n = np.diff(lg.offsets)
    out = cap_history(lg, CAP)
    assert np.array_equal(np.diff(out.offsets), np.minimum(n, CAP))
    assert out.truncated == {"users_truncated": int((n > CAP).sum()), "events_truncated": int((n - CAP).clip(0).sum())}
    bot = out.frame[out.user == "bot"]
    # the 25 most recent: largest ts, ties broken by the later input row
    want = df[df.user_id == "bot"].assign(_row=df.index[df.user_id == "bot"]).sort_values(["ts", "_row"]).tail(CAP)
    assert sorted(bot["_row"]) == sorted(want["_row"])
    again = cap_history(out, CAP)  # idempotent: the counts stay
    assert again.truncated == out.truncated and again.n_events == out.n_events
    small = cap_history(from_frame(make_events()), 10_000)
    assert small.truncated == {"users_truncated": 0, "events_truncated": 0}


def test_in_process_score_cuts_the_runaway_user_and_counts_it_in_the_summary(tiny_model, tmp_path):
    sg = capped(tiny_model)
    df = runaway_log()
    result = sg.score(df)
    n_in = df.groupby("user_id").size()
    assert result.events.groupby("user_id").size().max() == CAP
    assert len(result.events) == int(np.minimum(n_in, CAP).sum())
    summary = write_outputs(sg, result, tmp_path / "out")
    assert summary["users_truncated"] == int((n_in > CAP).sum()) >= 1
    assert summary["events_truncated"] == int((n_in - CAP).clip(lower=0).sum())
    assert summary["events_in"] + summary["events_truncated"] == len(df)
    import json
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["events_truncated"] == summary["events_truncated"]


def test_ray_read_units_cut_partially_and_the_bucket_cut_equals_the_in_process_one(tiny_model, tmp_path):
    """Every read unit keeps at most CAP events a user (so a runaway user brings at most CAP per
    unit into the shuffle); the bucket's cut then gives exactly the in-process rows and counts."""
    from seqguard_ray.runtime.ray.stages import encode_bucket

    sg = capped(tiny_model)
    df = runaway_log(seed=1)
    path = tmp_path / "ev.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=200)
    units = plan_reads(path)
    assert len(units) > 3
    parts = [read_unit(vars(u), n_buckets=1, on_bad_rows="error", max_events=CAP) for u in units]
    for t in parts:
        assert t.to_pandas().groupby("user_id").size().max() <= CAP
    table = pa.concat_tables(parts)
    lg, _ = encode_bucket(sg, table)
    want = cap_history(from_frame(df), CAP)
    assert sorted(lg.frame["_in_row"]) == sorted(want.frame["_row"])
    assert lg.truncated == want.truncated


def test_grpc_limit_follows_the_served_bundles_cap(tiny_model):
    from seqguard_ray.proto.seqguard.v1 import seqguard_pb2 as pb
    from seqguard_ray.runtime.serve import Authenticator, InProcessBackend, Limits, ScoringService

    assert Limits().max_events_per_sequence == tiny_model.config.max_events_per_user == 10_000
    assert Limits(max_events_per_sequence=50).capped(CAP).max_events_per_sequence == CAP
    assert Limits(max_events_per_sequence=5).capped(CAP).max_events_per_sequence == 5
    backend = InProcessBackend(capped(tiny_model), batching=False)
    svc = ScoringService(backend, Authenticator(None), Limits())

    def call(n):
        r = pb.ScoreRequest(user_id="u", events=[pb.Event(item_id="1", ts=1_700_000_000 + i) for i in range(n)])
        return asyncio.run(svc.call("Score", r, []))

    try:
        assert call(CAP).code.name == "OK"
        bad = call(CAP + 1)
        assert bad.code.name == "INVALID_ARGUMENT" and f"over the limit of {CAP} per sequence" in bad.details
    finally:
        backend.close()


def test_config_rejects_a_cap_below_one():
    from seqguard_ray import TrainConfig

    with pytest.raises(ValueError, match="max_events_per_user=0"):
        TrainConfig(max_events_per_user=0)
