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
import logging

import grpc
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext, gRPCInputStream
from ray.serve.handle import DeploymentHandle

from seqguard_ray.core.drift import MIN_COUNT
from seqguard_ray.runtime.serve import (
    Authenticator, Limits, ModelInfo, ScoringService, StageCalls, StagedBackend, StreamConfig,
)
from seqguard_ray.runtime.serve.app import INGRESS_MAX_ONGOING, AppConfigRollout
from seqguard_ray.runtime.serve.metrics import DRIFT_WINDOW, RayMetrics
from seqguard_ray.runtime.serve.shadow import check_candidate


class StreamEnded(Exception):
    """Ends a ScoreStream with the status set on its context (the message is the status details)."""


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=INGRESS_MAX_ONGOING, max_queued_requests=256,
                  health_check_period_s=5)
class SeqGuardIngress:
    def __init__(self, encoder: DeploymentHandle, detector: DeploymentHandle, repair: DeploymentHandle, *,
                 token_sha256: str | None, limits: dict | None = None, timeout_s: float | None = None,
                 max_batch_size: int = 32, max_concurrent_batches: int = 2, stream: dict | None = None,
                 drift_window: int | None = DRIFT_WINDOW, drift_min_count: int = MIN_COUNT):
        # drift: the DetectorEnsemble counts each batch in the reference's bins (it holds the vocabulary),
        # this replica adds the counts up over the last drift_window users and exports the gauges
        self.metrics = RayMetrics(drift_window=drift_window, drift_min_count=drift_min_count)
        calls = StageCalls(encode=lambda b: encoder.encode.remote(b), detect=lambda e: detector.detect.remote(e),
                           repair=lambda s: repair.apply.remote(s))
        # a shadow rollout's candidate goes through the same stage replicas, by version (Encoder.encode_with)
        self._candidate_calls = lambda v, d: StageCalls(encode=lambda b: encoder.encode_with.remote(b, v, d),
                                                        detect=lambda e: detector.detect.remote(e),
                                                        repair=lambda s: repair.apply.remote(s))
        ctx = serve.get_replica_context()
        self.replica = ctx.replica_tag
        self.backend = StagedBackend(calls, max_batch=max_batch_size, concurrency=max_concurrent_batches,
                                     metrics=self.metrics, control=AppConfigRollout(ctx.app_name))
        # ScoreStream's state: in Redis when stream.redis_url (or $SEQGUARD_REDIS_URL on the node) names
        # one, any replica serving any user; else in this replica's memory (a stream stays on the
        # replica that took it; a user's events must come on streams to this replica)
        self.service = ScoringService(self.backend, Authenticator(token_sha256), Limits.from_dict(limits), timeout_s,
                                      self.metrics, StreamConfig.from_dict(stream))

    async def reconfigure(self, config: dict) -> None:
        self.backend.info = await asyncio.to_thread(ModelInfo.from_dir, config.get("model_dir"))
        self.metrics.model_loaded(self.backend.info.model_version, drift=self.backend.info.drift)
        cand = config.get("candidate_dir")
        try:
            if not cand or cand == config.get("model_dir"):
                self.backend.shadow.stop()
                return
            info = await asyncio.to_thread(check_candidate, cand, self.backend.info)
            self.backend.shadow.start(info, self._candidate_calls(info.model_version, info.model_dir),
                                      float(config.get("shadow_share", 0.0)))
        except Exception as exc:  # noqa: BLE001 - a broken candidate never takes the live app down
            self.backend.shadow.stop()
            logging.getLogger("ray.serve").error("rollout candidate %s not held: %s", cand, exc)

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

    async def Rollout(self, request, grpc_context: RayServegRPCContext):  # noqa: N802
        msg = await self._rpc("Rollout", request, grpc_context)
        msg.server = self.replica  # each ingress replica holds its own counts
        return msg

    async def ScoreStream(self, request_stream: gRPCInputStream,  # noqa: N802
                          grpc_context: RayServegRPCContext):
        """Bidirectional: Serve's proxy hands the client's messages in as ``request_stream`` and
        sends what this generator yields. An error status is set on the context and raised, which
        the replica passes on to the proxy with that code."""
        async for message in self._stream(request_stream, grpc_context, framed=False):
            yield message

    async def ScoreStreamFrames(self, request_stream: gRPCInputStream,  # noqa: N802
                                grpc_context: RayServegRPCContext):
        """ScoreStream with several requests per message: the proxy's cost is per message."""
        async for message in self._stream(request_stream, grpc_context, framed=True):
            yield message

    async def _stream(self, request_stream, grpc_context: RayServegRPCContext, *, framed: bool):
        async for reply in self.service.score_stream(request_stream, grpc_context.invocation_metadata(), framed=framed):
            if reply.code != grpc.StatusCode.OK:
                grpc_context.set_code(reply.code)
                grpc_context.set_details(reply.details)
                raise StreamEnded(reply.details)
            yield reply.message

    def check_health(self) -> None:
        if self.backend.info is None:
            raise RuntimeError("no model configured")
        self.metrics.refresh()  # Serve calls this every health_check_period_s: keeps the gauges exported
        self.backend.shadow.refresh()
