"""Colours, number formats and the small HTML fragments of the report (badges, tables, notes).

Every helper that takes text from the inputs escapes it; helpers documented as taking HTML
(``table`` cells, ``note``) expect it escaped already.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from plotly.colors import sample_colorscale

from .inputs import NORMAL

MAX_REASONS_CHARS = 600  # per table cell

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
ATTACK_COLOR = "#d62728"
MISSING_COLOR = "#b8bcc6"
# Green -> yellow -> red for scores in [0, 1]: the timelines' markers and the table's score bars.
SCORE_SCALE = ((0.0, "rgb(26,152,80)"), (0.5, "rgb(240,200,60)"), (1.0, "rgb(215,48,39)"))


def type_colors(*series: pd.Series | None) -> dict[str, str]:
    """A colour for every type in ``series``: the fixed ones first, then the extra palette."""
    colors = dict(TYPE_COLORS)
    extra = iter(EXTRA_COLORS * 10)
    for s in series:
        if s is None:
            continue
        for t in sorted(pd.Series(s).dropna().astype(str).unique()):
            if t not in colors:
                colors[t] = next(extra, "#555555")
    return colors


def score_color(score: float) -> str:
    """CSS colour of a score on SCORE_SCALE; grey for NaN."""
    if not np.isfinite(score):
        return MISSING_COLOR
    return sample_colorscale([list(s) for s in SCORE_SCALE], [min(max(float(score), 0.0), 1.0)])[0]


def e(value) -> str:
    """HTML-escaped text (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def fmt_int(n) -> str:
    return f"{int(n):,}"


def pct(num: float, den: float) -> str:
    return f"{100.0 * num / den:.1f}%" if den else "–"


def num(value) -> str:
    """A number for people: thousands separators, 4 significant digits, scientific when tiny or huge."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return fmt_int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            return str(f)
        if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e7):
            return f"{f:.3e}"
        return f"{f:,.4g}" if abs(f) >= 1000 else f"{f:.4g}"
    return str(value)


def fmt_duration(seconds: float) -> str:
    """``3.5h``, ``12d``, ``40s``: the largest unit that fits."""
    s = abs(float(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            v = s / size
            return f"{v:.0f}{unit}" if v >= 10 or v == int(v) else f"{v:.1f}{unit}"
    return f"{s:.0f}s"


def badge(text: str, color: str) -> str:
    return f'<span class="badge" style="--c:{color}">{e(text)}</span>'


def score_cell(score: float) -> str:
    if not np.isfinite(score):
        return '<span class="muted">n/a</span>'
    return (
        f'<span class="nowrap"><span class="scorebar"><span style="width:{score * 100:.1f}%;'
        f'background:{score_color(score)}"></span></span><span class="mono">{score:.3f}</span></span>'
    )


def gradient_key() -> str:
    """Legend swatch of SCORE_SCALE."""
    stops = ",".join(f"{c} {x * 100:.0f}%" for x, c in SCORE_SCALE)
    return f'<span class="lg"><i class="gradient" style="background:linear-gradient(90deg,{stops})"></i>event score 0 → 1</span>'


def reasons_html(reasons: str, limit: int = MAX_REASONS_CHARS) -> str:
    """"; "-joined reasons as a list, cut after ``limit`` characters."""
    parts = [p.strip() for p in str(reasons).split(";") if p.strip()]
    if not parts:
        return '<span class="muted">—</span>'
    out, used = [], 0
    for i, p in enumerate(parts):
        if used + len(p) > limit and out:
            out.append(f'<li class="muted">… {len(parts) - i} more</li>')
            break
        out.append(f"<li>{e(p[:limit])}</li>")
        used += len(p)
    return f'<ul class="reasons">{"".join(out)}</ul>'


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "", num_cols: Sequence[int] = ()) -> str:
    """HTML table; header and cells are already-escaped HTML (cells hold badges and score bars,
    which is why this is not ``DataFrame.to_html``)."""
    nc = set(num_cols)
    th = "".join(f'<th class="{"num" if i in nc else ""}">{h}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if i in nc else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def note(text_html: str) -> str:
    return f'<p class="note">{text_html}</p>'


def chart_card(title: str, chart_html: str, note_html: str = "") -> str:
    return f'<figure class="card chartcard"><figcaption>{e(title)}</figcaption>{chart_html}{note_html}</figure>'
