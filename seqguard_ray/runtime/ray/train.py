"""Training on Ray: Ray Data reads and shards the log, Ray Train (TorchTrainer, DDP) trains the encoder.

```
read + validate (batch.read_validated)               Ray tasks, one per Parquet row group
  -> vocabulary    map_batches: core.tokens.count_items per block; the driver adds the counts
                   up and fits the Vocab with Vocab.fit_counts (as Vocab.fit does on a whole log)
  -> windows       group by user bucket -> the engine's tokenize + windows -> padded int32 rows,
                   materialized once and re-read every epoch
  -> TorchTrainer  each worker: get_dataset_shard("train") -> the core loop encoder.train_encoder
                   on a DDP-wrapped SeqGuardEncoder; a checkpoint per epoch; resume from the last
  -> fit sample    (fit_sample.py) core.sample.sample_counts per block, added up on the driver and
                   planned (core.sample.plan_sample); each block then keeps its users in the sample
  -> encode        the trained encoder on the batch pipeline's actor pool (stages.EncodeStage),
                   over the sample's users only
  -> detectors     one Ray task (fit_sample.fit_detectors_task) gets the sample's encoded blocks
                   from the object store and fits ItemStats and the detectors on their compact
                   arrays (SeqGuard.fit_detectors: ids, times, values, surprisal; an embedding per
                   user): at most TrainConfig.fit_sample_events events, whatever the log's size.
                   The driver holds only the blocks' refs and gets back the bundle's files: its
                   memory is the vocabulary and the model, not the sample
```
The result is the same kind of model bundle as ``SeqGuard.fit``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ...core import storage
from ...core.config import TrainConfig
from ...core.encoder import batch_windows, token_arrays
from ...core.pipeline import SeqGuard
from ...core.pretrained import init_encoder
from ...core.schema import from_frame
from ...core.tokens import Vocab, count_items
from ...io.read_plan import cap_block, count_rows
from .batch import BatchOptions, encode_dataset, group_users, read_validated
from .cluster import TASK_CPUS, cluster_gpus, shared_threads
from .fit_sample import fit_detectors_task, plan_fit_sample, sample_block
from .payload import load_payload, partial_payload

log = logging.getLogger(__name__)

RUN_NAME = "seqguard-train"


@dataclass
class RayTrainOptions:
    """How training runs on Ray."""

    num_workers: int = 2            # Ray Train workers (DDP ranks)
    use_gpu: bool | None = None     # None = use GPUs when the cluster has them
    cpus_per_worker: float = 0.5    # a scheduling label; leaves room for Ray Data tasks
    checkpoint_dir: str | None = None  # storage for checkpoints; default <model>.train next to the bundle
    resume: bool = False            # continue from the last checkpoint of an earlier (killed) run
    spread: bool = False            # place workers and actors on different nodes (SPREAD)
    events_per_bucket: int = 50_000  # events per group in the shuffle by user
    encode_concurrency: int | None = None  # encoder actors for the detector fit
    threads_per_worker: int | None = None  # torch threads a worker; None: its node's cores / its workers there
    max_failures: int = 2           # worker-group restarts (a worker or its node died) before fit() fails;
                                    # each restart continues from the last checkpoint


# ---------------------------------------------------------------------------------------------
# vocabulary and windows: the engine's own functions, per block


def block_counts(table: pa.Table) -> dict[str, np.ndarray]:
    """A block's item counts (``kind`` "item") and distinct actions (``kind`` "action", count 0)."""
    helpers = [c for c in ("_in_row", "_bucket", "_cut") if c in table.column_names]
    lg = from_frame(table.drop_columns(helpers).to_pandas(), source="block")
    items, n = count_items(lg.item)
    acts = np.unique(lg.action.astype(str))
    return {"kind": np.array(["item"] * len(items) + ["action"] * len(acts)),
            "key": np.concatenate([items, acts]).astype(object),
            "count": np.concatenate([n, np.zeros(len(acts), np.int64)])}


def build_vocab(ds, *, min_count: int) -> Vocab:
    """The Vocab that ``Vocab.fit`` gives on the whole log, from per-block counts added up here."""
    blocks = ds.map_batches(block_counts, batch_size=None, batch_format="pyarrow", num_cpus=TASK_CPUS)
    return vocab_from_blocks(blocks.iter_batches(batch_size=None, batch_format="numpy"), min_count=min_count)


def vocab_from_blocks(blocks: Iterable[dict[str, np.ndarray]], *, min_count: int) -> Vocab:
    """The whole log's Vocab from its blocks' counts (:func:`block_counts`)."""
    keys, counts, actions = [], [], set()
    for b in blocks:
        is_item = b["kind"] == "item"
        keys.append(b["key"][is_item].astype(str))
        counts.append(b["count"][is_item].astype(np.int64))
        actions.update(b["key"][~is_item].tolist())
    uniq, inv = np.unique(np.concatenate(keys), return_inverse=True)
    total = np.zeros(len(uniq), np.int64)
    np.add.at(total, inv.ravel(), np.concatenate(counts))
    return Vocab(min_count=min_count).fit_counts(uniq, total, np.array(sorted(actions)))


def bucket_windows(table: pa.Table, payload: dict) -> dict[str, np.ndarray]:
    """Bucket of whole users -> encoder windows as the in-process trainer cuts them: items, actions,
    gaps (W, max_len) int32 (padded) and length (W,) int32. ``payload``: :func:`partial_payload`."""
    sg = load_payload(payload)
    lg = cap_block(from_frame(table.drop_columns(["_bucket"]).to_pandas().sort_values("_in_row", kind="stable"),
                              source="bucket"), sg.config.max_events_per_user)
    seqs = sg.tokenize(lg)
    starts, lengths, _ = sg.encoder.windows(seqs)
    T = sg.encoder.max_len
    out = {k: v.numpy().astype(np.int32) for k, v in batch_windows(token_arrays(seqs), starts, lengths, T).items()}
    out = {k: np.pad(v, ((0, 0), (0, T - v.shape[1]))) for k, v in out.items()}  # (W, T): one width for every block
    out["length"] = lengths.astype(np.int32)
    return out


def read_grouped(events: str | Path, **kw):
    """The training log read once and shuffled by user once: :func:`batch.read_validated`'s dataset
    grouped into whole-user buckets and materialized (in the object store, spilled to disk when it
    is full), whence the vocabulary, the windows and the encodings are read without another read
    or shuffle. Returns (dataset, units, n_buckets)."""
    ds, units, n_buckets = read_validated(events, **kw)
    return group_users(ds, n_buckets).materialize(), units, n_buckets


def windows_dataset(ds, sg: SeqGuard, n_buckets: int, *, spread: bool = False, grouped: bool = False):
    """The training windows of a :func:`batch.read_validated` dataset (or, ``grouped``, of its
    :func:`batch.group_users`), materialized; and their number."""
    extra = {"scheduling_strategy": "SPREAD"} if spread else {}
    ds = ds if grouped else group_users(ds, n_buckets)
    win = ds.map_batches(bucket_windows, batch_size=None, fn_args=(partial_payload(sg, encoder=False),),
                         batch_format="pyarrow", num_cpus=TASK_CPUS, **extra).materialize()
    return win, win.count()


# ---------------------------------------------------------------------------------------------
# the Ray Train loop: plain PyTorch (encoder.train_encoder) + shard + checkpoints


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from ...core.encoder import SeqGuardConfig, SeqGuardEncoder, train_encoder

    torch.manual_seed(config["seed"])
    ctx = ray.train.get_context()
    torch.set_num_threads(shared_threads(config.get("threads"), ctx.get_local_world_size()))
    rank = ctx.get_world_rank()
    model = SeqGuardEncoder(SeqGuardConfig(**config["encoder_config"]))
    if config.get("init_state") is not None:  # a pretrained encoder adapted on the driver (--init-from)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in config["init_state"].items()})
    state = None
    # a re-run of the same run (resume) or a restart after a worker died (FailureConfig): the
    # latest checkpoint reported; None on a fresh run
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    # BERT's own word embeddings are unused (the encoder feeds inputs_embeds), so DDP must allow
    # parameters without gradients
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    device = ray.train.torch.get_device()
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.01)
    start_epoch = start_step = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        start_step = int(state.get("global_step", 0))
    step = {"global": start_step}  # optimiser steps over every epoch and attempt
    nodes = [None] * ctx.get_world_size()
    node = ray.get_runtime_context().get_node_id()
    if dist.is_initialized():
        dist.all_gather_object(nodes, node)
    else:
        nodes = [node]
    shard = ray.train.get_dataset_shard("train")
    bs = config["batch_size"]
    exit_at = config.get("exit_at")  # fault injection (tests): {"epoch", "batch", "rank", "marker", "wait_s"}

    def make_batches(epoch: int):
        for i, b in enumerate(shard.iter_batches(batch_size=bs, batch_format="numpy", local_shuffle_buffer_size=8 * bs,
                                                 local_shuffle_seed=config["seed"] + epoch)):
            if (exit_at and (epoch, i, rank) == (exit_at["epoch"], exit_at["batch"], exit_at["rank"])
                    and not os.path.exists(exit_at["marker"])):
                time.sleep(exit_at.get("wait_s", 0))  # e.g. until the controller has registered the last checkpoint
                Path(exit_at["marker"]).write_text(f"{epoch} {i} {start_epoch} {step['global']}")
                os._exit(1)  # this worker process dies mid-epoch, once: as a killed or lost node would
            T = int(b["length"].max())
            yield {k: torch.from_numpy(b[k][:, :T].astype(np.int64)).to(device) for k in ("items", "actions", "gaps")}

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        step["global"] += int(metrics["steps"])
        report = {**metrics, "worker_nodes": nodes, "start_epoch": start_epoch, "start_step": start_step,
                  "global_step": step["global"]}
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                inner = model.module if hasattr(model, "module") else model
                torch.save({"model": inner.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                            "global_step": step["global"]}, Path(d) / "state.pt")
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(report, checkpoint=checkpoint)

    train_encoder(model, make_batches, epochs=config["epochs"], lr=config["lr"], seed=config["seed"] + rank,
                  steps_per_epoch=config["steps_per_epoch"], on_epoch_end=on_epoch_end,
                  optimizer=opt, start_epoch=start_epoch, grad_accum=config.get("grad_accum", 1),
                  mixed_precision=config.get("mixed_precision", "off"))


def _run_dir(model_dir: str | Path, opts: RayTrainOptions) -> tuple[str, str]:
    """(checkpoint storage, this run's directory in it): ``--checkpoint-dir``, else MODEL.train
    beside the bundle; local paths or URIs alike."""
    base = storage.absolute(opts.checkpoint_dir) if opts.checkpoint_dir else \
        storage.sibling(model_dir, storage.name(model_dir) + ".train")
    return base, storage.join(base, RUN_NAME)


def train_encoder_ray(sg: SeqGuard, windows_ds, n_windows: int, model_dir: str | Path,
                      opts: RayTrainOptions, *, exit_at: dict | None = None) -> tuple[list[dict], dict]:
    """Run TorchTrainer over the windows dataset; load the trained weights into ``sg.model`` (an
    initialised model: its config is the one trained). A worker that dies restarts the worker
    group from the last checkpoint, up to ``opts.max_failures`` times (Ray Train registers a
    reported checkpoint at its next poll of the workers, every 2 s: a worker that dies sooner after
    a report restarts from the checkpoint before). ``exit_at`` (tests): the worker of rank ``rank``
    exits at batch ``batch`` of epoch ``epoch`` after ``wait_s`` seconds, once (``marker`` file).

    Returns the last epoch's loss as a one-entry history, and what the run did: ``start_epoch`` and
    ``start_step`` (0, or the epoch and optimiser step the last attempt continued at: a resumed
    run or a restart after a failure), ``last_epoch``, ``global_step``, nodes, timing, checkpoint dir.
    """
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    e = sg.encoder
    use_gpu = opts.use_gpu if opts.use_gpu is not None else cluster_gpus() >= opts.num_workers
    base, run_dir = _run_dir(model_dir, opts)
    if not opts.resume:
        storage.delete(run_dir)
    # the resolver's filesystem, so that Ray Train reaches the store as every other read and
    # write does (AWS_ENDPOINT_URL, URI options); a local path stays a plain path
    filesystem, path = storage.resolve(base)
    where = ({"storage_path": path, "storage_filesystem": filesystem} if storage.is_uri(base)
             else {"storage_path": base})
    per_worker = math.ceil(n_windows / opts.num_workers)
    config = {"encoder_config": sg.model.config.to_dict(), "seed": e.seed, "lr": e.lr, "batch_size": e.batch_size,
              "epochs": e.epochs_for(n_windows), "steps_per_epoch": max(1, math.ceil(per_worker / e.batch_size)),
              "grad_accum": e.grad_accum, "mixed_precision": e.mixed_precision,
              "init_state": ({k: v.detach().cpu().numpy() for k, v in sg.model.state_dict().items()}
                             if sg.config.init_from else None), "exit_at": exit_at,
              "threads": opts.threads_per_worker}
    resources = {"CPU": opts.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=opts.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy="SPREAD" if opts.spread else "PACK"),
        # a run of the same name and storage continues from its last checkpoint (Ray Train V2)
        run_config=ray.train.RunConfig(name=RUN_NAME, **where,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                                       failure_config=ray.train.FailureConfig(max_failures=opts.max_failures)),
        datasets={"train": windows_ds},
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint (run dir {run_dir})")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    sg.model.load_state_dict(state["model"])
    m = dict(result.metrics or {})
    info = {"ray_train_s": round(time.perf_counter() - t0, 2), "ray_train_workers": opts.num_workers,
            "ray_train_use_gpu": bool(use_gpu), "worker_nodes": m.get("worker_nodes", []),
            "checkpoint_run_dir": str(run_dir), "start_epoch": int(m.get("start_epoch", 0)),
            "start_step": int(m.get("start_step", 0)), "last_epoch": int(state["epoch"]),
            "global_step": int(state.get("global_step", 0))}
    e.history_ = [{"epoch": int(state["epoch"]), "loss": float(m["loss"]) if "loss" in m else None}]
    return e.history_, info


# ---------------------------------------------------------------------------------------------
# fit


class Phases:
    """Wall seconds of a run's steps, each from the end of the one before (``metrics["phases_s"]``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def done(self, name: str) -> float:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._t, 2)
        self._t = now
        return self.seconds[name]


def _train_on_ray(events, where: str | Path, config: TrainConfig | None, opts: RayTrainOptions, on_bad_rows: str):
    """The log read and grouped once (:func:`read_grouped`), the vocabulary, the windows, the encoder
    initialised (fresh, or --init-from's adapted: new items as the unknown bucket) and trained on
    Ray Train (checkpoints beside ``where``). Returns sg, the grouped dataset, units, n_buckets,
    history, the run's info (with ``windows``) and the init-from info."""
    sg = SeqGuard(config or TrainConfig())
    c, clock = sg.config, Phases()
    ds, units, n_buckets = read_grouped(events, on_bad_rows=on_bad_rows, events_per_bucket=opts.events_per_bucket,
                                        max_events=c.max_events_per_user)
    clock.done("read_group")
    sg.vocab = build_vocab(ds, min_count=c.min_item_count)
    log.info("vocabulary: %d items, %d actions (%.1f s)", len(sg.vocab.items_), len(sg.vocab.actions_),
             clock.done("vocab"))
    win_ds, n_windows = windows_dataset(ds, sg, n_buckets, spread=opts.spread, grouped=True)
    clock.done("windows")
    init = init_encoder(sg.encoder, sg.vocab, c)
    history, info = train_encoder_ray(sg, win_ds, n_windows, where, opts)
    clock.done("encoder")
    return sg, ds, units, n_buckets, history, {**info, "windows": int(n_windows)}, init, clock


def fit(events: str | Path, model_dir: str | Path, config: TrainConfig | None = None, *,
        on_bad_rows: str = "error", options: RayTrainOptions | None = None) -> SeqGuard:
    """Train on Ray and save the bundle to ``model_dir``; returns the fitted SeqGuard."""
    import ray

    opts = options or RayTrainOptions()
    t0 = time.perf_counter()
    sg, ds, units, n_buckets, history, info, init, clock = _train_on_ray(events, model_dir, config, opts, on_bad_rows)
    t_train = time.perf_counter() - t0
    c = sg.config
    sample, cut = plan_fit_sample(ds, c)
    clock.done("sample_plan")
    if not sample.whole:  # the workers leave out the users outside the sample: the fit never sees them
        ds = ds.map_batches(sample_block, fn_args=(sample, c.max_events_per_user), batch_size=None,
                            batch_format="pyarrow", num_cpus=TASK_CPUS)
    payload = ray.put(partial_payload(sg))
    enc_ds, _ = encode_dataset(ds, payload, n_buckets,
                               BatchOptions(concurrency=opts.encode_concurrency, spread=opts.spread), grouped=True)
    refs = enc_ds.to_arrow_refs()  # the sample's encoded blocks, in the object store
    clock.done("encode_sample")
    fit_args = {"history": history, "t_train": t_train, "sample": sample,
                "bad_rows": count_rows(units) - sample.seen_events - cut["events_truncated"]}
    files, enc_nodes = ray.get(ray.remote(fit_detectors_task).options(num_cpus=TASK_CPUS).remote(
        payload, fit_args, *refs))
    del refs
    sg = load_payload(files)  # the fitted bundle
    sg.encoder.history_ = history
    clock.done("detectors")
    sg.metrics.update({"epochs": info["last_epoch"] + 1, "fit_s": round(time.perf_counter() - t0, 2),
                       "engine": "ray", **info, **cut, "encode_nodes": enc_nodes, "phases_s": clock.seconds,
                       **({"init_from": init} if init else {})})
    sg.save(model_dir)
    return sg


def pretrain(events: str | Path, out: str | Path, config: TrainConfig | None = None, *,
             on_bad_rows: str = "error", options: RayTrainOptions | None = None) -> dict:
    """`seqguard pretrain --engine ray`: the encoder alone trained on Ray Train (the log read,
    grouped and windowed by Ray Data as :func:`fit` does) and saved as a pretrained encoder to
    ``out``; returns its metrics. Item text is not embedded on this path (the log's titles would
    have to be gathered on the driver): new items of a later ``--init-from`` start as the unknown
    bucket unless the in-process ``pretrain`` wrote the encoder."""
    from ...core.pretrained import save_pretrained

    opts = options or RayTrainOptions()
    t0 = time.perf_counter()
    sg, _, units, _, history, info, init, clock = _train_on_ray(events, out, config, opts, on_bad_rows)
    c = sg.config
    metrics = {"train_events": count_rows(units), "train_users": None, "vocab_items": len(sg.vocab.items_),
               "windows": int(info["windows"]), "epochs": info["last_epoch"] + 1,
               "final_loss": history[-1]["loss"] if history else None, "history": history, "items_with_text": 0,
               "init_from": init, "engine": "ray", "fit_s": round(time.perf_counter() - t0, 2),
               "phases_s": clock.seconds,
               **{k: info[k] for k in ("start_epoch", "global_step") if k in info}}
    save_pretrained(out, config=c, encoder=sg.encoder, vocab=sg.vocab, metrics=metrics)
    return metrics
