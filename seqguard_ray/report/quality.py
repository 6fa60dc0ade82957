"""The "Detection quality" section: ROC and precision-recall curves against the labels, the
operating point, and the per-attack-type table. Curve math is scikit-learn's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from .charts import Line, Point, curve_figure, figure_html
from .fmt import EVENT_COLOR, USER_COLOR, badge, chart_card, e, fmt_int, note, num, pct, table
from .inputs import NORMAL


@dataclass
class Curves:
    """ROC and PR curves of scores ``s`` against labels ``y`` (1 = attacked), with their summaries."""

    fpr: np.ndarray
    tpr: np.ndarray
    roc_threshold: np.ndarray
    roc_auc: float
    recall: np.ndarray
    precision: np.ndarray
    pr_threshold: np.ndarray  # same length as recall; NaN at the end point, which has none
    ap: float
    prevalence: float


def curves(y: np.ndarray, s: np.ndarray) -> Curves | None:
    """Curves over the finite scores, or None when one class is missing."""
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    if len(y) == 0 or y.all() or not y.any():
        return None
    fpr, tpr, roc_t = roc_curve(y, s)
    prec, rec, pr_t = precision_recall_curve(y, s)
    return Curves(fpr, tpr, np.where(np.isfinite(roc_t), roc_t, np.nan), roc_auc_score(y, s), rec, prec,
                  np.r_[pr_t, np.nan], average_precision_score(y, s), float(y.mean()))


def attacked_event_mask(events: pd.DataFrame, users: pd.DataFrame, u_labels, ev_labels) -> np.ndarray:
    """Events of attacked users (by user labels, else users with an injected event)."""
    if u_labels is not None:
        attacked_ids = users.loc[u_labels.notna() & (u_labels != NORMAL), "user_id"]
    else:
        attacked_ids = events.loc[ev_labels, "user_id"].unique()
    return events["user_id"].isin(set(attacked_ids)).to_numpy()


def quality_section(users, events, u_labels, ev_labels, colors: dict, label_types: Mapping[str, str]) -> str:
    charts, notes = [], []
    roc_lines: list[Line] = []
    pr_lines: list[Line] = []
    roc_points: list[Point] = []
    pr_points: list[Point] = []

    if u_labels is not None:
        labelled = u_labels.notna().to_numpy()
        y = (u_labels[labelled] != NORMAL).to_numpy()
        c = curves(y, users["score"].to_numpy()[labelled])
        if c is None:
            notes.append("User-level curves need both normal and attacked users in user_labels.")
        else:
            roc_lines.append(Line(f"users (ROC-AUC {c.roc_auc:.3f}, n={len(y):,})", c.fpr, c.tpr, USER_COLOR,
                                  threshold=c.roc_threshold))
            pr_lines.append(Line(f"users (AP {c.ap:.3f}, base rate {c.prevalence:.3f})", c.recall, c.precision,
                                 USER_COLOR, threshold=c.pr_threshold))
            pr_lines.append(Line("users: base rate (random ranking)", np.array([0, 1]),
                                 np.array([c.prevalence] * 2), USER_COLOR, "dash", 1.0))
            flag = users["anomalous"].to_numpy()[labelled]
            op_fpr, op_tpr = flag[~y].mean(), flag[y].mean()
            op_prec = flag[y].sum() / max(flag.sum(), 1)
            roc_points.append(Point(op_fpr, op_tpr, USER_COLOR, f"users flagged: FPR {op_fpr:.3f}, TPR {op_tpr:.3f}"))
            pr_points.append(Point(op_tpr, op_prec, USER_COLOR,
                                   f"users flagged: recall {op_tpr:.3f}, precision {op_prec:.3f}"))

    if ev_labels is not None:
        mask = attacked_event_mask(events, users, u_labels, ev_labels)
        c = curves(ev_labels[mask], events["event_score"].to_numpy()[mask])
        if c is None:
            notes.append("Event-level curves need both injected and clean events among attacked users' events.")
        else:
            roc_lines.append(Line(f"events of attacked users (ROC-AUC {c.roc_auc:.3f}, n={int(mask.sum()):,})",
                                  c.fpr, c.tpr, EVENT_COLOR, threshold=c.roc_threshold))
            pr_lines.append(Line(f"events of attacked users (AP {c.ap:.3f}, base rate {c.prevalence:.3f})",
                                 c.recall, c.precision, EVENT_COLOR, threshold=c.pr_threshold))
            pr_lines.append(Line("events: base rate (random ranking)", np.array([0, 1]),
                                 np.array([c.prevalence] * 2), EVENT_COLOR, "dash", 1.0))

    if roc_lines:
        roc = curve_figure(roc_lines, x_title="false positive rate", y_title="true positive rate", diagonal=True,
                           points=roc_points)
        charts.append(chart_card("ROC", figure_html(roc, "fig-roc")))
        pr = curve_figure(pr_lines, x_title="recall", y_title="precision", points=pr_points)
        charts.append(chart_card("Precision–recall", figure_html(pr, "fig-pr")))

    type_table = ""
    if u_labels is not None:
        type_chart, type_table = _per_type(users, u_labels, colors, label_types)
        if type_chart:
            charts.append(type_chart)
    out = []
    if charts:
        out.append(f'<div class="charts">{"".join(charts)}</div>')
    out.extend(note(e(n)) for n in notes)
    if type_table:
        out.append(f'<div class="card"><h3>Per attack type (user level)</h3>{type_table}</div>')
    return "".join(out)


def _per_type(users, u_labels, colors: dict, label_types: Mapping[str, str]) -> tuple[str, str]:
    """ROC-by-type chart card and the per-attack-type table."""
    labelled = u_labels.notna()
    lab = u_labels[labelled].astype(str)
    score = users.loc[labelled, "score"].to_numpy()
    flag = users.loc[labelled, "anomalous"].to_numpy()
    pred = users.loc[labelled, "anomaly_type"].to_numpy()
    is_norm = (lab == NORMAL).to_numpy()
    types = [t for t in lab.value_counts().index if t != NORMAL]
    rows, lines = [], []
    if is_norm.any():
        n = int(is_norm.sum())
        rows.append([
            badge(NORMAL, colors.get(NORMAL, "#555")), fmt_int(n),
            f"{fmt_int(flag[is_norm].sum())} <span class=\"muted\">({pct(flag[is_norm].sum(), n)} false positives)</span>",
            "–", num(float(np.nanmean(score[is_norm]))) if np.isfinite(score[is_norm]).any() else "–", "–",
        ])
    for t in types:
        m = (lab == t).to_numpy()
        n = int(m.sum())
        det = int(flag[m].sum())
        typed = int((flag[m] & (pred[m] == label_types.get(t, t))).sum())
        auc_txt = "–"
        if is_norm.any():
            sub = m | is_norm
            c = curves(m[sub], score[sub])
            if c is not None:
                auc_txt = f"{c.roc_auc:.3f}"
                lines.append(Line(f"{t} ({c.roc_auc:.3f})", c.fpr, c.tpr, colors.get(t, "#555"), width=1.8,
                                  threshold=c.roc_threshold))
        mean = float(np.nanmean(score[m])) if np.isfinite(score[m]).any() else float("nan")
        rows.append([
            badge(t, colors.get(t, "#555")), fmt_int(n),
            f"{fmt_int(det)} <span class=\"muted\">({pct(det, n)})</span>",
            f"{fmt_int(typed)} <span class=\"muted\">({pct(typed, det)})</span>",
            num(mean) if np.isfinite(mean) else "–", auc_txt,
        ])
    type_table = table(
        ["true type", "users", "detected at threshold", "detected with matching type", "mean score", "ROC-AUC vs normal"],
        rows, num_cols=(1, 2, 3, 4, 5),
    )
    chart = ""
    if lines:
        fig = curve_figure(lines, x_title="false positive rate", y_title="true positive rate", diagonal=True)
        chart = chart_card("ROC by attack type (vs normal users)", figure_html(fig, "fig-roc-types"))
    return chart, type_table
