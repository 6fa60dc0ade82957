"""The campaign stage on the Ray batch path: a global pass between per-user scoring and repair.

```
phase 1  ScoreStage / DetectStage   actor pool   per bucket of whole users: encode + detect; the
                                                 block goes on as its events with the verdicts
                                                 (Scored) as columns (:func:`scored_block`)
         materialize                             object store (spilled to disk when large)
phase 2  block_visits               tasks        per block: its users, items and visits (a user's
                                                 events on an item, a day apart at most), no events:
                                                 the core's visit_part
         campaign_pass              one task     the core's find_in_parts over every block's visits
                                                 -> OUT/items, OUT/campaigns, the membership
phase 3  apply_block                tasks        per block: its part of the result (result_for,
                                                 from the members and their visits alone),
                                                 apply_campaigns + apply_allow, repair, write
```

Every decision is the core's (``visit_part``, ``find_in_parts``, ``apply_campaigns``, ``apply_allow``,
``RepairPolicy``): this module only moves a block's verdicts between phases and slices the
global result per block. Phase 2's global task gathers one row per visit (not per event) and
one per user and item: see docs/scaling.md, "Campaigns at 1B events", for what that bounds and
the rest of the partitioned plan.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa

from ...core.allowlist import AllowList
from ...core.campaigns import (
    Membership,
    VisitPart,
    apply_allow,
    apply_campaigns,
    find_in_parts,
    result_for,
    visit_part,
)
from ...core.repair import RepairPolicy
from ...core.results import CampaignResult, Scored, score_result
from ...core.schema import EventLog, from_frame
from ...io.outputs import campaign_summary, write_campaigns, write_scored
from ...io.read_plan import cap_block, cut_column
from .payload import load_payload

log = logging.getLogger(__name__)

# a block's verdicts as columns: per event, and per user on the user's first event (null elsewhere)
SCORE = "_s_score"                       # (N,) the user's score, on every event (phase 2 reads it)
EVENT_COLS = ("_s_event_score", "_s_event_anomalous")
USER_COLS = ("_s_anomalous", "_s_type", "_s_reasons", "_s_detectors", "_s_doubt", "_s_takeover", "_s_nodes")
SCORED_COLS = (SCORE, "_n", *EVENT_COLS, *USER_COLS)
# what phase 2 reads of each event (value only where the input has one)
PASS_COLS = ("user_id", "item_id", "ts", "value", "_in_row", SCORE)


def _first_only(values: list, offsets: np.ndarray, n: int, type_: pa.DataType) -> pa.Array:
    """(n,) an Arrow array holding ``values[u]`` on user u's first event, null elsewhere."""
    out: list = [None] * n
    for u, a in enumerate(offsets[:-1].tolist()):
        out[a] = values[u]
    return pa.array(out, type=type_)


def scored_block(lg: EventLog, s: Scored, nodes: dict) -> pa.Table:
    """One block of whole users with its verdicts: the input columns and ``_in_row`` (``lg.frame``
    with input row numbers in ``_row``, as ``restore_input_rows`` leaves it), plus SCORED_COLS."""
    frame = lg.frame.rename(columns={"_row": "_in_row"})
    n = np.diff(lg.offsets)
    N = len(frame)
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column("_cut", pa.array(cut_column(lg)))
    takeover = None if s.takeover_start is None else np.asarray(s.takeover_start, np.int64).tolist()
    cols = {
        SCORE: pa.array(np.repeat(np.asarray(s.score, np.float64), n)),
        "_n": pa.array(np.repeat(n, n).astype(np.int64)),
        "_s_event_score": pa.array(np.asarray(s.event_score, np.float64)),
        "_s_event_anomalous": pa.array(np.asarray(s.event_anomalous, bool)),
        "_s_anomalous": _first_only(np.asarray(s.anomalous, bool).tolist(), lg.offsets, N, pa.bool_()),
        "_s_type": _first_only([str(t) for t in s.anomaly_type], lg.offsets, N, pa.string()),
        "_s_reasons": _first_only([list(r) for r in s.reasons], lg.offsets, N, pa.list_(pa.string())),
        "_s_detectors": _first_only(np.asarray(s.detector_scores, np.float64).tolist(), lg.offsets, N,
                                    pa.list_(pa.float64())),
        "_s_doubt": _first_only(np.asarray(s.length_doubt, bool).tolist(), lg.offsets, N, pa.bool_()),
        "_s_takeover": (pa.nulls(N, pa.int64()) if takeover is None
                        else _first_only(takeover, lg.offsets, N, pa.int64())),
        "_s_nodes": _first_only([json.dumps(nodes)] * lg.n_users, lg.offsets, N, pa.string()),
    }
    for name in SCORED_COLS:
        table = table.append_column(name, cols[name])
    return table


def _user_column(frame: pd.DataFrame, name: str, first: np.ndarray) -> list:
    return frame[name].iloc[first].tolist()


def block_log(table: pa.Table, source: str) -> EventLog:
    """The EventLog of a block of whole users (any row order): events sorted as the engine sorts
    them, ``frame["_row"]`` the input row numbers, the block's helper columns still on it."""
    df = table.to_pandas().sort_values("_in_row", kind="stable")  # the order the bucket was first sorted in
    lg = cap_block(from_frame(df, on_bad_rows="error", source=source), None)  # ``_cut`` -> lg.cut
    lg.frame["_row"] = lg.frame["_in_row"].to_numpy()
    lg.frame = lg.frame.drop(columns="_in_row")
    return lg


def scored_from_block(table: pa.Table) -> tuple[EventLog, Scored, list[dict]]:
    """(EventLog, Scored, the nodes phase 1 ran on) of a :func:`scored_block` (any block order);
    ``lg.frame`` holds the input columns and ``_row`` only, as ``users_frame`` / repair expect."""
    lg = block_log(table, "scored block")
    f = lg.frame
    first = lg.offsets[:-1]
    n = np.diff(lg.offsets)
    if not np.array_equal(f["_n"].to_numpy()[first], n):
        raise RuntimeError("a block holds only part of a user's history: Ray Data split a block of whole users")
    takeover = _user_column(f, "_s_takeover", first)
    scored = Scored(
        score=f[SCORE].to_numpy(np.float64)[first],
        anomalous=np.array(_user_column(f, "_s_anomalous", first), bool),
        anomaly_type=np.array(_user_column(f, "_s_type", first), dtype=object),
        reasons=[list(r) for r in _user_column(f, "_s_reasons", first)],
        event_score=f["_s_event_score"].to_numpy(np.float64),
        event_anomalous=f["_s_event_anomalous"].to_numpy(bool),
        detector_scores=np.array([np.asarray(d, np.float64) for d in _user_column(f, "_s_detectors", first)]),
        length_doubt=np.array(_user_column(f, "_s_doubt", first), bool),
        takeover_start=None if any(t is None or pd.isna(t) for t in takeover) else np.array(takeover, np.int64),
    )
    nodes = [json.loads(x) for x in set(_user_column(f, "_s_nodes", first))]
    lg.frame = f.drop(columns=list(SCORED_COLS))
    return lg, scored, nodes


@dataclass
class PassResult:
    """What phase 2 hands every phase-3 block: the campaign result reduced to its members and
    their events (O(members), not O(events)), the verdict threshold and the repair policy."""

    members: Membership
    threshold: float
    policy: RepairPolicy


def block_visits(table: pa.Table, allow: AllowList | None) -> VisitPart | None:
    """Phase 2, per block (a Ray task each): the :func:`visit_part` of a :func:`scored_block`
    (None for an empty block), from its PASS_COLS."""
    if table.num_rows == 0 or SCORE not in table.column_names:
        return None
    lg = block_log(table.select([c for c in PASS_COLS if c in table.column_names]), "campaign pass")
    return visit_part(lg, lg.frame[SCORE].to_numpy(np.float64)[lg.offsets[:-1]], allow)


def campaign_pass(payload, allow: AllowList | None, out: str, *parts: VisitPart | None) -> tuple[dict, PassResult]:
    """Phase 2, global (one Ray task): the campaign stage over every block's visits; writes
    OUT/items.parquet and OUT/campaigns.parquet. Returns the campaign counts of the summary and
    the :class:`PassResult` for phase 3."""
    sg = load_payload(payload)
    parts = [p for p in parts if p is not None]
    items, members = find_in_parts(sg.campaign_detector, parts, allow)
    found = SimpleNamespace(items=items, campaigns=members.campaigns, user_campaign=members.user_campaign)
    write_campaigns(found, out)
    counts = campaign_summary(found, {})
    counts.pop("campaign_events_removed")  # the blocks' repairs count those
    log.info("campaign pass over %d visits of %d users in %d blocks: %d campaign(s), %d member(s)",
             sum(len(p.v_row) for p in parts), sum(len(p.users) for p in parts), len(parts),
             counts["campaigns"], counts["campaign_members"])
    return counts, PassResult(members, float(sg.strata.threshold_), sg.policy)


def apply_block(table: pa.Table, found: PassResult, out: str, allow: AllowList | None = None) -> pa.Table:
    """Phase 3 (a Ray Data task per block): a :func:`scored_block` -> its part of the campaign
    result merged into its verdicts, the allow-list, repair, its parts of OUT; one summary row
    (with the nodes phase 1 ran on). ``found``: the :class:`PassResult` (or its ObjectRef)."""
    if table.num_rows == 0 or SCORE not in table.column_names:
        return pa.table({"summary": pa.array([], pa.string())})
    if not isinstance(found, PassResult):
        import ray

        found = ray.get(found)
    lg, scored, nodes = scored_from_block(table)
    cr = result_for(found.members, lg)
    scored = apply_campaigns(lg.offsets, scored, cr, threshold=found.threshold)
    summary = write_block(found.policy, lg, scored, out, allow=allow, campaigns=cr)
    summary.update(encode_nodes=sorted({x for d in nodes for x in d.get("encode_nodes", [])}),
                   detect_nodes=sorted({x for d in nodes for x in d.get("detect_nodes", [])}))
    return pa.table({"summary": [json.dumps(summary)]})


def write_block(repairer, lg: EventLog, scored: Scored, out: str, *, allow: AllowList | None = None,
                campaigns: CampaignResult | None = None) -> dict:
    """The allow-list over a block's verdicts, then repair (``repairer.repair``: a SeqGuard or its
    RepairPolicy) and its parts of OUT; its summary."""
    if allow:
        scored = apply_allow(lg.offsets, scored, allow.user_mask(lg.users))
    result = score_result(lg, scored, campaigns)
    part = f"part-{int(result.events['row'].iloc[0]):012d}.parquet"
    return write_scored(repairer, result, out, part=part)
