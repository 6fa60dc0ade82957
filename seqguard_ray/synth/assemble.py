"""The labelled result of an injection: clean rows kept plus injected ones, fake users' ids."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .attacks import Injector
from .logstats import CORE_COLUMNS
from .mix import NORMAL, LabeledEvents

log = logging.getLogger(__name__)


def assemble(inj: Injector) -> LabeledEvents:
    """The clean rows ``inj`` kept plus its injected events, labelled; sorted by (user_id, ts)."""
    st = inj.st
    n_real = len(st.users)
    fake_ids = fresh_ids(inj.rng, st.users, inj.n_fake)
    all_ids = np.concatenate([st.users, fake_ids]).astype(object)
    rank = np.empty(len(all_ids), dtype=np.int64)
    rank[np.argsort(all_ids, kind="stable")] = np.arange(len(all_ids))

    kept = np.flatnonzero(inj.keep)
    ch = inj.chunks
    n_inj = sum(len(c.ts) for c in ch)
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.empty(0, dt))
    inj_user = cat([np.full(len(c.ts), c.user) for c in ch], np.int64)
    inj_item = cat([c.item_idx for c in ch], np.int64)
    inj_act = cat([c.act for c in ch], np.int64)
    inj_ts = cat([c.ts for c in ch], np.int64)
    inj_val = cat([c.value for c in ch], np.float64)
    inj_src = cat([c.src if c.src is not None else np.full(len(c.ts), -1) for c in ch], np.int64)

    user = np.r_[st.user_codes[kept], inj_user]
    ts = np.r_[st.ts[kept], inj_ts]
    order = np.lexsort((np.arange(len(ts)), ts, rank[user]))

    df = st.df
    vocab = np.array(st.actions, dtype=object)
    clean_act = df["action"].to_numpy(dtype=object)
    inj_action = np.where(inj_act >= 0, vocab[np.maximum(inj_act, 0)], clean_act[np.maximum(inj_src, 0)])
    cols = {
        "user_id": all_ids[user[order]],
        "item_id": np.r_[st.items[st.item_idx[kept]], st.items[inj_item]].astype(np.int64)[order],
        "ts": ts[order],
        "action": np.concatenate([clean_act[kept], inj_action])[order],
        "value": np.r_[st.value[kept], inj_val][order],
    }
    out = pd.DataFrame(cols)
    out["user_id"] = out["user_id"].astype(str)
    out["action"] = out["action"].astype(str)
    for c in df.columns:
        if c in CORE_COLUMNS:
            continue
        col = df[c]
        if c in ("title", "category") or _is_item_level(col, st.item_idx):
            first_row = np.full(st.n_items, len(df))
            np.minimum.at(first_row, st.item_idx, np.arange(len(df)))
            inj_col = col.take(first_row[inj_item]).reset_index(drop=True)
        else:
            inj_col = col.take(np.maximum(inj_src, 0)).reset_index(drop=True)
            inj_col[inj_src < 0] = None
        full = pd.concat([col.take(kept).reset_index(drop=True), inj_col], ignore_index=True)
        out[c] = full.take(order).reset_index(drop=True)

    injected = np.r_[np.zeros(len(kept), dtype=bool), np.ones(n_inj, dtype=bool)][order]
    types = np.full(len(all_ids), NORMAL, dtype=object)
    for u, t in inj.types.items():
        types[u] = t
    user_type = pd.Series(types, index=pd.Index(all_ids, name="user_id"), name="user_type")
    user_type = user_type.iloc[np.argsort(all_ids, kind="stable")]
    user_type.index = user_type.index.astype(str)
    user_type = user_type.astype(str)
    targets = np.array(sorted(st.items[list(inj.targets)]), dtype=np.int64) if inj.targets else np.empty(0, np.int64)
    log.info("injected %d events: %d fake users, %d attacked real users, %d target items",
             n_inj, inj.n_fake, sum(1 for u in inj.types if u < n_real), len(targets))
    return LabeledEvents(events=out, event_injected=injected, user_type=user_type, target_items=targets)


def _is_item_level(col: pd.Series, item_idx: np.ndarray) -> bool:
    """True if ``col`` holds one value per item (item text, item attributes)."""
    codes, _ = pd.factorize(col, use_na_sentinel=False)
    pairs = np.unique(np.c_[item_idx, codes], axis=0)
    return len(pairs) == len(np.unique(item_idx))


def fresh_ids(rng: np.random.Generator, existing: np.ndarray, n: int) -> np.ndarray:
    """``n`` new user ids shaped like ``existing`` ones (prefix + number, or same-length strings)."""
    if n == 0:
        return np.empty(0, dtype=object)
    s = pd.Series(existing, dtype=object).astype(str)
    parts = s.str.extract(r"^(\D*?)(\d+)$")
    taken = set(s)
    if parts[1].notna().all() and parts[0].nunique() == 1 and parts[1].str.len().max() <= 15:
        prefix = parts[0].iloc[0]
        digits = parts[1]
        lens = digits.str.len()
        padded = lens.nunique() == 1 and (digits.str[0] == "0").any()
        width = int(lens.iloc[0]) if padded else 0
        nums = digits.astype(np.int64).to_numpy()
        mn, mx = int(nums.min()), int(nums.max()) + n
        if mx - mn < 5_000_000:
            free = np.setdiff1d(np.arange(mn, mx + 1), nums)
            pick = rng.choice(free, n, replace=False)
        else:
            used, pick = set(nums.tolist()), []
            while len(pick) < n:
                c = int(rng.integers(mn, mx + 1))
                if c not in used:
                    used.add(c)
                    pick.append(c)
        return np.array([f"{prefix}{int(p):0{width}d}" for p in pick], dtype=object)
    length = int(s.str.len().median()) or 8
    alphabet = np.array(sorted(set("".join(s.iloc[:1000]))) or list("0123456789abcdef"))
    out = []
    while len(out) < n:
        c = "".join(rng.choice(alphabet, length))
        if c not in taken:
            taken.add(c)
            out.append(c)
    return np.array(out, dtype=object)
