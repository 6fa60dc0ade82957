"""Detection and repair quality of SeqGuard against simple baselines, on labelled logs.

Protocols (``--train``): ``poisoned`` (default) trains on the whole poisoned log and scores the same
log, the "repair my training data" use; ``clean`` trains on the same log before the attacks were
injected and scores the poisoned one, the "train on history, score new traffic" use. SeqGuard is
compared with Isolation Forest and ECOD on hand-made per-user features (user-level ROC/PR only).
Repair quality is measured directly (injected / clean events removed, overall and per attack type)
and downstream, with an item-kNN recommender evaluated leave-last-out on clean users. Every run also
trains on the clean log and scores it: the share of its users flagged is the false-positive rate a
log without attackers sees (the calibration check).

    python bench/quality.py --data gen --users 500
    python bench/quality.py --data movielens --holdout --json quality.json
    python bench/quality.py --data both --train clean
    python bench/quality.py --data both --all-types
    python bench/quality.py --campaigns --data gen --settings small_group_5,bandwagon_50_week  # bench/campaign_sweep.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.metrics import average_precision_score, roc_auc_score

from seqguard_ray import SeqGuard, TrainConfig
from seqguard_ray.synth import NORMAL, AttackMix, LabeledEvents, generate
from seqguard_ray.core.results import Scored
from seqguard_ray.core.schema import EventLog

sys.path.insert(0, str(Path(__file__).resolve().parent))

HOLDOUT_MIX = dict(segment=0.01, love_hate=0.01, slow_bot=0.02, mid_takeover=0.02)
KNN_NEIGHBOURS = 50
TOP_K = 10
MIN_EVAL_EVENTS = 5


def load(data: str, *, users: int, seed: int, holdout: bool, clean: bool = False, all_types: bool = False) -> LabeledEvents:
    """The labelled log of one dataset ("gen" or "movielens"), with held-out attacks if asked (or
    every attack type at 2% of the users); with ``clean``, the same log before any attack."""
    mix = (AttackMix.none() if clean else AttackMix.all(0.02) if all_types
           else AttackMix(**HOLDOUT_MIX) if holdout else AttackMix())
    return load_mix(data, mix, users=users, seed=seed)


def load_mix(data: str, mix: AttackMix, *, users: int, seed: int) -> LabeledEvents:
    """The labelled log of one dataset with the attacks of ``mix``."""
    if data == "gen":
        return generate(n_users=users, mix=mix, seed=seed)
    from movielens import movielens_with_attacks
    return movielens_with_attacks(mix=mix, seed=seed)


def kept_events(sg: SeqGuard, log_: EventLog, scored: Scored, n_events: int) -> np.ndarray:
    """(n_events,) bool in the input's row order: the events that sg's repair policy keeps."""
    keep, _, _, _ = sg.policy.decide(log_.offsets, scored)
    kept = np.zeros(n_events, bool)
    kept[log_.frame["_row"].to_numpy()] = keep
    return kept


def user_features(events: pd.DataFrame) -> pd.DataFrame:
    """Hand-made per-user features (index user_id) for the baseline detectors."""
    df = events[["user_id", "item_id", "ts", "action", "value"]].sort_values(["user_id", "ts"], kind="stable")
    gap = df.groupby("user_id")["ts"].diff()
    df = df.assign(log_gap=np.log1p(gap.clip(lower=0)), fast=(gap < 2).astype(float).where(gap.notna()),
                   log_pop=np.log(df["item_id"].map(df["item_id"].value_counts())))
    g = df.groupby("user_id")
    feats = pd.DataFrame({
        "n_events": g.size(), "span": g["ts"].max() - g["ts"].min(),
        "gap_mean": g["log_gap"].mean(), "gap_std": g["log_gap"].std(), "fast_share": g["fast"].mean(),
        "distinct_items": g["item_id"].nunique() / g.size(), "pop_mean": g["log_pop"].mean(),
        "value_mean": g["value"].mean(), "value_std": g["value"].std(),
    })
    shares = pd.crosstab(df["user_id"], df["action"], normalize="index").add_prefix("act_")
    return feats.join(shares).fillna(0.0)


def run_baselines(events: pd.DataFrame, seed: int) -> dict[str, dict]:
    """Isolation Forest and ECOD user scores (higher = more anomalous) with fit/score wall times."""
    from pyod.models.ecod import ECOD
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import StandardScaler

    feats = user_features(events)
    x = StandardScaler().fit_transform(feats.to_numpy(np.float64))
    out = {}
    for name, model, score in [
        ("iforest", IsolationForest(random_state=seed), lambda m: -m.score_samples(x)),
        ("ecod", ECOD(), lambda m: m.decision_function(x)),
    ]:
        t0 = time.perf_counter()
        model.fit(x)
        t1 = time.perf_counter()
        s = score(model)
        out[name] = {"scores": pd.Series(s, index=feats.index), "fit_s": t1 - t0, "score_s": time.perf_counter() - t1}
    return out


def user_metrics(scores: pd.Series, user_type: pd.Series) -> dict:
    """ROC-AUC and PR-AUC overall (attacked vs normal) and per attack type (type vs normal)."""
    s = scores.reindex(user_type.index).fillna(0.0).to_numpy()
    t = user_type.to_numpy()
    normal = t == NORMAL
    out = {"all": {"roc": roc_auc_score(~normal, s), "pr": average_precision_score(~normal, s),
                   "n": int((~normal).sum())}}
    for typ in sorted(set(t) - {NORMAL}):
        m = normal | (t == typ)
        out[typ] = {"roc": roc_auc_score(t[m] == typ, s[m]), "pr": average_precision_score(t[m] == typ, s[m]),
                    "n": int((t == typ).sum())}
    return out


def precision_recall(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of boolean flags against boolean truth."""
    tp = float((flagged & truth).sum())
    return tp / max(flagged.sum(), 1), tp / max(truth.sum(), 1)


def item_knn(train: pd.DataFrame, n_items: int, k: int = KNN_NEIGHBOURS) -> sparse.csr_matrix:
    """Item-item cosine similarity on the binary user-item matrix, top-k neighbours per item."""
    users = pd.factorize(train["user_id"])[0]
    x = sparse.csr_matrix((np.ones(len(train)), (users, train["item_idx"].to_numpy())),
                          shape=(users.max() + 1 if len(users) else 0, n_items))
    x.data[:] = 1.0
    sim = (x.T @ x).toarray()
    norm = np.sqrt(np.diag(sim))
    sim = sim / np.maximum(np.outer(norm, norm), 1e-12)
    np.fill_diagonal(sim, 0.0)
    if n_items > k:
        cut = np.argpartition(-sim, k, axis=1)[:, k:]
        np.put_along_axis(sim, cut, 0.0, axis=1)
    return sparse.csr_matrix(sim)


def hit_rate(train: pd.DataFrame, test: pd.DataFrame, n_items: int) -> float:
    """Leave-last-out HR@10 of an item-kNN model trained on ``train`` for the users in ``test``.

    Each test user's profile is their history in ``train`` itself (empty if it was removed).
    """
    sim = item_knn(train, n_items)
    prof = train[train["user_id"].isin(test["user_id"])]
    rows = pd.Index(test["user_id"])
    p = sparse.csr_matrix((np.ones(len(prof)), (rows.get_indexer(prof["user_id"]), prof["item_idx"].to_numpy())),
                          shape=(len(test), n_items))
    p.data[:] = 1.0
    scores = (p @ sim).toarray()
    scores[p.nonzero()] = -np.inf
    top = np.argpartition(-scores, TOP_K, axis=1)[:, :TOP_K]
    truth = test["item_idx"].to_numpy()[:, None]
    valid = np.isfinite(np.take_along_axis(scores, top, axis=1)) & (np.take_along_axis(scores, top, axis=1) > 0)
    return float(((top == truth) & valid).any(axis=1).mean())


def target_rank(train: pd.DataFrame, targets: np.ndarray, n_items: int) -> float:
    """Mean popularity rank (1 = most events) of the target items in ``train``."""
    counts = np.bincount(train["item_idx"].to_numpy(), minlength=n_items)
    rank = pd.Series(counts).rank(ascending=False, method="min").to_numpy()
    return float(rank[targets].mean()) if len(targets) else float("nan")


def downstream(labeled: LabeledEvents, kept: np.ndarray) -> dict:
    """HR@10 and target popularity rank for recommenders trained on clean, attacked, repaired data."""
    ev = labeled.events[["user_id", "item_id", "ts"]].copy()
    codes, uniq = pd.factorize(ev["item_id"])
    ev["item_idx"] = codes
    normal = labeled.user_type[labeled.user_type == NORMAL].index
    sizes = ev.groupby("user_id").size()
    eligible = ev["user_id"].isin(sizes.index[sizes >= MIN_EVAL_EVENTS].intersection(normal))
    last = ev[eligible].groupby("user_id").tail(1).index  # events are sorted by (user_id, ts)
    test = ev.loc[last]
    held = np.zeros(len(ev), bool)
    held[last] = True
    targets = np.flatnonzero(np.isin(uniq, labeled.target_items))
    sets = {"clean": ~labeled.event_injected, "attacked": np.ones(len(ev), bool), "repaired": kept}
    out = {}
    for name, mask in sets.items():
        train = ev[mask & ~held]
        out[name] = {"hr@10": hit_rate(train, test, len(uniq)), "target_rank": target_rank(train, targets, len(uniq))}
    out["n_eval_users"] = len(test)
    return out


def calibration(sg: SeqGuard, clean: pd.DataFrame) -> dict:
    """Score a log without attackers with a model trained on it: the share of its users flagged and
    of its events removed."""
    r = sg.score(clean)
    keep, _, _, _ = sg.policy.decide(r.log.offsets, r.scored)
    return {"users_flagged": float(r.users["anomalous"].mean()), "events_removed": float((~keep).mean())}


def evaluate(data: str, *, users: int, seed: int, holdout: bool, trim_share: float = TrainConfig.trim_share,
             train: str = "poisoned", all_types: bool = False) -> dict:
    """All metrics for one dataset: SeqGuard, baselines, repair, downstream and the clean-log check."""
    labeled = load(data, users=users, seed=seed, holdout=holdout, all_types=all_types)
    ev, ut = labeled.events, labeled.user_type
    ut.index = ut.index.astype(str)
    attacked = ev["user_id"].map(ut != NORMAL).to_numpy()
    clean = load(data, users=users, seed=seed, holdout=holdout, clean=True).events

    def fit(log: pd.DataFrame) -> SeqGuard:
        return SeqGuard(TrainConfig(seed=seed, trim_share=trim_share)).fit(log)

    t0 = time.perf_counter()
    sg = fit(ev if train == "poisoned" else clean)
    t1 = time.perf_counter()
    r = sg.score(ev)
    t2 = time.perf_counter()
    users_df = r.users.set_index(r.users["user_id"].astype(str))
    ev_score = np.zeros(len(ev))
    ev_score[r.events["row"].to_numpy()] = r.events["event_score"].to_numpy()
    kept = kept_events(sg, r.log, r.scored, len(ev))
    flagged = users_df["anomalous"].reindex(ut.index).fillna(False).to_numpy(bool)
    prec, rec = precision_recall(flagged, (ut != NORMAL).to_numpy())
    inj = labeled.event_injected

    methods = {"seqguard": {"users": user_metrics(users_df["score"], ut), "fit_s": t1 - t0, "score_s": t2 - t1,
                            "event_pr": average_precision_score(inj[attacked], ev_score[attacked]),
                            "precision": prec, "recall": rec}}
    for name, b in run_baselines(ev, seed).items():
        methods[name] = {"users": user_metrics(b["scores"], ut), "fit_s": b["fit_s"], "score_s": b["score_s"]}
    ev_type = ev["user_id"].map(ut).to_numpy()
    per_type = {t: float((~kept[inj & (ev_type == t)]).mean()) for t in sorted(set(ut) - {NORMAL})
                if (inj & (ev_type == t)).any()}
    return {
        "data": data, "train": train, "n_events": len(ev), "n_users": len(ut),
        "n_attacked_users": int((ut != NORMAL).sum()), "n_injected": int(inj.sum()), "methods": methods,
        "repair": {"injected_removed": float((~kept[inj]).mean()) if inj.any() else float("nan"),
                   "clean_removed": float((~kept[~inj]).mean()),
                   "normal_users_flagged": float(flagged[(ut == NORMAL).to_numpy()].mean()),
                   "injected_removed_by_type": per_type},
        "calibration": calibration(sg if train == "clean" else fit(clean), clean),
        "downstream": downstream(labeled, kept),
    }


def format_report(res: dict) -> str:
    """Human-readable tables for one dataset's results."""
    m = res["methods"]
    lines = [f"== {res['data']}: {res['n_events']} events, {res['n_users']} users "
             f"({res['n_attacked_users']} attacked), {res['n_injected']} injected events; "
             f"trained on the {res['train']} log",
             f"{'method':<10}{'ROC':>7}{'PR':>7}{'evPR':>7}{'prec':>7}{'rec':>7}{'fit s':>9}{'score s':>9}"]
    for name, r in m.items():
        extra = [r.get(k) for k in ("event_pr", "precision", "recall")]
        cells = "".join(f"{v:>7.3f}" if v is not None else f"{'-':>7}" for v in extra)
        lines.append(f"{name:<10}{r['users']['all']['roc']:>7.3f}{r['users']['all']['pr']:>7.3f}{cells}"
                     f"{r['fit_s']:>9.2f}{r['score_s']:>9.2f}")
    rep, ds, cal = res["repair"], res["downstream"], res["calibration"]
    lines += ["", f"{'attack type (ROC / PR)':<24}{'n':>5}" + "".join(f"{n:>18}" for n in m) + f"{'removed':>10}"]
    for typ, v in m["seqguard"]["users"].items():
        if typ != "all":
            cells = "".join(f"{m[n]['users'][typ]['roc']:>10.3f} /{m[n]['users'][typ]['pr']:>6.3f}" for n in m)
            lines.append(f"{typ:<24}{v['n']:>5}{cells}{rep['injected_removed_by_type'].get(typ, float('nan')):>10.3f}")
    lines += ["", f"repair: injected events removed {rep['injected_removed']:.3f}, "
                  f"clean events removed {rep['clean_removed']:.3f} ({rep['normal_users_flagged']:.3f} of the "
                  f"normal users flagged)",
              f"clean log (trained on it, scored): users flagged {cal['users_flagged']:.3f}, "
              f"events removed {cal['events_removed']:.3f} (target_fpr {TrainConfig.target_fpr})",
              f"downstream item-kNN ({ds['n_eval_users']} clean users):  {'HR@10':>7}{'target rank':>13}"]
    for name in ("clean", "attacked", "repaired"):
        lines.append(f"  trained on {name:<10}{'':>30}{ds[name]['hr@10']:>7.3f}{ds[name]['target_rank']:>13.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=("gen", "movielens", "both"), default="both")
    ap.add_argument("--users", type=int, default=1000, help="users of the generated log")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", action="store_true", help="add held-out attack types to the mix")
    ap.add_argument("--all-types", action="store_true",
                    help="every attack type, held-out ones included, at 2%% of the users each (about 19%% attackers)")
    ap.add_argument("--trim-share", type=float, default=TrainConfig.trim_share,
                    help="share of training users presumed anomalous (TrainConfig.trim_share)")
    ap.add_argument("--train", choices=("poisoned", "clean"), default="poisoned",
                    help="train on the poisoned log (default) or on the same log before the attacks")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--campaigns", action="store_true",
                    help="run the campaign sweep instead (bench/campaign_sweep.py): every named campaign setting")
    ap.add_argument("--settings", help="with --campaigns: a comma-separated subset of the settings")
    ap.add_argument("--fresh", action="store_true", help="with --campaigns: retrain the cached model bundles")
    args = ap.parse_args()
    if args.campaigns:
        import logging

        from campaign_sweep import run as run_campaigns
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("campaign_sweep").setLevel(logging.INFO)
        run_campaigns(args.data, settings=args.settings, users=args.users, seed=args.seed, json_path=args.json,
                      fresh=args.fresh)
        return
    datasets = ("gen", "movielens") if args.data == "both" else (args.data,)
    results = []
    for data in datasets:
        res = evaluate(data, users=args.users, seed=args.seed, holdout=args.holdout, trim_share=args.trim_share,
                       train=args.train, all_types=args.all_types)
        print(format_report(res), "\n", flush=True)
        results.append(res)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2, default=float))


if __name__ == "__main__":
    main()
