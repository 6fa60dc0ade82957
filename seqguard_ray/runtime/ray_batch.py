"""Batch scoring on Ray Data: a streaming pipeline that wraps the in-process engine's stages.

```
plan_reads (driver, metadata only)      one read unit per Parquet row group (CSV/JSONL: per file)
  -> read + validate   Ray tasks        pyarrow read, events.from_frame (bad rows reported), input
                                        row number ``_in_row`` and a user bucket ``_bucket``
  -> group by bucket   hash shuffle     every user's whole history lands in one group; a group
                                        holds many users (``events_per_bucket``), so the encoder
                                        sees full batches, not one user at a time
  -> EncodeStage       actor pool       SeqGuard.tokenize + encode (GPU per actor when present):
                                        per-event surprisal and per-user embedding as columns
  -> DetectStage       actor pool       SeqGuard.detect + repair, then writes this block's part of
                                        OUT/users, OUT/events, OUT/repaired, OUT/actions
  -> summaries         driver           one small row per block, summed into summary.json
```

On a cluster without GPUs the two pools are one (``ScoreStage``, ``BatchOptions.fuse``): each
actor encodes, detects, repairs and writes its bucket. Separate pools there bought nothing (they
share the same CPUs) and cost a table round trip per block and another actor's start-up: 1M events
on 2 cores, 40.0 -> 31.5 s. With GPUs the encoder keeps its own pool, so GPUs never wait for the
CPU-bound detectors.

Nothing re-implements the engine: the stages call ``from_frame``, ``tokenize``, ``encode``,
``detect``, ``repair``, ``users_frame`` and ``events_frame``. Scores equal the in-process
engine's within float tolerance (only the encoder's batch padding differs). Memory is bounded by
the block size, not the input: no stage holds more than a read unit or a bucket.

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
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.events import PARQUET_SUFFIXES, EventsError, from_frame, parquet_files, read_parquet

log = logging.getLogger(__name__)

SUR_COLS = ("_sur_item", "_sur_action", "_sur_gap")
# helper columns that travel between stages and never reach an output
HELPER_COLS = ("_in_row", "_bucket", "_n", "_emb", *SUR_COLS)
OUTPUTS = ("users", "events", "repaired", "actions")
DEFAULT_EVENTS_PER_BUCKET = 20_000  # smaller groups balance the actor pool better (1M events: ~82 vs ~88 s)


# ---------------------------------------------------------------------------------------------
# Ray start-up


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a lean local Ray. Returns True if started here.

    An already initialised Ray (a test fixture, a notebook) is reused as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        start_local_ray(num_cpus)
    return True


def start_local_ray(num_cpus: int | None = None) -> None:
    """A fresh local Ray (address="local": never a stray one that happens to run here), no dashboard,
    single-threaded OpenMP in every worker.

    OMP_NUM_THREADS reaches the workers through the environment the raylet inherits, not a job
    runtime_env: with a runtime_env every worker start went through the runtime-env agent and the
    workers Ray prestarts were discarded, so the first read task of a pipeline started ~3 s later
    (1M events, pipeline alone: 29.3-29.7 s -> 26.8-27.2 s, three runs each).
    """
    import ray

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old


def cluster_gpus() -> float:
    import ray
    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    import ray
    return float(ray.cluster_resources().get("CPU", 1.0))


def default_pool_size(n_buckets: int) -> int:
    """Encoder actors when ``--concurrency`` is not given, never more than there are buckets.

    One per GPU. On CPUs, one single-threaded actor per core of a single node: they beat fewer
    multi-threaded ones (1M events on 2 cores, pipeline alone: 2 actors x 1 thread 27.8-30.5 s,
    1 actor x 2 threads 33.4-33.5 s). Across nodes one per 2 CPUs, which left the shuffle room on
    the simulated 3-node cluster where larger pools starved it.
    """
    import ray

    gpus = int(cluster_gpus())
    if gpus:
        size = gpus
    else:
        nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
        size = int(cluster_cpus()) // (1 if nodes <= 1 else 2)
    return max(1, min(size, n_buckets))


# ---------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class ReadUnit:
    """One read task: a Parquet row group (or a whole CSV/JSONL file) and its first input row."""

    path: str
    row_group: int  # -1 = the whole file
    row0: int       # input row number of its first row (files in sorted order, as events.read_table)
    n_rows: int
    root: str = ""  # the events directory, whose Hive partition keys the file's rows carry; "" for a file


def plan_reads(path: str | Path) -> list[ReadUnit]:
    """Read units in input-row order, from file metadata only (no data is read here)."""
    p = Path(path)
    if not p.exists():
        raise EventsError(f"events path does not exist: {p}")
    if p.is_dir():
        files, root = parquet_files(p), str(p.resolve())
    else:
        files, root = [p], ""
    units, row0 = [], 0
    for f in files:
        if f.suffix in PARQUET_SUFFIXES:
            try:
                md = pq.ParquetFile(f).metadata
            except (pa.ArrowInvalid, OSError) as exc:
                raise EventsError(f"cannot read events file {f}: {exc}") from exc
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                units.append(ReadUnit(str(f.resolve()), g, row0, n, root))
                row0 += n
        else:
            # CSV / JSONL: one task reads the file; its row count is only known after reading, so
            # a single text file is one unit (convert large logs to Parquet for parallel reads)
            units.append(ReadUnit(str(f.resolve()), -1, row0, -1))
    if len(units) > 1 and any(u.n_rows < 0 for u in units):
        raise EventsError(f"{p}: mixing text and Parquet files is not supported")
    return units


def _estimate_rows(units: list[ReadUnit]) -> int:
    if units and units[0].n_rows < 0:
        return max(1, os.path.getsize(units[0].path) // 40)  # ~40 bytes per CSV/JSON event
    return sum(u.n_rows for u in units)


def user_bucket(user: np.ndarray, n_buckets: int) -> np.ndarray:
    """(N,) a stable bucket per normalised user id string (same on every process and node)."""
    h = pd.util.hash_array(np.asarray(user, dtype=object))
    return (h % np.uint64(n_buckets)).astype(np.int64)


def read_unit(unit: dict, *, n_buckets: int, on_bad_rows: str) -> pa.Table:
    """Read and validate one unit; rows keep their input values plus ``_in_row`` and ``_bucket``."""
    from ..core.events import read_table

    path, g, row0 = unit["path"], int(unit["row_group"]), int(unit["row0"])
    root = unit.get("root") or None
    table = read_parquet(path, root, g) if g >= 0 else read_table(path)
    src = path if g < 0 else f"{path} (row group {g}; row numbers below count from input row {row0})"
    lg = from_frame(table.to_pandas(), on_bad_rows=on_bad_rows, source=src)
    frame = lg.frame
    frame["_in_row"] = frame.pop("_row").to_numpy() + row0
    frame["_bucket"] = user_bucket(lg.user, n_buckets)
    return pa.Table.from_pandas(frame, preserve_index=False)


def _count_text_rows(path: str) -> int:
    from ..core.events import read_table
    return read_table(path).num_rows


def read_validated(path: str | Path, *, on_bad_rows: str = "error",
                   events_per_bucket: int = DEFAULT_EVENTS_PER_BUCKET):
    """Ray Dataset of validated events with ``_in_row`` and ``_bucket``; plus units, n_buckets, n_rows."""
    import ray

    units = plan_reads(path)
    n_rows = _estimate_rows(units)
    n_buckets = max(1, math.ceil(n_rows / events_per_bucket))
    items = [asdict(u) for u in units]

    def _read(batch: pd.DataFrame) -> pa.Table:
        return pa.concat_tables([read_unit(r, n_buckets=n_buckets, on_bad_rows=on_bad_rows)
                                 for r in batch.to_dict("records")])

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # a whole CPU per read task: on 2 cores, 0.25 let Ray start a worker process per concurrent read,
    # and those start-ups competed with the pool actors' (1M events: 31 -> 28-29 s)
    ds = ds.map_batches(_read, batch_size=1, batch_format="pandas", num_cpus=1)
    return ds, units, n_buckets, n_rows


# ---------------------------------------------------------------------------------------------
# the model travels as bytes, so no node needs the bundle on a shared disk


def bundle_payload(model_dir: str | Path) -> dict[str, bytes]:
    d = Path(model_dir)
    if not d.is_dir():
        from ..core.bundle import BundleError
        raise BundleError(f"model bundle directory does not exist: {d}")
    return {f.name: f.read_bytes() for f in d.iterdir() if f.is_file()}


def load_payload(payload):
    """A SeqGuard from bundle bytes, or (training) a partial one: vocab + encoder only."""
    import ray
    import torch

    if isinstance(payload, ray.ObjectRef):
        payload = ray.get(payload)

    from ..core.pipeline import SeqGuard, TrainConfig
    from ..core.encoder import SeqGuardConfig, SeqGuardEncoder
    from ..core.tokens import Vocab

    if "encoder_state" in payload:  # partial model during training: no detectors yet
        sg = SeqGuard(TrainConfig(**payload["train_config"]))
        sg.vocab = Vocab.from_dict(payload["vocab"])
        sg.model = SeqGuardEncoder(SeqGuardConfig(**payload["encoder_config"]))
        sg.model.load_state_dict({k: torch.from_numpy(v) for k, v in payload["encoder_state"].items()})
        return sg
    with tempfile.TemporaryDirectory(prefix="seqguard-bundle-") as tmp:
        for name, data in payload.items():
            (Path(tmp) / name).write_bytes(data)
        return SeqGuard.load(tmp)


def _node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id()


# ---------------------------------------------------------------------------------------------
# stages


class EncodeStage:
    """Actor: one bucket of events (whole users) -> the same events, sorted, with encoder outputs.

    Adds ``_sur_item``, ``_sur_action``, ``_sur_gap`` (N,) float32, ``_n`` (the user's event count)
    and ``_emb`` (the user's embedding, (H,) float32, on the user's first event; null elsewhere).
    """

    def __init__(self, payload: dict, *, score_batch_size: int | None = None, threads: int | None = None,
                 pool_size: int = 1):
        import torch

        # torch threads: as asked, else this node's cores shared by the pool (OMP_NUM_THREADS is 1)
        torch.set_num_threads(max(1, threads or (os.cpu_count() or 1) // max(1, pool_size)))
        self.sg = load_payload(payload)
        if score_batch_size:
            self.sg.config.score_batch_size = score_batch_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.sg.model.to(self.device)
        self.node_id = _node_id()

    def __call__(self, table: pa.Table) -> pa.Table:
        lg, enc = encode_bucket(self.sg, table)
        frame = lg.frame.drop(columns="_row")
        for j, c in enumerate(SUR_COLS):
            frame[c] = enc.seqs.surprisal[:, j].astype(np.float32)
        n = np.diff(lg.offsets)
        frame["_n"] = np.repeat(n, n)
        out = pa.Table.from_pandas(frame, preserve_index=False)
        emb = [None] * len(frame)
        for u, a in enumerate(lg.offsets[:-1].tolist()):
            emb[a] = enc.user_emb[u]
        out = out.append_column("_emb", pa.array(emb, type=pa.list_(pa.float32())))
        return out.append_column("_encode_node", pa.array([self.node_id] * len(frame), pa.string()))


def encode_bucket(sg, table: pa.Table):
    """(EventLog, Encoded) of one bucket of whole users; ``lg.frame`` keeps the input columns,
    ``_in_row`` and ``_row`` (the row in this bucket)."""
    df = table.to_pandas().drop(columns="_bucket").sort_values("_in_row", kind="stable")
    lg = from_frame(df, on_bad_rows="error", source="bucket")
    sg.check_log(lg, once=True)
    return lg, sg.encode(sg.tokenize(lg))


def encoded_from_table(sg, table: pa.Table):
    """Rebuild (EventLog, Encoded) from an EncodeStage block (whole users; any block order)."""
    from ..core.pipeline import Encoded

    emb_col = table.column("_emb")
    df = table.drop_columns(["_emb"]).to_pandas()
    lg = from_frame(df, on_bad_rows="error", source="encoded block")
    n = np.diff(lg.offsets)
    if not np.array_equal(lg.frame["_n"].to_numpy()[lg.offsets[:-1]], n):
        raise RuntimeError("a block holds only part of a user's history: Ray Data split a group")
    seqs = sg.tokenize(lg)
    seqs.surprisal = np.stack([lg.frame[c].to_numpy(np.float32) for c in SUR_COLS], axis=1)
    first = lg.frame["_row"].to_numpy()[lg.offsets[:-1]]  # block rows of each user's first event
    H = sg.model.config.hidden_size if sg.model is not None else sg.config.hidden_size
    emb_rows = emb_col.take(pa.array(first)).combine_chunks() if len(first) else pa.array([], pa.list_(pa.float32()))
    user_emb = np.asarray(emb_rows.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(first), H)
    _restore_input_rows(lg)
    return lg, Encoded(seqs, user_emb)


def _restore_input_rows(lg) -> None:
    """``lg.frame["_row"]`` becomes the input row number and the helper columns go: the frame the
    in-process engine's users_frame / events_frame expect."""
    lg.frame["_row"] = lg.frame["_in_row"].to_numpy()
    lg.frame = lg.frame.drop(columns=[c for c in (*HELPER_COLS, "_encode_node") if c in lg.frame.columns])


_NO_SUMMARY = pa.table({"summary": pa.array([], pa.string())})   # what an empty block returns


class DetectStage:
    """Actor: an encoded block -> detectors -> repair -> this block's Parquet parts; returns a summary row."""

    def __init__(self, payload: dict, out: str):
        self.sg = load_payload(payload)
        self.out = out
        self.node_id = _node_id()

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return _NO_SUMMARY
        enc_nodes = sorted(set(table.column("_encode_node").to_pylist()))
        lg, enc = encoded_from_table(self.sg, table)
        return detect_and_write(self.sg, lg, enc, self.out, encode_nodes=enc_nodes, detect_node=self.node_id)


class ScoreStage(EncodeStage):
    """Actor (clusters without GPUs): one bucket -> encode -> detect -> repair -> its Parquet parts,
    in one process. Handing encoded blocks to a separate detector pool costs a table round trip
    and another actor's start-up, which on CPUs buys nothing: both pools would share the same cores."""

    def __init__(self, payload: dict, out: str, **kw):
        super().__init__(payload, **kw)
        self.out = out

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return _NO_SUMMARY
        lg, enc = encode_bucket(self.sg, table)
        _restore_input_rows(lg)
        return detect_and_write(self.sg, lg, enc, self.out, encode_nodes=[self.node_id], detect_node=self.node_id)


def detect_and_write(sg, lg, enc, out: str, *, encode_nodes: list[str], detect_node: str) -> pa.Table:
    """Detectors + repair on one block of whole users; writes its parts of OUT; one summary row.
    ``lg.frame["_row"]`` holds the input row numbers."""
    from ..core.pipeline import ScoreResult, events_frame, users_frame

    scored = sg.detect(enc)
    result = ScoreResult(users_frame(lg, scored), events_frame(lg, scored), lg, scored)
    rep = sg.repair(result)
    part = f"part-{int(result.events['row'].iloc[0]):012d}.parquet"
    frames = {"users": result.users, "events": result.events, "repaired": rep.repaired, "actions": rep.actions}
    for name, frame in frames.items():
        write_part(pa.Table.from_pandas(frame, preserve_index=False), out, name, part)
    users = result.users
    summary = {**rep.summary, "users": int(len(users)), "users_flagged": int(users["anomalous"].sum()),
               "by_type": users.loc[users["anomalous"], "anomaly_type"].value_counts().to_dict(),
               "encode_nodes": list(encode_nodes), "detect_nodes": [detect_node]}
    return pa.table({"summary": [json.dumps(summary)]})


def _fs(out: str):
    from pyarrow import fs
    if "://" in out:
        return fs.FileSystem.from_uri(out)
    return fs.LocalFileSystem(), os.path.abspath(out)


def write_part(table: pa.Table, out: str, name: str, part: str) -> None:
    """OUT/<name>.parquet/<part>: a deterministic name, so a retried task overwrites, never duplicates."""
    filesystem, base = _fs(out)
    pq.write_table(table, f"{base}/{name}.parquet/{part}", filesystem=filesystem)


def prepare_out(out: str) -> None:
    """Create OUT/<name>.parquet/ directories, removing earlier outputs of the same names."""
    filesystem, base = _fs(out)
    from pyarrow import fs
    for name in OUTPUTS:
        p = f"{base}/{name}.parquet"
        info = filesystem.get_file_info(p)
        if info.type == fs.FileType.File:
            filesystem.delete_file(p)
        elif info.type == fs.FileType.Directory:
            filesystem.delete_dir(p)
        filesystem.create_dir(p, recursive=True)


# ---------------------------------------------------------------------------------------------
# the pipeline


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


def encoder_resources(concurrency: int) -> dict:
    """num_gpus per encoder actor when the cluster has GPUs (shared fractionally), else up to 1 CPU."""
    gpus = cluster_gpus()
    if gpus > 0:
        return {"num_gpus": min(1.0, gpus / concurrency), "num_cpus": 1}
    # CPU counts are scheduling labels: leave at least one CPU for the hash shuffle and the read
    # tasks, or on a small cluster the shuffle waits forever behind the pools' reserved CPUs
    return {"num_cpus": min(1.0, max(0.25, round((cluster_cpus() - 1.0) * 0.6 / concurrency, 2)))}


def encode_dataset(ds, payload_ref, n_buckets: int, opts: BatchOptions, *, out: str | None = None):
    """Group validated events into buckets of whole users and run the encoder actor pool over them.
    With ``out``, the pool runs :class:`ScoreStage` (encode, detect, repair, write) instead."""
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
    # the sort-based shuffle runs as plain tasks on the workers already up; Ray 2.60's default hash
    # shuffle starts aggregator actors first, which left the 2 cores idle for ~4 s at 1M events
    # (1M events end to end: 36.4 -> 33.8 s). ds.context is this pipeline's own copy.
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

    Returns the summary also written to OUT/summary.json (same keys as the in-process CLI, plus
    ``encode_nodes`` / ``detect_nodes``: the Ray nodes the actor pools ran on).
    """
    import ray

    opts = options or BatchOptions()
    out = str(out)
    # Ray logs "constructor arguments in the object store and max_restarts > 0" for the actor
    # pools (ray-project/ray#53727: a creation argument that is evicted cannot be rebuilt). This
    # one is ray.put by the driver, pinned on the driver's node while payload_ref lives (the whole
    # job), so a restarted actor can still read it.
    payload_ref = ray.put(bundle_payload(model_dir))
    ds, units, n_buckets, n_rows = read_validated(events, on_bad_rows=on_bad_rows,
                                                  events_per_bucket=opts.events_per_bucket)
    prepare_out(out)
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
        cause = _engine_error(exc)
        if cause is not None:
            raise cause from None
        raise
    summary = merge_summaries(rows)
    if units[0].n_rows < 0:
        n_rows = _count_text_rows(units[0].path)
    summary["bad_rows_skipped"] = int(n_rows - summary["events_in"])
    filesystem, base = _fs(out)
    with filesystem.open_output_stream(f"{base}/summary.json") as f:
        f.write(json.dumps(summary, indent=1).encode())
    return summary


def _engine_error(exc: BaseException) -> Exception | None:
    """The EventsError / BundleError / ValueError raised inside a Ray worker, if that is the cause."""
    from ..core.bundle import BundleError

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


def merge_summaries(rows: list[dict]) -> dict:
    total: dict = {"events_in": 0, "events_kept": 0, "events_dropped": 0, "events_downweighted": 0,
                   "users_quarantined": 0, "histories_cut": 0, "users_with_events_dropped": 0,
                   "users_length_doubt": 0, "users": 0, "users_flagged": 0, "by_type": {}}
    enc_nodes, det_nodes = set(), set()
    for r in rows:
        for k, v in r.items():
            if k == "by_type":
                for t, c in v.items():
                    total["by_type"][t] = total["by_type"].get(t, 0) + c
            elif k == "encode_nodes":
                enc_nodes.update(v)
            elif k == "detect_nodes":
                det_nodes.update(v)
            else:
                total[k] = total.get(k, 0) + v
    total["by_type"] = dict(sorted(total["by_type"].items(), key=lambda kv: -kv[1]))
    total["blocks"] = len(rows)
    total["encode_nodes"], total["detect_nodes"] = sorted(enc_nodes), sorted(det_nodes)
    return total


def read_output(out: str | Path, name: str) -> pd.DataFrame:
    """One output (file or directory of parts) as a frame; events/repaired sorted by input row."""
    df = pd.read_parquet(Path(out) / f"{name}.parquet")
    if name == "events":
        df = df.sort_values("row", kind="stable").reset_index(drop=True)
    return df
