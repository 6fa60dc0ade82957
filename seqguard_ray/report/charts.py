"""The report's charts as Plotly figures, each embedded as a div plus its ``Plotly.newPlot`` call.

plotly.js itself is inlined once in the page head (page.py), so the file stays one offline file
with zoom and hover. Data are reduced before they reach a figure (histogram counts, curves
downsampled to CURVE_POINTS, timelines capped by the caller), so a figure's size does not grow
with the input. Text from the inputs is HTML-escaped here: Plotly renders a subset of HTML in
names, ticks and hover text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import hex_to_rgb

from .fmt import SCORE_SCALE, e, fmt_duration

CURVE_POINTS = 300  # points kept per ROC / PR curve
HIST_BINS = 40
CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
FLAG_COLOR = "#d73027"
_FONT = {"family": 'system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif', "size": 12, "color": "#374151"}
_AXIS = {"gridcolor": "#eceef2", "zeroline": False, "showline": True, "linecolor": "#c7cbd3", "mirror": True,
         "ticks": "outside", "tickcolor": "#c7cbd3", "tickfont": {"size": 11, "color": "#6b7280"}}


@dataclass
class Line:
    """One curve; ``name`` is plain text; ``threshold`` (same length as x, NaN allowed) shows on hover."""

    name: str
    x: np.ndarray
    y: np.ndarray
    color: str
    dash: str = "solid"
    width: float = 2.0
    threshold: np.ndarray | None = None


@dataclass
class Point:
    """A marked point (an operating point); ``name`` is plain text."""

    x: float
    y: float
    color: str
    name: str


def figure_html(fig: go.Figure, div_id: str) -> str:
    """``fig`` as a div and its script; plotly.js must be loaded earlier in the page."""
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config=CONFIG, div_id=div_id,
                       default_width="100%", default_height=f"{fig.layout.height}px", validate=False)


def downsample_index(x: np.ndarray, y: np.ndarray, n: int = CURVE_POINTS) -> np.ndarray:
    """Indices of at most ``n`` + 2 points spaced evenly along the curve's length; the ends are kept."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) <= n:
        return np.arange(len(x))
    cum = np.r_[0.0, np.cumsum(np.hypot(np.diff(x), np.diff(y)))]
    idx = np.searchsorted(cum, np.linspace(0.0, cum[-1], n))
    return np.unique(np.clip(np.r_[0, idx, len(x) - 1], 0, len(x) - 1))


def _r(a, decimals: int = 4) -> list:
    """A JSON-ready list (literal numbers, not Plotly's base64 arrays); NaN -> null."""
    a = np.round(np.asarray(a, np.float64), decimals)
    return [None if not np.isfinite(v) else float(v) for v in a]


def _rgba(color: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(color)
    return f"rgba({r},{g},{b},{alpha})"


def _layout(height: int, *, legend_rows: int = 0, tick_rows: int = 1, **kw) -> dict:
    """Base layout, ``height`` px without the legend; the legend's rows get a bottom margin of their
    own under the x-axis title (Plotly does not make room for a legend placed there), and so does a
    second row of tick labels (dates: the year under the first day)."""
    foot = 21 * legend_rows + 16 * (tick_rows - 1)
    base = {"template": "none", "height": height + foot, "margin": {"l": 56, "r": 16, "t": 16, "b": 52 + foot},
            "font": _FONT, "paper_bgcolor": "#ffffff", "plot_bgcolor": "#fcfcfd", "hovermode": "closest",
            "legend": {"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0, "x": 0,
                       "font": {"size": 11}}}
    base.update(kw)
    return base


def curve_figure(lines: Sequence[Line], *, x_title: str, y_title: str, diagonal: bool = False,
                 points: Sequence[Point] = (), height: int = 360) -> go.Figure:
    """Curves on the unit square (ROC, precision-recall), with optional diagonal and marked points."""
    unit = {"range": [-0.02, 1.02], "dtick": 0.2}
    rows = len(lines) + len(points) + diagonal
    fig = go.Figure(layout=_layout(height, legend_rows=rows, xaxis={**_AXIS, **unit, "title": {"text": x_title}},
                                   yaxis={**_AXIS, **unit, "title": {"text": y_title}}))
    if diagonal:
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="random ranking", hoverinfo="skip",
                                 line={"color": "#9ca3af", "width": 1, "dash": "dash"}))
    hover = f"{x_title} %{{x:.3f}}<br>{y_title} %{{y:.3f}}"
    for ln in lines:
        idx = downsample_index(ln.x, ln.y)
        trace = {"x": _r(np.asarray(ln.x)[idx]), "y": _r(np.asarray(ln.y)[idx]), "mode": "lines", "name": e(ln.name),
                 "line": {"color": ln.color, "width": ln.width, "dash": ln.dash}, "hovertemplate": hover}
        if ln.threshold is not None:
            trace["customdata"] = _r(np.asarray(ln.threshold, np.float64)[idx])
            trace["hovertemplate"] = hover + "<br>score threshold %{customdata:.3f}"
        fig.add_trace(go.Scatter(**trace))
    for p in points:
        fig.add_trace(go.Scatter(x=[round(float(p.x), 4)], y=[round(float(p.y), 4)], mode="markers", name=e(p.name),
                                 marker={"color": p.color, "size": 11, "line": {"color": "#ffffff", "width": 2}},
                                 hovertemplate=hover))
    return fig


def histogram_figure(groups: Sequence[tuple[str, np.ndarray, str]], *, x_title: str, threshold: float | None = None,
                     threshold_label: str = "threshold", bins: int = HIST_BINS, height: int = 320) -> go.Figure:
    """Overlaid histograms of scores in [0, 1] on a log count axis; groups are (name, scores, colour).

    Counts are computed here (numpy), so the page carries ``bins`` numbers per group, not the scores.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    fig = go.Figure(layout=_layout(
        height, legend_rows=(len(groups) + 1) // 2, barmode="overlay", bargap=0,
        xaxis={**_AXIS, "range": [0, 1], "dtick": 0.1, "title": {"text": x_title}},
        yaxis={**_AXIS, "type": "log", "dtick": 1, "title": {"text": "count (log)"}},
    ))
    for name, values, color in groups:
        counts = np.histogram(values[np.isfinite(values)], bins=edges)[0]
        fig.add_trace(go.Bar(
            x=_r((edges[:-1] + edges[1:]) / 2), y=[int(c) if c else None for c in counts], width=1.0 / bins,
            name=e(f"{name} (n={len(values):,})"), customdata=np.c_[_r(edges[:-1]), _r(edges[1:])].tolist(),
            marker={"color": _rgba(color, 0.3), "line": {"color": color, "width": 1.2}},
            hovertemplate="score %{customdata[0]:.3f}–%{customdata[1]:.3f}: %{y:,}",
        ))
    if threshold is not None:
        fig.add_vline(x=threshold, line={"color": "#111827", "width": 1.5, "dash": "dash"},
                      annotation_text=f"{threshold_label} {threshold:.3g}",
                      annotation_position="top left" if threshold > 0.8 else "top right",
                      annotation_font={"size": 11, "color": "#111827"})
    return fig


def bar_figure(labels: Sequence[str], counts: Sequence[int], colors: Sequence[str], texts: Sequence[str]) -> go.Figure:
    """Horizontal bars, one per label (plain text), largest first as given."""
    top = max([int(c) for c in counts] + [1])
    fig = go.Figure(layout=_layout(
        60 + 30 * len(labels), showlegend=False, margin={"l": 120, "r": 16, "t": 28, "b": 40},
        xaxis={**_AXIS, "range": [0, top * 1.3], "title": {"text": "flagged users"}},
        yaxis={**_AXIS, "autorange": "reversed", "ticks": ""},
    ))
    fig.add_trace(go.Bar(y=[e(t) for t in labels], x=[int(c) for c in counts], orientation="h",
                         marker={"color": list(colors)}, text=[e(t) for t in texts], textposition="outside",
                         cliponaxis=False, hovertemplate="%{y}: %{x:,}<extra></extra>"))
    return fig


def timeline_figure(ev: pd.DataFrame, n_total: int, *, height: int = 240) -> go.Figure:
    """Event marks of one user: x = event index, y and colour = event score.

    ``ev`` holds the drawn events (all of a user's, or a thinned set), one row each, columns
    pos (event index in time order), score, flag, elapsed (s since the user's first event),
    item, action, when (str; action and when may be ""), and inj (bool) when labels are known.
    Hover shows them all.
    """
    span = max(n_total - 1, 0)
    ticks = np.unique(np.linspace(0, span, max(min(8, n_total), 1)).round().astype(int))
    pos = ev["pos"].to_numpy()
    near = np.clip(np.searchsorted(pos, ticks), 0, max(len(pos) - 1, 0))
    tick_text = [f"#{i}<br>+{fmt_duration(ev['elapsed'].iloc[j])}" if len(ev) else f"#{i}" for i, j in zip(ticks, near)]
    fig = go.Figure(layout=_layout(
        height, margin={"l": 56, "r": 16, "t": 30, "b": 48}, showlegend=False,  # one HTML legend serves all timelines
        coloraxis={"colorscale": [list(s) for s in SCORE_SCALE], "cmin": 0, "cmax": 1, "showscale": False},
        xaxis={**_AXIS, "range": [-0.5, span + 0.5], "tickvals": ticks.tolist(), "ticktext": tick_text,
               "showgrid": False},
        yaxis={**_AXIS, "range": [-0.06, 1.14], "tickvals": [0, 0.5, 1], "title": {"text": "event score"}},
    ))
    size = 9 if len(ev) <= 120 else 7 if len(ev) <= 300 else 5
    hover = ("event #%{x} · score %{customdata[4]}<br>item %{customdata[0]}%{customdata[1]}"
             "<br>+%{customdata[2]} %{customdata[3]}<extra>%{fullData.name}</extra>")
    scored = np.isfinite(ev["score"].to_numpy())
    inj = ev["inj"].to_numpy(bool) if "inj" in ev else np.zeros(len(ev), bool)
    groups = [("event", scored & ~inj, {"line": {"color": "#ffffff", "width": 0.6}}),
              ("injected event (label)", scored & inj, {"line": {"color": "#111827", "width": 1.8}, "size": size + 2}),
              ("no score", ~scored, {"color": "#b8bcc6", "line": {"color": "#111827", "width": 0.6}})]
    for name, m, marker in groups:
        if not m.any():
            continue
        g = ev[m].sort_values("score", kind="stable")  # high scores drawn last, on top
        sc = g["score"].to_numpy()
        marker = {"size": size, **marker}
        if name != "no score":
            marker.update(color=_r(sc), coloraxis="coloraxis")
        action = [f" · {e(a)}" if a else "" for a in g["action"]]
        custom = np.c_[g["item"].map(e), action, g["elapsed"].map(fmt_duration), g["when"],
                       np.where(np.isfinite(sc), [f"{s:.3f}" for s in sc], "n/a")]
        fig.add_trace(go.Scatter(x=g["pos"].tolist(), y=_r(np.nan_to_num(sc, nan=0.0)), mode="markers", name=name,
                                 marker=marker, customdata=custom.tolist(), hovertemplate=hover))
    flagged = ev[ev["flag"].to_numpy(bool)]
    if len(flagged):
        fig.add_trace(go.Scatter(x=flagged["pos"].tolist(), y=[1.08] * len(flagged), mode="markers", name="flagged event",
                                 marker={"symbol": "line-ns-open", "size": 10, "color": FLAG_COLOR, "line": {"width": 1.6}},
                                 hovertemplate="event #%{x} flagged<extra></extra>"))
    return fig


def members_figure(pts: pd.DataFrame, members: Sequence[str], colors: dict[str, str], *, date_axis: bool,
                   height_per_row: int = 16) -> go.Figure:
    """A campaign's members' events on its targets over time: one row per member (``members``,
    top to bottom), one marker per event coloured by target.

    ``pts``: one row per drawn event, columns member, item (both text), x (ISO date-time text
    when ``date_axis``, else seconds) and when (text for hover); ``colors``: target -> colour.
    """
    fig = go.Figure(layout=_layout(
        max(160, 40 + height_per_row * len(members)), legend_rows=(len(colors) + 3) // 4, tick_rows=1 + date_axis,
        xaxis=_time_axis(date_axis),
        yaxis={**_AXIS, "type": "category", "categoryorder": "array", "categoryarray": [e(m) for m in members],
               "autorange": "reversed", "tickfont": {"size": 10, "color": "#6b7280"}, "automargin": True},
    ))
    for item, color in colors.items():
        g = pts[pts["item"] == item]
        if g.empty:
            continue
        fig.add_trace(go.Scatter(
            x=g["x"].tolist(), y=g["member"].map(e).tolist(), mode="markers", name=e(f"target {item}"),
            marker={"color": color, "size": 7, "opacity": 0.85, "line": {"color": "#ffffff", "width": 0.5}},
            customdata=np.c_[g["item"].map(e), g["when"]].tolist(),
            hovertemplate="%{y} on item %{customdata[0]}<br>%{customdata[1]}<extra></extra>"))
    return fig


def _time_axis(date_axis: bool) -> dict:
    # dates label themselves (and their second tick row would run into a title)
    return {**_AXIS, "type": "date" if date_axis else "linear", "title": {"text": "" if date_axis else "ts (s)"}}


@dataclass
class TargetCounts:
    """One target's events per time bin: all users' (``total``), the campaign members' (``campaign``)
    and its normal level (mean per bin of the other users' events over the log); ``x`` are the
    len(total) + 1 bin edges (ISO text or seconds), ``width`` a bin's width in axis units (ms on a
    date axis, else seconds)."""

    item: str
    x: list
    width: float
    total: np.ndarray
    campaign: np.ndarray
    normal: float
    color: str


def target_counts_figure(targets: Sequence[TargetCounts], *, window: tuple | None, date_axis: bool, per: str,
                         height: int = 300) -> go.Figure:
    """Targets' event counts per ``per`` (hour / day / week) against their normal level: a line of
    all events, bars of the campaign's, a dashed normal level; ``window`` (x0, x1) shades the
    campaign's span. One legend entry per target (it toggles the target's three traces); the
    styles are the caller's note to explain."""
    fig = go.Figure(layout=_layout(
        height, legend_rows=(len(targets) + 2) // 3, tick_rows=1 + date_axis, barmode="overlay", xaxis=_time_axis(date_axis),
        yaxis={**_AXIS, "title": {"text": f"events per {per}"}, "rangemode": "tozero"},
    ))
    for t in targets:
        name = e(f"target {t.item}")
        total = [int(v) for v in t.total]
        fig.add_trace(go.Scatter(x=t.x, y=total + total[-1:], mode="lines", name=name,
                                 legendgroup=name, line={"color": t.color, "width": 1.6, "shape": "hv"},
                                 hovertemplate=f"{name}<br>from %{{x}}: %{{y:,}} events<extra></extra>"))
        fig.add_trace(go.Bar(x=t.x[:-1], y=[int(v) if v else None for v in t.campaign], name=f"{name}: campaign's",
                             offset=0, width=t.width, legendgroup=name, showlegend=False,
                             marker={"color": _rgba(t.color, 0.45), "line": {"color": t.color, "width": 1}},
                             hovertemplate=f"{name}<br>from %{{x}}: %{{y:,}} by the campaign<extra></extra>"))
        if len(t.x):
            fig.add_trace(go.Scatter(x=[t.x[0], t.x[-1]], y=[round(t.normal, 4)] * 2, mode="lines",
                                     name=f"{name}: normal level", legendgroup=name, showlegend=False,
                                     line={"color": t.color, "width": 1.2, "dash": "dash"},
                                     hovertemplate=f"{name}: normal level {t.normal:.2g} per {per}<extra></extra>"))
    if window is not None:
        fig.add_vrect(x0=window[0], x1=window[1], fillcolor="#d62728", opacity=0.07, line_width=0)
    return fig
