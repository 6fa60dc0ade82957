"""Three ways a deployment departs from bench/quality.py's protocol (train on a log, score the same
log), measured against an Isolation Forest on the same hand features in the same run:

- new users: train on a random half of the users and score the other half, whom neither the
  encoder nor the detectors saw (yesterday's model on today's accounts). Reported for both halves,
  at each model's own threshold (seqguard: ``target_fpr``; Isolation Forest: the 99th percentile of
  its training scores), so the false-positive rates show how well the calibration carries over;
- heavy poisoning: every attack of the default mix at ``--scale`` times its share (3: about 29%
  of the users attacked), trained and scored as in bench/quality.py, at the default trim share and
  at ``--trim-share`` (the detectors refitted on the same encoder);
- new items (catalogue churn): train on the log without the events of randomly chosen items (never
  an attack's target) that make ``--new-item-share`` of its events, then score the training log and
  the whole log, in which those items are new; reported for all normal users and for those who
  touched a new item.

    python bench/robustness.py                       # every protocol, both data sets
    python bench/robustness.py --data gen --protocol new-users
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

from seqguard_ray import SeqGuard, TrainConfig
from seqguard_ray.synth import NORMAL, AttackMix, LabeledEvents
from seqguard_ray.core.pipeline import as_log
from seqguard_ray.core.results import users_frame

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import kept_events, load_mix, precision_recall, run_baselines, user_features, user_metrics  # noqa: E402


def scaled(mix: AttackMix, k: float) -> AttackMix:
    """Every attack share of ``mix`` times ``k``."""
    return AttackMix(**{f.name: getattr(mix, f.name) * k for f in dataclasses.fields(AttackMix)})


def load(data: str, mix: AttackMix, seed: int, users: int) -> LabeledEvents:
    lab = load_mix(data, mix, users=users, seed=seed)
    lab.user_type.index = lab.user_type.index.astype(str)
    return lab


def _row(name: str, scores: pd.Series, flagged: pd.Series, user_type: pd.Series) -> str:
    ut = user_type.reindex(scores.index)
    m = user_metrics(scores, ut)["all"]
    truth = (ut != NORMAL).to_numpy()
    f = flagged.reindex(scores.index).to_numpy(bool)
    prec, rec = precision_recall(f, truth)
    return (f"  {name:<46}{m['roc']:>7.3f}{m['pr']:>7.3f}{f[~truth].mean():>8.3f}{prec:>8.3f}{rec:>8.3f}"
            f"{len(scores):>7}")


HEADER = f"  {'':<46}{'ROC':>7}{'PR':>7}{'FPR':>8}{'prec':>8}{'recall':>8}{'users':>7}"


def forest_on(train: pd.DataFrame, others: dict[str, pd.DataFrame], seed: int) -> tuple[dict[str, pd.Series], float]:
    """An Isolation Forest fitted on the hand features of ``train`` (scaled on it): raw scores
    (index user_id as str) of "train" and of each of ``others``, and its cut, the 99th percentile
    of its training scores. Item popularity is computed within each log."""
    feats = {"train": user_features(train)} | {k: user_features(df) for k, df in others.items()}
    cols = feats["train"].columns
    x = {k: f.reindex(columns=cols, fill_value=0.0).to_numpy(np.float64) for k, f in feats.items()}
    scaler = StandardScaler().fit(x["train"])
    forest = IsolationForest(random_state=seed).fit(scaler.transform(x["train"]))
    raw = {k: pd.Series(-forest.score_samples(scaler.transform(x[k])), index=f.index.astype(str)) for k, f in feats.items()}
    return raw, float(np.quantile(raw["train"], 0.99))


def new_users(data: str, seed: int, users: int) -> list[str]:
    lab = load(data, AttackMix(), seed, users)
    ev, ut = lab.events, lab.user_type
    ids = ev["user_id"].astype(str)
    rng = np.random.default_rng(seed)
    half = set(rng.choice(ut.index.to_numpy(), len(ut) // 2, replace=False))
    train, test = ev[ids.isin(half)], ev[~ids.isin(half)]
    sg = SeqGuard(TrainConfig(seed=seed)).fit(train)
    raw, cut = forest_on(train, {"test": test}, seed)
    lines = [f"{data}: train on {len(half)} users, score them and the {len(ut) - len(half)} others", HEADER]
    for k, df in (("train", train), ("test", test)):
        u = sg.score(df).users
        u.index = u["user_id"].astype(str)
        who = "training users (in-sample)" if k == "train" else "new users"
        lines.append(_row(f"seqguard, {who}", u["score"], u["anomalous"], ut))
        lines.append(_row(f"Isolation Forest, {who}", raw[k], raw[k] >= cut, ut))
    return lines


def poisoned(data: str, seed: int, users: int, scale: float, trim: float) -> list[str]:
    lab = load(data, scaled(AttackMix(), scale), seed, users)
    ut = lab.user_type
    sg = SeqGuard(TrainConfig(seed=seed)).fit(lab.events)
    log_ = as_log(lab.events)
    enc = sg.encode(sg.tokenize(log_))
    lines = [f"{data}: every attack at {scale:g}x its default share, {(ut != NORMAL).mean():.0%} of "
             f"{len(ut)} users attacked", HEADER]
    for t in (TrainConfig.trim_share, trim):
        sg.config.trim_share = t
        sg.fit_detectors(enc, history=sg.encoder.history_, t_train=0.0, bad_rows=0)
        s = sg.detect(enc)
        u = users_frame(log_, s)
        u.index = u["user_id"].astype(str)
        kept = kept_events(sg, log_, s, len(lab.events))
        inj = lab.event_injected
        lines.append(_row(f"seqguard, trim share {t:g}", u["score"], u["anomalous"], ut)
                     + f"   injected / clean events removed {(~kept[inj]).mean():.3f} / {(~kept[~inj]).mean():.3f}")
    forest = run_baselines(lab.events, seed)["iforest"]["scores"]
    forest.index = forest.index.astype(str)
    lines.append(_row("Isolation Forest (99th pct cut)", forest, forest >= np.quantile(forest, 0.99), ut))
    return lines


def new_item_choice(lab: LabeledEvents, share: float, seed: int) -> np.ndarray:
    """Random items, never an attack's target, whose events make at least ``share`` of the log."""
    counts = lab.events["item_id"].value_counts()
    counts = counts[~counts.index.isin(lab.target_items)]
    order = np.random.default_rng(seed).permutation(counts.index.to_numpy())
    reach = np.cumsum(counts.reindex(order).to_numpy()) / len(lab.events)
    if not len(reach) or reach[-1] < share:
        raise ValueError(f"the log's non-target items make {reach[-1] if len(reach) else 0:.1%} of its events, under {share:.1%}")
    return order[: int(np.searchsorted(reach, share)) + 1]


def new_items(data: str, seed: int, users: int, share: float) -> list[str]:
    lab = load(data, AttackMix(), seed, users)
    ev, ut = lab.events, lab.user_type
    new = new_item_choice(lab, share, seed)
    is_new = ev["item_id"].isin(new).to_numpy()
    train = ev[~is_new]
    touched = set(ev.loc[is_new, "user_id"].astype(str))
    sg = SeqGuard(TrainConfig(seed=seed)).fit(train)
    raw, cut = forest_on(train, {"whole": ev}, seed)
    normal = ut.index[ut == NORMAL]
    lines = [f"{data}: {len(new)} items ({is_new.mean():.1%} of the events, {len(touched & set(normal))} normal users "
             f"touch one) left out of training", HEADER + f"{'FPR touched':>13}"]
    for k, df in (("train", train), ("whole", ev)):
        u = sg.score(df).users
        u.index = u["user_id"].astype(str)
        who = "training log" if k == "train" else "whole log (new items in it)"
        for name, sc, fl in ((f"seqguard, {who}", u["score"], u["anomalous"]),
                             (f"Isolation Forest, {who}", raw[k], raw[k] >= cut)):
            hit = fl.reindex([x for x in normal if x in touched]).dropna().astype(bool)
            lines.append(_row(name, sc, fl, ut) + f"{hit.mean():>13.3f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=("gen", "movielens", "both"), default="both")
    ap.add_argument("--protocol", choices=("new-users", "poisoned", "new-items", "all"), default="all")
    ap.add_argument("--users", type=int, default=1000, help="users of the generated log")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--scale", type=float, default=3.0, help="attack shares times this (poisoned protocol)")
    ap.add_argument("--trim-share", type=float, default=0.15, help="second trim share to compare (poisoned protocol)")
    ap.add_argument("--new-item-share", type=float, default=0.05, help="share of the events on new items (new-items protocol)")
    a = ap.parse_args()
    for data in (("gen", "movielens") if a.data == "both" else (a.data,)):
        if a.protocol in ("new-users", "all"):
            print("\n".join(new_users(data, a.seed, a.users)), flush=True)
        if a.protocol in ("poisoned", "all"):
            print("\n".join(poisoned(data, a.seed, a.users, a.scale, a.trim_share)), flush=True)
        if a.protocol in ("new-items", "all"):
            print("\n".join(new_items(data, a.seed, a.users, a.new_item_share)), flush=True)


if __name__ == "__main__":
    main()
