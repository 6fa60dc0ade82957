"""The gRPC ingress: implements the SeqGuard service on Serve's gRPC proxy and composes the stages.

Concurrent requests are gathered with ``@serve.batch`` and sent as ONE batch through the stages
(two batches in flight, so the Encoder and the DetectorEnsemble work at the same time);
the Encoder's response is passed straight to the DetectorEnsemble (and on to RepairPolicy)
without coming back here. Auth, limits, conversion and status codes come from
:class:`seqguard_ray.serving.ScoringService`; what is counted for Prometheus comes from
:class:`seqguard_ray.metrics.ServingMetrics` (see docs/metrics.md).
"""

from __future__ import annotations

import asyncio

import grpc
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from seqguard_ray.metrics import RayMetrics
from seqguard_ray.serving import (
    Authenticator, Limits, ModelInfo, RepairedBatch, ScoredBatch, ScoringService, SeqBatch, Unavailable,
)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256,
                  health_check_period_s=5)
class SeqGuardIngress:
    def __init__(self, encoder: DeploymentHandle, detector: DeploymentHandle, repair: DeploymentHandle, *,
                 token_sha256: str | None, limits: dict | None = None, timeout_s: float | None = None,
                 max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002):
        self._enc, self._det, self._rep = encoder, detector, repair
        self.service = ScoringService(self, Authenticator(token_sha256), Limits.from_dict(limits), timeout_s)
        for fn in (self._score_many, self._repair_many):
            fn.set_max_batch_size(max_batch_size)
            fn.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._model_dir: str | None = None
        self._info: ModelInfo | None = None
        self.metrics = RayMetrics()

    async def reconfigure(self, config: dict) -> None:
        self._model_dir = config.get("model_dir")
        self._info = await asyncio.to_thread(ModelInfo.from_dir, self._model_dir)
        self.metrics.model_loaded(self._info.model_version)

    # ---------------------------------------------------------------- Backend for ScoringService
    async def score(self, batch: SeqBatch) -> ScoredBatch:
        return await self._score_many(batch)

    async def repair(self, batch: SeqBatch) -> RepairedBatch:
        return await self._repair_many(batch)

    async def model_info(self) -> ModelInfo:
        if self._info is None:
            raise Unavailable("no model is loaded yet: retry shortly")
        return self._info

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002, max_concurrent_batches=2)
    async def _score_many(self, batches: list[SeqBatch]) -> list[ScoredBatch]:
        merged, bounds = SeqBatch.concat(batches)
        sb = await self._det.detect.remote(self._enc.encode.remote(merged))
        self.metrics.scored(sb.score, sb.anomalous, sb.anomaly_type)
        return sb.split(bounds)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002, max_concurrent_batches=2)
    async def _repair_many(self, batches: list[SeqBatch]) -> list[RepairedBatch]:
        merged, bounds = SeqBatch.concat(batches)
        rb = await self._rep.apply.remote(self._det.detect.remote(self._enc.encode.remote(merged)))
        self.metrics.scored(rb.scored.score, rb.scored.anomalous, rb.scored.anomaly_type)
        self.metrics.repaired(rb.user_action)
        return rb.split(bounds)

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
