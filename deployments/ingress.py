"""The gRPC ingress: implements the SeqGuard service on Serve's gRPC proxy over the stage deployments.

Everything but the transport is shared with the plain grpc.aio server:
:class:`~seqguard_ray.runtime.serve.service.ScoringService` (auth, limits, conversion, status
codes) over a :class:`~seqguard_ray.runtime.serve.service.StagedBackend` whose stage calls are
the deployment handles. Concurrent requests are merged and sent as ONE batch through the stages
(two batches in flight, so the Encoder and the DetectorEnsemble work at the same time); the
Encoder's response goes straight to the DetectorEnsemble (and on to RepairPolicy) without coming
back here. What is counted for Prometheus: :class:`~seqguard_ray.runtime.serve.metrics.RayMetrics`
(see docs/metrics.md).
"""

from __future__ import annotations

import asyncio

import grpc
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from seqguard_ray.runtime.serve import (
    Authenticator, Limits, ModelInfo, ScoringService, StageCalls, StagedBackend,
)
from seqguard_ray.runtime.serve.metrics import RayMetrics


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256,
                  health_check_period_s=5)
class SeqGuardIngress:
    def __init__(self, encoder: DeploymentHandle, detector: DeploymentHandle, repair: DeploymentHandle, *,
                 token_sha256: str | None, limits: dict | None = None, timeout_s: float | None = None,
                 max_batch_size: int = 32, max_concurrent_batches: int = 2):
        self.metrics = RayMetrics()
        calls = StageCalls(encode=lambda b: encoder.encode.remote(b), detect=lambda e: detector.detect.remote(e),
                           repair=lambda s: repair.apply.remote(s))
        self.backend = StagedBackend(calls, max_batch=max_batch_size, concurrency=max_concurrent_batches,
                                     metrics=self.metrics)
        self.service = ScoringService(self.backend, Authenticator(token_sha256), Limits.from_dict(limits), timeout_s,
                                      self.metrics)

    async def reconfigure(self, config: dict) -> None:
        self.backend.info = await asyncio.to_thread(ModelInfo.from_dir, config.get("model_dir"))
        self.metrics.model_loaded(self.backend.info.model_version)

    # ---------------------------------------------------------------- rpcs (names = proto rpc names)
    async def _rpc(self, rpc: str, request, ctx: RayServegRPCContext):
        reply = await self.service.call(rpc, request, ctx.invocation_metadata())
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
        if self.backend.info is None:
            raise RuntimeError("no model configured")
        self.metrics.refresh()  # Serve calls this every health_check_period_s: keeps the gauges exported
