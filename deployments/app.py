"""Typed app builder: ``deployments.app:build_app`` (used by ``seqguard serve`` and Serve config files).

    serve.run(build_app(AppArgs(model_dir="model", token_sha256=token_digest(tok))),
              name="seqguard", route_prefix="/seqguard")

or, with Serve's own tooling, ``serve deploy deployments/serve_local.yaml``.
"""
# no `from __future__ import annotations`: Serve reads the builder's argument type at runtime

import logging
import os
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from seqguard_ray.runtime.serving import Limits, load_token, token_digest

from .ingress import SeqGuardIngress
from .stages import DetectorEnsemble, Encoder, RepairPolicy

log = logging.getLogger(__name__)

DEPLOYMENT_NAMES = ("SeqGuardIngress", "Encoder", "DetectorEnsemble", "RepairPolicy")

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
    """Arguments of :func:`build_app` (also the ``args:`` of a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str                                    # model bundle directory, readable on every node
    token_sha256: Optional[str] = None                # sha256 hex of the bearer token (serving.token_digest)
    token_file: Optional[str] = None                  # or a file holding the token (read where the app is built)
    insecure_no_auth: bool = False                    # serve without auth (only behind something that authenticates)
    limits: dict[str, int] = Field(default_factory=dict)  # serving.Limits fields
    timeout_s: Optional[float] = 30.0                 # server-side limit per call -> DEADLINE_EXCEEDED
    max_batch_size: int = 32                          # most requests the ingress merges into one stage call
    max_concurrent_batches: int = 2                   # merged batches in the stages at once (per ingress replica)
    encoder_gpus: Optional[float] = None              # GPUs per Encoder replica; None: 1 if the cluster has GPUs
    deployments: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-deployment .options() overrides


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


def build_app(args: AppArgs) -> Application:
    """gRPC ingress -> Encoder -> DetectorEnsemble -> RepairPolicy, each with its own scaling."""
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    unknown = set(args.deployments) - set(DEPLOYMENT_NAMES)
    if unknown:
        raise ValueError(f"unknown deployment name(s) {sorted(unknown)}; known: {list(DEPLOYMENT_NAMES)}")
    Limits.from_dict(args.limits)  # fail at build time, not in a replica
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

    gpus = args.encoder_gpus if args.encoder_gpus is not None else (1.0 if _cluster_has_gpus() else 0.0)
    user_config = {"model_dir": os.path.abspath(args.model_dir)}

    def opts(name: str, extra: Optional[dict] = None) -> dict:
        o = _merge(_DEFAULTS[name], extra or {})
        o = _merge(o, args.deployments.get(name, {}))
        o.setdefault("logging_config", {"enable_access_log": False})  # per-request log lines cost CPU
        return {**o, "user_config": user_config, "max_surge_percent": 100}

    enc_extra = {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": gpus}} if gpus else {}
    encoder = Encoder.options(**opts("Encoder", enc_extra)).bind()
    detector = DetectorEnsemble.options(**opts("DetectorEnsemble")).bind()
    repair = RepairPolicy.options(**opts("RepairPolicy")).bind()
    return SeqGuardIngress.options(**opts("SeqGuardIngress")).bind(
        encoder, detector, repair, token_sha256=digest, limits=args.limits, timeout_s=args.timeout_s,
        max_batch_size=args.max_batch_size, max_concurrent_batches=args.max_concurrent_batches)


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
    app = ServeApplicationSchema(name=name, route_prefix=route_prefix, import_path="deployments.app:build_app",
                                 args=args.model_dump())
    client.deploy_apps(ServeDeploySchema(applications=[app]), _blocking=False)
    if blocking:
        _wait_running(name, timeout_s)


def _wait_running(name: str, timeout_s: float) -> None:
    """Wait until the app is RUNNING with the newly applied config (Serve's own wait stops at 60 s)."""
    import time

    from ray import serve

    t0 = time.time()
    time.sleep(0.5)  # let the controller take the new config
    while True:
        st = serve.status().applications.get(name)
        status = str(getattr(st, "status", "")) if st else ""
        if status.endswith("RUNNING"):
            return
        if status.endswith("DEPLOY_FAILED"):
            raise RuntimeError(f"Serve application {name!r} failed to deploy: {st.message}")
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"Serve application {name!r} is not running after {timeout_s:.0f}s (status {status})")
        time.sleep(0.5)


__all__ = ["AppArgs", "build_app", "serve_options", "DEPLOYMENT_NAMES", "deploy", "serve"]
