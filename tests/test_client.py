"""SeqGuardClient's retry rules, with a stub in place of the channel (no server, no Ray)."""

from __future__ import annotations

import grpc
import pytest

from seqguard_ray.client import SeqGuardClient, replica_lost
from seqguard_ray.proto.seqguard.v1 import seqguard_pb2 as pb

SC = grpc.StatusCode
# what Ray Serve's gRPC proxy answered when the node holding the ingress replica was killed
# (tests/test_failures.py)
PROXY_LOST = ("The actor 43985875f81a9f7c330c133301000000 is unavailable: The actor is temporarily unavailable: "
              "RpcError: RPC error: Socket closed rpc_code: 14. "
              "The task may or may not have been executed on the actor.")


class _Err(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _Stub:
    """Fails with the given errors, then answers."""

    def __init__(self, errors):
        self.errors = list(errors)

    def ModelInfo(self, request, timeout, metadata):  # noqa: N802
        if self.errors:
            raise self.errors.pop(0)
        return pb.ModelInfoResponse(model_version="v1")


def _client(errors, retries=3):
    c = SeqGuardClient("127.0.0.1:1", retries=retries, backoff_s=0.001)
    c._stub = _Stub(errors)
    return c


def test_replica_lost_matches_only_the_proxys_actor_errors():
    assert replica_lost(SC.INTERNAL, PROXY_LOST)
    assert replica_lost(SC.INTERNAL, "The actor died unexpectedly before finishing this task.")
    assert not replica_lost(SC.UNKNOWN, PROXY_LOST)
    assert not replica_lost(SC.INTERNAL, "Unexpected error: division by zero")
    assert not replica_lost(SC.INTERNAL, None)


def test_retries_are_counted_and_bounded():
    c = _client([_Err(SC.UNAVAILABLE, "restarting"), _Err(SC.INTERNAL, PROXY_LOST)])
    assert c.model_info().model_version == "v1"
    assert (c.attempts, c.retried) == (3, 2)
    c = _client([_Err(SC.UNAVAILABLE, "x")] * 5, retries=2)
    with pytest.raises(grpc.RpcError):
        c.model_info()
    assert (c.attempts, c.retried) == (3, 2)


def test_other_errors_are_not_retried():
    for err in (_Err(SC.INTERNAL, "Unexpected error"), _Err(SC.INVALID_ARGUMENT, "events is empty")):
        c = _client([err])
        with pytest.raises(grpc.RpcError):
            c.model_info()
        assert (c.attempts, c.retried) == (1, 0)
    c = SeqGuardClient("127.0.0.1:1", retries=3, retry_on=[SC.RESOURCE_EXHAUSTED])  # UNAVAILABLE not wanted
    c._stub = _Stub([_Err(SC.INTERNAL, PROXY_LOST)])
    with pytest.raises(grpc.RpcError):
        c.model_info()
