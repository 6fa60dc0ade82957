"""Batch scoring on Ray Data: a streaming pipeline over the in-process engine's stages.

```
plan_reads (driver, metadata only)      one read unit per Parquet row group (CSV/JSONL: per file)
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

On a cluster without GPUs the two pools are one (``ScoreStage``, ``BatchOptions.fuse``): each
actor encodes, detects, repairs and writes its bucket. With GPUs the encoder keeps its own pool,
so GPUs never wait for the CPU-bound detectors. Scores equal the in-process engine's within float
tolerance (only the encoder's batch padding differs). Memory is bounded by the block size, not
the input: no stage holds more than a read unit or a bucket.

A worker node dying mid-run is survived with Ray Data's own defaults, which this module relies on
and does not override: tasks are retried, lost blocks are rebuilt from their lineage, and the pool
actors get ``max_restarts=-1`` / ``max_task_retries=-1``. Output parts have deterministic names, so
a re-run block overwrites its part instead of duplicating it (tests/test_failures.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ...core.schema import EventsError
from ...io.outputs import merge_summaries, prepare_parts, write_summary
from ...io.read_plan import count_rows, estimate_rows, plan_reads, read_unit
from .cluster import cluster_gpus, default_pool_size, encoder_resources
from .payload import bundle_payload
from .stages import DetectStage, EncodeStage, ScoreStage

log = logging.getLogger(__name__)

DEFAULT_EVENTS_PER_BUCKET = 20_000  # smaller groups balance the actor pool better


def read_validated(path: str | Path, *, on_bad_rows: str = "error",
                   events_per_bucket: int = DEFAULT_EVENTS_PER_BUCKET):
    """Ray Dataset of validated events with ``_in_row`` and ``_bucket``; plus units, n_buckets."""
    import ray

    units = plan_reads(path)
    n_buckets = max(1, math.ceil(estimate_rows(units) / events_per_bucket))
    items = [asdict(u) for u in units]

    def _read(batch: pd.DataFrame) -> pa.Table:
        return pa.concat_tables([read_unit(r, n_buckets=n_buckets, on_bad_rows=on_bad_rows)
                                 for r in batch.to_dict("records")])

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # a whole CPU per read task: with less, Ray starts a worker process per concurrent read on a
    # small machine, and those start-ups compete with the pool actors'
    ds = ds.map_batches(_read, batch_size=1, batch_format="pandas", num_cpus=1)
    return ds, units, n_buckets


@dataclass
class BatchOptions:
    """How the Ray Data scoring pipeline runs."""

    concurrency: int | None = None       # encoder actors; None = default_pool_size()
    batch_size: int | None = None        # windows per encoder forward pass; None = the bundle's score_batch_size
    events_per_bucket: int = DEFAULT_EVENTS_PER_BUCKET  # events per group the encoder scores at once
    detect_concurrency: int | None = None  # detector actors; None = max(1, concurrency // 2)
    spread: bool = False                 # SPREAD actors across nodes, one block in flight per actor
    actor_resources: dict | None = None  # extra custom resources per encoder actor (pin actors to nodes)
    threads: int | None = None           # torch threads per encoder actor; None = the node's CPUs / concurrency
    fuse: bool | None = None             # encode + detect + write in one actor pool (ScoreStage); None = when
                                         # the cluster has no GPUs (GPU clusters keep detectors on CPU actors)


def encode_dataset(ds, payload_ref, n_buckets: int, opts: BatchOptions, *, out: str | None = None):
    """Group validated events into buckets of whole users and run the encoder actor pool over them;
    returns (dataset, pool size). With ``out``, the pool runs :class:`ScoreStage` (encode, detect,
    repair, write) instead of :class:`EncodeStage`."""
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
    # the sort-based shuffle runs as plain tasks on the workers already up; the default hash
    # shuffle starts aggregator actors first, which leaves a small machine idle meanwhile
    ds.context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    pool = ray.data.ActorPoolStrategy(size=conc, max_tasks_in_flight_per_actor=1 if opts.spread else None)
    stage, args = (EncodeStage, (payload_ref,)) if out is None else (ScoreStage, (payload_ref, out))
    return ds.groupby("_bucket", num_partitions=n_buckets).map_groups(
        stage, fn_constructor_args=args,
        fn_constructor_kwargs={"score_batch_size": opts.batch_size, "threads": opts.threads, "pool_size": conc},
        compute=pool, batch_format="pyarrow", **encoder_resources(conc), **extra), conc


def score(model_dir: str | Path, events: str | Path, out: str | Path, *, on_bad_rows: str = "error",
          options: BatchOptions | None = None) -> dict:
    """Score and repair ``events`` with the bundle on Ray; write OUT/<name>.parquet/ directories.

    Returns the summary also written to OUT/summary.json (the in-process engine's keys, plus
    ``blocks`` and ``encode_nodes`` / ``detect_nodes``: the Ray nodes the actor pools ran on).
    """
    import ray

    opts = options or BatchOptions()
    out = str(out) if "://" in str(out) else os.path.abspath(out)  # the workers' working directory is not ours
    # Ray logs "constructor arguments in the object store and max_restarts > 0" for the actor
    # pools (ray-project/ray#53727: a creation argument that is evicted cannot be rebuilt). This
    # one is ray.put by the driver, pinned on the driver's node while payload_ref lives (the whole
    # job), so a restarted actor can still read it.
    payload_ref = ray.put(bundle_payload(model_dir))
    ds, units, n_buckets = read_validated(events, on_bad_rows=on_bad_rows, events_per_bucket=opts.events_per_bucket)
    prepare_parts(out)
    fuse = opts.fuse if opts.fuse is not None else cluster_gpus() == 0
    ds, conc = encode_dataset(ds, payload_ref, n_buckets, opts, out=out if fuse else None)
    if not fuse:
        extra = {"scheduling_strategy": "SPREAD"} if opts.spread else {}
        ds = ds.map_batches(DetectStage, fn_constructor_args=(payload_ref, out), batch_size=None,
                            batch_format="pyarrow", num_cpus=0.25,
                            compute=ray.data.ActorPoolStrategy(size=opts.detect_concurrency or max(1, conc // 2)),
                            **extra)
    try:
        rows = [json.loads(r["summary"]) for r in ds.iter_rows()]
    except Exception as exc:  # Ray wraps worker errors; surface the engine's own message
        cause = engine_error(exc)
        if cause is not None:
            raise cause from None
        raise
    summary = merge_summaries(rows)
    summary["bad_rows_skipped"] = int(count_rows(units) - summary.get("events_in", 0))
    write_summary(summary, out)
    return summary


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
