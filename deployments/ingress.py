"""The gRPC ingress: implements the SeqGuard service on Serve's gRPC proxy and composes the stages.

Concurrent requests are merged by :class:`seqguard_ray.runtime.serving.ContinuousBatcher` and sent as ONE
batch through the stages (two batches in flight, so the Encoder and the DetectorEnsemble work at
the same time; each takes every request that queued while the earlier ones ran). The Encoder's
response is passed straight to the DetectorEnsemble (and on to RepairPolicy) without coming back
here. Auth, limits, conversion and status codes come from
:class:`seqguard_ray.runtime.serving.ScoringService`; what is counted for Prometheus comes from
:class:`seqguard_ray.runtime.metrics.ServingMetrics` (see docs/metrics.md).
"""

from __future__ import annotations

import asyncio

import grpc
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from seqguard_ray.runtime.metrics import RayMetrics
from seqguard_ray.runtime.serving import (
    Authenticator, ContinuousBatcher, Limits, ModelInfo, RepairedBatch, ScoredBatch, ScoringService, SeqBatch,
    Unavailable,
)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256,
                  health_check_period_s=5)
class SeqGuardIngress:
    def __init__(self, encoder: DeploymentHandle, detector: DeploymentHandle, repair: DeploymentHandle, *,
                 token_sha256: str | None, limits: dict | None = None, timeout_s: float | None = None,
                 max_batch_size: int = 32, max_concurrent_batches: int = 2):
        self._enc, self._det, self._rep = encoder, detector, repair
        self.service = ScoringService(self, Authenticator(token_sha256), Limits.from_dict(limits), timeout_s)
        self.metrics = RayMetrics()
        self._batcher = ContinuousBatcher(self._stages, max_batch=max_batch_size, concurrency=max_concurrent_batches,
                                          on_batch=self.metrics.batched)
        self._model_dir: str | None = None
        self._info: ModelInfo | None = None

    async def reconfigure(self, config: dict) -> None:
        self._model_dir = config.get("model_dir")
        self._info = await asyncio.to_thread(ModelInfo.from_dir, self._model_dir)
        self.metrics.model_loaded(self._info.model_version)

    # ---------------------------------------------------------------- Backend for ScoringService
    async def score(self, batch: SeqBatch) -> ScoredBatch:
        return await self._batcher.submit(batch)

    async def repair(self, batch: SeqBatch) -> RepairedBatch:
        return await self._batcher.submit(batch, repair=True)

    async def model_info(self) -> ModelInfo:
        if self._info is None:
            raise Unavailable("no model is loaded yet: retry shortly")
        return self._info

    async def _stages(self, merged: SeqBatch, repair: bool) -> ScoredBatch | RepairedBatch:
        """One merged batch through Encoder -> DetectorEnsemble [-> RepairPolicy]; each stage's
        result goes straight to the next stage (a DeploymentResponse), not back here."""
        scored = self._det.detect.remote(self._enc.encode.remote(merged))
        if not repair:
            sb = await scored
            self.metrics.scored(sb.score, sb.anomalous, sb.anomaly_type)
            return sb
        rb = await self._rep.apply.remote(scored)
        self.metrics.scored(rb.scored.score, rb.scored.anomalous, rb.scored.anomaly_type)
        self.metrics.repaired(rb.user_action)
        return rb

    # ---------------------------------------------------------------- rpcs (names = proto rpc names)
    async def _rpc(self, rpc: str, request, ctx: RayServegRPCContext):
        reply = await self.service.call(rpc, request, ctx.invocation_metadata())
        self.metrics.request(rpc, reply.code.name)
        if reply.code != grpc.StatusCode.OK:
            ctx.set_code(reply.code)
            ctx.set_details(reply.details)
        return reply.message

    async def Score(self, request, grpc_context: RayServegRPCContext):  # noqa: N802
        return await self._rpc("Score", request, grpc_context)

    async def ScoreBatch(self, request, grpc_context: RayServegRPCContext):  # noqa: N802
        return await self._rpc("ScoreBatch", request, grpc_context)

    async def Repair(self, request, grpc_context: RayServegRPCContext):  # noqa: N802
        return await self._rpc("Repair", request, grpc_context)

    async def ModelInfo(self, request, grpc_context: RayServegRPCContext):  # noqa: N802
        return await self._rpc("ModelInfo", request, grpc_context)

    def check_health(self) -> None:
        if self._info is None:
            raise RuntimeError("no model configured")
        self.metrics.refresh()  # Serve calls this every health_check_period_s: keeps the gauges exported
