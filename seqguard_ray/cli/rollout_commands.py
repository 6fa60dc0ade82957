"""``seqguard rollout start|status|promote|abort``: drive a shadow rollout on a running server.

The commands are Rollout rpcs (same target and token as ``seqguard client``): the server holds the
candidate, counts its agreement with the live bundle and applies the guard (docs/serving.md,
"Shadow rollout"; the mechanism is docs/decisions.md's "Rollout control").
"""

from __future__ import annotations

import sys

import grpc

from .client_commands import _client_from_args, _print, add_client_arguments
from .common import positive_int


def _share(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def add_parser(sub) -> None:
    """Add the ``rollout`` subcommand; it sets ``handler`` (call ``args.handler(args)``)."""
    r = sub.add_parser("rollout", help="shadow rollout of a candidate bundle on a running server",
                       description="Hold a candidate bundle beside the live one, compare them on a share of "
                                   "the traffic, then promote it (guarded) or abort.")
    rsub = r.add_subparsers(dest="rollout_command", required=True, metavar="ROLLOUT_COMMAND")
    st = rsub.add_parser("start", help="hold a candidate bundle and shadow a share of the users with it")
    st.add_argument("--candidate", required=True, help="candidate model bundle directory (or URI), readable by the server")
    st.add_argument("--share", type=_share, default=0.1, help="share of users scored by both, in [0, 1] (default 0.1)")
    rsub.add_parser("status", help="the candidate's agreement with the live bundle, and the guard's verdict")
    pr = rsub.add_parser("promote", help="make the candidate the live bundle (the hot swap), if the guard allows")
    pr.add_argument("--force", action="store_true", help="promote even if the guard blocks it")
    pr.add_argument("--max-flag-ratio", type=float, default=None,
                    help="guard: most the candidate's flagged users may be, as a multiple of the live ones (default 3)")
    pr.add_argument("--min-users", type=positive_int, default=None,
                    help="guard: fewest shadowed users to judge on (default 200)")
    rsub.add_parser("abort", help="drop the candidate; the live bundle stays")
    for p in rsub.choices.values():
        add_client_arguments(p)
        p.add_argument("--json", action="store_true", help="print the RolloutStatus message as JSON")
        p.set_defaults(handler=cmd_rollout)


def describe(s) -> str:
    """A RolloutStatus for people."""
    lines = [f"live:       {s.live_version} ({s.live_dir})" + (f"  [server {s.server}]" if s.server else "")]
    if s.message:
        lines.insert(0, s.message)
    if not s.candidate_version:
        lines.append("candidate:  none")
        return "\n".join(lines)
    agree = f"{s.flag_agreement:.1%}" if s.HasField("flag_agreement") else "-"
    rho = f"{s.spearman:.3f}" if s.HasField("spearman") else "-"
    n = max(s.shadowed_users, 1)
    lines += [f"candidate:  {s.candidate_version} ({s.candidate_dir}), share {s.share:.0%}",
              f"shadowed:   {s.shadowed_users} users ({s.candidate_errors} candidate errors, "
              f"{s.skipped_users} skipped while busy)",
              f"flagged:    live {s.live_flagged} ({s.live_flagged / n:.1%}), candidate {s.candidate_flagged} "
              f"({s.candidate_flagged / n:.1%}); flag agreement {agree}, Spearman {rho}",
              f"latency:    live {s.live_latency_ms:.1f} ms, candidate {s.candidate_latency_ms:.1f} ms per shadowed batch",
              f"guard:      {'promotable' if s.promotable else 'BLOCKED'}: {s.guard}"]
    return "\n".join(lines)


def cmd_rollout(args) -> int:
    """Prints the status; a gRPC error (a blocked promotion: FAILED_PRECONDITION) -> exit 1."""
    kw = {}
    if args.rollout_command == "start":
        kw = {"candidate_dir": args.candidate, "share": args.share}
    elif args.rollout_command == "promote":
        kw = {"force": args.force, "max_flag_ratio": args.max_flag_ratio, "min_users": args.min_users}
    try:
        with _client_from_args(args) as c:
            status = c.rollout(args.rollout_command, **kw)
    except grpc.RpcError as exc:
        print(f"seqguard rollout {args.rollout_command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if args.json:
        _print(status)
    else:
        print(describe(status))
    return 0
