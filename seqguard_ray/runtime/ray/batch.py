"""Batch scoring on Ray Data: a streaming pipeline over the in-process engine's stages.

```
plan_reads (driver, metadata only)      one read unit per Parquet row group (CSV/JSONL: per file,
                                        refused over 256 MiB with the `seqguard convert` command)
  -> read + validate   Ray tasks        io.read_plan.read_unit: the engine's reader and from_frame
                                        (bad rows reported), input row ``_in_row``, user ``_bucket``
  -> group by bucket   shuffle          every user's whole history lands in one group; a group
                                        holds many users (``events_per_bucket``), so the encoder
                                        sees full batches, not one user at a time
  -> EncodeStage       actor pool       tokenize + encode (GPU per actor when present)
  -> DetectStage       actor pool       detect + repair, then io.outputs.write_scored writes this
                                        block's part of OUT/users, events, repaired, actions
  -> summaries         driver           one row per block, io.outputs.merge_summaries -> summary.json
```

With a campaign stage in the bundle, the detect step (DetectStage / ScoreStage) keeps each
block's verdicts instead of writing them, and the global campaign pass of
runtime/ray/campaigns.py runs between detection and repair (phase 2 on one task, then repair
and writing per block, with the allow-list). Without one, the allow-list is applied per block
before repair: it needs no global view.

On a cluster without GPUs the two pools are one (``ScoreStage``, ``BatchOptions.fuse``): each
actor encodes, detects, repairs and writes its bucket. With GPUs the encoder keeps its own pool,
so GPUs never wait for the CPU-bound detectors. Scores equal the in-process engine's within float
tolerance (only the encoder's batch padding differs). Memory is bounded by the block size, not
the input: no stage holds more than a read unit or a bucket, and a bucket holds no user's whole
history beyond the bundle's ``max_events_per_user`` (N): each read task keeps at most N events a
user of its unit, and the bucket's actor cuts each user to N (docs/scaling.md).

A worker node dying mid-run is survived with Ray Data's own defaults, which this module relies on
and does not override: tasks are retried, lost blocks are rebuilt from their lineage, and the pool
actors get ``max_restarts=-1`` / ``max_task_retries=-1``. Output parts have deterministic names, so
a re-run block overwrites its part instead of duplicating it (tests/test_failures.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ...core import storage
from ...core.allowlist import AllowList
from ...core.schema import EventsError
from ...io.outputs import merge_summaries, prepare_parts, write_summary
from ...io import read_plan
from ...io.read_plan import count_rows, estimate_rows, plan_reads, read_unit
from .campaigns import apply_block, block_visits, campaign_pass
from .cluster import TASK_CPUS, cluster_gpus, default_pool_size, encoder_resources
from .payload import bundle_payload, has_campaign_stage, history_cap
from .stages import DetectStage, EncodeStage, ScoreStage

log = logging.getLogger(__name__)

DEFAULT_EVENTS_PER_BUCKET = 20_000  # smaller groups balance the actor pool better
# The shuffle by user: Ray 2.60's hash shuffle (its default, "shuffle_v2"), whose aggregator actors
# receive the read tasks' shards directly, so the driver holds O(read units + buckets) refs. The
# sort-based shuffles make read units x read units shards, each held and tracked by the driver:
# 1.8 GB of driver memory at 16M events (160 units), 0.3 GB with this one (docs/scaling.md).
USER_SHUFFLE = "shuffle_v2"


def read_validated(path: str | Path, *, on_bad_rows: str = "error",
                   events_per_bucket: int = DEFAULT_EVENTS_PER_BUCKET, max_events: int | None = None):
    """Ray Dataset of validated events with ``_in_row`` and ``_bucket`` (and with ``max_events``, the
    history cap, each user's events per read unit capped and ``_cut``: see io.read_plan.read_unit);
    plus units, n_buckets."""
    import ray

    units = plan_reads(path, single_text_limit=read_plan.TEXT_SINGLE_TASK_BYTES)
    n_buckets = max(1, math.ceil(estimate_rows(units) / events_per_bucket))
    items = [asdict(u) for u in units]

    def _read(batch: pd.DataFrame) -> pa.Table:
        return pa.concat_tables([read_unit(r, n_buckets=n_buckets, on_bad_rows=on_bad_rows, max_events=max_events)
                                 for r in batch.to_dict("records")])

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(_read, batch_size=1, batch_format="pandas", num_cpus=TASK_CPUS)
    return ds, units, n_buckets


def _as_is(table: pa.Table) -> pa.Table:
    return table


def group_users(ds, n_buckets: int):
    """The one shuffle by user: a dataset whose blocks each hold whole buckets (every event of a
    user in one block), as :func:`encode_dataset` and the trainer's windows need them. Lazy:
    training materializes it once and reads the vocabulary, the windows and the encodings from it."""
    ds.context.shuffle_strategy = USER_SHUFFLE
    return ds.groupby("_bucket", num_partitions=n_buckets).map_groups(_as_is, batch_format="pyarrow",
                                                                       num_cpus=TASK_CPUS)


@dataclass
class BatchOptions:
    """How the Ray Data scoring pipeline runs."""

    concurrency: int | None = None       # encoder actors; None = default_pool_size()
    batch_size: int | None = None        # windows per encoder forward pass; None = the bundle's score_batch_size
    score_precision: str | None = None   # encoder scoring on CPU, "fp32" or "bf16"; None = the bundle's
    score_compile: bool | None = None    # score through torch.compile (once per actor); None = the bundle's
    events_per_bucket: int = DEFAULT_EVENTS_PER_BUCKET  # events per group the encoder scores at once
    detect_concurrency: int | None = None  # detector actors; None = max(1, concurrency // 2)
    spread: bool = False                 # SPREAD actors across nodes, one block in flight per actor
    actor_resources: dict | None = None  # extra custom resources per encoder actor (pin actors to nodes)
    threads: int | None = None           # torch threads per encoder actor; None = the node's CPUs / concurrency
    fuse: bool | None = None             # encode + detect + write in one actor pool (ScoreStage); None = when
                                         # the cluster has no GPUs (GPU clusters keep detectors on CPU actors)


def encode_dataset(ds, payload_ref, n_buckets: int, opts: BatchOptions, *, out: str | None = None,
                   stage_kwargs: dict | None = None, grouped: bool = False):
    """Group validated events into buckets of whole users (unless ``grouped``: ``ds`` is
    :func:`group_users`' already) and run the encoder actor pool over them; returns (dataset, pool
    size). With ``out``, the pool runs :class:`ScoreStage` (encode, detect, repair, write;
    ``stage_kwargs`` its ``allow`` / ``keep``) instead of :class:`EncodeStage`."""
    import ray

    conc = opts.concurrency or default_pool_size(n_buckets)
    extra = {"scheduling_strategy": "SPREAD"} if opts.spread else {}
    if opts.spread:
        # start every pool actor before the first block is handed out: otherwise the actor that is
        # up first can take every block of a small input while the others still import torch.
        # ds.context is this pipeline's own copy, so the process-wide DataContext is left alone.
        ds.context.wait_for_min_actors_s = max(ds.context.wait_for_min_actors_s, 600)
    if opts.actor_resources:
        extra["resources"] = dict(opts.actor_resources)
    pool = ray.data.ActorPoolStrategy(size=conc, max_tasks_in_flight_per_actor=1 if opts.spread else None)
    stage, args = (EncodeStage, (payload_ref,)) if out is None else (ScoreStage, (payload_ref, out))
    kwargs = {} if out is None else dict(stage_kwargs or {})
    res = encoder_resources(conc)
    kw = dict(fn_constructor_args=args, compute=pool, batch_format="pyarrow", **res, **extra,
              fn_constructor_kwargs={"score_batch_size": opts.batch_size, "score_precision": opts.score_precision,
                                     "score_compile": opts.score_compile,
                                     "threads": opts.threads, "pool_size": conc, **kwargs})
    if grouped and not res.get("num_gpus"):
        return ds.map_batches(stage, batch_size=None, **kw), conc  # each block: whole buckets
    # ungrouped, or on GPU actors, to which Ray Data 2.60's map_batches refuses whole-block batches
    # (batch_size=None; map_groups passes them internally): group here, a second grouping of an
    # already grouped dataset on GPU clusters (a second shuffle, no second read)
    ds.context.shuffle_strategy = USER_SHUFFLE
    return ds.groupby("_bucket", num_partitions=n_buckets).map_groups(stage, **kw), conc


def score(model_dir: str | Path, events: str | Path, out: str | Path, *, on_bad_rows: str = "error",
          options: BatchOptions | None = None, allow: AllowList | None = None) -> dict:
    """Score and repair ``events`` with the bundle on Ray; write OUT/<name>.parquet/ directories
    (and OUT/items.parquet, OUT/campaigns.parquet when the bundle has a campaign stage).
    ``allow``: users never flagged nor repaired, items never campaign targets.

    Returns the summary also written to OUT/summary.json (the in-process engine's keys, plus
    ``blocks`` and ``encode_nodes`` / ``detect_nodes``: the Ray nodes the actor pools ran on).
    """
    import ray

    opts = options or BatchOptions()
    out = storage.absolute(out)  # the workers' working directory is not ours
    # Ray logs "constructor arguments in the object store and max_restarts > 0" for the actor
    # pools (ray-project/ray#53727: a creation argument that is evicted cannot be rebuilt). This
    # one is ray.put by the driver, pinned on the driver's node while payload_ref lives (the whole
    # job), so a restarted actor can still read it.
    payload = bundle_payload(model_dir)
    keep = has_campaign_stage(payload)  # verdicts wait for the global campaign pass
    payload_ref = ray.put(payload)
    ds, units, n_buckets = read_validated(events, on_bad_rows=on_bad_rows, events_per_bucket=opts.events_per_bucket,
                                          max_events=history_cap(payload))
    prepare_parts(out)
    fuse = opts.fuse if opts.fuse is not None else cluster_gpus() == 0
    stage_kwargs = {"allow": allow or None, "keep": keep}
    ds, conc = encode_dataset(ds, payload_ref, n_buckets, opts, out=out if fuse else None, stage_kwargs=stage_kwargs)
    if not fuse:
        extra = {"scheduling_strategy": "SPREAD"} if opts.spread else {}
        ds = ds.map_batches(DetectStage, fn_constructor_args=(payload_ref, out), fn_constructor_kwargs=stage_kwargs,
                            batch_size=None, batch_format="pyarrow", num_cpus=0.25,
                            compute=ray.data.ActorPoolStrategy(size=opts.detect_concurrency or max(1, conc // 2)),
                            **extra)
    counts = {}
    try:
        if keep:
            rows, counts = campaigns_then_write(ds, payload_ref, out, allow or None)
        else:
            rows = [json.loads(r["summary"]) for r in ds.iter_rows()]
    except Exception as exc:  # Ray wraps worker errors; surface the engine's own message
        cause = engine_error(exc)
        if cause is not None:
            raise cause from None
        raise
    summary = merge_summaries(rows)
    summary.update(counts)  # the campaign pass's global counts, not the blocks' sum
    summary["bad_rows_skipped"] = int(count_rows(units) - summary.get("events_in", 0)
                                      - summary.get("events_truncated", 0))
    write_summary(summary, out)
    return summary


def campaigns_then_write(ds, payload_ref, out: str, allow: AllowList | None) -> tuple[list[dict], dict]:
    """Phases 2 and 3 of runtime/ray/campaigns.py over the scored blocks of ``ds``: each block's
    visits (a task each), the global campaign pass over them on one task, then the result
    merged, repaired and written per block (a task each). Returns the blocks' summary rows and
    the pass's campaign counts."""
    import ray

    t0 = time.perf_counter()
    scored = ds.materialize()  # phase 1 runs here; its blocks stay in the object store
    t1 = time.perf_counter()
    visits = ray.remote(block_visits).options(num_cpus=TASK_CPUS)
    parts = [visits.remote(ref, allow) for ref in scored.to_arrow_refs()]
    ray.wait(parts, num_returns=len(parts), fetch_local=False)  # the pass starts once all are in (timed apart)
    t_visits = time.perf_counter()
    counts_ref, found_ref = ray.remote(num_returns=2)(campaign_pass).options(num_cpus=1).remote(
        payload_ref, allow, out, *parts)
    del parts  # the task holds them now
    counts = ray.get(counts_ref)
    t2 = time.perf_counter()
    # plain tasks: a block needs the small PassResult, not the bundle (no actor start-up)
    applied = scored.map_batches(apply_block, fn_args=(found_ref, out, allow), batch_size=None,
                                 batch_format="pyarrow", num_cpus=TASK_CPUS)
    rows = [json.loads(r["summary"]) for r in applied.iter_rows()]
    log.info("Ray scoring: per-user phase %.1f s, block visits %.1f s, campaign pass %.1f s, "
             "merge + repair + write %.1f s", t1 - t0, t_visits - t1, t2 - t_visits, time.perf_counter() - t2)
    return rows, counts


def engine_error(exc: BaseException) -> Exception | None:
    """The EventsError / BundleError raised inside a Ray worker, if that is the cause."""
    from ...core.bundle import BundleError

    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for cls in (EventsError, BundleError):
            if isinstance(e, cls):
                return cls(str(e).split("\n", 1)[-1] if "ray::" in str(e).split("\n", 1)[0] else str(e))
        e = getattr(e, "cause", None) or e.__cause__
    text = str(exc)
    for cls in (EventsError, BundleError):
        marker = f"{cls.__name__}: "
        if marker in text:
            return cls(text[text.rindex(marker) + len(marker):].strip())
    return None
