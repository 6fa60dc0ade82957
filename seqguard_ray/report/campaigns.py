"""The "Campaigns" section: the groups the campaign stage found, each with its members, targets and
a time picture, and the suspicious items.

Sizes are bounded for any input: campaigns listed and charted, members drawn, points per chart,
time bins per target and items listed are all capped, with a note saying what was left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..core.validate import ts_to_seconds
from .charts import TargetCounts, figure_html, members_figure, target_counts_figure
from .fmt import (
    EXTRA_COLORS,
    chart_card,
    e,
    fmt_duration,
    fmt_int,
    note,
    reasons_html,
    score_cell,
    table,
)
from .inputs import id_text

MAX_CAMPAIGN_ROWS = 30  # campaigns in the table
MAX_CAMPAIGN_CHARTS = 4  # campaigns with a time picture
MAX_MEMBER_ROWS = 40  # members drawn per campaign (the earliest first)
MAX_POINTS = 3000  # member events drawn per campaign
MAX_TARGETS_DRAWN = 5  # targets per counts chart
MAX_BINS = 400  # time bins per target
TOP_ITEMS = 50  # rows in the suspicious-items table
IDS_SHOWN = 6  # member / target ids written out per table cell
_LAST_PLAUSIBLE_TS = 4_102_444_800  # 2100-01-01: later "times" are ids or counters, not dates
_BINS = ((3600, "hour"), (86400, "day"), (7 * 86400, "week"), (30 * 86400, "month"))
TARGET_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e") + EXTRA_COLORS


def _ids_cell(ids: list[str], noun: str) -> str:
    shown = ", ".join(f'<span class="mono uid">{e(i)}</span>' for i in ids[:IDS_SHOWN])
    more = f' <span class="muted">+{fmt_int(len(ids) - IDS_SHOWN)} more</span>' if len(ids) > IDS_SHOWN else ""
    return f"<b>{fmt_int(len(ids))}</b> {noun}{'s' if len(ids) != 1 else ''}: {shown}{more}"


def _when(value) -> str:
    """A ts as given, shown as a UTC date-time when it reads as a date (1973..2100, not a counter)."""
    if value is None or pd.isna(value):
        return "—"
    secs = ts_to_seconds(pd.Series([value]), lambda mask, reason: None)[0]
    if 1e8 < secs < _LAST_PLAUSIBLE_TS:
        return pd.Timestamp(secs, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _stats(campaigns: pd.DataFrame | None, items: pd.DataFrame | None) -> str:
    cards = []
    if campaigns is not None:
        members = len({u for ids in campaigns["user_ids"] for u in ids})
        cards += [("Campaigns", fmt_int(len(campaigns)), ""), ("Members", fmt_int(members), "users in a campaign"),
                  ("Campaign events", fmt_int(campaigns["n_events"].sum()), "members' events on the targets")]
    if items is not None:
        n = int(items["suspicious"].sum())
        cards.append(("Suspicious items", fmt_int(n), f"of {fmt_int(len(items))} items"))
    body = "".join(f'<div class="stat"><div class="stat-label">{e(k)}</div><div class="stat-value">{v}</div>'
                   f'<div class="stat-sub">{e(sub)}</div></div>' for k, v, sub in cards)
    return f'<div class="stats">{body}</div>'


def _campaign_table(campaigns: pd.DataFrame) -> str:
    top = campaigns.head(MAX_CAMPAIGN_ROWS)
    rows = [[fmt_int(c["campaign_id"]), score_cell(c["score"]), _ids_cell(c["user_ids"], "member"),
             _ids_cell(c["target_item_ids"], "target"), e(_when(c["first_ts"])), e(_when(c["last_ts"])),
             fmt_int(c["n_events"]), reasons_html(c["reasons"])] for _, c in top.iterrows()]
    out = f'<div class="card tablecard">{table(["id", "score", "members", "targets", "first", "last", "events", "reasons"], rows, cls="users campaigns", num_cols=(0, 6))}</div>'
    if len(campaigns) > len(top):
        out += note(f"Showing the {len(top)} strongest of {fmt_int(len(campaigns))} campaigns.")
    return out


def _bin(span: float) -> tuple[float, str]:
    """Bin width (s) and its name: the day when it gives 3..MAX_BINS bins, else the nearest unit."""
    if span <= 3 * 86400:
        return 3600.0, "hour"
    for width, name in _BINS[1:]:
        if span / width <= MAX_BINS:
            return float(width), name
    return span / MAX_BINS, fmt_duration(span / MAX_BINS)


def _x(secs: np.ndarray, date_axis: bool) -> list:
    if date_axis:
        return pd.to_datetime(secs, unit="s", utc=True).strftime("%Y-%m-%d %H:%M:%S").tolist()
    return [round(float(s), 3) for s in secs]


def _time_picture(c: pd.Series, ev: pd.DataFrame, k: int) -> str:
    """Members' events on the targets, and the targets' counts per bin against their normal level."""
    members, targets = c["user_ids"], c["target_item_ids"]
    on_targets = ev["item"].isin(set(targets)).to_numpy()
    camp = on_targets & ev["user"].isin(set(members)).to_numpy()
    pts = ev[camp]
    if pts.empty:
        return note("None of this campaign's events are in the events table.")
    lo, hi = float(ev["secs"].min()), float(ev["secs"].max())
    if hi <= lo:
        return note("The log's timestamps carry no time signal (all equal): no time picture; "
                    "this campaign was found from its items and values.")
    date_axis = 1e8 < lo and hi < _LAST_PLAUSIBLE_TS
    drawn_targets = list(pd.Series(pts["item"]).value_counts().index[:MAX_TARGETS_DRAWN])
    drawn_targets += [t for t in targets if t not in drawn_targets][: MAX_TARGETS_DRAWN - len(drawn_targets)]
    colors = {t: TARGET_COLORS[i % len(TARGET_COLORS)] for i, t in enumerate(drawn_targets)}

    first = pts.groupby("user")["secs"].min().sort_values(kind="stable")
    shown = list(first.index[:MAX_MEMBER_ROWS])
    p = pts[pts["user"].isin(set(shown)) & pts["item"].isin(set(drawn_targets))]
    if len(p) > MAX_POINTS:
        p = p.iloc[np.linspace(0, len(p) - 1, MAX_POINTS).round().astype(int)]
    secs = p["secs"].to_numpy()
    when = (pd.to_datetime(secs, unit="s", utc=True).strftime("%Y-%m-%d %H:%M:%S UTC").tolist() if date_axis
            else [f"ts {s:g}" for s in secs])
    p = pd.DataFrame({"member": p["user"].to_numpy(), "item": p["item"].to_numpy(),
                      "x": _x(secs, date_axis), "when": when})
    left = []
    if len(first) > len(shown):
        left.append(f"the {len(shown)} earliest of {fmt_int(len(first))} members")
    if len(targets) > len(drawn_targets):
        left.append(f"{len(drawn_targets)} of {len(targets)} targets")
    caption = note("Showing " + " and ".join(left) + ".") if left else ""
    members_chart = chart_card("Members' events on the targets",
                               figure_html(members_figure(p, shown, colors, date_axis=date_axis), f"fig-campaign-members-{k}"),
                               caption)

    width, per = _bin(hi - lo)
    edges = lo + width * np.arange(int(np.ceil((hi - lo) / width)) + 2)
    series = []
    for t in drawn_targets:
        on_t = (ev["item"] == t).to_numpy()
        total = np.histogram(ev["secs"].to_numpy()[on_t], bins=edges)[0]
        mine = np.histogram(ev["secs"].to_numpy()[on_t & camp], bins=edges)[0]
        series.append(TargetCounts(item=t, x=_x(edges, date_axis), width=width * (1000 if date_axis else 1),
                                   total=total, campaign=mine,
                                   normal=float((total - mine).sum() / max(len(total), 1)), color=colors[t]))
    c_lo, c_hi = float(pts["secs"].min()), float(pts["secs"].max())
    window = (_x(np.array([c_lo]), date_axis)[0], _x(np.array([max(c_hi, c_lo + width / 2)]), date_axis)[0])
    counts_chart = chart_card(f"Targets' events per {per} against their normal level",
                              figure_html(target_counts_figure(series, window=window, date_axis=date_axis, per=per),
                                          f"fig-campaign-targets-{k}"),
                              note("Line: all events on the target; bars: the campaign's; dashed: the target's "
                                   "normal level (its mean events per " + e(per) + " from users outside the campaign, "
                                   "over the whole log). Shaded: the campaign's span."))
    return f'<div class="charts two">{members_chart}{counts_chart}</div>'


def _items_table(items: pd.DataFrame, ev: pd.DataFrame) -> str:
    sus = items[items["suspicious"]]
    if sus.empty:
        return note("No item is a suspicious campaign target.")
    top = sus.assign(_s=sus["campaign_score"].fillna(-1.0)).sort_values(["_s", "item_id"], ascending=[False, True]).head(TOP_ITEMS)
    sub = ev[ev["item"].isin(set(top["item_id"]))]
    n_ev, n_users = sub["item"].value_counts(), sub.groupby("item")["user"].nunique()
    rows = [[f'<span class="mono uid">{e(i["item_id"])}</span>', score_cell(i["campaign_score"]),
             "—" if pd.isna(i["campaign_id"]) else fmt_int(i["campaign_id"]),
             fmt_int(n_ev.get(i["item_id"], 0)), fmt_int(n_users.get(i["item_id"], 0)), reasons_html(i["reasons"])]
            for _, i in top.iterrows()]
    intro = note(f"Showing the top {len(top)} of {fmt_int(len(sus))} suspicious items by campaign score.")
    return intro + f'<div class="card tablecard">{table(["item", "campaign score", "campaign", "events", "users", "reasons"], rows, cls="users", num_cols=(2, 3, 4))}</div>'


def campaigns_section(campaigns: pd.DataFrame | None, items: pd.DataFrame | None, events: pd.DataFrame) -> str:
    """The section's HTML; ``campaigns`` / ``items`` are checked frames (inputs.check_campaigns /
    check_items), either may be None; ``events`` the checked events."""
    secs = ts_to_seconds(events["ts"].reset_index(drop=True), lambda mask, reason: None)
    ev = pd.DataFrame({"user": events["user_id"].to_numpy(), "item": id_text(events["item_id"]), "secs": secs})
    out = [_stats(campaigns, items)]
    if campaigns is not None:
        if campaigns.empty:
            out.append(note("The campaign stage found no campaign in this log."))
        else:
            campaigns = campaigns.sort_values(["score", "campaign_id"], ascending=[False, True], kind="stable")
            out.append("<h3>Campaigns</h3>" + _campaign_table(campaigns))
            for k, (_, c) in enumerate(campaigns.head(MAX_CAMPAIGN_CHARTS).iterrows()):
                head = (f'<div class="tl-head"><span class="uid mono">campaign {fmt_int(c["campaign_id"])}</span>'
                        f'<span class="tl-meta">score <b class="mono">{c["score"]:.3f}</b> · '
                        f'{fmt_int(len(c["user_ids"]))} members · targets {e(", ".join(c["target_item_ids"][:IDS_SHOWN]))}'
                        f'{" …" if len(c["target_item_ids"]) > IDS_SHOWN else ""} · {fmt_int(c["n_events"])} events</span></div>')
                out.append(f'<div class="card timeline">{head}{_time_picture(c, ev, k)}'
                           f'<div class="tl-reasons">{reasons_html(c["reasons"])}</div></div>')
            if len(campaigns) > MAX_CAMPAIGN_CHARTS:
                out.append(note(f"Time pictures for the {MAX_CAMPAIGN_CHARTS} strongest campaigns."))
    if items is not None:
        out.append("<h3>Suspicious items</h3>" + _items_table(items, ev))
    return "".join(out)
