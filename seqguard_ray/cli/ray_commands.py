"""The Ray side of ``seqguard train`` / ``seqguard score``: the Ray options, the engine choice, and
the two jobs on Ray (the commands themselves, shared by both engines, are in cli.main).

``--engine auto`` (the default) picks Ray when an address is given (``--address`` or
``RAY_ADDRESS``) or the input is large, else the in-process engine: Ray costs 15-45 s of fixed
start-up on a small machine, while the in-process engine handles 100k events in seconds.
"""

from __future__ import annotations

import argparse
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from .common import positive_int

log = logging.getLogger("seqguard")

# auto picks Ray above this many input events (Parquet metadata) or input files
AUTO_RAY_EVENTS = 2_000_000
AUTO_RAY_FILES = 64
AUTO_RAY_TEXT_BYTES = 200 << 20


def add_ray_args(p: argparse.ArgumentParser, *, command: str) -> None:
    """Add --engine / --address (and per-command Ray knobs) to a subcommand parser."""
    g = p.add_argument_group("Ray")
    g.add_argument("--engine", choices=("auto", "ray", "local"), default="auto",
                   help="auto (default): Ray when --address/RAY_ADDRESS is set or the input is large "
                        f"(> {AUTO_RAY_EVENTS:,} events or > {AUTO_RAY_FILES} files); else in-process")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS; none = start a local Ray)")
    if command == "train":
        g.add_argument("--workers", type=positive_int, default=2, help="Ray Train workers (default 2)")
        g.add_argument("--resume", action="store_true", help="resume from the last checkpoint of an earlier run")
        g.add_argument("--max-failures", type=int, default=2,
                       help="restarts from the last checkpoint when a training worker or its node dies (default 2)")
        g.add_argument("--checkpoint-dir", default=None,
                       help="checkpoint storage (default MODEL.train next to the bundle; shared or s3:// on a cluster)")
    else:
        g.add_argument("--concurrency", type=positive_int, default=None,
                       help="encoder actors (default: one per GPU, else one per core on one node and one per "
                            "2 CPUs across nodes; never more than the input's buckets of ~20k events)")
        g.add_argument("--batch-size", type=positive_int, default=None,
                       help="windows per encoder forward pass (default: the bundle's)")
        from ..core.config import SCORE_PRECISIONS
        p.add_argument("--score-precision", choices=SCORE_PRECISIONS, default=None,
                       help="encoder scoring on a CPU (both engines): fp32, or bf16 where the CPU has bf16 "
                            "instructions (AMX, AVX-512 BF16), faster within ~0.005 nats (default: the bundle's)")
        p.add_argument("--score-compile", choices=("on", "off"), default=None,
                       help="score through torch.compile (both engines): compiled once per process or actor on "
                            "its first batch, faster after; scores within float rounding (default: the bundle's)")


def compile_choice(flag: str | None) -> bool | None:
    """--score-compile on/off as a bool; None (not given) keeps the bundle's."""
    return None if flag is None else flag == "on"


def input_size(path: str | Path) -> tuple[int | None, int, int]:
    """(events from Parquet metadata or None, number of files, bytes) without reading data; a local
    path or a URI. Over AUTO_RAY_FILES files the events are not counted (None)."""
    import pyarrow.parquet as pq
    from pyarrow.fs import FileType

    from ..core import storage
    from ..core.readers import PARQUET_SUFFIXES

    found = storage.info(path)
    files = (storage.list_files(path) if found.type == FileType.Directory
             else [(str(path), found.size or 0)] if found.type == FileType.File else [])
    pq_files = [f for f, _ in files if storage.suffix(f) in PARQUET_SUFFIXES]
    n = None
    if pq_files and len(files) <= AUTO_RAY_FILES:  # more files pick Ray anyway: no footer reads (GETs on a store)
        try:
            n = 0
            for f in pq_files:
                with storage.open_input_file(f) as fh:
                    n += pq.ParquetFile(fh).metadata.num_rows
        except Exception:  # unreadable files get their clear error from the engine
            n = None
    return n, len(files), sum(size for _, size in files)


def choose_engine(args) -> str:
    """'ray' or 'local' for --engine auto|ray|local."""
    if args.engine != "auto":
        return args.engine
    if (args.address or os.environ.get("RAY_ADDRESS") or "local") != "local":  # "local" = no cluster to use
        return "ray"
    n, n_files, n_bytes = input_size(args.events)
    if (n or 0) > AUTO_RAY_EVENTS or n_files > AUTO_RAY_FILES or (n is None and n_bytes > AUTO_RAY_TEXT_BYTES):
        return "ray"
    return "local"


@contextmanager
def ray_session(address: str | None):
    """Ray for one command: the cluster at ``address`` / RAY_ADDRESS, or a local Ray started (and
    stopped) here."""
    import ray

    from ..runtime.ray.cluster import ensure_ray

    started = ensure_ray(address)
    log.info("Ray: %s (%s)", "started locally" if started else "connected", ray.cluster_resources())
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def ray_train_options(args):
    """The RayTrainOptions of `seqguard train` / `pretrain`'s Ray flags."""
    from ..runtime.ray.train import RayTrainOptions

    return RayTrainOptions(num_workers=args.workers, resume=args.resume, checkpoint_dir=args.checkpoint_dir,
                           max_failures=args.max_failures)


def train_on_ray(args, cfg):
    """`seqguard train` on Ray: the fitted SeqGuard, its bundle saved to ``args.model``."""
    from ..runtime.ray.train import fit

    with ray_session(args.address):
        return fit(args.events, args.model, cfg, on_bad_rows=args.on_bad_rows, options=ray_train_options(args))


def score_on_ray(args, allow=None) -> dict:
    """`seqguard score` on Ray: outputs written to ``args.out``; returns the summary. ``allow``: the
    ``AllowList`` of --allow-list (honoured as by the in-process engine)."""
    from ..runtime.ray.batch import BatchOptions, score

    with ray_session(args.address):
        return score(args.model, args.events, args.out, on_bad_rows=args.on_bad_rows,
                     options=BatchOptions(concurrency=args.concurrency, batch_size=args.batch_size,
                                          score_precision=args.score_precision,
                                          score_compile=compile_choice(args.score_compile)), allow=allow)
