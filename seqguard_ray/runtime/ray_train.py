"""Training on Ray: Ray Data reads and shards the log, Ray Train (TorchTrainer, DDP) trains the encoder.

```
read + validate (ray_batch.read_validated)           Ray tasks, one per Parquet row group
  -> vocabulary    map_batches: item/action counts per block; the driver merges the counts
  -> windows       group by user bucket -> tokenize -> encoder windows (padded int32 rows),
                   materialized once and re-read every epoch
  -> TorchTrainer  each worker: get_dataset_shard("train") -> the core loop model.train_encoder
                   on a DDP-wrapped SeqGuardEncoder; a checkpoint per epoch; resume from the last
  -> encode        the trained encoder on the batch pipeline's actor pool (ray_batch.EncodeStage)
  -> detectors     the driver fits ItemStats and the detectors on compact arrays
                   (ids, times, values, surprisal: ~50 bytes an event; embeddings per user)
```
The result is the same model bundle as ``SeqGuard.fit``.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..core.pipeline import Encoded, SeqGuard, TrainConfig
from ..core.events import from_frame
from ..core.features import ItemStats, Seqs
from .ray_batch import BatchOptions, encode_dataset, encoded_from_table, read_validated
from ..core.tokens import Vocab, gap_buckets, windows

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


# ---------------------------------------------------------------------------------------------
# vocabulary from partial counts


def _block_counts(table: pa.Table) -> dict[str, np.ndarray]:
    lg = from_frame(table.drop_columns(["_in_row", "_bucket"]).to_pandas(), source="block")
    items, n = np.unique(lg.item.astype(str), return_counts=True)
    acts = np.unique(lg.action.astype(str))
    return {"kind": np.array(["item"] * len(items) + ["action"] * len(acts)),
            "key": np.concatenate([items, acts]).astype(object),
            "count": np.concatenate([n, np.zeros(len(acts), np.int64)])}


def build_vocab(ds, *, min_count: int, max_items: int = 200_000) -> Vocab:
    """The same Vocab as ``Vocab.build`` on the whole log, from per-block counts merged here."""
    counts: dict[str, int] = {}
    actions: set[str] = set()
    for b in ds.map_batches(_block_counts, batch_size=None, batch_format="pyarrow", num_cpus=0.25).iter_batches(
            batch_size=None, batch_format="numpy"):
        for kind, key, c in zip(b["kind"], b["key"], b["count"]):
            if kind == "item":
                counts[key] = counts.get(key, 0) + int(c)
            else:
                actions.add(key)
    uniq = np.array(sorted(counts), dtype=str)
    n = np.array([counts[k] for k in uniq.tolist()], np.int64)
    keep = n >= min_count
    uniq, n = uniq[keep], n[keep]
    order = np.argsort(-n, kind="stable")[:max_items]
    return Vocab(uniq[order].tolist(), sorted(actions), n[order].astype(np.int64))


# ---------------------------------------------------------------------------------------------
# windows


def bucket_windows(table: pa.Table, vocab: dict, max_len: int, context: int) -> dict[str, np.ndarray]:
    """Bucket of whole users -> encoder windows: items/actions/gaps (W, max_len) int32 + length (W,)."""
    vocab_ = Vocab.from_dict(vocab)
    lg = from_frame(table.drop_columns(["_bucket"]).to_pandas().sort_values("_in_row", kind="stable"),
                    source="bucket")
    tok = {"items": vocab_.item_ids(lg.item), "actions": vocab_.action_ids(lg.action),
           "gaps": gap_buckets(lg.ts, lg.offsets)}
    starts, lengths, _ = windows(lg.offsets, max_len=max_len, context=context)
    idx = starts[:, None] + np.arange(max_len)[None, :]  # (W, T)
    valid = np.arange(max_len)[None, :] < lengths[:, None]
    idx = np.where(valid, idx, 0)
    out = {k: np.where(valid, v[idx], 0).astype(np.int32) for k, v in tok.items()}
    out["length"] = lengths.astype(np.int32)
    return out


# ---------------------------------------------------------------------------------------------
# the Ray Train loop: plain PyTorch (model.train_encoder) + shard + checkpoints


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from ..core.encoder import SeqGuardConfig, SeqGuardEncoder, train_encoder

    torch.manual_seed(config["seed"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    model = SeqGuardEncoder(SeqGuardConfig(**config["encoder_config"]))
    state = None
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
    start_epoch = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
    nodes = [None] * ctx.get_world_size()
    node = ray.get_runtime_context().get_node_id()
    if dist.is_initialized():
        dist.all_gather_object(nodes, node)
    else:
        nodes = [node]
    shard = ray.train.get_dataset_shard("train")
    bs = config["batch_size"]

    def make_batches(epoch: int):
        for b in shard.iter_batches(batch_size=bs, batch_format="numpy", local_shuffle_buffer_size=8 * bs,
                                    local_shuffle_seed=config["seed"] + epoch):
            T = int(b["length"].max())
            yield {k: torch.from_numpy(b[k][:, :T].astype(np.int64)).to(device) for k in ("items", "actions", "gaps")}

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        report = {**metrics, "worker_nodes": nodes}
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                inner = model.module if hasattr(model, "module") else model
                torch.save({"model": inner.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                           Path(d) / "state.pt")
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(report, checkpoint=checkpoint)

    train_encoder(model, make_batches, epochs=config["epochs"], lr=config["lr"], seed=config["seed"] + rank,
                  steps_per_epoch=config["steps_per_epoch"], on_epoch_end=on_epoch_end,
                  optimizer=opt, start_epoch=start_epoch)


def _run_dir(model_dir: str | Path, opts: RayTrainOptions) -> tuple[str, Path]:
    storage = opts.checkpoint_dir or str(Path(model_dir).resolve().parent / (Path(model_dir).name + ".train"))
    return storage, Path(storage) / RUN_NAME


def train_encoder_ray(sg: SeqGuard, windows_ds, n_windows: int, model_dir: str | Path,
                      opts: RayTrainOptions) -> tuple[list[dict], dict]:
    """Run TorchTrainer over the windows dataset; load the trained weights into ``sg.model``."""
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    from ..core.encoder import SeqGuardEncoder
    from .ray_batch import cluster_gpus

    c = sg.config
    use_gpu = opts.use_gpu if opts.use_gpu is not None else cluster_gpus() >= opts.num_workers
    storage, run_dir = _run_dir(model_dir, opts)
    if not opts.resume and "://" not in storage and run_dir.exists():
        shutil.rmtree(run_dir)
    epochs = sg.epochs_for(n_windows)
    per_worker = math.ceil(n_windows / opts.num_workers)
    config = {"encoder_config": sg._model_config().to_dict(), "seed": c.seed, "lr": c.lr, "batch_size": c.batch_size,
              "epochs": epochs, "steps_per_epoch": max(1, math.ceil(per_worker / c.batch_size))}
    resources = {"CPU": opts.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=opts.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy="SPREAD" if opts.spread else "PACK"),
        run_config=ray.train.RunConfig(name=RUN_NAME, storage_path=storage,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": windows_ds},
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint (run dir {run_dir})")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
    sg.model = SeqGuardEncoder(sg._model_config())
    sg.model.load_state_dict(state["model"])
    m = dict(result.metrics or {})
    info = {"ray_train_s": round(time.perf_counter() - t0, 2), "ray_train_workers": opts.num_workers,
            "ray_train_use_gpu": bool(use_gpu), "worker_nodes": m.get("worker_nodes", []),
            "checkpoint_run_dir": str(run_dir), "last_epoch": int(state["epoch"])}
    history = [{"epoch": int(state["epoch"]), "loss": float(m["loss"]) if "loss" in m else None}]
    return history, info


# ---------------------------------------------------------------------------------------------
# fit


def _partial_payload(sg: SeqGuard) -> dict:
    return {"train_config": asdict(sg.config), "vocab": sg.vocab.to_dict(),
            "encoder_config": sg.model.config.to_dict(),
            "encoder_state": {k: v.detach().cpu().numpy() for k, v in sg.model.state_dict().items()}}


def collect_encoded(sg: SeqGuard, enc_ds) -> tuple[Encoded, int, set]:
    """Driver: concatenate encoded blocks into one compact Seqs + user embeddings (no frames kept)."""
    parts, embs, n_users, nodes = [], [], 0, set()
    for table in enc_ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if table.num_rows == 0:
            continue
        nodes.update(table.column("_encode_node").unique().to_pylist())
        lg, enc = encoded_from_table(sg, table)
        parts.append(enc.seqs)
        embs.append(enc.user_emb)
        n_users += enc.seqs.n_users
    if not parts:
        raise ValueError("no events to train on")
    lens = np.concatenate([np.diff(s.offsets) for s in parts])
    seqs = Seqs(np.r_[0, np.cumsum(lens)].astype(np.int64), *(np.concatenate([getattr(s, f) for s in parts])
                for f in ("ts", "item", "action", "value", "surprisal", "item_key")))
    return Encoded(seqs, np.concatenate(embs)), n_users, nodes


def fit(events: str | Path, model_dir: str | Path, config: TrainConfig | None = None, *,
        on_bad_rows: str = "error", options: RayTrainOptions | None = None) -> SeqGuard:
    """Train on Ray and save the bundle to ``model_dir``; returns the fitted SeqGuard."""
    import ray
    import torch

    opts = options or RayTrainOptions()
    sg = SeqGuard(config or TrainConfig())
    c = sg.config
    t0 = time.perf_counter()
    torch.manual_seed(c.seed)
    ds, units, n_buckets, n_rows = read_validated(events, on_bad_rows=on_bad_rows,
                                                  events_per_bucket=opts.events_per_bucket)
    sg.vocab = build_vocab(ds, min_count=c.min_item_count)
    log.info("vocabulary: %d items, %d actions (%.1f s)", len(sg.vocab.items), len(sg.vocab.actions),
             time.perf_counter() - t0)
    extra = {"scheduling_strategy": "SPREAD"} if opts.spread else {}
    win_ds = ds.groupby("_bucket", num_partitions=n_buckets).map_groups(
        bucket_windows, fn_args=(sg.vocab.to_dict(), c.max_len, c.context), batch_format="pyarrow",
        num_cpus=0.25, **extra).materialize()
    n_windows = win_ds.count()
    from ..core.encoder import SeqGuardEncoder
    sg.model = SeqGuardEncoder(sg._model_config())
    history, info = train_encoder_ray(sg, win_ds, n_windows, model_dir, opts)
    t_train = time.perf_counter() - t0
    del win_ds
    payload_ref = ray.put(_partial_payload(sg))
    enc_ds, _ = encode_dataset(ds, payload_ref, n_buckets,
                               BatchOptions(concurrency=opts.encode_concurrency, spread=opts.spread))
    enc, n_users, enc_nodes = collect_encoded(sg, enc_ds)
    if n_users < 5:
        raise ValueError(f"need at least 5 users to train, got {n_users}")
    sg.stats = ItemStats.fit(enc.seqs, sg.vocab.n_items, seed=c.seed, items=sg.vocab.items)
    sg.fit_detectors(enc)
    n_events = int(len(enc.seqs.ts))
    sg.metrics.update({
        "train_events": n_events, "train_users": int(n_users), "vocab_items": len(sg.vocab.items),
        "epochs": info["last_epoch"] + 1, "final_loss": history[-1]["loss"],
        "encoder_train_s": round(t_train, 2), "fit_s": round(time.perf_counter() - t0, 2),
        "bad_rows_skipped": int(n_rows - n_events) if units[0].n_rows >= 0 else None,
        "engine": "ray", "windows": int(n_windows), **info, "encode_nodes": sorted(enc_nodes),
    })
    sg.save(model_dir)
    return sg
