"""The plain in-process ``grpc.aio`` server: no Ray.

It is the speed baseline for the Ray Serve app (bench/serve.py), a test double, and
``seqguard serve --no-ray`` for a single process. Same API, same validation, same status codes:
only the transport lives here; the rpcs are a :class:`~seqguard_ray.runtime.serve.service.ScoringService`,
usually over an :class:`~seqguard_ray.runtime.serve.service.InProcessBackend`.

    server, port = await create_server("127.0.0.1:0", service)
    ...
    await server.stop(grace=1.0)
"""

from __future__ import annotations

import grpc

from ...proto.seqguard.v1 import seqguard_pb2 as pb
from ...proto.seqguard.v1 import seqguard_pb2_grpc as pb_grpc
from .convert import lenient_deserializer
from .service import ScoringService


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

    async def Rollout(self, request, context):  # noqa: N802
        return await self._call("Rollout", request, context)

    async def ScoreStream(self, request_iterator, context):  # noqa: N802
        async for message in self._stream(request_iterator, context, framed=False):
            yield message

    async def ScoreStreamFrames(self, request_iterator, context):  # noqa: N802
        async for message in self._stream(request_iterator, context, framed=True):
            yield message

    async def _stream(self, request_iterator, context, *, framed: bool):
        async for reply in self.service.score_stream(request_iterator, context.invocation_metadata(), framed=framed):
            if reply.code != grpc.StatusCode.OK:
                await context.abort(reply.code, reply.details)
            yield reply.message


def add_servicer(servicer: SeqGuardServicer, server: grpc.aio.Server) -> None:
    """The generated ``add_SeqGuardServicer_to_server``, built from the proto's descriptor (each
    method's handler kind from its streaming flags), with deserializers that let an undecodable
    request reach the service (INVALID_ARGUMENT, not UNKNOWN)."""
    svc = pb.DESCRIPTOR.services_by_name["SeqGuard"]
    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    handlers = {
        m.name: kinds[(m.client_streaming, m.server_streaming)](
            getattr(servicer, m.name), request_deserializer=lenient_deserializer(getattr(pb, m.input_type.name)),
            response_serializer=getattr(pb, m.output_type.name).SerializeToString)
        for m in svc.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(svc.full_name, handlers),))
    server.add_registered_method_handlers(svc.full_name, handlers)


async def create_server(address: str, service: ScoringService, *, reflection: bool = True) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server on ``address`` (port 0 picks a free one); returns (server, port).
    ``reflection``: answer gRPC server reflection (as Ray Serve's proxy does by default), so
    grpcurl and :class:`seqguard_ray.reflect.ReflectionClient` need no proto files."""
    limit = service.limits.max_message_bytes
    # the transport limit is a little above the checked one, so an oversized request gets a
    # RESOURCE_EXHAUSTED with our message rather than grpc's
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", min(2**31 - 1, limit + 1024)),
                                      ("grpc.max_send_message_length", 2**31 - 1)])
    add_servicer(SeqGuardServicer(service), server)
    if reflection:
        from grpc_reflection.v1alpha import reflection as grpc_reflection

        grpc_reflection.enable_server_reflection(
            (pb.DESCRIPTOR.services_by_name["SeqGuard"].full_name, grpc_reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
