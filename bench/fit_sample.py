"""Quality of detectors fitted on the bounded fit sample against the full fit (issue 30 item 1).

On each labelled log (the generator, MovieLens-100k with injected attacks) the encoder is trained
once; the detectors are then fitted twice with it, on every user and on the fit sample
(core/sample.py, a budget of ``--share`` of the log's events), so only the sampling differs. Both
models score the whole log; printed side by side: user ROC-AUC, user PR-AUC, event PR-AUC, normal
users flagged, campaign members, and the differences against the targets (ROC-AUC within 0.005,
event PR-AUC within 0.01 of the full fit).

    python bench/fit_sample.py --data both --users 2000 --share 0.35
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import load, user_metrics  # noqa: E402

from seqguard_ray import SeqGuard, TrainConfig  # noqa: E402
from seqguard_ray.core.pipeline import as_log  # noqa: E402
from seqguard_ray.core.sample import fit_sample, take_users  # noqa: E402
from seqguard_ray.core.schema import cap_history  # noqa: E402
from seqguard_ray.synth import NORMAL  # noqa: E402

ROC_TOL, EVENT_PR_TOL = 0.005, 0.01


def sampled_twin(sg: SeqGuard, events, budget: int, min_users: int | None = None) -> SeqGuard:
    """A SeqGuard with ``sg``'s vocabulary and encoder whose detectors are fitted on the fit sample
    of ``budget`` events and ``min_users`` per stratum (as SeqGuard.fit does past the budget)."""
    twin = SeqGuard(replace(sg.config, fit_sample_events=budget,
                            fit_sample_min_users=min_users or sg.config.fit_sample_min_users))
    twin.vocab, twin.encoder = sg.vocab, sg.encoder
    log_ = cap_history(as_log(events), twin.config.max_events_per_user)
    plan, keep = fit_sample(log_.users, np.diff(log_.offsets), budget, twin.config.seed,
                            twin.config.fit_sample_min_users)
    twin.fit_detectors(twin.encode(take_users(twin.tokenize(log_), keep)), history=sg.encoder.history_,
                       t_train=0.0, bad_rows=0, sample=plan)
    return twin


def quality(sg: SeqGuard, labeled) -> dict:
    ev, ut = labeled.events, labeled.user_type
    ut.index = ut.index.astype(str)
    r = sg.score(ev)
    users = r.users.set_index(r.users["user_id"].astype(str))
    ev_score = np.zeros(len(ev))
    ev_score[r.events["row"].to_numpy()] = r.events["event_score"].to_numpy()
    attacked = ev["user_id"].astype(str).map(ut != NORMAL).to_numpy()
    u = user_metrics(users["score"], ut)["all"]
    flagged = users["anomalous"].reindex(ut.index).fillna(False).to_numpy(bool)
    members = 0 if r.campaigns is None else int((r.campaigns.user_campaign >= 0).sum())
    return {"user_roc": u["roc"], "user_pr": u["pr"],
            "event_pr": average_precision_score(labeled.event_injected[attacked], ev_score[attacked]),
            "normal_flagged": float(flagged[(ut == NORMAL).to_numpy()].mean()),
            "attacked_flagged": float(flagged[(ut != NORMAL).to_numpy()].mean()), "campaign_members": members}


def run(data: str, users: int, share: float, seed: int, min_users: int | None) -> None:
    labeled = load(data, users=users, seed=seed, holdout=False)
    n = len(labeled.events)
    t0 = time.perf_counter()
    full = SeqGuard(TrainConfig(seed=seed)).fit(labeled.events)
    t1 = time.perf_counter()
    twin = sampled_twin(full, labeled.events, int(share * n), min_users)
    t2 = time.perf_counter()
    a, b = quality(full, labeled), quality(twin, labeled)
    m = twin.metrics
    print(f"\n== {data}: {n} events, {m['train_users']} users; sample {m['fit_events']} events "
          f"({m['fit_events'] / n:.0%}), {m['fit_users']} users; fit {t1 - t0:.0f} s (encoder + full detectors), "
          f"sampled detectors {t2 - t1:.0f} s")
    print(f"{'':18} {'full fit':>10} {'sample':>10} {'sample-full':>12} target")
    for k in ("user_roc", "user_pr", "event_pr", "normal_flagged", "attacked_flagged", "campaign_members"):
        target = {"user_roc": ROC_TOL, "event_pr": EVENT_PR_TOL}.get(k)
        d = b[k] - a[k]
        verdict = "" if target is None else (f"|d| <= {target}: " + ("met" if abs(d) <= target else "MISSED"))
        fmt = "{:>10}" if k == "campaign_members" else "{:>10.4f}"
        print(f"{k:18} {fmt.format(a[k])} {fmt.format(b[k])} {d:>+12.4f} {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=("gen", "movielens", "both"), default="both")
    ap.add_argument("--users", type=int, default=2000, help="users of the generated log")
    ap.add_argument("--share", type=float, default=0.35, help="the fit budget as a share of the log's events")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-users", type=int, default=None,
                    help="users each length stratum keeps at least (default: TrainConfig.fit_sample_min_users)")
    args = ap.parse_args()
    for data in (("gen", "movielens") if args.data == "both" else (args.data,)):
        run(data, args.users, args.share, args.seed, args.min_users)


if __name__ == "__main__":
    main()
