"""``write_report``: one self-contained HTML page of a seqguard run.

The page loads nothing from the network: its styles are inline and plotly.js (about 4.8 MB) is
inlined once in the head, so it opens offline with zoom and hover on every chart. Scores follow
the package convention: in [0, 1], higher means more anomalous. Text from the inputs (user ids,
reasons, types, model info) is HTML-escaped. Apart from plotly.js, the size is bounded for any
input size: curves are downsampled, histograms carry counts, tables and timelines are capped.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from plotly.offline import get_plotlyjs

from ..core import storage
from .campaigns import campaigns_section
from .fmt import e, fmt_int, type_colors
from .inputs import (
    align_user_labels,
    as_unit_float,
    check_campaigns,
    check_event_labels,
    check_events,
    check_items,
    check_users,
)
from .quality import quality_section
from .sections import (
    histogram_section,
    model_section,
    repair_section,
    summary_section,
    top_users_section,
)
from .timelines import timeline_section

log = logging.getLogger(__name__)


def write_report(
    path: str | Path,
    *,
    users: pd.DataFrame,
    events: pd.DataFrame,
    repair_summary: Mapping[str, int] | None = None,
    user_labels: pd.Series | None = None,
    event_labels: np.ndarray | None = None,
    title: str = "seqguard report",
    model_info: Mapping | None = None,
    max_timelines: int = 6,
    label_types: Mapping[str, str] | None = None,
    items: pd.DataFrame | None = None,
    campaigns: pd.DataFrame | None = None,
) -> Path | str:
    """Write a self-contained HTML report to ``path`` (a local path, returned as a Path, or a URI
    such as ``s3://bucket/report.html``, returned as given).

    ``users``: one row per user with ``user_id``, ``score`` (float in [0, 1], higher = more
    anomalous), ``anomalous`` (bool), ``anomaly_type`` (str) and ``reasons`` ("; "-joined str).
    ``events``: one row per event with ``user_id``, ``item_id``, ``ts``, ``event_score`` (in
    [0, 1]) and ``anomalous`` (bool); ``action`` is optional (shown on hover in the timelines).
    ``user_labels``: true attack type (or ``"normal"``) indexed by user id; ``event_labels``:
    (N,) bool aligned with ``events`` rows, True = injected. With labels the report adds ROC / PR
    curves and a per-attack-type table. ``model_info["threshold"]`` (user score) and
    ``model_info["event_threshold"]`` are drawn on the histograms when present.
    ``label_types``: true label -> the ``anomaly_type`` that counts as a match (e.g.
    ``"click_farm" -> "injection"``); labels not in it must match literally.
    ``items`` / ``campaigns``: the campaign stage's frames (``OUT/items.parquet`` and
    ``OUT/campaigns.parquet``: items with ``item_id``, ``campaign_score`` in [0, 1],
    ``suspicious``, ``campaign_id``, ``reasons``; campaigns with ``campaign_id``, ``user_ids`` and
    ``target_item_ids`` (lists), ``first_ts``, ``last_ts``, ``n_events``, ``score`` in [0, 1],
    ``reasons``). With either, the report adds a "Campaigns" section: each campaign's members,
    targets and time picture, and the suspicious items.

    Raises ``ValueError`` when a required column is missing, a score lies outside [0, 1],
    ``event_labels`` does not match ``events`` in length, or ``max_timelines`` is negative.
    """
    users = check_users(users)
    events = check_events(events)
    ev_labels = check_event_labels(event_labels, len(events))
    items, campaigns = check_items(items), check_campaigns(campaigns)
    u_labels = align_user_labels(user_labels, users)
    if not isinstance(max_timelines, (int, np.integer)) or max_timelines < 0:
        raise ValueError(f"max_timelines must be a non-negative int, got {max_timelines!r}")
    model_info = dict(model_info or {})
    threshold = as_unit_float(model_info.get("threshold"))
    event_threshold = as_unit_float(model_info.get("event_threshold"))
    colors = type_colors(users["anomaly_type"], u_labels)

    sections: list[tuple[str, str, str]] = []  # (anchor, heading, body html)
    sections.append(("summary", "Summary", summary_section(users, events, u_labels, ev_labels, colors)))
    if u_labels is not None or ev_labels is not None:
        sections.append(("quality", "Detection quality",
                         quality_section(users, events, u_labels, ev_labels, colors, label_types or {})))
    if items is not None or campaigns is not None:
        sections.append(("campaigns", "Campaigns", campaigns_section(campaigns, items, events)))
    sections.append(("scores", "Score distributions",
                     histogram_section(users, events, u_labels, ev_labels, threshold, event_threshold, colors)))
    sections.append(("timelines", "Flagged user timelines",
                     timeline_section(users, events, u_labels, ev_labels, int(max_timelines), colors)))
    sections.append(("repair", "Repair", repair_section(repair_summary)))
    sections.append(("flagged", "Top flagged users", top_users_section(users, events, u_labels, colors)))
    sections.append(("model", "Model", model_section(model_info)))

    page = _page(title, sections, len(users), len(events))
    data = page.encode("utf-8")
    storage.write_bytes(path, data)  # a local path or a URI (s3://...)
    log.info("wrote report %s (%.1f kB)", path, len(data) / 1024)
    return Path(path) if not storage.is_uri(path) else path


CSS = """
:root{--bg:#f5f6f8;--card:#fff;--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--accent:#2f6fd0}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header.top{background:#111827;color:#f9fafb;padding:22px 32px 0}
header.top h1{margin:0;font-size:22px;font-weight:650;letter-spacing:.2px}
header.top .sub{color:#9ca3af;font-size:13px;margin-top:4px}
nav{display:flex;gap:4px;margin-top:16px;flex-wrap:wrap}
nav a{color:#d1d5db;text-decoration:none;padding:8px 12px;border-radius:6px 6px 0 0;font-size:13px}
nav a:hover{background:#1f2937;color:#fff}
main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
section{margin-top:28px}
h2{font-size:17px;font-weight:650;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:13px;font-weight:600;margin:0 0 10px;color:#374151;text-transform:uppercase;letter-spacing:.5px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:12px 0;box-shadow:0 1px 2px rgba(0,0,0,.03)}
.card.narrow{max-width:640px}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.stat-label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.4px}
.stat-value{font-size:26px;font-weight:650;margin-top:2px;font-variant-numeric:tabular-nums}
.stat-sub{font-size:12px;color:var(--muted);min-height:18px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:14px}
.charts.two{grid-template-columns:repeat(auto-fit,minmax(520px,1fr))}
figure.chartcard{margin:0;min-width:0}
figcaption{font-weight:600;font-size:13px;margin-bottom:6px;color:#374151}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin-top:8px;font-size:12px;color:#374151}
.lg{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:18px;height:0;border-top:2.5px solid var(--c)}
.sw.ring{width:11px;height:11px;border:2px solid #111827;border-radius:50%;background:#f0c83c}
.sw.rugkey{width:2px;height:10px;border:none;background:var(--c)}
.gradient{display:inline-block;width:90px;height:10px;border-radius:3px}
.badge{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:600;color:var(--c);background:color-mix(in srgb,var(--c) 14%,#fff);border:1px solid color-mix(in srgb,var(--c) 45%,#fff);white-space:nowrap}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;font-weight:600;color:#4b5563;background:#f8f9fb;border-bottom:1px solid var(--line);padding:7px 10px;font-size:12px}
td{border-bottom:1px solid #f0f1f4;padding:7px 10px;vertical-align:top}
tbody tr:hover{background:#fafbfc}
th.num,td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv td:first-child{color:#4b5563;width:40%}
table.nested{font-size:12px}table.nested th{display:none}
.tablecard{padding:4px 6px;overflow-x:auto}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.uid{word-break:break-all}table.users td:nth-child(2){max-width:240px}.nowrap{white-space:nowrap}
.scorebar{display:inline-block;width:56px;height:7px;background:#eef0f3;border-radius:4px;margin-right:8px;vertical-align:middle;overflow:hidden}
.scorebar span{display:block;height:100%}
ul.reasons{margin:0;padding-left:16px}ul.reasons li{margin:1px 0}
table.users ul.reasons{padding:0;list-style:none}table.users ul.reasons li{display:inline;margin:0}
table.users ul.reasons li+li::before{content:" · ";color:#9ca3af}
.note{color:var(--muted);font-size:13px;margin:8px 0}
.warn{color:#b45309}
.muted{color:var(--muted)}
.timeline{padding:12px 16px}
.tl-head{display:flex;flex-wrap:wrap;align-items:center;gap:8px 12px;margin-bottom:4px}
.tl-head .uid{font-weight:600;font-size:13.5px}
.tl-meta{color:var(--muted);font-size:12.5px}
.tl-reasons{font-size:13px;color:#374151;margin-top:2px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:24px}
"""


# Figures are drawn while the page is still being parsed, before their grid cells have their final
# width; one resize after load fits them.
_RESIZE_ON_LOAD = ('window.addEventListener("load",function(){document.querySelectorAll(".plotly-graph-div")'
                   ".forEach(function(d){Plotly.Plots.resize(d);});});")


def _page(title: str, sections: list[tuple[str, str, str]], n_users: int, n_events: int) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{a}">{e(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{e(h)}</h2>{b}</section>' for a, h, b in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style>"
        "<script>window.PlotlyConfig={MathJaxConfig:'local'};</script>"
        f'<script charset="utf-8">{get_plotlyjs()}</script></head><body>'
        f'<header class="top"><h1>{e(title)}</h1>'
        f'<div class="sub">{fmt_int(n_users)} users · {fmt_int(n_events)} events · generated {now} by seqguard</div>'
        f"<nav>{nav}</nav></header><main>{body}</main>"
        "<footer>Scores are in [0, 1]; higher means more anomalous.</footer>"
        f"<script>{_RESIZE_ON_LOAD}</script></body></html>\n"
    )
