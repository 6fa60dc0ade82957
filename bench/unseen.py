"""Two shilling attacks that no generator here makes, injected into MovieLens-100k: how SeqGuard
does on attack types it was never tuned on, against Isolation Forest and ECOD on the hand features
of bench/quality.py, in the same run.

- average-over-popular (AOP) profiles: filler drawn from the 10% most rated films, each rated
  near its mean rating, plus one target film rated 5;
- power-user copies: a random half of one of the 40 heaviest raters' films, ratings jittered by
  -1..+1, plus one target film rated 5 (obfuscated copies of influential users).

Each fake profile borrows the rating times of a random real user of at least its length (shifted
to a random start), so that timing gives nothing away: what is tested is the profile itself.
Campaigns of 10 profiles share a target (a film with 3-20 ratings). The model trains on the
poisoned log and scores it, as in bench/quality.py's default protocol.

    python bench/unseen.py                 # 20 profiles of each type, seed 11
    python bench/unseen.py --profiles 40 --seed 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from seqguard_ray import SeqGuard, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens import load_movielens_100k  # noqa: E402
from quality import run_baselines  # noqa: E402

TYPES = ("aop", "power_copy")
CAMPAIGN = 10        # profiles per target film
POPULAR_SHARE = 0.1  # AOP filler: the most rated tenth of the films
HEAVY_USERS = 40     # power copies copy one of the heaviest raters


def inject_unseen(events: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """events plus ``n`` profiles of each type (column ``injected``), and each user's type."""
    rng = np.random.default_rng(seed)
    ev = events.assign(user_id=events["user_id"].astype(str), injected=False)
    by_user = {u: g for u, g in ev.groupby("user_id", sort=False)}
    sizes = ev.groupby("user_id").size()
    counts = ev["item_id"].value_counts()
    item_mean = ev.groupby("item_id")["value"].mean()
    item_std = ev.groupby("item_id")["value"].std().fillna(1.0)
    item_text = ev.drop_duplicates("item_id").set_index("item_id")[["title", "category"]]
    popular = counts.index[: max(1, int(POPULAR_SHARE * len(counts)))].to_numpy()
    heavy = sizes.sort_values(ascending=False).index[:HEAVY_USERS].to_numpy()
    pool = counts.index[counts.between(3, 20)].to_numpy()
    targets = rng.choice(pool, 2 * int(np.ceil(n / CAMPAIGN)), replace=False)
    t_min, t_max = int(ev["ts"].min()), int(ev["ts"].max())

    def times(k: int) -> np.ndarray:
        donor = by_user[rng.choice(sizes.index[sizes >= k])]
        gaps = np.diff(donor["ts"].to_numpy()[:k])
        start = int(rng.integers(t_min, max(t_min + 1, t_max - int(gaps.sum()))))
        return start + np.r_[0, np.cumsum(gaps)]

    rows, types = [], {}
    for kind in TYPES:
        for i in range(n):
            target = targets[(0 if kind == "aop" else len(targets) // 2) + i // CAMPAIGN]
            if kind == "aop":
                size = int(rng.uniform(0.5, 1.5) * sizes.median())
                items = rng.choice(popular, min(size, len(popular)), replace=False)
                values = np.clip(np.rint(item_mean[items].to_numpy() + rng.normal(0, 0.5 * item_std[items].to_numpy())), 1, 5)
            else:
                src = by_user[rng.choice(heavy)]
                take = src.iloc[np.sort(rng.choice(len(src), len(src) // 2, replace=False))]
                items = take["item_id"].to_numpy()
                values = np.clip(take["value"].to_numpy() + rng.integers(-1, 2, len(take)), 1, 5)
            items, values = np.r_[items, target], np.r_[values, 5.0]
            order = rng.permutation(len(items))
            uid = f"{kind}-{i}"
            types[uid] = kind
            rows.append(pd.DataFrame({"user_id": uid, "item_id": items[order], "ts": times(len(items)),
                                      "action": ev["action"].iloc[0], "value": values[order], "injected": True}))
    fake = pd.concat(rows, ignore_index=True)
    fake[["title", "category"]] = item_text.reindex(fake["item_id"]).to_numpy()
    user_type = pd.Series({u: "normal" for u in by_user} | types)
    return pd.concat([ev, fake[ev.columns]], ignore_index=True), user_type


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", type=int, default=20, help="fake profiles of each type")
    ap.add_argument("--seed", type=int, default=11, help="seed of the injection")
    args = ap.parse_args()
    ev, user_type = inject_unseen(load_movielens_100k(), args.profiles, args.seed)
    log_ = ev.drop(columns="injected")
    t0 = time.perf_counter()
    sg = SeqGuard(TrainConfig(seed=0)).fit(log_)
    t1 = time.perf_counter()
    r = sg.score(log_)
    keep, _, _, _ = sg.policy.decide(r.log.offsets, r.scored)
    kept = np.zeros(len(ev), bool)
    kept[r.log.frame["_row"].to_numpy()] = keep
    users = r.users.set_index(r.users["user_id"].astype(str)).reindex(user_type.index)
    scores = {"seqguard": users["score"]} | {k: v["scores"].rename(index=str).reindex(user_type.index)
                                             for k, v in run_baselines(log_, 0).items()}
    ev_type = ev["user_id"].map(user_type).to_numpy()
    print(f"MovieLens-100k + {args.profiles} profiles of each type (seed {args.seed}): {len(ev)} events, "
          f"{len(user_type)} users; seqguard fit {t1 - t0:.0f} s, score {time.perf_counter() - t1:.1f} s")
    print(f"{'type':<12}" + "".join(f"{m + ' ROC / PR':>22}" for m in scores) + f"{'flagged':>9}{'removed':>9}  typed")
    for kind in TYPES:
        m = (user_type == "normal") | (user_type == kind)
        y = user_type[m] == kind
        cells = "".join(f"{roc_auc_score(y, s[m]):>14.3f} / {average_precision_score(y, s[m]):.3f}" for s in scores.values())
        typed = users.loc[user_type == kind, "anomaly_type"].value_counts().to_dict()
        print(f"{kind:<12}{cells}{users.loc[user_type == kind, 'anomalous'].mean():>9.2f}"
              f"{(~kept[ev_type == kind]).mean():>9.3f}  {typed}")
    normal = user_type == "normal"
    print(f"normal users flagged {users.loc[normal, 'anomalous'].mean():.3f}, their events removed "
          f"{(~kept[ev_type == 'normal']).mean():.3f}")


if __name__ == "__main__":
    main()
