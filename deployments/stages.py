"""The three stage deployments. Each holds one core object and runs one stage function from
:mod:`seqguard_ray.runtime.serve.stages`; no model logic lives here.

Every stage takes ``user_config = {"model_dir": ...}``: changing it loads the new bundle in place
(off the event loop) while in-flight requests finish on the old one. Work carries the model
version it was started with, and later stages use that same version (kept for one rollout).
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from seqguard_ray.runtime.serve.batches import EncodedBatch, RepairedBatch, ScoredBatch, SeqBatch
from seqguard_ray.runtime.serve.stages import (
    ModelStore, detect_stage, encode_stage, load_engine, load_policy, repair_stage,
)

log = logging.getLogger("ray.serve")


class _Stage:
    """Shared replica plumbing: a model store, one compute thread, reconfigure and health."""

    def __init__(self, loader):
        self.store = ModelStore(loader)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=type(self).__name__)

    async def reconfigure(self, config: dict) -> None:
        model_dir = config.get("model_dir")
        if not model_dir:
            raise ValueError(f"{type(self).__name__}: user_config needs model_dir, got {config}")
        await self._run(self.store.load, model_dir)
        if config.get("candidate_dir"):  # a shadow rollout's candidate: loaded now, not on its first batch
            try:
                await asyncio.to_thread(self.store.preload, config["candidate_dir"])
            except Exception as exc:  # noqa: BLE001 - a broken candidate never takes the live stage down
                log.error("rollout candidate %s cannot be loaded (its shadow batches will fail): %s",
                          config["candidate_dir"], exc)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def check_health(self) -> None:
        if not self.store.loaded:
            raise RuntimeError("no model loaded")


def _torch_threads() -> int:
    return int(os.environ.get("SEQGUARD_TORCH_THREADS", "1"))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, health_check_period_s=5)
class Encoder(_Stage):
    """Tokenize + Transformer encode. GPU replicas when the app builder gives it ``num_gpus``.

    ``@serve.batch`` merges concurrent calls (already request batches, from the ingress) into one
    encoder pass; with a 0 s wait it adds no latency when there is nothing to merge.
    """

    def __init__(self):
        # the campaign table is applied by the DetectorEnsemble: the encoder does not load it
        super().__init__(lambda d: load_engine(d, device=_device(), torch_threads=_torch_threads(), campaigns=False,
                                                  warm_up=True))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def encode(self, batches: list[SeqBatch]) -> list[EncodedBatch]:
        merged, bounds = SeqBatch.concat(batches)
        sg = self.store.current
        return (await self._run(encode_stage, sg, merged)).split(bounds)

    async def encode_with(self, batch: SeqBatch, version: str, model_dir: str) -> EncodedBatch:
        """Encode with the bundle ``version`` (a rollout's candidate; the DetectorEnsemble follows the
        version it carries). Not merged with live batches: the candidate's are few."""
        sg = await asyncio.to_thread(self.store.get, version, model_dir)
        return await self._run(encode_stage, sg, batch)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16, health_check_period_s=5)
class DetectorEnsemble(_Stage):
    """The calibrated detector ensemble: scores, verdicts, types, reasons, event scores, and the
    evidence of the campaign table published with the bundle (re-read when a new one is published)."""

    def __init__(self):
        super().__init__(lambda d: load_engine(d, torch_threads=_torch_threads()))

    async def detect(self, eb: EncodedBatch) -> ScoredBatch:
        def run():
            return detect_stage(self.store.get(eb.model_version, eb.model_dir), eb)

        return await self._run(run)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=16, health_check_period_s=5)
class RepairPolicy(_Stage):
    """The bundle's repair policy (read from its manifest; no weights are loaded)."""

    def __init__(self):
        super().__init__(load_policy)

    async def apply(self, sb: ScoredBatch) -> RepairedBatch:
        def run():
            return repair_stage(self.store.get(sb.model_version, sb.model_dir).policy, sb)

        return await self._run(run)
