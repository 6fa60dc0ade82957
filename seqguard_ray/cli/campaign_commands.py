"""``seqguard campaigns publish``: serve a batch run's campaign table with a model bundle."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    """Add the ``campaigns`` subcommand; it sets ``handler`` (call ``args.handler(args)``)."""
    c = sub.add_parser("campaigns", help="publish campaign tables for online scoring",
                       description="Manage the campaign table that the online service applies to live requests.")
    csub = c.add_subparsers(dest="campaigns_command", required=True, metavar="CAMPAIGNS_COMMAND")
    p = csub.add_parser("publish", help="serve OUT's campaigns.parquet + items.parquet with a model bundle",
                        description="Validate OUT/campaigns.parquet and OUT/items.parquet (from `seqguard score`) and "
                                    "make them the campaign table served with MODEL (MODEL/campaigns/). A running "
                                    "server picks it up within seconds, no restart; ModelInfo shows its version.")
    p.add_argument("--from", dest="source", required=True, metavar="OUT", help="output directory (or URI) of `seqguard score`")
    p.add_argument("--model", required=True, help="model bundle directory (or URI) being served")
    p.set_defaults(handler=cmd_campaigns)


def cmd_campaigns(args) -> int:
    from ..io.campaign_table import publish

    meta = publish(args.source, args.model)
    print(json.dumps({k: meta[k] for k in ("version", "published_at", "campaigns", "members", "targets")}, indent=1))
    return 0
