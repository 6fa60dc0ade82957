"""Command line: ``seqguard train | score | monitor | demo`` (and, with Ray, ``serve`` and ``client``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .common import (
    add_config_args,
    campaign_frames,
    campaign_lines,
    check_out_dir,
    fpr,
    model_info,
    positive_int,
    read_allow_list,
    share,
    summary_counts,
    train_config,
)
from .ray_commands import (
    add_ray_args,
    choose_engine,
    compile_choice,
    score_on_ray,
    train_on_ray,
)

log = logging.getLogger("seqguard")
DEMO_CAMPAIGN = "lockstep_new_accounts_hours"


def _add_on_bad_rows(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-bad-rows", choices=("error", "skip"), default="error",
                   help="stop on unusable rows (default) or skip and report them")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqguard", description="Catch and repair anomalous user behaviour sequences in recommender logs.")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model bundle on a behaviour log",
                       description="Train the sequence encoder (self-supervised) and fit the calibrated detectors.")
    t.add_argument("--events", required=True, help="Parquet file or directory, CSV or JSONL with user_id, item_id, ts: a path or a URI (s3://, gs://, file://)")
    t.add_argument("--model", required=True, help="output model bundle directory (a path or a URI)")
    t.add_argument("--target-fpr", type=fpr, default=None, help="share of normal users flagged (default 0.01)")
    t.add_argument("--trim-share", type=share, default=None,
                   help="share of training users presumed anomalous and left out of the normal references, "
                        "besides those whose items resemble nobody (default 0.05; 0 for a log known to be clean, "
                        "about the attacker share for a poisoned one; see docs/metrics.md)")
    add_config_args(t)
    _add_on_bad_rows(t)
    add_ray_args(t, command="train")

    s = sub.add_parser("score", help="score and repair a behaviour log with a model bundle",
                       description="Write OUT/users.parquet, OUT/events.parquet, OUT/repaired.parquet, "
                                   "OUT/actions.parquet, OUT/summary.json and, when the model finds "
                                   "campaigns, OUT/items.parquet and OUT/campaigns.parquet.")
    s.add_argument("--events", required=True, help="Parquet file or directory, CSV or JSONL (a path or a URI)")
    s.add_argument("--model", required=True, help="model bundle directory (or URI) from `seqguard train`")
    s.add_argument("--out", required=True, help="output directory (a path or a URI)")
    s.add_argument("--report", default=None, help="also write an HTML report to this path (or URI)")
    s.add_argument("--allow-list", default=None, metavar="FILE",
                   help='JSON or YAML {"users": [...], "items": [...]}: users never flagged nor repaired, '
                        "items never campaign targets (internal crawlers, QA accounts, a known launch)")
    _add_on_bad_rows(s)
    add_ray_args(s, command="score")

    d = sub.add_parser("demo", help="demo data -> train -> score -> repair -> report, all local",
                       description="Generate labelled demo data, train, score, repair and write a report.")
    d.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    d.add_argument("--users", type=positive_int, default=1000, help="normal users to simulate (default 1000)")
    d.add_argument("--epochs", type=positive_int, default=None, help="encoder epochs (default: sized to the data)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--campaign", default=DEMO_CAMPAIGN, metavar="SETTING",
                   help=f"a coordinated campaign injected into the demo log, a name in "
                        f"seqguard_ray.synth.CAMPAIGN_SETTINGS (default {DEMO_CAMPAIGN}), or 'none'")

    c = sub.add_parser("convert", help="convert a CSV/JSONL log to Parquet (streaming) for parallel reads on Ray",
                       description="Write a CSV, TSV or JSONL behaviour log as one Parquet file with the column types "
                                   "the readers give the text, in row groups that Ray reads in parallel. Streams: "
                                   "memory stays at a few blocks of text whatever the file's size.")
    c.add_argument("--events", required=True, help="CSV, TSV or JSONL file")
    c.add_argument("--out", required=True, help="Parquet file to write")
    c.add_argument("--row-group-rows", type=positive_int, default=500_000,
                   help="rows per row group, one Ray read task each (default 500000)")

    from . import campaign_commands, client_commands, monitor_commands, pretrain_commands, rollout_commands, serve_commands
    pretrain_commands.add_parser(sub, add_config_args, _add_on_bad_rows)
    monitor_commands.add_parser(sub, _add_on_bad_rows)
    serve_commands.add_parser(sub)
    client_commands.add_parser(sub)
    rollout_commands.add_parser(sub)
    campaign_commands.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from ..core.bundle import BundleError
    from ..core.schema import EventsError
    try:
        cmds = {"train": cmd_train, "score": cmd_score, "demo": cmd_demo, "convert": cmd_convert}
        return cmds[args.command](args) if args.command in cmds else args.handler(args)
    except (EventsError, BundleError, ValueError, OSError) as exc:  # OSError: a path that is a file, unwritable, ...
        print(f"seqguard {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_train(args) -> int:
    check_out_dir(args.model, "--model")
    cfg = train_config(args)
    t0 = time.perf_counter()
    on_ray = choose_engine(args) == "ray"
    if on_ray:
        sg = train_on_ray(args, cfg)
    else:
        from ..core.pipeline import SeqGuard
        sg = SeqGuard(cfg).fit(args.events, on_bad_rows=args.on_bad_rows)
        sg.save(args.model)
    log.info("trained%s on %d events of %d users in %.1f s; bundle in %s", " on Ray" if on_ray else "",
             sg.metrics["train_events"], sg.metrics["train_users"], time.perf_counter() - t0, args.model)
    return 0


def cmd_convert(args) -> int:
    from ..io.convert import convert_to_parquet

    t0 = time.perf_counter()
    rows = convert_to_parquet(args.events, args.out, row_group_rows=args.row_group_rows)
    log.info("converted %d rows in %.1f s: %s", rows, time.perf_counter() - t0, args.out)
    return 0


def cmd_score(args) -> int:
    from ..core.pipeline import SeqGuard

    check_out_dir(args.out, "--out")
    allow = read_allow_list(args.allow_list)  # a bad file fails before the work, not after it
    t0 = time.perf_counter()
    on_ray = choose_engine(args) == "ray"
    if on_ray:
        summary = score_on_ray(args, allow)
    else:
        from ..io.outputs import write_outputs
        sg = SeqGuard.load(args.model)
        if args.score_precision:
            sg.encoder.score_precision = args.score_precision
        if args.score_compile:
            sg.encoder.score_compile = compile_choice(args.score_compile)
        result = sg.score(args.events, on_bad_rows=args.on_bad_rows, allow=allow)
        summary = write_outputs(sg, result, args.out)
    if args.report:
        from ..report import write_report
        if on_ray:
            from ..io.outputs import read_output
            log.info("report: reading the outputs back (the report needs them in memory)")
            sg, users, events = SeqGuard.load(args.model), read_output(args.out, "users"), read_output(args.out, "events")
            items, campaigns = read_output(args.out, "items"), read_output(args.out, "campaigns")
        else:
            users, events = result.users, result.events
            items, campaigns = campaign_frames(result)
        write_report(args.report, users=users, events=events, repair_summary=summary_counts(summary),
                     model_info=model_info(sg), items=items, campaigns=campaigns)
    log.info("scored%s %d events of %d users in %.1f s: %d flagged %s; outputs in %s", " on Ray:" if on_ray else "",
             summary["events_in"], summary["users"], time.perf_counter() - t0, summary["users_flagged"],
             summary["by_type"], args.out)
    if "campaigns" in summary:
        log.info("campaigns: %d with %d members on %d suspicious items; %d campaign events removed",
                 summary["campaigns"], summary["campaign_members"], summary["suspicious_items"],
                 summary["campaign_events_removed"])
    return 0


def demo_log(n_users: int, seed: int, campaign: str):
    """The demo's labelled log: the generator's users and attacks, plus one coordinated campaign
    (``campaign``: a CAMPAIGN_SETTINGS name, or "none"). Returns (LabeledEvents, the
    LabeledCampaign or None)."""
    import numpy as np

    from ..synth import CAMPAIGN_SETTINGS, LabeledEvents, generate, inject_campaign

    if campaign != "none" and campaign not in CAMPAIGN_SETTINGS:
        raise ValueError(f"--campaign {campaign!r} is not a campaign setting; known: {sorted(CAMPAIGN_SETTINGS)} or 'none'")
    data = generate(n_users=n_users, seed=seed)
    if campaign == "none":
        return data, None
    planted = inject_campaign(data.events.assign(_row=np.arange(len(data.events))), campaign, seed=seed)
    row = planted.events.pop("_row")  # the generator's row of each event; NaN for the campaign's
    injected = planted.event_injected.copy()
    old = row.notna().to_numpy()
    injected[old] |= data.event_injected[row[old].astype(np.int64).to_numpy()]
    user_type = data.user_type.reindex(planted.user_type.index).fillna(planted.user_type)
    targets = np.union1d(data.target_items, planted.target_items)
    return LabeledEvents(events=planted.events, event_injected=injected, user_type=user_type, target_items=targets), planted


def cmd_demo(args) -> int:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import average_precision_score, roc_auc_score

    from ..core.config import TrainConfig
    from ..core.pipeline import SeqGuard
    from ..io.outputs import write_outputs
    from ..report import write_report
    from ..synth import ATTACK_FAMILY, CAMPAIGN, write_events

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # One poisoned log, as in production: train on it, then score and repair that same log.
    data, planted = demo_log(args.users, args.seed, args.campaign)
    write_events(data.events, out / "events.parquet")
    log.info("demo data: %d events of %d users, %d attacked (%s)", len(data.events), data.user_type.size,
             int((data.user_type != "normal").sum()), data.user_type[data.user_type != "normal"].value_counts().to_dict())
    sg = SeqGuard(TrainConfig(epochs=args.epochs, seed=args.seed)).fit(out / "events.parquet")
    sg.save(out / "model")
    sg = SeqGuard.load(out / "model")
    result = sg.score(out / "events.parquet")
    summary = write_outputs(sg, result, out)
    labels = data.user_type.reindex(result.users["user_id"].to_numpy()).fillna("normal")
    y = (labels.to_numpy() != "normal")
    ev_labels = data.event_injected[result.events["row"].to_numpy()]
    items, campaigns = campaign_frames(result)
    write_report(out / "report.html", users=result.users, events=result.events, repair_summary=summary_counts(summary),
                 user_labels=labels, event_labels=ev_labels, model_info=model_info(sg),
                 title="seqguard demo", label_types={**ATTACK_FAMILY, CAMPAIGN: "shilling"}, items=items,
                 campaigns=campaigns)
    s = result.users["score"].to_numpy()
    attacked = np.isin(result.events["user_id"].to_numpy(), result.users["user_id"].to_numpy()[y])
    print(f"users: {len(y)} ({y.sum()} attacked)  ROC-AUC {roc_auc_score(y, s):.3f}  PR-AUC {average_precision_score(y, s):.3f}")
    print(f"events in attacked users: PR-AUC {average_precision_score(ev_labels[attacked], result.events['event_score'].to_numpy()[attacked]):.3f}")
    if campaigns is not None:
        print(f"campaigns: {len(campaigns)} found, {summary['campaign_members']} members, "
              f"{summary['suspicious_items']} suspicious items, {summary['campaign_events_removed']} campaign events removed")
        for line in campaign_lines(campaigns):
            print(f"  {line}")
    if planted is not None:
        found = result.users.set_index("user_id")["campaign_id"].reindex(planted.members).notna()
        sus = result.campaigns.items.set_index("item_id")["suspicious"] if result.campaigns is not None else pd.Series()
        hit = sus.reindex(planted.target_items).fillna(False).astype(bool)
        print(f"planted campaign {planted.setting.name}: {found.sum()} of {len(found)} accounts found as members, "
              f"{hit.sum()} of {len(hit)} targets ({', '.join(map(str, planted.target_items))}) found")
    print(f"repair: {summary}")
    print(f"done in {time.perf_counter() - t0:.0f} s: report {out / 'report.html'}, outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
