"""A plain in-process ``grpc.aio`` server over the core engine: no Ray.

It is the speed baseline for the Ray Serve app (bench/serve.py), a test double, and
``seqguard serve --no-ray`` for a single process. Same API, same validation, same status codes:
everything but the transport lives in :mod:`seqguard_ray.runtime.serving`.

    server, port = await create_server("127.0.0.1:0", service)
    ...
    await server.stop(grace=1.0)
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc

from ..proto.seqguard.v1 import seqguard_pb2 as pb
from ..proto.seqguard.v1 import seqguard_pb2_grpc as pb_grpc
from .serving import (
    ContinuousBatcher,
    ModelInfo,
    RepairedBatch,
    ScoredBatch,
    ScoringService,
    SeqBatch,
    Unavailable,
    detect_stage,
    encode_stage,
    lenient_deserializer,
    load_engine,
    repair_stage,
)

log = logging.getLogger(__name__)


class InProcessBackend:
    """Runs the three stages in this process, on one worker thread (the engine is not shared
    between threads). With ``batching``, requests that arrive while a batch runs are merged into
    the next engine call (up to ``max_batch`` requests; :class:`ContinuousBatcher`).
    """

    def __init__(self, sg=None, *, model_dir: str = "", batching: bool = True, max_batch: int = 64):
        self.sg = sg
        self.model_dir = str(model_dir)
        self.batching = batching
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="seqguard-engine")
        self._batcher = ContinuousBatcher(self._run, max_batch=max_batch)
        self._info: ModelInfo | None = None

    @classmethod
    def from_dir(cls, model_dir: str, *, torch_threads: int | None = 1, **kw) -> InProcessBackend:
        return cls(load_engine(model_dir, torch_threads=torch_threads), model_dir=model_dir, **kw)

    def _engine(self):
        if self.sg is None:
            raise Unavailable("no model is loaded yet: retry shortly")
        return self.sg

    def _run_stages(self, batch: SeqBatch, repair: bool) -> ScoredBatch | RepairedBatch:
        sg = self._engine()
        sb = detect_stage(sg, encode_stage(sg, batch, self.model_dir))
        return repair_stage(sg.policy, sb) if repair else sb

    async def _run(self, batch: SeqBatch, repair: bool) -> ScoredBatch | RepairedBatch:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run_stages, batch, repair)

    async def _submit(self, batch: SeqBatch, repair: bool):
        self._engine()
        return await (self._batcher.submit(batch, repair) if self.batching else self._run(batch, repair))

    async def score(self, batch: SeqBatch) -> ScoredBatch:
        return await self._submit(batch, False)

    async def repair(self, batch: SeqBatch) -> RepairedBatch:
        return await self._submit(batch, True)

    async def model_info(self) -> ModelInfo:
        if self._info is None:
            self._engine()
            self._info = ModelInfo.from_dir(self.model_dir)
        return self._info

    def close(self) -> None:
        self._batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class SeqGuardServicer(pb_grpc.SeqGuardServicer):
    """The generated servicer, delegating every rpc to a :class:`ScoringService`."""

    def __init__(self, service: ScoringService):
        self.service = service

    async def _call(self, rpc: str, request, context: grpc.aio.ServicerContext):
        reply = await self.service.call(rpc, request, context.invocation_metadata())
        if reply.code != grpc.StatusCode.OK:
            await context.abort(reply.code, reply.details)
        return reply.message

    async def Score(self, request, context):  # noqa: N802 - rpc names
        return await self._call("Score", request, context)

    async def ScoreBatch(self, request, context):  # noqa: N802
        return await self._call("ScoreBatch", request, context)

    async def Repair(self, request, context):  # noqa: N802
        return await self._call("Repair", request, context)

    async def ModelInfo(self, request, context):  # noqa: N802
        return await self._call("ModelInfo", request, context)


def add_servicer(servicer: SeqGuardServicer, server: grpc.aio.Server) -> None:
    """The generated ``add_SeqGuardServicer_to_server``, built from the proto's descriptor, with
    deserializers that let an undecodable request reach the service (INVALID_ARGUMENT, not UNKNOWN)."""
    svc = pb.DESCRIPTOR.services_by_name["SeqGuard"]
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, m.name), request_deserializer=lenient_deserializer(getattr(pb, m.input_type.name)),
            response_serializer=getattr(pb, m.output_type.name).SerializeToString)
        for m in svc.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(svc.full_name, handlers),))
    server.add_registered_method_handlers(svc.full_name, handlers)


async def create_server(address: str, service: ScoringService) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on ``address`` (port 0 picks a free one); returns (server, port)."""
    limit = service.limits.max_message_bytes
    # the transport limit is a little above the checked one, so an oversized request gets a
    # RESOURCE_EXHAUSTED with our message rather than grpc's
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", min(2**31 - 1, limit + 1024)),
                                      ("grpc.max_send_message_length", 2**31 - 1)])
    add_servicer(SeqGuardServicer(service), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
