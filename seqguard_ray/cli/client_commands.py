"""``seqguard client score|repair|info``: call a running seqguard server and print the response as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc

from ..client import SeqGuardClient


def add_parser(sub) -> None:
    """Add the ``client`` subcommand; it sets ``handler`` (call ``args.handler(args)``)."""
    c = sub.add_parser("client", help="call a running seqguard server",
                       description="Call a seqguard gRPC server and print the response as JSON.")
    csub = c.add_subparsers(dest="client_command", required=True, metavar="CLIENT_COMMAND")
    for name, help_ in (("score", "score every user of an events file (one ScoreBatch call)"),
                        ("repair", "score and repair one user's events"), ("info", "model version and limits")):
        p = csub.add_parser(name, help=help_)
        add_client_arguments(p)
        if name != "info":
            p.add_argument("--events", required=True, help="Parquet, CSV or JSONL with item_id, ts[, user_id, action, value]")
            p.add_argument("--user", default=None, help="only this user (or: the user id for a file without user_id)")
        p.set_defaults(handler=cmd_client)
    r = csub.add_parser("reflect", help="list the server's services and methods by gRPC reflection (no proto files)",
                        description="List services and methods by gRPC reflection and, with --call, call a unary "
                                    "method with a request built from the reflected descriptors.")
    add_client_arguments(r)
    r.add_argument("--service", default=None, help="service to call (default seqguard.v1.SeqGuard)")
    r.add_argument("--call", default=None, metavar="METHOD", help="call this unary method, e.g. ModelInfo or Score")
    r.add_argument("--request", default="{}", metavar="JSON",
                   help='request as proto JSON, e.g. \'{"user_id": "u1", "events": [{"item_id": "9", "ts": 1718000000}]}\'')
    r.set_defaults(handler=cmd_reflect)


def add_client_arguments(p) -> None:
    p.add_argument("--target", default="localhost:9000", help="server host:port (default localhost:9000)")
    p.add_argument("--token-file", default=None, help="file holding the bearer token (default: $SEQGUARD_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt (default 10)")
    p.add_argument("--retries", type=int, default=4, help="retries on UNAVAILABLE/RESOURCE_EXHAUSTED/DEADLINE_EXCEEDED (default 4)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (e.g. through Envoy)")
    p.add_argument("--ca-cert", default=None, help="PEM file of the CA to trust (implies --tls)")
    p.add_argument("--application", default=None, help="Serve application name (only with several apps)")


def _read_frame(path: str):
    from ..core.readers import read_table

    return read_table(path).to_pandas()


def _client_from_args(args) -> SeqGuardClient:
    from ..runtime.serve.auth import load_token

    token = load_token(args.token_file)
    root = Path(args.ca_cert).read_bytes() if args.ca_cert else None
    return SeqGuardClient(args.target, token, timeout_s=args.timeout, retries=args.retries,
                          tls=args.tls or root is not None, root_certs=root, application=args.application)


def _print(msg) -> None:
    from google.protobuf.json_format import MessageToDict

    print(json.dumps(MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True), indent=1))


def cmd_client(args) -> int:
    """Prints the response as JSON; gRPC errors -> exit 1."""
    try:
        with _client_from_args(args) as c:
            if args.client_command == "info":
                _print(c.model_info())
                return 0
            df = _read_frame(args.events)
            if args.user is not None:
                if "user_id" in df.columns:
                    df = df[df["user_id"].astype(str) == args.user]
                df = df.assign(user_id=args.user)
            elif "user_id" not in df.columns:
                raise ValueError("the events file has no user_id column: pass --user")
            if len(df) == 0:
                raise ValueError(f"no events for user {args.user!r} in {args.events}")
            if args.client_command == "repair":
                from ..runtime.serve.convert import requests_from_frame

                reqs = requests_from_frame(df)
                if len(reqs) != 1:
                    raise ValueError(f"repair takes one user; {args.events} holds {len(reqs)}: pass --user")
                _print(c.repair(reqs[0].user_id, reqs[0].events))
            else:
                _print(c.score_frame(df))
            return 0
    except grpc.RpcError as exc:
        print(f"seqguard client {args.client_command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


def cmd_reflect(args) -> int:
    """Prints the services and methods found by reflection (JSON), then the --call response; exit 1 on a gRPC error."""
    from ..reflect import SERVICE, ReflectionClient
    from ..runtime.serve.auth import load_token

    root = Path(args.ca_cert).read_bytes() if args.ca_cert else None
    try:
        request = json.loads(args.request)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--request is not JSON: {exc}") from None
    try:
        with ReflectionClient(args.target, load_token(args.token_file), application=args.application,
                              tls=args.tls or root is not None, root_certs=root, timeout_s=args.timeout) as rc:
            services = rc.services()
            print(json.dumps({s: [m.signature() for m in rc.methods(s)] for s in services}, indent=1))
            if args.call:
                print(json.dumps(rc.call(args.service or SERVICE, args.call, request), indent=1))
        return 0
    except grpc.RpcError as exc:
        print(f"seqguard client reflect: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
