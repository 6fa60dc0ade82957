"""``seqguard serve``: registered on the main parser by :func:`add_parser`.

``seqguard serve --model DIR`` runs the Ray Serve application on an embedded local Ray (or on
``$RAY_ADDRESS``), prints where it listens and blocks until Ctrl-C. ``--no-ray`` runs the same API
on a plain in-process grpc.aio server instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .common import positive_int

log = logging.getLogger("seqguard")

APP_NAME = "seqguard"
ROUTE_PREFIX = "/seqguard"


def add_parser(sub) -> None:
    """Add the ``serve`` subcommand; it sets ``handler`` (call ``args.handler(args)``)."""
    from ..runtime.serve.limits import Limits

    d = Limits()
    s = sub.add_parser("serve", help="online scoring over gRPC (Ray Serve)",
                       description="Serve a model bundle over gRPC with Ray Serve: ingress -> Encoder -> "
                                   "DetectorEnsemble -> RepairPolicy. Blocks until Ctrl-C.")
    s.add_argument("--model", required=True, help="model bundle directory (readable on every node) or URI (s3://..., gs://...)")
    s.add_argument("--grpc-port", type=int, default=9000, help="gRPC port (default 9000)")
    s.add_argument("--host", default="0.0.0.0", help="--no-ray only: address to bind (Serve's proxy binds all interfaces)")
    s.add_argument("--config", default=None, help="Serve config YAML (e.g. deployments/serve_gpu.yaml): per-stage "
                                                  "scaling and app args; CLI flags win over its args")
    s.add_argument("--token-file", default=None, help="file holding the bearer token (default: $SEQGUARD_TOKEN)")
    s.add_argument("--insecure-no-auth", action="store_true", help="serve without a token (only behind an authenticating proxy)")
    s.add_argument("--max-events-per-sequence", type=positive_int, default=d.max_events_per_sequence)
    s.add_argument("--max-sequences-per-batch", type=positive_int, default=d.max_sequences_per_batch)
    s.add_argument("--max-message-bytes", type=positive_int, default=d.max_message_bytes)
    s.add_argument("--request-timeout", type=float, default=30.0, help="seconds per call before DEADLINE_EXCEEDED (default 30)")
    s.add_argument("--throughput-optimized", action="store_true",
                   help="embedded Ray only: set RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for Ray's processes (user code and "
                        "handle routing on each replica's own event loop; see docs/serving.md). On a cluster, "
                        "export it on every node before `ray start`")
    s.add_argument("--no-ray", action="store_true", help="run a plain in-process grpc.aio server instead of Ray Serve")
    s.add_argument("--max-batch", type=positive_int, default=64,
                   help="--no-ray only: requests merged into one engine call (1 = no batching; default 64)")
    st = s.add_argument_group("ScoreStream state (docs/serving.md, 'Streaming')")
    st.add_argument("--state-redis", default=None, metavar="URL",
                    help="keep per-user stream state in Redis (redis://host:6379/0, rediss:// for TLS; default "
                         "$SEQGUARD_REDIS_URL; password from $SEQGUARD_REDIS_PASSWORD, never in the URL here); "
                         "without it: in-process, bounded, a user's events must reach one replica")
    st.add_argument("--state-redis-ca", default=None, metavar="FILE", help="TLS: CA bundle to trust (rediss://)")
    st.add_argument("--state-redis-cert", default=None, metavar="FILE", help="TLS: client certificate")
    st.add_argument("--state-redis-key", default=None, metavar="FILE", help="TLS: client key")
    st.add_argument("--stream-window", type=positive_int, default=None,
                    help="events per user window (default: the bundle's encoder window, max_len)")
    st.add_argument("--stream-ttl", type=float, default=None, help="seconds an idle user's state is kept (default 7 days)")
    st.add_argument("--stream-max-users", type=positive_int, default=None,
                    help="in-process state: users held, least recently used dropped first (default 100000)")
    s.set_defaults(handler=cmd_serve)


def _limits(args) -> dict:
    return {"max_events_per_sequence": args.max_events_per_sequence,
            "max_sequences_per_batch": args.max_sequences_per_batch, "max_message_bytes": args.max_message_bytes}


def _stream(args) -> dict:
    """The ScoreStream settings given on the command line (StreamConfig fields)."""
    url = args.state_redis
    if url and "@" in url.partition("://")[2]:
        raise ValueError("--state-redis: put the Redis password in $SEQGUARD_REDIS_PASSWORD, not in the URL "
                         "(a command line is visible to every user of the machine)")
    given = {"redis_url": url, "redis_ca_file": args.state_redis_ca, "redis_cert_file": args.state_redis_cert,
             "redis_key_file": args.state_redis_key, "window": args.stream_window, "ttl_s": args.stream_ttl,
             "max_users": args.stream_max_users}
    return {k: v for k, v in given.items() if v is not None}


def _token_digest(args) -> str | None:
    from ..runtime.serve.auth import load_token, token_digest

    if args.insecure_no_auth:
        log.warning("serving WITHOUT auth (--insecure-no-auth): anyone who can reach port %d can call it", args.grpc_port)
        return None
    token = load_token(args.token_file)
    if token is None:
        raise ValueError("no auth token: set SEQGUARD_TOKEN or pass --token-file (or --insecure-no-auth)")
    return token_digest(token)


def cmd_serve(args) -> int:
    from ..core.bundle import read_manifest
    from ..runtime.serve.sessions import StreamConfig

    from ..io.campaign_table import read_current

    manifest = read_manifest(args.model)  # a bad bundle fails here, before anything starts
    read_current(args.model)              # and so does a bad campaign table published with it
    digest = _token_digest(args)
    StreamConfig.from_dict(_stream(args))  # bad stream settings fail here, before anything starts
    if args.no_ray:
        return _serve_plain(args, digest, manifest["model_version"])
    return _serve_ray(args, digest, manifest["model_version"])


def _serve_plain(args, digest, version) -> int:
    from ..runtime.serve import Authenticator, InProcessBackend, Limits, ScoringService, StreamConfig
    from ..runtime.serve.grpc_server import create_server

    async def main() -> None:
        backend = InProcessBackend.from_dir(args.model, batching=args.max_batch > 1, max_batch=args.max_batch)
        service = ScoringService(backend, Authenticator(digest), Limits.from_dict(_limits(args)), args.request_timeout,
                                 stream=StreamConfig.from_dict(_stream(args)))
        server, port = await create_server(f"{args.host}:{args.grpc_port}", service)
        print(f"seqguard serving model {version} on grpc {args.host}:{port} (plain grpc.aio, no Ray); Ctrl-C stops",
              flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(grace=2.0)
        await backend.aclose()
        await service.aclose()

    asyncio.run(main())
    print("stopped", flush=True)
    return 0


def _read_config(path: str | None) -> tuple[dict, dict]:
    """(app args, per-deployment overrides) from a Serve config YAML's seqguard application."""
    if not path:
        return {}, {}
    import yaml

    from ..runtime.serve.app import serve_options

    cfg = yaml.safe_load(Path(path).read_text()) or {}
    apps = cfg.get("applications") or []
    app = next((a for a in apps if a.get("name") == APP_NAME), apps[0] if apps else {})
    return dict(app.get("args") or {}), serve_options(app.get("deployments") or [])


def _serve_ray(args, digest, version) -> int:
    limits = _limits(args)
    # The proxy reads its message limit from the environment when it starts (default 2 GiB).
    os.environ.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(args.max_message_bytes + 1024))
    if args.throughput_optimized:  # read by every Ray process an embedded ray.init starts
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions, HTTPOptions

    from ..runtime.ray.cluster import ensure_ray
    from ..runtime.serve.app import SERVICER, AppArgs, deploy

    cfg_args, overrides = _read_config(args.config)
    cfg_args.pop("model_dir", None)
    app_args = AppArgs.model_validate({**cfg_args, "model_dir": args.model, "token_sha256": digest,
                                       "insecure_no_auth": digest is None, "token_file": None,
                                       "limits": limits, "timeout_s": args.request_timeout,
                                       "stream": {**cfg_args.get("stream", {}), **_stream(args)},
                                       "deployments": {**cfg_args.get("deployments", {}), **overrides}})
    started_ray = ensure_ray()
    try:
        serve.start(http_options=HTTPOptions(host="127.0.0.1"),
                    grpc_options=gRPCOptions(port=args.grpc_port, grpc_servicer_functions=[SERVICER],
                                             request_timeout_s=args.request_timeout))
        # declarative, like `serve deploy`: a later deploy that changes only model_dir reloads in place
        deploy(app_args, name=APP_NAME, route_prefix=ROUTE_PREFIX)
        print(f"seqguard serving model {version} on grpc 0.0.0.0:{args.grpc_port} (Ray Serve application "
              f"'{APP_NAME}', auth {'ON' if digest else 'OFF'}); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr, flush=True)
    finally:
        try:
            serve.delete(APP_NAME)
            if started_ray:
                serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()
    return 0
