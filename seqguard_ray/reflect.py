"""A client that needs no generated code: it learns the API from the server by gRPC reflection.

Both servers answer the reflection protocol (``grpc.reflection.v1alpha.ServerReflection``): the
plain grpc.aio server registers it (:func:`~seqguard_ray.runtime.serve.grpc_server.create_server`)
and Ray Serve's gRPC proxy does by default (``gRPCOptions.enable_reflection``). What it shows is
what a tool such as ``grpcurl`` sees; ``seqguard client reflect`` prints it and calls a method.

    with ReflectionClient("127.0.0.1:9000", token=os.environ["SEQGUARD_TOKEN"]) as rc:
        print(rc.services())                          # ['seqguard.v1.SeqGuard', 'grpc.reflection...']
        print(rc.methods("seqguard.v1.SeqGuard"))     # [MethodInfo('Score', ...), ...]
        info = rc.call("seqguard.v1.SeqGuard", "ModelInfo", {})   # a dict (the response as JSON)

Requests and responses are messages built from the reflected descriptors (``descriptor_pool`` over a
``ProtoReflectionDescriptorDatabase``, classes from ``message_factory``), filled from and returned
as JSON-style dicts. Reflection itself needs no token; the methods need the bearer token as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "seqguard.v1.SeqGuard"


@dataclass(frozen=True)
class MethodInfo:
    """One rpc as reflection describes it."""

    name: str
    input_type: str          # full name of the request message
    output_type: str         # full name of the response message
    client_streaming: bool
    server_streaming: bool

    def signature(self) -> str:
        """The rpc as a .proto line: ``Score(seqguard.v1.ScoreRequest) returns (seqguard.v1.ScoreResponse)``."""
        cs, ss = ("stream " if self.client_streaming else ""), ("stream " if self.server_streaming else "")
        return f"{self.name}({cs}{self.input_type}) returns ({ss}{self.output_type})"


class ReflectionClient:
    """Lists a server's services and methods by reflection and calls its unary methods with
    messages built from the reflected descriptors.

    Args:
        target: ``host:port`` (the plain server or Serve's gRPC proxy).
        token: bearer token sent with method calls (not needed for reflection itself).
        application: Serve application name, needed only when several apps share the proxy.
        tls, root_certs: connect with TLS, trusting these PEM bytes.
        timeout_s: deadline of one method call.
    """

    def __init__(self, target: str, token: str | None = None, *, application: str | None = None,
                 tls: bool = False, root_certs: bytes | None = None, timeout_s: float = 10.0):
        self._channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certs)) if tls
                         else grpc.insecure_channel(target))
        self._db = ProtoReflectionDescriptorDatabase(self._channel)
        self._pool = descriptor_pool.DescriptorPool(self._db)
        md = [("authorization", f"Bearer {token}")] if token else []
        if application:
            md.append(("application", application))
        self._metadata = tuple(md)
        self.timeout_s = timeout_s

    def services(self) -> list[str]:
        """Full names of the services the server advertises."""
        return list(self._db.get_services())

    def methods(self, service: str = SERVICE) -> list[MethodInfo]:
        """The rpcs of ``service``, in the order the proto declares them."""
        svc = self._pool.FindServiceByName(service)
        return [MethodInfo(m.name, m.input_type.full_name, m.output_type.full_name, m.client_streaming,
                           m.server_streaming) for m in svc.methods]

    def _method(self, service: str, method: str):
        svc = self._pool.FindServiceByName(service)
        found = svc.methods_by_name.get(method)
        if found is None:
            raise ValueError(f"{service} has no method {method!r}; it has {[m.name for m in svc.methods]}")
        return found

    def message_class(self, full_name: str) -> type:
        """The message class of ``full_name`` (e.g. ``seqguard.v1.ScoreRequest``), built from reflection."""
        return message_factory.GetMessageClass(self._pool.FindMessageTypeByName(full_name))

    def request(self, service: str, method: str, fields: dict | None = None):
        """A request message of ``service.method`` filled from ``fields`` (proto JSON names or
        field names); an unknown field is an error naming it."""
        m = self._method(service, method)
        try:
            return json_format.ParseDict(fields or {}, self.message_class(m.input_type.full_name)())
        except json_format.ParseError as exc:
            raise ValueError(f"{method} request: {exc}") from None

    def call(self, service: str, method: str, fields: dict | None = None, *, as_dict: bool = True) -> Any:
        """Call a unary ``service.method`` with a request built from ``fields``; returns the
        response as a dict (``as_dict``) or as the reflected message. Raises grpc.RpcError."""
        m = self._method(service, method)
        if m.client_streaming or m.server_streaming:
            raise ValueError(f"{method} is a streaming rpc: this client calls unary ones (use SeqGuardClient.stream)")
        req = self.request(service, method, fields)
        out_cls = self.message_class(m.output_type.full_name)
        rpc = self._channel.unary_unary(f"/{service}/{method}", request_serializer=lambda r: r.SerializeToString(),
                                        response_deserializer=out_cls.FromString)
        resp = rpc(req, metadata=self._metadata, timeout=self.timeout_s)
        if not as_dict:
            return resp
        return json_format.MessageToDict(resp, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ReflectionClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__: Sequence[str] = ("SERVICE", "MethodInfo", "ReflectionClient")
