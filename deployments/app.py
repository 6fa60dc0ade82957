"""Typed app builder: ``deployments.app:build_app`` (used by ``seqguard serve`` and Serve config files).

    serve.run(build_app(AppArgs(model_dir="model", token_sha256=token_digest(tok))),
              name="seqguard", route_prefix="/seqguard")

The arguments, per-deployment options and the declarative ``deploy`` live in
:mod:`seqguard_ray.runtime.serve.app`; this module only binds the deployment classes.
"""
# no `from __future__ import annotations`: Serve reads the builder's argument type at runtime

from ray.serve import Application

from seqguard_ray.runtime.serve.app import AppArgs, check_app_args, deployment_options, ingress_kwargs

from .ingress import SeqGuardIngress
from .stages import DetectorEnsemble, Encoder, RepairPolicy


def build_app(args: AppArgs) -> Application:
    """gRPC ingress -> Encoder -> DetectorEnsemble -> RepairPolicy, each with its own scaling."""
    args = check_app_args(args)
    kwargs = ingress_kwargs(args)
    opts = deployment_options(args)
    encoder = Encoder.options(**opts["Encoder"]).bind()
    detector = DetectorEnsemble.options(**opts["DetectorEnsemble"]).bind()
    repair = RepairPolicy.options(**opts["RepairPolicy"]).bind()
    return SeqGuardIngress.options(**opts["SeqGuardIngress"]).bind(encoder, detector, repair, **kwargs)
