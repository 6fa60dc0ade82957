"""One self-contained HTML report of a seqguard run: scores, detection quality, timelines, repair.

The page has no external scripts, styles, fonts or network requests; every chart is an inline SVG
drawn here. Scores follow the package convention: in [0, 1], higher means more anomalous.
All text taken from the inputs (user ids, reasons, types, model info) is HTML-escaped.
Output size is bounded for any input size: curves are downsampled to a few hundred points,
tables and timelines are capped.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ..core.events import _ts_to_seconds

log = logging.getLogger(__name__)

USER_COLUMNS = ("user_id", "score", "anomalous", "anomaly_type", "reasons")
EVENT_COLUMNS = ("user_id", "item_id", "ts", "event_score", "anomalous")
NORMAL = "normal"
CURVE_POINTS = 300  # points kept per ROC / PR curve
HIST_BINS = 40
TOP_USERS = 50  # rows in the flagged-users table
TIMELINE_MAX_EVENTS = 600  # marks drawn per timeline; longer histories are thinned
MAX_REASONS_CHARS = 600  # per table cell
MAX_INFO_ITEMS = 60  # entries shown per model_info / repair_summary mapping or list

# Categorical colours (Tableau 10, colour-blind friendly); fixed for the known anomaly types.
TYPE_COLORS = {
    NORMAL: "#8a94a6",
    "bot": "#e15759",
    "injection": "#f28e2b",
    "shilling": "#b07aa1",
    "takeover": "#4e79a7",
    "replay": "#59a14f",
    "other": "#9c755f",
}
EXTRA_COLORS = ("#76b7b2", "#edc948", "#ff9da7", "#bab0ac", "#1f77b4", "#8c564b", "#17becf")
USER_COLOR = "#2f6fd0"
EVENT_COLOR = "#e0702b"
# Green -> yellow -> red scale for scores in [0, 1].
SCORE_STOPS = ((0.0, (26, 152, 80)), (0.5, (240, 200, 60)), (1.0, (215, 48, 39)))


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
) -> Path:
    """Write a self-contained HTML report and return its path.

    ``users``: one row per user with ``user_id``, ``score`` (float in [0, 1], higher = more
    anomalous), ``anomalous`` (bool), ``anomaly_type`` (str) and ``reasons`` ("; "-joined str).
    ``events``: one row per event with ``user_id``, ``item_id``, ``ts``, ``event_score`` (in
    [0, 1]) and ``anomalous`` (bool); ``action`` is optional.
    ``user_labels``: true attack type (or ``"normal"``) indexed by user id; ``event_labels``:
    (N,) bool aligned with ``events`` rows, True = injected. With labels the report adds ROC / PR
    curves and a per-attack-type table. ``model_info["threshold"]`` (user score) and
    ``model_info["event_threshold"]`` are drawn on the histograms when present.
    ``label_types``: true label -> the ``anomaly_type`` that counts as a match (e.g.
    ``"click_farm" -> "injection"``); labels not in it must match literally.

    Raises ``ValueError`` when a required column is missing, a score lies outside [0, 1],
    ``event_labels`` does not match ``events`` in length, or ``max_timelines`` is negative.
    """
    users = _check_users(users)
    events = _check_events(events)
    ev_labels = _check_event_labels(event_labels, len(events))
    u_labels = _align_user_labels(user_labels, users)
    if not isinstance(max_timelines, (int, np.integer)) or max_timelines < 0:
        raise ValueError(f"max_timelines must be a non-negative int, got {max_timelines!r}")
    model_info = dict(model_info or {})
    threshold = _as_unit_float(model_info.get("threshold"))
    event_threshold = _as_unit_float(model_info.get("event_threshold"))
    colors = _type_colors(users["anomaly_type"], u_labels)

    sections: list[tuple[str, str, str]] = []  # (anchor, heading, body html)
    sections.append(("summary", "Summary", _summary_section(users, events, u_labels, ev_labels, colors)))
    if u_labels is not None or ev_labels is not None:
        sections.append(("quality", "Detection quality", _quality_section(users, events, u_labels, ev_labels, colors, label_types or {})))
    sections.append(
        ("scores", "Score distributions",
         _histogram_section(users, events, u_labels, ev_labels, threshold, event_threshold, colors))
    )
    sections.append(
        ("timelines", "Flagged user timelines",
         _timeline_section(users, events, u_labels, ev_labels, int(max_timelines), colors))
    )
    sections.append(("repair", "Repair", _repair_section(repair_summary)))
    sections.append(("flagged", "Top flagged users", _top_users_section(users, events, u_labels, colors)))
    sections.append(("model", "Model", _model_section(model_info)))

    page = _page(title, sections, users, events)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    log.info("wrote report %s (%.1f kB)", out, out.stat().st_size / 1024)
    return out


# ----------------------------------------------------------------------------- input checks


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} is missing required column(s) {', '.join(repr(c) for c in missing)}; "
            f"has {list(map(str, frame.columns))}"
        )


def _check_scores(values: pd.Series, field: str) -> np.ndarray:
    """Float scores; NaN is allowed (shown as missing), values outside [0, 1] are an error."""
    try:
        arr = pd.to_numeric(values, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field} must be numeric: {exc}") from exc
    bad = np.isfinite(arr) & ((arr < 0) | (arr > 1)) | np.isinf(arr)
    if bad.any():
        examples = ", ".join(f"{v!r}" for v in arr[bad][:5])
        raise ValueError(f"{field} must lie in [0, 1]; {int(bad.sum())} value(s) do not, e.g. {examples}")
    return arr


def _check_users(users: pd.DataFrame) -> pd.DataFrame:
    _require(users, USER_COLUMNS, "users")
    out = pd.DataFrame(
        {
            "user_id": users["user_id"].astype(str).to_numpy(dtype=object),
            "score": _check_scores(users["score"], "users.score"),
            "anomalous": users["anomalous"].fillna(False).astype(bool).to_numpy(),
            "anomaly_type": users["anomaly_type"].fillna("").astype(str).to_numpy(dtype=object),
            "reasons": users["reasons"].fillna("").astype(str).to_numpy(dtype=object),
        }
    )
    out.loc[out["anomaly_type"] == "", "anomaly_type"] = "unknown"
    return out


def _check_events(events: pd.DataFrame) -> pd.DataFrame:
    _require(events, EVENT_COLUMNS, "events")
    cols = {
        "user_id": events["user_id"].astype(str).to_numpy(dtype=object),
        "event_score": _check_scores(events["event_score"], "events.event_score"),
        "anomalous": events["anomalous"].fillna(False).astype(bool).to_numpy(),
    }
    return pd.DataFrame(cols).assign(ts=events["ts"].reset_index(drop=True))


def _check_event_labels(labels: np.ndarray | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"event_labels must have shape ({n},) to match events, got {arr.shape}")
    return arr.astype(bool)


def _align_user_labels(labels: pd.Series | None, users: pd.DataFrame) -> pd.Series | None:
    """True type per row of ``users`` (object, NaN where unlabelled) or None."""
    if labels is None:
        return None
    if not isinstance(labels, pd.Series):
        raise ValueError(f"user_labels must be a pandas Series indexed by user_id, got {type(labels).__name__}")
    lab = labels.copy()
    if pd.api.types.is_bool_dtype(lab):
        lab = lab.map({True: "attack", False: NORMAL})
    lab.index = lab.index.astype(str)
    lab = lab[~lab.index.duplicated(keep="first")]
    aligned = lab.reindex(users["user_id"].to_numpy())
    aligned = aligned.where(aligned.isna(), aligned.astype(str))
    aligned.index = users.index
    return aligned.astype(object)


def _as_unit_float(value) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if 0.0 <= f <= 1.0 else None


def _type_colors(*series: pd.Series | None) -> dict[str, str]:
    colors = dict(TYPE_COLORS)
    extra = iter(EXTRA_COLORS * 10)
    for s in series:
        if s is None:
            continue
        for t in sorted(pd.Series(s).dropna().astype(str).unique()):
            if t not in colors:
                colors[t] = next(extra, "#555555")
    return colors


# ----------------------------------------------------------------------------- formatting


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _int(n) -> str:
    return f"{int(n):,}"


def _pct(num: float, den: float) -> str:
    return f"{100.0 * num / den:.1f}%" if den else "–"


def _num(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return _int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            return str(f)
        if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e7):
            return f"{f:.3e}"
        return f"{f:,.4g}" if abs(f) >= 1000 else f"{f:.4g}"
    return str(value)


def _score_rgb(score: float) -> tuple[int, int, int]:
    s = 0.0 if not np.isfinite(score) else min(max(float(score), 0.0), 1.0)
    for (x0, c0), (x1, c1) in zip(SCORE_STOPS, SCORE_STOPS[1:]):
        if s <= x1:
            t = (s - x0) / (x1 - x0)
            return tuple(round(a + (b - a) * t) for a, b in zip(c0, c1))
    return SCORE_STOPS[-1][1]


def _score_color(score: float) -> str:
    if not np.isfinite(score):
        return "#b8bcc6"
    return "#%02x%02x%02x" % _score_rgb(score)


def _badge(text: str, color: str) -> str:
    return f'<span class="badge" style="--c:{color}">{_e(text)}</span>'


def _score_cell(score: float) -> str:
    if not np.isfinite(score):
        return '<span class="muted">n/a</span>'
    return (
        f'<span class="nowrap"><span class="scorebar"><span style="width:{score * 100:.1f}%;background:{_score_color(score)}"></span></span>'
        f'<span class="mono">{score:.3f}</span></span>'
    )


def _reasons_html(reasons: str, limit: int = MAX_REASONS_CHARS) -> str:
    parts = [p.strip() for p in str(reasons).split(";") if p.strip()]
    if not parts:
        return '<span class="muted">—</span>'
    out, used = [], 0
    for i, p in enumerate(parts):
        if used + len(p) > limit and out:
            out.append(f'<li class="muted">… {len(parts) - i} more</li>')
            break
        out.append(f"<li>{_e(p[:limit])}</li>")
        used += len(p)
    return f'<ul class="reasons">{"".join(out)}</ul>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "", num_cols: Sequence[int] = ()) -> str:
    """HTML table; cells are already-escaped HTML."""
    nc = set(num_cols)
    th = "".join(f'<th class="{"num" if i in nc else ""}">{h}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if i in nc else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _fmt_duration(seconds: float) -> str:
    s = abs(float(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            v = s / size
            return f"{v:.0f}{unit}" if v >= 10 or v == int(v) else f"{v:.1f}{unit}"
    return f"{s:.0f}s"


# ----------------------------------------------------------------------------- SVG charts


@dataclass
class _Series:
    label: str
    x: np.ndarray
    y: np.ndarray
    color: str
    dash: str = ""
    width: float = 2.0


def _downsample_path(x: np.ndarray, y: np.ndarray, n: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` points spaced evenly along the curve's length; the ends are kept."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) <= n:
        return x, y
    seg = np.hypot(np.diff(x), np.diff(y))
    cum = np.r_[0.0, np.cumsum(seg)]
    idx = np.searchsorted(cum, np.linspace(0.0, cum[-1], n))
    idx = np.unique(np.clip(np.r_[0, idx, len(x) - 1], 0, len(x) - 1))
    return x[idx], y[idx]


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_e(label)}">'
    )


def _svg_xy_chart(
    series: Sequence[_Series],
    *,
    x_label: str,
    y_label: str,
    title: str,
    diagonal: bool = False,
    points: Sequence[tuple[float, float, str, str]] = (),
    width: int = 380,
    height: int = 330,
) -> str:
    """Line chart on the unit square; ``points`` are (x, y, colour, tooltip) markers."""
    ml, mr, mt, mb = 48, 14, 14, 42
    pw, ph = width - ml - mr, height - mt - mb

    def px(v: float) -> float:
        return ml + v * pw

    def py(v: float) -> float:
        return mt + (1.0 - v) * ph

    parts = [_svg_open(width, height, title)]
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plotbg"/>')
    for t in np.linspace(0, 1, 6):
        parts.append(f'<line x1="{px(t):.1f}" y1="{mt}" x2="{px(t):.1f}" y2="{mt + ph}" class="grid"/>')
        parts.append(f'<line x1="{ml}" y1="{py(t):.1f}" x2="{ml + pw}" y2="{py(t):.1f}" class="grid"/>')
        parts.append(f'<text x="{px(t):.1f}" y="{mt + ph + 15}" class="tick" text-anchor="middle">{t:.1f}</text>')
        parts.append(f'<text x="{ml - 6}" y="{py(t) + 4:.1f}" class="tick" text-anchor="end">{t:.1f}</text>')
    if diagonal:
        parts.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}" class="diag"/>')
    for s in series:
        xs, ys = _downsample_path(s.x, s.y)
        d = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xs, ys))
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        parts.append(
            f'<polyline points="{d}" fill="none" stroke="{s.color}" stroke-width="{s.width}"'
            f' stroke-linejoin="round"{dash}><title>{_e(s.label)}</title></polyline>'
        )
    for x, y, color, tip in points:
        parts.append(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{color}" stroke="#fff" stroke-width="2">'
            f"<title>{_e(tip)}</title></circle>"
        )
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" class="axis" text-anchor="middle">{_e(x_label)}</text>')
    parts.append(
        f'<text transform="translate(13,{mt + ph / 2:.1f}) rotate(-90)" class="axis" text-anchor="middle">{_e(y_label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _legend(items: Sequence[tuple[str, str, str]]) -> str:
    """HTML legend; items are (colour, label, style) with style 'line', 'dash', 'box' or 'dot'."""
    out = []
    for color, label, style in items:
        out.append(f'<span class="lg"><i class="sw {style}" style="--c:{color}"></i>{_e(label)}</span>')
    return f'<div class="legend">{"".join(out)}</div>'


def _chart_card(title: str, svg: str, legend: str = "", note: str = "") -> str:
    return f'<figure class="card chartcard"><figcaption>{_e(title)}</figcaption>{svg}{legend}{note}</figure>'


def _svg_histogram(
    groups: Sequence[tuple[str, np.ndarray, str]],
    *,
    title: str,
    x_label: str,
    threshold: float | None = None,
    bins: int = HIST_BINS,
    width: int = 560,
    height: int = 280,
) -> str:
    """Overlaid step histograms of scores in [0, 1] with a log-scale count axis."""
    ml, mr, mt, mb = 56, 14, 16, 42
    pw, ph = width - ml - mr, height - mt - mb
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = [np.histogram(v[np.isfinite(v)], bins=edges)[0] for _, v, _ in groups]
    top = max([int(c.max()) for c in counts if c.size] + [1])
    lo, hi = math.log10(0.5), max(1.0, math.ceil(math.log10(top) + 0.05))

    def px(v: float) -> float:
        return ml + v * pw

    def py(c: float) -> float:
        v = math.log10(c) if c > 0 else lo
        return mt + (1.0 - (v - lo) / (hi - lo)) * ph

    parts = [_svg_open(width, height, title)]
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plotbg"/>')
    for k in range(0, int(hi) + 1):
        y = py(10**k)
        parts.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" class="grid"/>')
        label = f"{10**k:,}" if k < 6 else f"1e{k}"
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{label}</text>')
    for t in np.linspace(0, 1, 11):
        parts.append(f'<text x="{px(t):.1f}" y="{mt + ph + 15}" class="tick" text-anchor="middle">{t:.1f}</text>')
    base = mt + ph
    for (label, _, color), c in zip(groups, counts):
        # one closed outline per run of non-empty bins, so empty bins draw no line on the axis
        d = []
        for i, n in enumerate(c):
            if n == 0:
                continue
            y = py(n)
            if i == 0 or c[i - 1] == 0:
                d.append(f"M{px(edges[i]):.1f},{base:.1f}")
            d.append(f"L{px(edges[i]):.1f},{y:.1f}L{px(edges[i + 1]):.1f},{y:.1f}")
            if i == len(c) - 1 or c[i + 1] == 0:
                d.append(f"L{px(edges[i + 1]):.1f},{base:.1f}")
        if d:
            parts.append(
                f'<path d="{"".join(d)}" fill="{color}" fill-opacity="0.22" stroke="{color}" '
                f'stroke-width="1.6" stroke-linejoin="round"><title>{_e(label)}: {_int(c.sum())}</title></path>'
            )
    if threshold is not None:
        x = px(threshold)
        parts.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{base}" class="thr"/>')
        anchor, dx = ("end", -5) if threshold > 0.8 else ("start", 5)
        parts.append(
            f'<text x="{x + dx:.1f}" y="{mt + 13}" class="thrlabel" text-anchor="{anchor}">threshold {threshold:.3g}</text>'
        )
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" class="axis" text-anchor="middle">{_e(x_label)}</text>')
    parts.append(
        f'<text transform="translate(13,{mt + ph / 2:.1f}) rotate(-90)" class="axis" text-anchor="middle">count (log)</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _svg_timeline(
    scores: np.ndarray,
    flagged: np.ndarray,
    injected: np.ndarray | None,
    elapsed: np.ndarray,
    positions: np.ndarray,
    n_total: int,
    *,
    title: str,
    width: int = 1080,
    height: int = 170,
) -> str:
    """Event marks of one user: x = event index, y and colour = event score.

    ``positions`` are the event indices of the drawn marks (all of them unless the history was
    thinned); ``elapsed`` is seconds since the user's first event for each drawn mark.
    """
    ml, mr, mt, mb = 44, 26, 18, 40
    pw, ph = width - ml - mr, height - mt - mb
    span = max(n_total - 1, 1)

    def px(i: float) -> float:
        return ml + (i / span) * pw if n_total > 1 else ml + pw / 2

    def py(v: float) -> float:
        return mt + (1.0 - v) * ph

    parts = [_svg_open(width, height, title)]
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plotbg"/>')
    for t in (0.0, 0.5, 1.0):
        parts.append(f'<line x1="{ml}" y1="{py(t):.1f}" x2="{ml + pw}" y2="{py(t):.1f}" class="grid"/>')
        parts.append(f'<text x="{ml - 6}" y="{py(t) + 4:.1f}" class="tick" text-anchor="end">{t:.1f}</text>')
    n_ticks = min(8, n_total)
    tick_pos = np.unique(np.linspace(0, n_total - 1, max(n_ticks, 1)).round().astype(int))
    for i in tick_pos:
        x = px(i)
        j = int(np.clip(np.searchsorted(positions, i), 0, len(positions) - 1)) if len(positions) else 0
        when = "+" + _fmt_duration(elapsed[j]) if len(elapsed) else ""
        parts.append(f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" class="tickline"/>')
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 15}" class="tick" text-anchor="middle">#{i}</text>')
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 28}" class="tick sub" text-anchor="middle">{_e(when)}</text>')
    r = 4.2 if len(positions) <= 120 else 3.2 if len(positions) <= 300 else 2.5
    # flagged events: a rug along the top edge
    for i in positions[flagged]:
        x = px(i)
        parts.append(f'<line x1="{x:.1f}" y1="{mt - 9}" x2="{x:.1f}" y2="{mt - 2}" class="rug"/>')
    order = np.argsort(scores, kind="stable")  # draw high scores on top
    for k in order:
        s = scores[k]
        x, y = px(positions[k]), py(s if np.isfinite(s) else 0.0)
        inj = injected is not None and bool(injected[k])
        stroke = ' stroke="#111827" stroke-width="1.6"' if inj else ' stroke="#ffffff" stroke-width="0.6"'
        rr = r + 1.2 if inj else r
        tip = f"event #{positions[k]} · score {s:.3f} · +{_fmt_duration(elapsed[k])}" + (" · injected" if inj else "")
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{rr:.1f}" fill="{_score_color(s)}"{stroke}><title>{tip}</title></circle>'
        )
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="frame"/>')
    parts.append(
        f'<text transform="translate(12,{mt + ph / 2:.1f}) rotate(-90)" class="axis" text-anchor="middle">event score</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _gradient_legend() -> str:
    stops = "".join(f"{_score_color(v)} {v * 100:.0f}%," for v in np.linspace(0, 1, 11)).rstrip(",")
    return (
        f'<span class="lg"><i class="gradient" style="background:linear-gradient(90deg,{stops})"></i>'
        "event score 0 → 1</span>"
    )


# ----------------------------------------------------------------------------- sections


def _summary_section(users, events, u_labels, ev_labels, colors) -> str:
    n_users, n_events = len(users), len(events)
    flagged = users[users["anomalous"]]
    n_flag_ev = int(events["anomalous"].sum())
    cards = [
        ("Users", _int(n_users), ""),
        ("Events", _int(n_events), ""),
        ("Flagged users", _int(len(flagged)), _pct(len(flagged), n_users) + " of users"),
        ("Flagged events", _int(n_flag_ev), _pct(n_flag_ev, n_events) + " of events"),
    ]
    if u_labels is not None:
        attacked = int((u_labels.notna() & (u_labels != NORMAL)).sum())
        cards.append(("Attacked users (labels)", _int(attacked), _pct(attacked, n_users) + " of users"))
    if ev_labels is not None:
        cards.append(("Injected events (labels)", _int(ev_labels.sum()), _pct(ev_labels.sum(), n_events) + " of events"))
    html_cards = "".join(
        f'<div class="stat"><div class="stat-label">{_e(k)}</div><div class="stat-value">{v}</div>'
        f'<div class="stat-sub">{_e(sub)}</div></div>'
        for k, v, sub in cards
    )
    out = [f'<div class="stats">{html_cards}</div>']

    by_type = flagged["anomaly_type"].value_counts()
    if len(by_type):
        top = int(by_type.max())
        rows = "".join(
            f'<div class="hbar"><span class="hbar-label">{_badge(t, colors.get(t, "#555"))}</span>'
            f'<span class="hbar-track"><span style="width:{100 * c / top:.1f}%;background:{colors.get(t, "#555")}"></span></span>'
            f'<span class="hbar-val">{_int(c)} <span class="muted">({_pct(c, len(flagged))})</span></span></div>'
            for t, c in by_type.items()
        )
        out.append(f'<div class="card"><h3>Flagged users by anomaly type</h3>{rows}</div>')
    else:
        out.append(_note("No users were flagged."))

    missing = [
        (name, int(np.isnan(arr).sum()))
        for name, arr in (("users.score", users["score"].to_numpy()), ("events.event_score", events["event_score"].to_numpy()))
    ]
    for name, n in missing:
        if n:
            out.append(_note(f'<span class="warn">⚠</span> {_int(n)} rows have no {name} (NaN); they are left out of curves and histograms.'))
    if u_labels is not None and u_labels.isna().any():
        out.append(_note(f"{_int(u_labels.isna().sum())} users have no entry in user_labels; they are left out of label metrics."))
    return "".join(out)


def _curve(y: np.ndarray, s: np.ndarray):
    """(fpr, tpr, roc_auc, recall, precision, ap, prevalence) or None when one class is missing."""
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    if len(y) == 0 or y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    return fpr, tpr, roc_auc_score(y, s), rec, prec, average_precision_score(y, s), float(y.mean())


def _attacked_event_mask(events, users, u_labels, ev_labels) -> np.ndarray:
    if u_labels is not None:
        attacked_ids = users.loc[u_labels.notna() & (u_labels != NORMAL), "user_id"]
    else:
        attacked_ids = events.loc[ev_labels, "user_id"].unique()
    return events["user_id"].isin(set(attacked_ids)).to_numpy()


def _quality_section(users, events, u_labels, ev_labels, colors, label_types) -> str:
    charts, notes = [], []
    roc_series, pr_series, roc_legend, pr_legend, op_points, pr_points = [], [], [], [], [], []
    op_legend: list[tuple[str, str, str]] = []

    if u_labels is not None:
        labelled = u_labels.notna().to_numpy()
        y = (u_labels[labelled] != NORMAL).to_numpy()
        s = users["score"].to_numpy()[labelled]
        c = _curve(y, s)
        if c is None:
            notes.append("User-level curves need both normal and attacked users in user_labels.")
        else:
            fpr, tpr, auc, rec, prec, ap, prev = c
            roc_series.append(_Series("users", fpr, tpr, USER_COLOR))
            pr_series.append(_Series("users", rec, prec, USER_COLOR))
            pr_series.append(_Series("users baseline", np.array([0, 1]), np.array([prev, prev]), USER_COLOR, "4 4", 1.0))
            roc_legend.append((USER_COLOR, f"users (ROC-AUC {auc:.3f}, n={len(y):,})", "line"))
            pr_legend.append((USER_COLOR, f"users (AP {ap:.3f}, base rate {prev:.3f})", "line"))
            flag = users["anomalous"].to_numpy()[labelled]
            op_fpr, op_tpr = flag[~y].mean(), flag[y].mean()
            op_prec = flag[y].sum() / max(flag.sum(), 1)
            op_points.append((op_fpr, op_tpr, USER_COLOR, f"operating point: FPR {op_fpr:.3f}, TPR {op_tpr:.3f}"))
            op_legend = [
                (USER_COLOR, f"users flagged: FPR {op_fpr:.3f}, TPR {op_tpr:.3f}", "dot"),
                (USER_COLOR, f"users flagged: recall {op_tpr:.3f}, precision {op_prec:.3f}", "dot"),
            ]
            pr_points = [(op_tpr, op_prec, USER_COLOR, f"operating point: recall {op_tpr:.3f}, precision {op_prec:.3f}")]

    if ev_labels is not None:
        mask = _attacked_event_mask(events, users, u_labels, ev_labels)
        c = _curve(ev_labels[mask], events["event_score"].to_numpy()[mask])
        if c is None:
            notes.append("Event-level curves need both injected and clean events among attacked users' events.")
        else:
            fpr, tpr, auc, rec, prec, ap, prev = c
            roc_series.append(_Series("events", fpr, tpr, EVENT_COLOR))
            pr_series.append(_Series("events", rec, prec, EVENT_COLOR))
            pr_series.append(_Series("events baseline", np.array([0, 1]), np.array([prev, prev]), EVENT_COLOR, "4 4", 1.0))
            roc_legend.append((EVENT_COLOR, f"events of attacked users (ROC-AUC {auc:.3f}, n={int(mask.sum()):,})", "line"))
            pr_legend.append((EVENT_COLOR, f"events of attacked users (AP {ap:.3f}, base rate {prev:.3f})", "line"))

    if op_legend:
        roc_legend.append(op_legend[0])
        pr_legend.append(op_legend[1])
    if roc_series:
        charts.append(
            _chart_card(
                "ROC",
                _svg_xy_chart(roc_series, x_label="false positive rate", y_label="true positive rate", title="ROC",
                              diagonal=True, points=op_points),
                _legend(roc_legend),
            )
        )
        pr_legend.append(("#6b7280", "dashed: base rate (random ranking)", "dash"))
        charts.append(
            _chart_card(
                "Precision–recall",
                _svg_xy_chart(pr_series, x_label="recall", y_label="precision", title="Precision-recall",
                              points=pr_points),
                _legend(pr_legend),
            )
        )

    table = ""
    if u_labels is not None:
        type_chart, table = _per_type(users, u_labels, colors, label_types)
        if type_chart:
            charts.append(type_chart)
    out = []
    if charts:
        out.append(f'<div class="charts">{"".join(charts)}</div>')
    out.extend(_note(_e(n)) for n in notes)
    if table:
        out.append(f'<div class="card"><h3>Per attack type (user level)</h3>{table}</div>')
    return "".join(out)


def _per_type(users, u_labels, colors, label_types) -> tuple[str, str]:
    """ROC-by-type chart card and the per-attack-type table."""
    labelled = u_labels.notna()
    lab = u_labels[labelled].astype(str)
    score = users.loc[labelled, "score"].to_numpy()
    flag = users.loc[labelled, "anomalous"].to_numpy()
    pred = users.loc[labelled, "anomaly_type"].to_numpy()
    is_norm = (lab == NORMAL).to_numpy()
    types = [t for t in lab.value_counts().index if t != NORMAL]
    rows, series, legend = [], [], []
    if is_norm.any():
        n = int(is_norm.sum())
        rows.append([
            _badge(NORMAL, colors.get(NORMAL, "#555")), _int(n),
            f"{_int(flag[is_norm].sum())} <span class=\"muted\">({_pct(flag[is_norm].sum(), n)} false positives)</span>",
            "–", _num(float(np.nanmean(score[is_norm]))) if np.isfinite(score[is_norm]).any() else "–", "–",
        ])
    for t in types:
        m = (lab == t).to_numpy()
        n = int(m.sum())
        det = int(flag[m].sum())
        typed = int((flag[m] & (pred[m] == label_types.get(t, t))).sum())
        auc_txt = "–"
        if is_norm.any():
            sub = m | is_norm
            c = _curve(m[sub], score[sub])
            if c is not None:
                auc_txt = f"{c[2]:.3f}"
                series.append(_Series(t, c[0], c[1], colors.get(t, "#555"), width=1.8))
                legend.append((colors.get(t, "#555"), f"{t} ({c[2]:.3f})", "line"))
        mean = float(np.nanmean(score[m])) if np.isfinite(score[m]).any() else float("nan")
        rows.append([
            _badge(t, colors.get(t, "#555")), _int(n),
            f"{_int(det)} <span class=\"muted\">({_pct(det, n)})</span>",
            f"{_int(typed)} <span class=\"muted\">({_pct(typed, det)})</span>",
            _num(mean) if np.isfinite(mean) else "–", auc_txt,
        ])
    table = _table(
        ["true type", "users", "detected at threshold", "detected with matching type", "mean score", "ROC-AUC vs normal"],
        rows, num_cols=(1, 2, 3, 4, 5),
    )
    chart = ""
    if series:
        chart = _chart_card(
            "ROC by attack type (vs normal users)",
            _svg_xy_chart(series, x_label="false positive rate", y_label="true positive rate",
                          title="ROC by attack type", diagonal=True),
            _legend(legend),
        )
    return chart, table


def _histogram_section(users, events, u_labels, ev_labels, threshold, event_threshold, colors) -> str:
    score = users["score"].to_numpy()
    if u_labels is not None:
        lab = u_labels
        groups = [("normal (label)", score[(lab == NORMAL).to_numpy()], colors[NORMAL])]
        groups.append(("attacked (label)", score[(lab.notna() & (lab != NORMAL)).to_numpy()], "#d62728"))
        if lab.isna().any():
            groups.append(("unlabelled", score[lab.isna().to_numpy()], "#7f7f7f"))
    else:
        flag = users["anomalous"].to_numpy()
        groups = [("not flagged", score[~flag], colors[NORMAL]), ("flagged", score[flag], "#d62728")]
    groups = [g for g in groups if len(g[1])]
    legend_items = [(c, f"{lbl} (n={len(v):,})", "box") for lbl, v, c in groups]
    if threshold is not None:
        legend_items.append(("#111827", "decision threshold", "dash"))
    cards = [
        _chart_card(
            "User scores",
            _svg_histogram(groups, title="User score histogram", x_label="user score", threshold=threshold),
            _legend(legend_items),
        )
    ]
    es = events["event_score"].to_numpy()
    if ev_labels is not None:
        eg = [("clean events (label)", es[~ev_labels], colors[NORMAL]), ("injected events (label)", es[ev_labels], "#d62728")]
    else:
        ef = events["anomalous"].to_numpy()
        eg = [("not flagged", es[~ef], colors[NORMAL]), ("flagged events", es[ef], "#d62728")]
    eg = [g for g in eg if len(g[1])]
    e_legend = [(c, f"{lbl} (n={len(v):,})", "box") for lbl, v, c in eg]
    if event_threshold is not None:
        e_legend.append(("#111827", "event threshold", "dash"))
    cards.append(
        _chart_card(
            "Event scores",
            _svg_histogram(eg, title="Event score histogram", x_label="event score", threshold=event_threshold),
            _legend(e_legend),
        )
    )
    return f'<div class="charts two">{"".join(cards)}</div>'


def _pick_timeline_users(users: pd.DataFrame, k: int) -> list[int]:
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


def _timeline_section(users, events, u_labels, ev_labels, max_timelines, colors) -> str:
    picked = _pick_timeline_users(users, max_timelines)
    if not picked:
        return _note("No flagged users to show." if max_timelines > 0 else "Timelines are turned off (max_timelines=0).")
    ids = set(users.loc[picked, "user_id"])
    rows = np.flatnonzero(events["user_id"].isin(ids).to_numpy())
    sub = events.iloc[rows]
    secs = _ts_to_seconds(sub["ts"].reset_index(drop=True), lambda mask, reason: None)
    sub = pd.DataFrame(
        {"user_id": sub["user_id"].to_numpy(), "secs": secs, "row": rows,
         "score": sub["event_score"].to_numpy(), "flag": sub["anomalous"].to_numpy()}
    )
    if ev_labels is not None:
        sub["inj"] = ev_labels[rows]
    groups = {uid: g.sort_values(["secs", "row"], kind="stable") for uid, g in sub.groupby("user_id", sort=False)}

    blocks = []
    for i in picked:
        u = users.loc[i]
        g = groups.get(u["user_id"])
        true = None if u_labels is None else u_labels.loc[i]
        badges = [_badge(u["anomaly_type"], colors.get(u["anomaly_type"], "#555"))]
        if isinstance(true, str):
            badges.append(f'<span class="muted">true:</span> {_badge(true, colors.get(true, "#555"))}')
        meta = [f'score <b class="mono">{u["score"]:.3f}</b>' if np.isfinite(u["score"]) else "score n/a"]
        if g is None or g.empty:
            svg = _note("This user has no events in the events table.")
        else:
            n = len(g)
            pos = np.arange(n)
            if n > TIMELINE_MAX_EVENTS:
                keep = np.unique(np.r_[
                    np.linspace(0, n - 1, TIMELINE_MAX_EVENTS * 2 // 3).round().astype(int),
                    np.argsort(-np.nan_to_num(g["score"].to_numpy(), nan=-1.0), kind="stable")[: TIMELINE_MAX_EVENTS // 3],
                ])
            else:
                keep = pos
            sc = g["score"].to_numpy()[keep]
            el = (g["secs"].to_numpy() - g["secs"].iloc[0])[keep]
            inj = g["inj"].to_numpy()[keep] if "inj" in g else None
            svg = _svg_timeline(sc, g["flag"].to_numpy()[keep], inj, el, pos[keep], n, title=f"timeline of {u['user_id']}")
            span = float(g["secs"].iloc[-1] - g["secs"].iloc[0])
            meta.append(f"{_int(n)} events over {_fmt_duration(span)}")
            meta.append(f"{_int(g['flag'].sum())} flagged")
            if "inj" in g:
                meta.append(f"{_int(g['inj'].sum())} injected")
            start = g["secs"].iloc[0]
            if 0 < start < 4_102_444_800:
                meta.append("from " + _dt.datetime.fromtimestamp(start, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
            if len(keep) < n:
                meta.append(f"showing {_int(len(keep))} of {_int(n)} events")
        blocks.append(
            f'<div class="card timeline"><div class="tl-head"><span class="uid mono">{_e(u["user_id"])}</span>'
            f'{" ".join(badges)}<span class="tl-meta">{" · ".join(meta)}</span></div>'
            f"{svg}<div class=\"tl-reasons\">{_reasons_html(u['reasons'])}</div></div>"
        )
    legend_items = ['<span class="lg"><i class="sw dot" style="--c:#d73027"></i>event (colour and height = event score)</span>',
                    _gradient_legend(),
                    '<span class="lg"><i class="sw rugkey"></i>flagged event</span>']
    if ev_labels is not None:
        legend_items.append('<span class="lg"><i class="sw ring"></i>injected event (label)</span>')
    legend = f'<div class="legend">{"".join(legend_items)}</div>'
    intro = _note(
        f"Up to {max_timelines} flagged users, highest score first, one of each anomaly type before repeats. "
        "x = event index in time order; the second tick row is the time since the user's first event."
    )
    return intro + legend + "".join(blocks)


def _repair_section(repair_summary) -> str:
    if not repair_summary:
        return _note("No repair summary was given.")
    items = list(repair_summary.items())
    base = repair_summary.get("events_in")
    base = base if isinstance(base, (int, np.integer)) and base > 0 else None
    rows = []
    for k, v in items[:MAX_INFO_ITEMS]:
        share = ""
        if base is not None and str(k).startswith("events_") and k != "events_in" and isinstance(v, (int, np.integer)):
            share = _pct(v, base)
        rows.append([_e(str(k).replace("_", " ")), _e(_num(v)), share])
    out = _table(["", "value", "of events in"], rows, cls="kv", num_cols=(1, 2))
    if len(items) > MAX_INFO_ITEMS:
        out += _note(f"{len(items) - MAX_INFO_ITEMS} more entries not shown.")
    return f'<div class="card narrow">{out}</div>'


def _top_users_section(users, events, u_labels, colors) -> str:
    flagged = users[users["anomalous"]]
    if flagged.empty:
        return _note("No users were flagged.")
    top = flagged.assign(_s=flagged["score"].fillna(-1.0)).sort_values(["_s", "user_id"], ascending=[False, True]).head(TOP_USERS)
    counts = events.loc[events["user_id"].isin(set(top["user_id"])), "user_id"].value_counts()
    header = ["#", "user", "score", "type"] + (["true label"] if u_labels is not None else []) + ["events", "reasons"]
    rows = []
    for rank, (i, u) in enumerate(top.iterrows(), 1):
        row = [str(rank), f'<span class="mono uid">{_e(u["user_id"])}</span>', _score_cell(u["score"]),
               _badge(u["anomaly_type"], colors.get(u["anomaly_type"], "#555"))]
        if u_labels is not None:
            t = u_labels.loc[i]
            row.append(_badge(t, colors.get(t, "#555")) if isinstance(t, str) else '<span class="muted">—</span>')
        row += [_int(counts.get(u["user_id"], 0)), _reasons_html(u["reasons"])]
        rows.append(row)
    ev_col = 5 if u_labels is not None else 4
    note = _note(f"Showing the top {len(top)} of {_int(len(flagged))} flagged users by score.")
    return note + f'<div class="card tablecard">{_table(header, rows, cls="users", num_cols=(0, ev_col))}</div>'


def _info_value(v, depth: int = 0) -> str:
    if v is None:
        return '<span class="muted">—</span>'
    if isinstance(v, Mapping):
        if depth >= 3 or not v:
            return _e(repr(dict(v))[:MAX_REASONS_CHARS]) if v else '<span class="muted">{}</span>'
        items = list(v.items())
        rows = [[_e(k), _info_value(val, depth + 1)] for k, val in items[:MAX_INFO_ITEMS]]
        more = _note(f"{len(items) - MAX_INFO_ITEMS} more") if len(items) > MAX_INFO_ITEMS else ""
        return _table(["key", "value"], rows, cls="kv nested") + more
    if isinstance(v, (list, tuple, np.ndarray)):
        seq = list(v)
        text = ", ".join(_num(x) for x in seq[:MAX_INFO_ITEMS])
        if len(seq) > MAX_INFO_ITEMS:
            text += f", … ({len(seq)} items)"
        return _e(f"[{text}]")
    return f'<span class="mono">{_e(_num(v))[:MAX_REASONS_CHARS]}</span>'


def _model_section(model_info: dict) -> str:
    if not model_info:
        return _note("No model information was given.")
    items = list(model_info.items())
    rows = [[_e(k), _info_value(v)] for k, v in items[:MAX_INFO_ITEMS]]
    out = _table(["", "value"], rows, cls="kv")
    if len(items) > MAX_INFO_ITEMS:
        out += _note(f"{len(items) - MAX_INFO_ITEMS} more entries not shown.")
    return f'<div class="card narrow">{out}</div>'


# ----------------------------------------------------------------------------- page

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
.hbar{display:grid;grid-template-columns:140px 1fr 150px;align-items:center;gap:12px;margin:6px 0}
.hbar-track{background:#f0f1f4;border-radius:4px;height:12px;overflow:hidden}
.hbar-track span{display:block;height:100%;border-radius:4px}
.hbar-val{font-variant-numeric:tabular-nums;font-size:13px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:14px}
.charts.two{grid-template-columns:repeat(auto-fit,minmax(520px,1fr))}
figure.chartcard{margin:0}
figcaption{font-weight:600;font-size:13px;margin-bottom:6px;color:#374151}
svg.chart{display:block;width:100%;height:auto;font-family:inherit}
.plotbg{fill:#fcfcfd}.frame{fill:none;stroke:#c7cbd3;stroke-width:1}
.grid{stroke:#eceef2;stroke-width:1}.diag{stroke:#9ca3af;stroke-width:1;stroke-dasharray:4 4}
.tick{font-size:11px;fill:#6b7280}.tick.sub{font-size:10px;fill:#9ca3af}.tickline{stroke:#c7cbd3}
.axis{font-size:12px;fill:#374151}
.thr{stroke:#111827;stroke-width:1.5;stroke-dasharray:5 4}.thrlabel{font-size:11px;fill:#111827;font-weight:600}
.rug{stroke:#d73027;stroke-width:1.4}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;margin-top:8px;font-size:12px;color:#374151}
.lg{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:18px;height:0;border-top:2.5px solid var(--c)}
.sw.dash{border-top:2px dashed var(--c)}
.sw.box{height:11px;width:14px;border:1.5px solid var(--c);background:color-mix(in srgb,var(--c) 25%,transparent);border-radius:2px}
.sw.dot{width:10px;height:10px;border:none;border-radius:50%;background:var(--c)}
.sw.ring{width:11px;height:11px;border:2px solid #111827;border-radius:50%;background:#f0c83c}
.sw.rugkey{width:2px;height:10px;border:none;background:#d73027}
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


def _page(title: str, sections: list[tuple[str, str, str]], users: pd.DataFrame, events: pd.DataFrame) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{a}">{_e(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{_e(h)}</h2>{b}</section>' for a, h, b in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><h1>{_e(title)}</h1>'
        f'<div class="sub">{_int(len(users))} users · {_int(len(events))} events · generated {now} by seqguard</div>'
        f"<nav>{nav}</nav></header><main>{body}</main>"
        "<footer>Scores are in [0, 1]; higher means more anomalous.</footer></body></html>\n"
    )
