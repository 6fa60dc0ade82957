"""The "Flagged user timelines" section: one chart per flagged user, every event with its score."""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pandas as pd

from ..core.validate import ts_to_seconds
from .charts import FLAG_COLOR, figure_html, timeline_figure
from .fmt import badge, e, fmt_duration, fmt_int, gradient_key, note, reasons_html

TIMELINE_MAX_EVENTS = 600  # events drawn per timeline; longer histories are thinned
_LAST_PLAUSIBLE_TS = 4_102_444_800  # 2100-01-01: later "times" are ids or counters, not dates


def pick_timeline_users(users: pd.DataFrame, k: int) -> list[int]:
    """Row positions of up to ``k`` flagged users: the top user of each type first, then by score."""
    flagged = users[users["anomalous"]].copy()
    if k <= 0 or flagged.empty:
        return []
    flagged["_s"] = flagged["score"].fillna(-1.0)
    flagged = flagged.sort_values(["_s", "user_id"], ascending=[False, True], kind="stable")
    firsts = flagged.drop_duplicates("anomaly_type", keep="first").index.tolist()
    picked = firsts[:k]
    for idx in flagged.index:
        if len(picked) >= k:
            break
        if idx not in picked:
            picked.append(idx)
    return sorted(picked, key=lambda i: (-flagged.at[i, "_s"], str(flagged.at[i, "user_id"])))


def _thin(scores: np.ndarray) -> np.ndarray:
    """Positions kept of a long history: evenly spaced ones plus the highest scores."""
    n = len(scores)
    if n <= TIMELINE_MAX_EVENTS:
        return np.arange(n)
    return np.unique(np.r_[
        np.linspace(0, n - 1, TIMELINE_MAX_EVENTS * 2 // 3).round().astype(int),
        np.argsort(-np.nan_to_num(scores, nan=-1.0), kind="stable")[: TIMELINE_MAX_EVENTS // 3],
    ])


def _utc(secs: np.ndarray) -> np.ndarray:
    ok = (secs > 0) & (secs < _LAST_PLAUSIBLE_TS)
    out = np.full(len(secs), "", dtype=object)
    if ok.any():
        out[ok] = pd.to_datetime(secs[ok], unit="s", utc=True).strftime("%Y-%m-%d %H:%M:%S UTC").to_numpy()
    return out


def timeline_section(users, events, u_labels, ev_labels, max_timelines: int, colors: dict) -> str:
    picked = pick_timeline_users(users, max_timelines)
    if not picked:
        return note("No flagged users to show." if max_timelines > 0 else "Timelines are turned off (max_timelines=0).")
    ids = set(users.loc[picked, "user_id"])
    rows = np.flatnonzero(events["user_id"].isin(ids).to_numpy())
    sub = events.iloc[rows]
    secs = ts_to_seconds(sub["ts"].reset_index(drop=True), lambda mask, reason: None)
    action = sub["action"] if sub["action"].notna().any() else pd.Series("", index=sub.index)
    sub = pd.DataFrame({
        "user_id": sub["user_id"].to_numpy(), "secs": secs, "row": rows, "score": sub["event_score"].to_numpy(),
        "flag": sub["anomalous"].to_numpy(), "item": sub["item_id"].astype(str).to_numpy(),
        "action": action.fillna("").astype(str).to_numpy(),
    })
    if ev_labels is not None:
        sub["inj"] = ev_labels[rows]
    groups = {uid: g.sort_values(["secs", "row"], kind="stable") for uid, g in sub.groupby("user_id", sort=False)}

    blocks = []
    for k, i in enumerate(picked):
        u = users.loc[i]
        g = groups.get(u["user_id"])
        true = None if u_labels is None else u_labels.loc[i]
        badges = [badge(u["anomaly_type"], colors.get(u["anomaly_type"], "#555"))]
        if isinstance(true, str):
            badges.append(f'<span class="muted">true:</span> {badge(true, colors.get(true, "#555"))}')
        meta = [f'score <b class="mono">{u["score"]:.3f}</b>' if np.isfinite(u["score"]) else "score n/a"]
        if g is None or g.empty:
            chart = note("This user has no events in the events table.")
        else:
            n = len(g)
            keep = _thin(g["score"].to_numpy())
            secs_u = g["secs"].to_numpy()
            drawn = g.iloc[keep].assign(pos=keep, elapsed=(secs_u - secs_u[0])[keep], when=_utc(secs_u[keep]))
            chart = figure_html(timeline_figure(drawn, n), f"fig-timeline-{k}")
            meta.append(f"{fmt_int(n)} events over {fmt_duration(float(secs_u[-1] - secs_u[0]))}")
            meta.append(f"{fmt_int(g['flag'].sum())} flagged")
            if "inj" in g:
                meta.append(f"{fmt_int(g['inj'].sum())} injected")
            if 0 < secs_u[0] < _LAST_PLAUSIBLE_TS:
                start = _dt.datetime.fromtimestamp(secs_u[0], _dt.timezone.utc)
                meta.append("from " + start.strftime("%Y-%m-%d %H:%M UTC"))
            if len(keep) < n:
                meta.append(f"showing {fmt_int(len(keep))} of {fmt_int(n)} events")
        blocks.append(
            f'<div class="card timeline"><div class="tl-head"><span class="uid mono">{e(u["user_id"])}</span>'
            f'{" ".join(badges)}<span class="tl-meta">{" · ".join(meta)}</span></div>'
            f"{chart}<div class=\"tl-reasons\">{reasons_html(u['reasons'])}</div></div>"
        )
    legend_items = [gradient_key(), f'<span class="lg"><i class="sw rugkey" style="--c:{FLAG_COLOR}"></i>flagged event</span>']
    if ev_labels is not None:
        legend_items.append('<span class="lg"><i class="sw ring"></i>injected event (label)</span>')
    legend = f'<div class="legend">{"".join(legend_items)}</div>'
    intro = note(
        f"Up to {max_timelines} flagged users, highest score first, one of each anomaly type before repeats. "
        "x = event index in time order; the second tick row is the time since the user's first event. "
        "Drag to zoom, double-click to reset; hover an event for its item, action and time."
    )
    return intro + legend + "".join(blocks)
