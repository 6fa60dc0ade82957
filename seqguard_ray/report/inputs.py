"""The report's inputs, checked and normalised: errors name the field and the bad values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

USER_COLUMNS = ("user_id", "score", "anomalous", "anomaly_type", "reasons")
EVENT_COLUMNS = ("user_id", "item_id", "ts", "event_score", "anomalous")
ITEM_COLUMNS = ("item_id", "campaign_score", "suspicious", "campaign_id", "reasons")
CAMPAIGN_COLUMNS = ("campaign_id", "user_ids", "target_item_ids", "first_ts", "last_ts", "n_events", "score", "reasons")
NORMAL = "normal"


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


def check_users(users: pd.DataFrame) -> pd.DataFrame:
    """One row per user: user_id (str), score (float, NaN allowed), anomalous, anomaly_type, reasons."""
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


def check_events(events: pd.DataFrame) -> pd.DataFrame:
    """One row per event: user_id (str), item_id and action (as given; action None when absent),
    event_score (float, NaN allowed), anomalous, ts (as given)."""
    _require(events, EVENT_COLUMNS, "events")
    cols = {
        "user_id": events["user_id"].astype(str).to_numpy(dtype=object),
        "item_id": events["item_id"].to_numpy(),
        "action": events["action"].to_numpy() if "action" in events else None,
        "event_score": _check_scores(events["event_score"], "events.event_score"),
        "anomalous": events["anomalous"].fillna(False).astype(bool).to_numpy(),
    }
    return pd.DataFrame(cols).assign(ts=events["ts"].reset_index(drop=True))


def id_text(values: pd.Series) -> np.ndarray:
    """(N,) object ids as text, the way the readers read them: integral floats without decimals."""
    if pd.api.types.is_float_dtype(values):
        return np.array([str(int(x)) if np.isfinite(x) and x == int(x) else str(x)
                         for x in values.to_numpy(np.float64)], dtype=object)
    return values.astype(str).to_numpy(dtype=object)


def _id_lists(values: pd.Series, field: str) -> list[list[str]]:
    out = []
    for i, ids in enumerate(values):
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise ValueError(f"{field} must hold a list of ids per row, row {i} holds {ids!r}")
        out.append([str(v) for v in ids])
    return out


def check_items(items: pd.DataFrame | None) -> pd.DataFrame | None:
    """One row per item: item_id (str), campaign_score (float in [0, 1]), suspicious, campaign_id
    (nullable Int64), reasons; None stays None."""
    if items is None:
        return None
    _require(items, ITEM_COLUMNS, "items")
    try:
        cid = pd.array(items["campaign_id"], dtype="Int64")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"items.campaign_id must be integers or null: {exc}") from exc
    return pd.DataFrame({
        "item_id": id_text(items["item_id"]),
        "campaign_score": _check_scores(items["campaign_score"], "items.campaign_score"),
        "suspicious": items["suspicious"].fillna(False).astype(bool).to_numpy(),
        "campaign_id": cid,
        "reasons": items["reasons"].fillna("").astype(str).to_numpy(dtype=object),
    })


def check_campaigns(campaigns: pd.DataFrame | None) -> pd.DataFrame | None:
    """One row per campaign: campaign_id (int), user_ids and target_item_ids (lists of str),
    first_ts / last_ts (as given), n_events (int), score (float in [0, 1]), reasons; None stays None."""
    if campaigns is None:
        return None
    _require(campaigns, CAMPAIGN_COLUMNS, "campaigns")
    c = campaigns.reset_index(drop=True)
    try:
        ids = c["campaign_id"].astype(np.int64).to_numpy()
        n_events = c["n_events"].astype(np.int64).to_numpy()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"campaigns.campaign_id and campaigns.n_events must be integers: {exc}") from exc
    return pd.DataFrame({
        "campaign_id": ids,
        "user_ids": _id_lists(c["user_ids"], "campaigns.user_ids"),
        "target_item_ids": _id_lists(c["target_item_ids"], "campaigns.target_item_ids"),
        "first_ts": c["first_ts"], "last_ts": c["last_ts"], "n_events": n_events,
        "score": _check_scores(c["score"], "campaigns.score"),
        "reasons": c["reasons"].fillna("").astype(str).to_numpy(dtype=object),
    })


def check_event_labels(labels: np.ndarray | None, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"event_labels must have shape ({n},) to match events, got {arr.shape}")
    return arr.astype(bool)


def align_user_labels(labels: pd.Series | None, users: pd.DataFrame) -> pd.Series | None:
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


def as_unit_float(value) -> float | None:
    """``value`` as a float in [0, 1], else None (a threshold that cannot be drawn is left out)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if 0.0 <= f <= 1.0 else None
