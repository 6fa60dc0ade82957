"""The Ray Serve application's arguments and plan, and its declarative deploy: everything about
the app but the deployment classes, which live in the top-level ``deployments`` package (named
here only by Serve import path, never imported).

    deploy(AppArgs(model_dir="model", token_sha256=token_digest(tok)))

or, with Serve's own tooling, ``serve deploy deployments/serve_local.yaml``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from ...core import storage
from ...core.drift import MIN_COUNT
from .auth import load_token, token_digest
from .limits import Limits
from .metrics import DRIFT_WINDOW
from .sessions import StreamConfig

log = logging.getLogger(__name__)

# The generated gRPC servicer adder that Serve's proxy registers (a Serve config's grpc_servicer_functions).
SERVICER = "seqguard_ray.proto.seqguard.v1.seqguard_pb2_grpc.add_SeqGuardServicer_to_server"
# The app builder, as Serve imports it on every node.
BUILDER = "deployments.app:build_app"
DEPLOYMENT_NAMES = ("SeqGuardIngress", "Encoder", "DetectorEnsemble", "RepairPolicy")
INGRESS_MAX_ONGOING = 64  # the ingress's max_ongoing_requests unless deployments overrides it

# Per-stage defaults for one machine; the YAML profiles (and `deployments` below) override them.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "SeqGuardIngress": {"num_replicas": 1},
    "Encoder": {"autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2,
                                       "target_ongoing_requests": 2, "upscale_delay_s": 5, "downscale_delay_s": 30,
                                       "metrics_interval_s": 2, "look_back_period_s": 10}},
    "DetectorEnsemble": {"autoscaling_config": {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2,
                                                "target_ongoing_requests": 2, "upscale_delay_s": 5,
                                                "downscale_delay_s": 30, "metrics_interval_s": 2,
                                                "look_back_period_s": 10}},
    "RepairPolicy": {"num_replicas": 1},
}


class AppArgs(BaseModel):
    """Arguments of ``deployments.app:build_app`` (also the ``args:`` of a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str                                    # model bundle directory readable on every node, or a URI
    token_sha256: Optional[str] = None                # sha256 hex of the bearer token (token_digest)
    token_file: Optional[str] = None                  # or a file holding the token (read where the app is built)
    insecure_no_auth: bool = False                    # serve without auth (only behind something that authenticates)
    limits: dict[str, int] = Field(default_factory=dict)  # Limits fields
    timeout_s: Optional[float] = 30.0                 # server-side limit per call -> DEADLINE_EXCEEDED
    max_batch_size: int = 32                          # most requests the ingress merges into one stage call
    max_concurrent_batches: int = 2                   # merged batches in the stages at once (per ingress replica)
    encoder_gpus: Optional[float] = None              # GPUs per Encoder replica; None: 1 if the cluster has GPUs
    deployments: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-deployment .options() overrides
    stream: dict[str, Any] = Field(default_factory=dict)  # ScoreStream settings (StreamConfig fields: window,
                                                          # ttl_s, max_users, redis_url, ...); password: env only
    drift_window: Optional[int] = Field(DRIFT_WINDOW, ge=1)  # most recent users the drift gauges compare with
                                                            # the training reference (None: all since the load)
    drift_min_count: int = Field(MIN_COUNT, ge=0)           # fewer live observations of a drift signal: no gauge
    candidate_dir: Optional[str] = None               # shadow rollout: a candidate bundle held beside model_dir
    shadow_share: float = Field(0.0, ge=0.0, le=1.0)  # share of users (by user id hash) it scores too


def check_app_args(args: AppArgs | dict) -> AppArgs:
    """``args`` validated (a dict is parsed): fails where the app is built, not in a replica."""
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    unknown = set(args.deployments) - set(DEPLOYMENT_NAMES)
    if unknown:
        raise ValueError(f"unknown deployment name(s) {sorted(unknown)}; known: {list(DEPLOYMENT_NAMES)}")
    Limits.from_dict(args.limits)
    stream = StreamConfig.from_dict(args.stream)
    ingress = args.deployments.get("SeqGuardIngress", {})
    ongoing = _ingress_ongoing(ingress)
    if "max_open_streams" in args.stream and stream.max_open_streams >= ongoing:
        raise ValueError(f"stream.max_open_streams ({stream.max_open_streams}) must be below the SeqGuardIngress's "
                         f"max_ongoing_requests ({ongoing}): on Ray Serve an open stream holds one of those slots "
                         "for its whole life, and unary calls would queue behind the streams")
    several = ingress.get("num_replicas", 1) != 1 or "autoscaling_config" in ingress
    if several and not stream.redis_url:
        log.warning("ScoreStream without stream.redis_url keeps each user's state in the ingress replica that "
                    "served the stream; with several ingress replicas a user's next stream may reach another "
                    "(answers then show a new state_epoch): set stream.redis_url (or $SEQGUARD_REDIS_URL on "
                    "every node) so any replica serves any user")
    return args


def _ingress_ongoing(ingress: dict[str, Any]) -> int:
    """The ingress's max_ongoing_requests, from its ``deployments`` overrides or the default."""
    return int(ingress.get("max_ongoing_requests", INGRESS_MAX_ONGOING))


def ingress_stream(args: AppArgs) -> dict[str, Any]:
    """The ingress's ScoreStream settings: ``stream.max_open_streams`` defaults to half its
    ``max_ongoing_requests`` (each open stream holds a slot), so streams never take every slot."""
    return {"max_open_streams": max(1, _ingress_ongoing(args.deployments.get("SeqGuardIngress", {})) // 2),
            **args.stream}


def ingress_kwargs(args: AppArgs) -> dict[str, Any]:
    """Keyword arguments of the SeqGuardIngress deployment; the token is read here, at build time."""
    digest = args.token_sha256
    if digest is None and not args.insecure_no_auth:
        token = load_token(args.token_file)
        if token is None:
            raise ValueError("no auth token: set SEQGUARD_TOKEN, token_file or token_sha256 "
                             "(or insecure_no_auth: true behind an authenticating proxy)")
        digest = token_digest(token)
    if args.insecure_no_auth:
        digest = None
        log.warning("serving WITHOUT auth: anyone who can reach the gRPC port can call it")
    return {"token_sha256": digest, "limits": args.limits, "timeout_s": args.timeout_s,
            "max_batch_size": args.max_batch_size, "max_concurrent_batches": args.max_concurrent_batches,
            "stream": ingress_stream(args), "drift_window": args.drift_window,
            "drift_min_count": args.drift_min_count}


def _cluster_has_gpus() -> bool:
    import ray

    try:
        return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
    except Exception:  # noqa: BLE001 - no cluster to ask: plan for CPU
        return False


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    if "num_replicas" in over and "autoscaling_config" not in over:
        out.pop("autoscaling_config", None)
    if "autoscaling_config" in over and "num_replicas" not in over:
        out.pop("num_replicas", None)
    return out


def deployment_options(args: AppArgs) -> dict[str, dict[str, Any]]:
    """Each deployment's ``.options()``: defaults <- Encoder GPUs <- ``args.deployments``; every
    stage gets ``user_config = {"model_dir": ...}`` so a new bundle rolls out in place."""
    gpus = args.encoder_gpus if args.encoder_gpus is not None else (1.0 if _cluster_has_gpus() else 0.0)
    user_config = {"model_dir": storage.absolute(args.model_dir)}  # a URI as given
    if args.candidate_dir:  # a rollout: every replica also holds the candidate (no restart, as a hot swap)
        user_config.update(candidate_dir=storage.absolute(args.candidate_dir), shadow_share=args.shadow_share)
    extra = {"Encoder": {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": gpus}}} if gpus else {}
    out = {}
    for name in DEPLOYMENT_NAMES:
        o = _merge(_merge(_DEFAULTS[name], extra.get(name, {})), args.deployments.get(name, {}))
        o.setdefault("logging_config", {"enable_access_log": False})  # per-request log lines cost CPU
        out[name] = {**o, "user_config": user_config, "max_surge_percent": 100}
    return out


def serve_options(deployments: list[dict]) -> dict[str, dict]:
    """A Serve config file's ``deployments:`` list as ``AppArgs.deployments`` overrides."""
    out = {}
    for d in deployments or []:
        d = dict(d)
        name = d.pop("name")
        out[name] = d
    return out


def deploy(args: AppArgs, *, name: str = "seqguard", route_prefix: str = "/seqguard", blocking: bool = True,
           timeout_s: float = 300.0) -> None:
    """Deploy (or update) the app declaratively, as ``serve deploy`` does, on a started Serve.
    Like ``serve deploy``, this replaces the cluster's set of declaratively deployed apps.

    Unlike ``serve.run(build_app(...))``, a later call that changes only ``model_dir`` is a
    lightweight update: replicas load the new bundle in place (``reconfigure``), no restart.
    """
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    client = serve_start()
    before = _last_deployed(name)
    app = ServeApplicationSchema(name=name, route_prefix=route_prefix, import_path=BUILDER, args=args.model_dump())
    client.deploy_apps(ServeDeploySchema(applications=[app]), _blocking=False)
    if blocking:
        _wait_running(name, timeout_s, before)


def _last_deployed(name: str) -> float | None:
    from ray import serve

    st = serve.status().applications.get(name)
    return st.last_deployed_time_s if st else None


def _wait_running(name: str, timeout_s: float, before: float | None) -> None:
    """Wait until the app is RUNNING with the config applied after ``before`` (its previous
    ``last_deployed_time_s``), not still with the old one (Serve's own wait stops at 60 s)."""
    from ray import serve

    t0 = time.time()
    while True:
        st = serve.status().applications.get(name)
        fresh = st is not None and st.last_deployed_time_s != before
        status = str(st.status) if fresh else ""
        if status.endswith("RUNNING"):
            return
        if status.endswith("DEPLOY_FAILED"):
            raise RuntimeError(f"Serve application {name!r} failed to deploy: {st.message}")
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"Serve application {name!r} is not running after {timeout_s:.0f}s (status {status})")
        time.sleep(0.5)


def update_app_args(name: str, **changes: Any) -> None:
    """Redeploy the Serve app ``name`` from its own declarative config with ``changes`` to its args
    (``model_dir``, ``candidate_dir``, ``shadow_share``: only the deployments' ``user_config`` changes,
    so every replica reloads in place). Returns once the controller took the new config, without
    waiting for the replicas: it runs inside the app (the ingress's Rollout rpc). The cluster's other
    declaratively deployed apps are sent back unchanged (a deploy replaces the whole set)."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    from .errors import FailedPrecondition

    client = _get_global_client()
    apps = client.get_serve_details().get("applications", {})
    configs = {n: a.get("deployed_app_config") for n, a in apps.items()}
    if configs.get(name) is None:
        raise FailedPrecondition(f"Serve application {name!r} was not deployed from a config (seqguard serve or "
                                 "serve deploy): roll out by deploying it again with another model_dir")
    mine = dict(configs[name])
    mine["args"] = {**(mine.get("args") or {}), **changes}
    check_app_args(mine["args"])
    configs[name] = mine
    client.deploy_apps(ServeDeploySchema(applications=[ServeApplicationSchema.model_validate(c)
                                                       for c in configs.values() if c is not None]))


class AppConfigRollout:
    """The Serve app's :class:`~seqguard_ray.runtime.serve.service.RolloutControl`, run by the ingress:
    each action redeploys the app's config (:func:`update_app_args`), so every replica of every
    deployment gets it as ``user_config`` (a restarted replica too), and promotion is the hot swap."""

    def __init__(self, app_name: str):
        self.app_name = app_name

    async def _update(self, **changes: Any) -> None:
        import asyncio

        await asyncio.to_thread(update_app_args, self.app_name, **changes)

    async def start(self, info, share: float) -> str:
        await self._update(candidate_dir=info.model_dir, shadow_share=share)
        return (f"candidate {info.model_version} ({info.model_dir}) at share {share:.0%} set in the app's config: "
                "every replica loads it in place; status shows it once this one has")

    async def abort(self) -> str:
        await self._update(candidate_dir=None, shadow_share=0.0)
        return "candidate removed from the app's config: replicas drop it in place"

    async def promote(self, candidate) -> str:
        await self._update(model_dir=candidate.info.model_dir, candidate_dir=None, shadow_share=0.0)
        return (f"promoted {candidate.info.model_version}: the app's model_dir is now {candidate.info.model_dir}; "
                "replicas load it in place (the hot swap)")
