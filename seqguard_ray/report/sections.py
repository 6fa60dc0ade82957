"""The report's plain sections: summary, score histograms, repair, top flagged users, model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .charts import bar_figure, figure_html, histogram_figure
from .fmt import (
    ATTACK_COLOR,
    MAX_REASONS_CHARS,
    badge,
    chart_card,
    e,
    fmt_int,
    note,
    num,
    pct,
    reasons_html,
    score_cell,
    table,
)
from .inputs import NORMAL

TOP_USERS = 50  # rows in the flagged-users table
MAX_INFO_ITEMS = 60  # entries shown per model_info / repair_summary mapping or list


def summary_section(users, events, u_labels, ev_labels, colors: dict) -> str:
    n_users, n_events = len(users), len(events)
    flagged = users[users["anomalous"]]
    n_flag_ev = int(events["anomalous"].sum())
    cards = [
        ("Users", fmt_int(n_users), ""),
        ("Events", fmt_int(n_events), ""),
        ("Flagged users", fmt_int(len(flagged)), pct(len(flagged), n_users) + " of users"),
        ("Flagged events", fmt_int(n_flag_ev), pct(n_flag_ev, n_events) + " of events"),
    ]
    if u_labels is not None:
        attacked = int((u_labels.notna() & (u_labels != NORMAL)).sum())
        cards.append(("Attacked users (labels)", fmt_int(attacked), pct(attacked, n_users) + " of users"))
    if ev_labels is not None:
        cards.append(("Injected events (labels)", fmt_int(ev_labels.sum()), pct(ev_labels.sum(), n_events) + " of events"))
    html_cards = "".join(
        f'<div class="stat"><div class="stat-label">{e(k)}</div><div class="stat-value">{v}</div>'
        f'<div class="stat-sub">{e(sub)}</div></div>'
        for k, v, sub in cards
    )
    out = [f'<div class="stats">{html_cards}</div>']

    by_type = flagged["anomaly_type"].value_counts()
    if len(by_type):
        fig = bar_figure(list(by_type.index), list(by_type.to_numpy()), [colors.get(t, "#555") for t in by_type.index],
                         [f"{fmt_int(c)} ({pct(c, len(flagged))})" for c in by_type.to_numpy()])
        out.append(f'<div class="card"><h3>Flagged users by anomaly type</h3>{figure_html(fig, "fig-flagged-types")}</div>')
    else:
        out.append(note("No users were flagged."))

    for name, arr in (("users.score", users["score"].to_numpy()), ("events.event_score", events["event_score"].to_numpy())):
        n = int(np.isnan(arr).sum())
        if n:
            out.append(note(f'<span class="warn">⚠</span> {fmt_int(n)} rows have no {name} (NaN); '
                            "they are left out of curves and histograms."))
    if u_labels is not None and u_labels.isna().any():
        out.append(note(f"{fmt_int(u_labels.isna().sum())} users have no entry in user_labels; "
                        "they are left out of label metrics."))
    return "".join(out)


def histogram_section(users, events, u_labels, ev_labels, threshold, event_threshold, colors: dict) -> str:
    score = users["score"].to_numpy()
    if u_labels is not None:
        groups = [("normal (label)", score[(u_labels == NORMAL).to_numpy()], colors[NORMAL]),
                  ("attacked (label)", score[(u_labels.notna() & (u_labels != NORMAL)).to_numpy()], ATTACK_COLOR)]
        if u_labels.isna().any():
            groups.append(("unlabelled", score[u_labels.isna().to_numpy()], "#7f7f7f"))
    else:
        flag = users["anomalous"].to_numpy()
        groups = [("not flagged", score[~flag], colors[NORMAL]), ("flagged", score[flag], ATTACK_COLOR)]
    es = events["event_score"].to_numpy()
    if ev_labels is not None:
        event_groups = [("clean events (label)", es[~ev_labels], colors[NORMAL]),
                        ("injected events (label)", es[ev_labels], ATTACK_COLOR)]
    else:
        ef = events["anomalous"].to_numpy()
        event_groups = [("not flagged", es[~ef], colors[NORMAL]), ("flagged events", es[ef], ATTACK_COLOR)]
    user_fig = histogram_figure([g for g in groups if len(g[1])], x_title="user score", threshold=threshold)
    event_fig = histogram_figure([g for g in event_groups if len(g[1])], x_title="event score",
                                 threshold=event_threshold, threshold_label="event threshold")
    cards = [chart_card("User scores", figure_html(user_fig, "fig-user-scores")),
             chart_card("Event scores", figure_html(event_fig, "fig-event-scores"))]
    return f'<div class="charts two">{"".join(cards)}</div>'


def repair_section(repair_summary: Mapping | None) -> str:
    if not repair_summary:
        return note("No repair summary was given.")
    items = list(repair_summary.items())
    base = repair_summary.get("events_in")
    base = base if isinstance(base, (int, np.integer)) and base > 0 else None
    rows = []
    for k, v in items[:MAX_INFO_ITEMS]:
        share = ""
        if base is not None and str(k).startswith("events_") and k != "events_in" and isinstance(v, (int, np.integer)):
            share = pct(v, base)
        rows.append([e(str(k).replace("_", " ")), e(num(v)), share])
    out = table(["", "value", "of events in"], rows, cls="kv", num_cols=(1, 2))
    if len(items) > MAX_INFO_ITEMS:
        out += note(f"{len(items) - MAX_INFO_ITEMS} more entries not shown.")
    return f'<div class="card narrow">{out}</div>'


def top_users_section(users, events, u_labels, colors: dict) -> str:
    flagged = users[users["anomalous"]]
    if flagged.empty:
        return note("No users were flagged.")
    top = (flagged.assign(_s=flagged["score"].fillna(-1.0))
           .sort_values(["_s", "user_id"], ascending=[False, True]).head(TOP_USERS))
    counts = events.loc[events["user_id"].isin(set(top["user_id"])), "user_id"].value_counts()
    header = ["#", "user", "score", "type"] + (["true label"] if u_labels is not None else []) + ["events", "reasons"]
    rows = []
    for rank, (i, u) in enumerate(top.iterrows(), 1):
        row = [str(rank), f'<span class="mono uid">{e(u["user_id"])}</span>', score_cell(u["score"]),
               badge(u["anomaly_type"], colors.get(u["anomaly_type"], "#555"))]
        if u_labels is not None:
            t = u_labels.loc[i]
            row.append(badge(t, colors.get(t, "#555")) if isinstance(t, str) else '<span class="muted">—</span>')
        row += [fmt_int(counts.get(u["user_id"], 0)), reasons_html(u["reasons"])]
        rows.append(row)
    ev_col = 5 if u_labels is not None else 4
    intro = note(f"Showing the top {len(top)} of {fmt_int(len(flagged))} flagged users by score.")
    return intro + f'<div class="card tablecard">{table(header, rows, cls="users", num_cols=(0, ev_col))}</div>'


def _info_value(v, depth: int = 0) -> str:
    if v is None:
        return '<span class="muted">—</span>'
    if isinstance(v, Mapping):
        if depth >= 3 or not v:
            return e(repr(dict(v))[:MAX_REASONS_CHARS]) if v else '<span class="muted">{}</span>'
        items = list(v.items())
        rows = [[e(k), _info_value(val, depth + 1)] for k, val in items[:MAX_INFO_ITEMS]]
        more = note(f"{len(items) - MAX_INFO_ITEMS} more") if len(items) > MAX_INFO_ITEMS else ""
        return table(["key", "value"], rows, cls="kv nested") + more
    if isinstance(v, (list, tuple, np.ndarray)):
        seq = list(v)
        text = ", ".join(num(x) for x in seq[:MAX_INFO_ITEMS])
        if len(seq) > MAX_INFO_ITEMS:
            text += f", … ({len(seq)} items)"
        return e(f"[{text}]")
    return f'<span class="mono">{e(num(v))[:MAX_REASONS_CHARS]}</span>'


def model_section(model_info: Mapping) -> str:
    if not model_info:
        return note("No model information was given.")
    items = list(model_info.items())
    rows = [[e(k), _info_value(v)] for k, v in items[:MAX_INFO_ITEMS]]
    out = table(["", "value"], rows, cls="kv")
    if len(items) > MAX_INFO_ITEMS:
        out += note(f"{len(items) - MAX_INFO_ITEMS} more entries not shown.")
    return f'<div class="card narrow">{out}</div>'
