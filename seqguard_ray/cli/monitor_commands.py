"""``seqguard monitor``: a log's drift from the model's training reference, the table the serving
drift gauges show (:mod:`seqguard_ray.core.drift`)."""

from __future__ import annotations

import json
import logging

import numpy as np

log = logging.getLogger("seqguard")


def add_parser(sub, add_on_bad_rows) -> None:
    """Add the ``monitor`` subcommand; it sets ``handler`` (call ``args.handler(args)``)."""
    m = sub.add_parser("monitor", help="compare a log's inputs and scores with the model's training reference (drift)",
                       description="Print, per drift signal (item popularity, actions, time gaps, sequence lengths, "
                                   "scores, flagged share), its distance from the training reference of MODEL and a "
                                   "verdict: PSI below 0.1 ok, from 0.1 watch, from 0.25 act (docs/operations.md). "
                                   "The same table as the serving gauges seqguard_drift_*. Exit 0 whatever it finds.")
    m.add_argument("--model", required=True, help="model bundle directory (or URI) from `seqguard train`")
    m.add_argument("--events", required=True, help="the log: Parquet file or directory, CSV or JSONL (a path or a URI)")
    m.add_argument("--scores", default=None, metavar="OUT",
                   help="output directory of `seqguard score` on this log: its users.parquet scores are used "
                        "(fast: no encoder); without it the log is scored here")
    m.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_on_bad_rows(m)
    m.set_defaults(handler=cmd_monitor)


def cmd_monitor(args) -> int:
    from ..core.drift import PSI_ACT, PSI_WATCH, DriftMonitor, report_table
    from ..core.pipeline import SeqGuard, as_log
    from ..core.schema import cap_history

    sg = SeqGuard.load(args.model)
    log_ = cap_history(as_log(args.events, on_bad_rows=args.on_bad_rows), sg.config.max_events_per_user)
    monitor = DriftMonitor(sg.drift)
    if sg.drift is None:
        log.warning("model bundle %s has no drift reference (trained before seqguard had one): retrain it to "
                    "monitor drift", args.model)
    else:
        seqs = sg.tokenize(log_)
        if args.scores is not None:
            score, anomalous = read_scores(args.scores, log_.users)
        else:
            scored = sg.detect(sg.encode(seqs))
            score, anomalous = scored.score, scored.anomalous
        monitor.update(sg.drift.count(seqs, score, anomalous))
    rows = monitor.report()
    if args.json:
        print(json.dumps({"model_version": getattr(sg, "model_version", ""), "reference": sg.drift is not None,
                          "events": int(log_.n_events), "users": int(log_.n_users),
                          "thresholds": {"psi_watch": PSI_WATCH, "psi_act": PSI_ACT},
                          "signals": [r.to_dict() for r in rows]}, indent=1))
    else:
        print(f"drift of {args.events} ({log_.n_events} events, {log_.n_users} users) from the training reference "
              f"of model {getattr(sg, 'model_version', '')}")
        print(report_table(rows))
    return 0


def read_scores(out: str, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, anomalous) of each of ``users`` (U,) from OUT/users.parquet of `seqguard score`; a
    ValueError names what is missing or wrong."""
    from ..core import storage
    from ..io.outputs import read_output

    if not storage.is_dir(out):
        raise ValueError(f"--scores {out} is not a directory: give the --out directory of `seqguard score`")
    try:
        users_out = read_output(out, "users")
    except (FileNotFoundError, OSError) as exc:
        raise ValueError(f"--scores {out} has no readable users.parquet ({exc}): give the --out directory of "
                         "`seqguard score`") from None
    missing = {"user_id", "score", "anomalous"} - set(users_out.columns)
    if missing:
        raise ValueError(f"--scores {out}: users.parquet lacks column(s) {sorted(missing)}: not written by `seqguard score`?")
    table = users_out.assign(user_id=users_out["user_id"].astype(str)).drop_duplicates("user_id").set_index("user_id")
    ids = np.asarray(users).astype(str)
    absent = ~np.isin(ids, table.index.to_numpy())
    if absent.any():
        raise ValueError(f"--scores {out}: users.parquet has no score for {int(absent.sum())} of the log's {len(ids)} users "
                         f"(e.g. {', '.join(ids[absent][:3])}): score this log with `seqguard score`, or leave --scores out")
    rows = table.loc[ids]
    score = rows["score"].to_numpy(np.float64)
    bad = ~((score >= 0) & (score <= 1))
    if bad.any():
        raise ValueError(f"--scores {out}: users.parquet column 'score' holds {int(bad.sum())} values outside [0, 1] "
                         f"(e.g. {score[bad][0]!r} for user {ids[bad][0]})")
    extra = len(table) - len(ids)
    if extra:
        log.info("--scores %s: %d users there are not in the log (left out)", out, extra)
    return score, rows["anomalous"].to_numpy(bool)
