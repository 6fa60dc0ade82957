"""Account takeovers: are they flagged, is the change point located, what does repair cut?

On the demo generator and MovieLens-100k, each with takeovers injected (``takeover``: a real
user's tail replaced or extended by another person; ``mid_takeover``: an intruder inside a long gap,
then the owner comes back; 2% of the users each), SeqGuard is trained on the poisoned log and scores
it twice in the same run: with its change-point stage (``core/changepoint.py``: the located cut
flags on its budget share, types the takeover and is where repair cuts) and without it (today's
path: the best taste segment, ``features.users.best_segment``, is the takeover candidate). Reported
per attack type: user ROC-AUC, flagged share, the share typed takeover, the share of change points
located within 5 events of the truth (the intruder's first event; for mid-takeovers also where the
owner comes back), injected events removed and clean events removed; normal users flagged; and the
stage's calibration on the clean log (the share of its users whose change evidence crosses the
stage's budget share, and 1% / 5% tails).

    python bench/takeovers.py --data both
    python bench/takeovers.py --data gen --users 500 --cache bench_work/takeovers --json takeovers.json

``--cache DIR`` keeps each trained model; a cached model's encoder is reused and every stage after
it refitted on the same encoded log (the encoder is the slow part; the stages follow this code).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from seqguard_ray import SeqGuard, TrainConfig
from seqguard_ray.core.calibration import BUDGET
from seqguard_ray.core.changepoint import ChangePoint
from seqguard_ray.core.features import event_features, user_features
from seqguard_ray.core.pipeline import as_log
from seqguard_ray.synth import NORMAL, AttackMix, LabeledEvents, generate

sys.path.insert(0, str(Path(__file__).resolve().parent))

TYPES = ("takeover", "mid_takeover")
NEAR = 5  # events: a located change point this close to the truth counts as found (the target)


def labelled(data: str, *, users: int, seed: int, clean: bool = False) -> LabeledEvents:
    mix = AttackMix.none() if clean else dataclasses.replace(AttackMix.none(), takeover=0.02, mid_takeover=0.02)
    if data == "gen":
        return generate(n_users=users, mix=mix, seed=seed)
    from movielens import movielens_with_attacks
    return movielens_with_attacks(mix=mix, seed=seed)


def trained(data: str, lab: LabeledEvents, *, seed: int, cache: Path | None):
    """(SeqGuard fitted on the poisoned log, its encoded log, the EventLog, seconds)."""
    t0 = time.perf_counter()
    config = TrainConfig(seed=seed, campaigns=False)  # the takeover path alone (campaigns: bench/quality.py)
    log_ = as_log(lab.events)
    path = cache / f"{data}_{seed}" if cache else None
    if path is not None and (path / "manifest.json").is_file():
        sg = SeqGuard.load(path)
        sg.config = dataclasses.replace(sg.config, campaigns=False)
        enc = sg.encode(sg.tokenize(log_))
        sg.fit_detectors(enc, history=[], t_train=0.0, bad_rows=0)
    else:
        sg = SeqGuard(config).fit(log_)
        enc = sg.encode(sg.tokenize(log_))
        if path is not None:
            sg.save(path)
    return sg, enc, log_, time.perf_counter() - t0


def truth(log_, lab: LabeledEvents) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per user (log order): type, first and one-past-last injected position, and (N,) injected
    flags in the log's sorted event order."""
    inj = lab.event_injected[log_.frame["_row"].to_numpy()]
    U = log_.n_users
    first, last = np.full(U, -1), np.full(U, -1)
    for u in np.flatnonzero(np.add.reduceat(inj, log_.offsets[:-1]) > 0) if log_.n_events else []:
        w = np.flatnonzero(inj[log_.offsets[u]:log_.offsets[u + 1]])
        first[u], last[u] = w[0], w[-1] + 1
    ut = lab.user_type.copy()
    ut.index = ut.index.astype(str)
    return ut.reindex(log_.users).fillna(NORMAL).to_numpy(), first, last, inj


def measure(sg: SeqGuard, enc, log_, truth_, located: np.ndarray) -> dict:
    """Metrics of one scoring of the encoded log; ``located`` (U, 2): each user's located stretch."""
    typ, first, last, inj = truth_
    s = sg.detect(enc)
    keep, _, _, _ = sg.policy.decide(log_.offsets, s)
    normal = typ == NORMAL
    start = s.takeover_start if s.takeover_start is not None else np.full(len(typ), -1)
    out = {"normal_flagged": float(s.anomalous[normal].mean()),
           "clean_removed": float((~keep[~inj]).mean())}
    ev_type = np.repeat(typ, np.diff(log_.offsets))
    for t in TYPES:
        m = typ == t
        if not m.any():
            continue
        both = normal | m
        typed = m & (s.anomaly_type == "takeover")
        near = np.abs(located[:, 0] - first) <= NEAR
        if t == "mid_takeover":  # and where the owner comes back
            near &= np.abs(located[:, 1] - last) <= NEAR
        owner = ~inj & (ev_type == t)
        out[t] = {
            "n": int(m.sum()), "roc": float(roc_auc_score(m[both], s.score[both])),
            "flagged": float(s.anomalous[m].mean()), "typed_takeover": float(typed.sum() / m.sum()),
            "located": float(near[m].mean()),
            "typed_located": float((typed & (np.abs(start - first) <= NEAR)).sum() / max(typed.sum(), 1)),
            "injected_removed": float((~keep[inj & (ev_type == t)]).mean()),
            "owner_removed": float((~keep[owner]).mean()) if owner.any() else 0.0,
        }
    return out


def calibration(sg: SeqGuard, clean: LabeledEvents) -> dict:
    """The change-point stage fitted on a clean log (encoded by the trained model) and applied to
    it: the share of its users whose evidence crosses the stage's budget share and 1% / 5% tails."""
    log_ = as_log(clean.events)
    seqs = sg.encode(sg.tokenize(log_)).seqs
    local = sg.event_detector.score(event_features(seqs, sg.stats))
    ch = ChangePoint().fit(seqs, sg.stats, local).transform(seqs, sg.stats, local)
    tail = np.exp(-ch.nats)
    share = BUDGET["takeover"] * sg.config.target_fpr
    return {"users": int(log_.n_users), "budget_tail": share, "flagged": float(np.mean(tail < share)),
            "tail_0.01": float(np.mean(tail < 0.01)), "tail_0.05": float(np.mean(tail < 0.05))}


def evaluate(data: str, *, users: int, seed: int, cache: Path | None) -> dict:
    lab = labelled(data, users=users, seed=seed)
    sg, enc, log_, fit_s = trained(data, lab, seed=seed, cache=cache)
    truth_ = truth(log_, lab)
    seqs = enc.seqs
    ef = event_features(seqs, sg.stats)
    local = sg.event_detector.score(ef)
    _, segments = user_features(seqs, sg.stats, ef, local)
    ch = sg.changepoint.transform(seqs, sg.stats, local)
    t0 = time.perf_counter()
    with_stage = measure(sg, enc, log_, truth_, np.stack([ch.start, ch.end], 1))
    t1 = time.perf_counter()
    stage, sg.changepoint = sg.changepoint, None   # today's path: best_segment, no change-point verdict
    without = measure(sg, enc, log_, truth_, segments)
    t2 = time.perf_counter()
    sg.changepoint = stage
    return {"data": data, "users": int(log_.n_users), "events": int(log_.n_events), "fit_s": round(fit_s, 1),
            "detect_s": {"changepoint": round(t1 - t0, 1), "best_segment": round(t2 - t1, 1)},
            "changepoint": with_stage, "best_segment": without,
            "calibration": calibration(sg, labelled(data, users=users, seed=seed, clean=True))}


def report(r: dict) -> str:
    lines = [f"== {r['data']}: {r['users']} users, {r['events']} events (fit {r['fit_s']} s; detect "
             f"{r['detect_s']['changepoint']} s with the stage, {r['detect_s']['best_segment']} s without)",
             f"{'':<28}{'change point':>14}{'best_segment':>14}"]
    a, b = r["changepoint"], r["best_segment"]
    for t in TYPES:
        if t not in a:
            continue
        lines.append(f"{t} (n={a[t]['n']})")
        for k, label in (("roc", "user ROC-AUC"), ("flagged", "flagged"), ("typed_takeover", "typed takeover"),
                         ("located", f"located within {NEAR} (all)"), ("typed_located", f"... of those typed"),
                         ("injected_removed", "injected events removed"), ("owner_removed", "owner's events removed")):
            lines.append(f"  {label:<26}{a[t][k]:>14.3f}{b[t][k]:>14.3f}")
    lines.append(f"  {'normal users flagged':<26}{a['normal_flagged']:>14.4f}{b['normal_flagged']:>14.4f}")
    lines.append(f"  {'clean events removed':<26}{a['clean_removed']:>14.4f}{b['clean_removed']:>14.4f}")
    c = r["calibration"]
    lines.append(f"clean log ({c['users']} users), the stage fitted on it: tail < {c['budget_tail']:g} (its budget) "
                 f"{c['flagged']:.4f}, < 0.01 {c['tail_0.01']:.4f}, < 0.05 {c['tail_0.05']:.4f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=("gen", "movielens", "both"), default="both")
    ap.add_argument("--users", type=int, default=1000, help="users of the generated log")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="directory to keep (and reuse) the trained models")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    for data in (("gen", "movielens") if args.data == "both" else (args.data,)):
        r = evaluate(data, users=args.users, seed=args.seed, cache=args.cache)
        print(report(r), flush=True)
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
