"""Ray Serve deployments for seqguard: thin wrappers over :mod:`seqguard_ray.runtime.serve`.

``deployments.app:build_app`` builds the application (gRPC ingress -> Encoder -> DetectorEnsemble
-> RepairPolicy); ``serve_local.yaml`` and ``serve_gpu.yaml`` are Serve configs for it.
"""

from seqguard_ray.runtime.serve.app import SERVICER

__all__ = ["SERVICER"]
