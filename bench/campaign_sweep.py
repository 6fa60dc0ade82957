"""The campaign sweep (issue 29): each named campaign of ``seqguard_ray.synth.CAMPAIGN_SETTINGS``
injected into a clean log (the generator's, MovieLens-100k); seqguard trained on the poisoned log
and scoring it, beside seqguard without the campaign stage (``TrainConfig(campaigns=False)``),
Isolation Forest on hand features and FRAUDAR's first block (bench/fraudar.py), in the same run.

Per setting and method: member recall at the default threshold, clean-user false-positive rate,
member ROC-AUC, target precision / recall (items flagged as targets), injected / clean events
removed by repair, the worst target's popularity rank (the target that keeps most of its rise)
on the clean / attacked / repaired log, and item-kNN HR@10 on clean users trained on the clean /
attacked / repaired log. Repair per method: seqguard's policy; Isolation Forest quarantines the
users it flags (at the ``1 - target_fpr`` quantile of its training scores, the budget seqguard
spends); FRAUDAR drops its block's edges. Also per log: a model trained on the clean log and scoring
it (users flagged, campaigns and target items found where none were injected).

Model bundles are cached under ``bench_work/campaign_sweep/`` keyed by data, seed and a hash of
the library's source, so a rerun trains only what changed; ``--fresh`` retrains. Until the campaign
stage exists (no ``TrainConfig.campaigns``), the stage's columns print "-".

    python bench/quality.py --campaigns --data gen --settings small_group_5,bandwagon_50_week
    python bench/quality.py --campaigns --data both --json sweep.json       # the full sweep
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
from fraudar import fraudar
from quality import MIN_EVAL_EVENTS, hit_rate, kept_events, user_features
from sklearn.metrics import roc_auc_score

from seqguard_ray import SeqGuard, TrainConfig
from seqguard_ray.core.pipeline import as_log
from seqguard_ray.core.results import Encoded
from seqguard_ray.synth import (
    CAMPAIGN_SETTINGS,
    NORMAL,
    AttackMix,
    LabeledCampaign,
    generate,
    inject_campaign,
)

log = logging.getLogger("campaign_sweep")

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench_work" / "campaign_sweep"
HAS_STAGE = "campaigns" in {f.name for f in fields(TrainConfig)}
METHODS = ("seqguard", "no-stage", "iforest", "fraudar")
# the issue's targets, for settings with >= 20 accounts spread over <= 7 days
GOALS = {"member_recall": 0.9, "clean_fpr": 0.01, "target_recall": 0.9, "target_precision": 0.8,
         "rank_kept": 0.9, "hr_loss": 0.01}


def code_key() -> str:
    """A short hash of the source that models depend on (core/ and the injector): the cache's key."""
    h = hashlib.sha256()
    for p in sorted([*(ROOT / "seqguard_ray" / "core").rglob("*.py"), *(ROOT / "seqguard_ray" / "synth").rglob("*.py")]):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def clean_log(data: str, *, users: int, seed: int) -> tuple[pd.DataFrame, tuple[float, float] | None]:
    """The clean log of ``data`` ("gen" or "movielens") and the value range injected events use."""
    if data == "gen":
        return generate(n_users=users, mix=AttackMix.none(), seed=seed).events, None
    from movielens import RATING_RANGE, load_movielens_100k
    return load_movielens_100k(), RATING_RANGE


# models -------------------------------------------------------------------------------------------

def _load(path: Path, campaigns: bool) -> SeqGuard | None:
    if not (path / "manifest.json").exists():
        return None
    try:
        sg = SeqGuard.load(path)
    except Exception as exc:  # noqa: BLE001 - a stale cache entry is retrained, never fatal
        log.warning("cached bundle %s unreadable (%s): retraining", path, exc)
        return None
    if campaigns and getattr(sg, "campaign_detector", None) is None:
        return None
    return sg


def share_encoder(on: SeqGuard | None, off: SeqGuard) -> None:
    """Give both models one encoder that remembers its last log: the pair encodes the same log up to
    four times (training, the stage-less detectors, two scorings). Exact: the encoder is
    deterministic at inference, and its weights are the same object (or the same bundle's)."""
    enc = off.encoder if on is None else on.encoder
    off.encoder = enc
    if getattr(enc, "_sweep_memo", False):
        return
    inner, memo = enc.transform, {}

    def transform(seqs):
        h = hashlib.sha1()
        for a in (seqs.offsets, seqs.ts, seqs.item, seqs.action, seqs.value, seqs.item_key):
            h.update(np.ascontiguousarray(a).tobytes())
        key = h.hexdigest()
        if key not in memo:
            memo.clear()
            out = inner(seqs)
            memo[key] = (out.seqs.surprisal.copy(), out.user_emb.copy())
            return out
        sur, emb = memo[key]
        seqs.surprisal = sur.copy()
        return Encoded(seqs, emb.copy())

    enc.transform, enc._sweep_memo = transform, True


def fit_pair(events: pd.DataFrame, seed: int, cache: Path, *, fresh: bool = False,
             ) -> tuple[SeqGuard | None, SeqGuard, dict]:
    """(seqguard with the campaign stage or None without one, seqguard without it, fit seconds).

    Both share one encoder: the stage-less model is the same pipeline's ``fit_detectors`` with
    ``campaigns=False`` on the same encoded log, which is what ``fit`` does after the encoder (the
    encoder does not depend on the flag), so the pair costs one encoder training. Bundles are
    cached under ``cache`` (``fresh``: retrain and overwrite)."""
    on_cfg = TrainConfig(seed=seed) if HAS_STAGE else None
    off_cfg = TrainConfig(seed=seed, campaigns=False) if HAS_STAGE else TrainConfig(seed=seed)
    on = _load(cache / "on", True) if on_cfg and not fresh else None
    off = None if fresh else _load(cache / "off", False)
    times = {}
    if off is not None and (on is not None or on_cfg is None):
        share_encoder(on, off)
        return on, off, {"cached": True}
    t0 = time.perf_counter()
    first = SeqGuard(on_cfg or off_cfg).fit(events)
    times["fit_s"] = time.perf_counter() - t0
    if on_cfg is None:
        on, off = None, first
    else:
        on = first
        t1 = time.perf_counter()
        off = SeqGuard(off_cfg)
        off.vocab = on.vocab
        share_encoder(on, off)
        log_ = as_log(events)
        off.fit_detectors(off.encode(off.tokenize(log_)), history=on.encoder.history_,
                          t_train=on.metrics.get("encoder_train_s", 0.0), bad_rows=log_.bad_rows.count)
        times["fit_off_s"] = time.perf_counter() - t1
    if on is not None:
        on.save(cache / "on")
    off.save(cache / "off")
    share_encoder(on, off)
    return on, off, times


# methods ------------------------------------------------------------------------------------------

def seqguard_method(sg: SeqGuard, events: pd.DataFrame, users: pd.Index) -> dict:
    """Flags, scores, target flags and kept events (input order) of a seqguard model on its log."""
    t0 = time.perf_counter()
    r = sg.score(events)
    score_s = time.perf_counter() - t0
    u = r.users.set_index(r.users["user_id"].astype(str))
    out = {"flag": u["anomalous"].reindex(users).fillna(False).to_numpy(bool),
           "score": u["score"].reindex(users).fillna(0.0).to_numpy(np.float64),
           "kept": kept_events(sg, r.log, r.scored, len(events)), "score_s": score_s, "targets": None}
    camp = getattr(r, "campaigns", None)
    if camp is not None:
        items = camp.items
        out["targets"] = set(items.loc[items["suspicious"].to_numpy(bool), "item_id"].astype(str))
        out["n_campaigns"] = len(camp.campaigns)
    return out


def iforest_method(events: pd.DataFrame, users: pd.Index, seed: int, target_fpr: float) -> dict:
    """Isolation Forest on hand features; flags at the 1 - target_fpr quantile; repair quarantines."""
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    feats = user_features(events)
    x = StandardScaler().fit_transform(feats.to_numpy(np.float64))
    s = -IsolationForest(random_state=seed).fit(x).score_samples(x)
    score = pd.Series(s, index=feats.index.astype(str)).reindex(users).fillna(0.0).to_numpy()
    flag = score > np.quantile(score, 1 - target_fpr)
    kept = ~events["user_id"].astype(str).isin(users[flag]).to_numpy()
    return {"flag": flag, "score": score, "kept": kept, "targets": None, "score_s": time.perf_counter() - t0}


def fraudar_method(events: pd.DataFrame, users: pd.Index) -> dict:
    """FRAUDAR's first block on the user-item graph: its users flagged, its items the targets, its
    edges (the block users' events on the block items) removed."""
    t0 = time.perf_counter()
    uc = users.get_indexer(events["user_id"].astype(str))
    ic, item_ids = pd.factorize(events["item_id"])
    um, im, _ = fraudar(uc, ic)
    um = np.r_[um, np.zeros(len(users) - len(um), bool)]
    kept = ~(um[uc] & im[ic])
    return {"flag": um, "score": um.astype(np.float64), "kept": kept, "score_s": time.perf_counter() - t0,
            "targets": set(pd.Index(item_ids)[im].astype(str))}


# metrics ------------------------------------------------------------------------------------------

class Downstream:
    """Item-kNN HR@10 (leave-last-out on clean users) and target popularity ranks, for the clean and
    attacked logs once, and for each method's repaired log."""

    def __init__(self, lc: LabeledCampaign) -> None:
        ev = lc.events[["user_id", "item_id"]].copy()
        codes, uniq = pd.factorize(ev["item_id"])
        ev["item_idx"] = codes
        self.ev, self.n_items = ev, len(uniq)
        normal = lc.user_type.index[lc.user_type == NORMAL]
        sizes = ev.groupby("user_id").size()
        eligible = ev["user_id"].isin(sizes.index[sizes >= MIN_EVAL_EVENTS].intersection(normal))
        last = ev[eligible].groupby("user_id").tail(1).index  # events are sorted by (user_id, ts)
        self.test = ev.loc[last]
        self.held = np.zeros(len(ev), bool)
        self.held[last] = True
        self.targets = np.flatnonzero(pd.Index(uniq).isin(lc.target_items))
        self.clean = self.measure(~lc.event_injected)
        self.attacked = self.measure(np.ones(len(ev), bool))

    def measure(self, kept: np.ndarray) -> dict:
        train = self.ev[kept & ~self.held]
        counts = np.bincount(train["item_idx"].to_numpy(), minlength=self.n_items)
        rank = pd.Series(counts).rank(ascending=False, method="min").to_numpy()
        return {"hr": hit_rate(train, self.test, self.n_items), "ranks": rank[self.targets]}

    def repaired(self, kept: np.ndarray) -> dict:
        """HR@10 clean / attacked / repaired and the worst target's ranks (the smallest repaired /
        clean rank ratio: the target that keeps most of its rise)."""
        rep = self.measure(kept)
        w = int(np.argmin(rep["ranks"] / self.clean["ranks"]))
        return {"hr": [self.clean["hr"], self.attacked["hr"], rep["hr"]],
                "rank": [float(self.clean["ranks"][w]), float(self.attacked["ranks"][w]), float(rep["ranks"][w])]}


def metrics(m: dict, member: np.ndarray, injected: np.ndarray, targets: set[str], ds: Downstream) -> dict:
    """One method's figures against the truth (members (U,), injected events (N,), target ids)."""
    flag, kept = m["flag"], m.get("kept")
    out = {"member_recall": float(flag[member].mean()), "clean_fpr": float(flag[~member].mean()),
           "roc": float(roc_auc_score(member, m["score"])), "score_s": m["score_s"],
           "target_precision": None, "target_recall": None, "injected_removed": None, "clean_removed": None,
           "hr": None, "rank": None}
    if m.get("targets") is not None:
        hit = len(m["targets"] & targets)
        out["target_precision"] = hit / len(m["targets"]) if m["targets"] else None
        out["target_recall"] = hit / len(targets)
        out["targets_flagged"] = len(m["targets"])
    if kept is not None:
        out["injected_removed"] = float((~kept[injected]).mean())
        out["clean_removed"] = float((~kept[~injected]).mean())
        out.update(ds.repaired(kept))
    if "n_campaigns" in m:
        out["n_campaigns"] = m["n_campaigns"]
    return out


def unmet(r: dict) -> list[str]:
    """The issue's targets a method's figures miss (names), for in-scope settings."""
    g, miss = GOALS, []
    if r["member_recall"] < g["member_recall"]:
        miss.append("recall")
    if r["clean_fpr"] > g["clean_fpr"]:
        miss.append("fpr")
    if r["target_recall"] is None or r["target_recall"] < g["target_recall"]:
        miss.append("t.rec")
    if r["target_precision"] is None or r["target_precision"] < g["target_precision"]:
        miss.append("t.prec")
    if r["rank"] is None or r["rank"][2] < g["rank_kept"] * r["rank"][0]:
        miss.append("rank")
    if r["hr"] is None or r["hr"][2] < (1 - g["hr_loss"]) * r["hr"][0]:
        miss.append("hr")
    return miss


# the sweep ----------------------------------------------------------------------------------------

def run_setting(clean: pd.DataFrame, vrange, name: str, *, seed: int, cache: Path, fresh: bool) -> dict:
    """All methods on one setting injected into ``clean``."""
    t0 = time.perf_counter()
    lc = inject_campaign(clean, name, seed=seed, value_range=vrange)
    ev = lc.events
    users = pd.Index(lc.user_type.index.astype(str))
    member = users.isin(lc.members)
    targets = {str(t) for t in lc.target_items}
    on, off, fit_times = fit_pair(ev, seed, cache, fresh=fresh)
    runs = {"no-stage": seqguard_method(off, ev, users), "iforest": iforest_method(ev, users, seed, off.config.target_fpr),
            "fraudar": fraudar_method(ev, users)}
    if on is not None:
        runs["seqguard"] = seqguard_method(on, ev, users)
    ds = Downstream(lc)
    res = {name: metrics(m, member, lc.event_injected, targets, ds) for name, m in runs.items()}
    s = lc.setting
    log.info("%s done in %.0f s", name, time.perf_counter() - t0)
    return {"setting": name, "in_scope": s.in_target_scope, "accounts": s.accounts, "n_accounts": s.n_accounts,
            "profile": s.profile, "goal": s.goal, "spread_h": s.spread_s / 3600, "n_events": len(ev),
            "n_injected": int(lc.event_injected.sum()), "fit": fit_times, "methods": res,
            "unmet": unmet(res["seqguard"]) if "seqguard" in res and s.in_target_scope else None}


def clean_check(clean: pd.DataFrame, seed: int, cache: Path, fresh: bool) -> dict:
    """A model trained on the clean log scoring it: users flagged, campaigns and targets found."""
    on, off, times = fit_pair(clean, seed, cache, fresh=fresh)
    out = {"fit": times}
    for name, sg in (("seqguard", on), ("no-stage", off)):
        if sg is None:
            continue
        r = sg.score(clean)
        camp = getattr(r, "campaigns", None)
        keep = kept_events(sg, r.log, r.scored, len(clean))
        out[name] = {"users_flagged": float(r.users["anomalous"].mean()), "events_removed": float((~keep).mean()),
                     "campaigns": None if camp is None else len(camp.campaigns),
                     "items_flagged": None if camp is None else int(camp.items["suspicious"].sum())}
    return out


def sweep(data: str, *, settings: list[str], users: int, seed: int, fresh: bool = False) -> dict:
    """The sweep on one log: the clean check and every setting."""
    clean, vrange = clean_log(data, users=users, seed=seed)
    base = WORK / f"{data}-u{users if data == 'gen' else 'all'}-s{seed}-{code_key()}"
    log.info("%s: %d clean events; cache %s", data, len(clean), base)
    t0 = time.perf_counter()
    out = {"data": data, "n_events": len(clean), "n_users": int(clean["user_id"].nunique()),
           "n_items": int(clean["item_id"].nunique()), "stage": HAS_STAGE,
           "clean": clean_check(clean, seed, base / "clean", fresh), "settings": []}
    for name in settings:
        out["settings"].append(run_setting(clean, vrange, name, seed=seed, cache=base / name, fresh=fresh))
    out["wall_s"] = time.perf_counter() - t0
    return out


def _f(v, spec: str = ".3f", width: int = 6) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{spec}}"


def _triple(v, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{'/'.join(format(x, spec) for x in v):>{width}}"


def format_sweep(res: dict) -> str:
    """One table per log: a row per setting and method."""
    cc = res["clean"]
    head = (f"{'setting':<30}{'method':<10}{'mRec':>6}{'cFPR':>7}{'ROC':>7}{'tPrec':>7}{'tRec':>6}"
            f"{'injRm':>7}{'clnRm':>7}{'worst target rank c/a/r':>25}{'HR@10 c/a/r':>20}  unmet")
    lines = [(f"== campaign sweep on {res['data']}: {res['n_events']} clean events, {res['n_users']} users, "
              f"{res['n_items']} items{'' if res['stage'] else ' (no campaign stage in this seqguard)'}")]
    for name in ("seqguard", "no-stage"):
        if name in cc:
            c = cc[name]
            lines.append(f"clean log, {name}: users flagged {c['users_flagged']:.3f}, events removed "
                         f"{c['events_removed']:.3f}, campaigns {c['campaigns'] if c['campaigns'] is not None else '-'}, "
                         f"target items {c['items_flagged'] if c['items_flagged'] is not None else '-'}"
                         f" (target_fpr {TrainConfig.target_fpr})")
    lines += [head, "-" * len(head)]
    for s in res["settings"]:
        label = f"{'*' if s['in_scope'] else ' '}{s['setting']}"
        for i, name in enumerate(METHODS):
            r = s["methods"].get(name)
            first = label if i == 0 else (f"  {s['n_accounts']} {s['accounts']}, {s['spread_h']:g} h" if i == 1 else "")
            if r is None:
                lines.append(f"{first:<30}{name:<10}{'(no campaign stage)':>20}")
                continue
            unmet_s = ""
            if name == "seqguard" and s["unmet"] is not None:
                unmet_s = ",".join(s["unmet"]) or "none"
            lines.append(
                f"{first:<30}{name:<10}{_f(r['member_recall'])}{_f(r['clean_fpr'], width=7)}{_f(r['roc'], width=7)}"
                f"{_f(r['target_precision'], width=7)}{_f(r['target_recall'])}{_f(r['injected_removed'], width=7)}"
                f"{_f(r['clean_removed'], width=7)}{_triple(r['rank'], '.0f', 25)}{_triple(r['hr'], '.3f', 20)}"
                f"  {unmet_s}")
    lines.append(f"* in the issue's target scope (>= 20 accounts within <= 7 days): member recall >= 0.9 at clean FPR "
                 f"<= 0.01, targets recall >= 0.9 and precision >= 0.8, worst target's repaired rank >= 0.9 x clean, "
                 f"HR@10 repaired within 1% of clean; 'unmet' names the ones seqguard misses. "
                 f"Sweep wall time {res['wall_s']:.0f} s.")
    return "\n".join(lines)


def run(data: str, *, settings: str | None, users: int, seed: int, json_path: Path | None, fresh: bool) -> list[dict]:
    """``python bench/quality.py --campaigns``: the sweep on each log, printed, optionally as JSON."""
    names = list(CAMPAIGN_SETTINGS) if not settings else [s.strip() for s in settings.split(",") if s.strip()]
    bad = [n for n in names if n not in CAMPAIGN_SETTINGS]
    if bad:
        raise SystemExit(f"unknown setting(s) {bad}; known: {', '.join(CAMPAIGN_SETTINGS)}")
    datasets = ("gen", "movielens") if data == "both" else (data,)
    results = []
    for d in datasets:
        res = sweep(d, settings=names, users=users, seed=seed, fresh=fresh)
        print(format_sweep(res), "\n", flush=True)
        results.append(res)
        if json_path:
            json_path.write_text(json.dumps({"settings": names, "seed": seed, "results": results}, indent=2,
                                            default=float))
    return results
