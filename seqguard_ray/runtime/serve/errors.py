"""Serving errors, and the one place any exception becomes a gRPC status code and a message."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from ...core.schema import EventsError

log = logging.getLogger(__name__)


class ServingError(Exception):
    """An error with a gRPC status code; its message is safe to show to the client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(ServingError):
    """The server is not in a state that allows the call (e.g. a promotion the rollout guard blocks)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


# Ray exceptions, by class name so this module does not import Ray.
_RAY_UNAVAILABLE = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "DeploymentUnavailableError",
                    "ActorUnschedulableError", "RaySystemError", "ObjectLostError", "OwnerDiedError"}
_RAY_OVERLOAD = {"BackPressureError"}
_RAY_TIMEOUT = {"GetTimeoutError", "RequestTimeoutError"}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place errors become gRPC status codes. Never returns a stack trace."""
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, ServingError):
        return exc.code, str(exc)
    if isinstance(exc, EventsError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if type(exc).__module__.startswith("redis."):  # the ScoreStream state store (any redis-py error)
        log.warning("stream state store error: %s: %s", type(exc).__name__, exc)
        return grpc.StatusCode.UNAVAILABLE, "the stream state store is unavailable: retry"
    if "BundleError" in names:
        log.error("model bundle error: %s", exc)
        return grpc.StatusCode.UNAVAILABLE, "the model bundle cannot be loaded on the server"
    if names & _RAY_OVERLOAD:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded: retry with backoff"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or names & _RAY_TIMEOUT:
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the request did not finish in time"
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the request was cancelled"
    if names & _RAY_UNAVAILABLE:
        log.warning("a serving replica failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return grpc.StatusCode.UNAVAILABLE, "a serving replica is unavailable or restarting: retry"
    # Ray wraps the real failure: RayTaskError.cause, or `raise ... from` (e.g. an upstream replica died)
    for cause in (getattr(exc, "cause", None), exc.__cause__):
        if isinstance(cause, BaseException) and cause is not exc:
            return status_for(cause)
    ref = uuid.uuid4().hex[:12]
    log.error("internal error %s", ref, exc_info=(type(exc), exc, exc.__traceback__))
    return grpc.StatusCode.INTERNAL, f"internal error (reference {ref}); the server log has the details"
