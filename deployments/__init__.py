"""Ray Serve deployments for seqguard: thin wrappers over :mod:`seqguard_ray.runtime.serving`.

``deployments.app:build_app`` builds the application (gRPC ingress -> Encoder -> DetectorEnsemble
-> RepairPolicy); ``serve_local.yaml`` and ``serve_gpu.yaml`` are Serve configs for it.
"""

SERVICER = "seqguard_ray.proto.seqguard.v1.seqguard_pb2_grpc.add_SeqGuardServicer_to_server"
