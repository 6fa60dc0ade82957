"""The campaign stage's answer as a :class:`~..results.CampaignResult`: the items and campaigns
frames (ids and timestamps as the input had them), members, the events repair undoes, reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..allowlist import AllowList
from ..results import CampaignResult
from ..schema import EventLog
from .audience import COMPONENTS, Audiences
from .detector import CampaignDetector, Found

SHOW_NATS = 3.0      # evidence components below this are not named in reasons
SHOWN_IDS = 5        # ids named in a reason
FAKE_SHARE = 0.5     # a member with at least this share of its events on the campaign's items is a fake profile
ACCOUNT_SLACK = 86_400.0  # ... or whose whole (timed) history lies within the campaign's days


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN_IDS]) + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def window_text(width: float) -> str:
    if width <= 0:
        return "among all its adopters"
    for w, text in ((3600.0, "within an hour"), (86_400.0, "within a day"), (7 * 86_400.0, "within a week"),
                    (30 * 86_400.0, "within 30 days")):
        if width == w:
            return text
    return f"within {width / 3600:.3g} hours"


def _audience_text(aud: Audiences, c: int, n: int, item_ids: np.ndarray) -> str:
    if aud.width[c] <= 0:
        return f"{aud.size[c]} of its {n} adopters, who also adopted item {item_ids[aud.lock_item[c]]}"
    return f"{aud.size[c]} of its {n} adopters {window_text(aud.width[c])}"


def evidence_text(aud: Audiences, c: int, item_ids: np.ndarray) -> str:
    """The named evidence of audience ``c``: its strong components, strongest first."""
    e = aud.evidence[c]
    words = {
        "burst": f"more adopters {window_text(aud.width[c])} than its own rate gives",
        "atypical": "accounts whose own histories are unusual",
        "new": "accounts new at the time",
        "value": f"{'top' if aud.direction[c] > 0 else 'bottom'} values unlike its other adopters'",
        "lockstep": (f"the same accounts on item {item_ids[aud.lock_item[c]]}"
                     + (f" in the same period ({aud.lock_count[c]} of them)" if aud.width[c] > 0 else "")
                     if aud.lock_item[c] >= 0 else "the same accounts on another item"),
    }
    parts = [f"{words[COMPONENTS[j]]} ({e[j]:.0f} nats)" for j in np.argsort(-e) if e[j] >= SHOW_NATS]
    return ", ".join(parts) if parts else "weak evidence in every test"


def campaign_result(log_: EventLog, item_codes: np.ndarray, item_first: np.ndarray, found: Found, *,
                    allowed_items: np.ndarray | None = None, min_members: int = 3) -> CampaignResult:
    """Frames and arrays of the contract from what the stage found in ``log_``.

    ``item_codes`` (N,): each event's item code; ``item_first`` (I,): each item's first event (for
    its input id); ``allowed_items`` (I,) bool.
    """
    ad, aud, g = found.ad, found.aud, found.groups
    f = log_.frame
    n_items = ad.n_items
    item_col = f["item_id"]
    item_ids = item_col.iloc[item_first].astype(str).to_numpy()
    allowed = np.zeros(n_items, bool) if allowed_items is None else np.asarray(allowed_items, bool)
    reasons = np.full(n_items, "", dtype=object)
    camo = {int(i): cid for cid, items in enumerate(g.items) for i in items}
    for i in np.flatnonzero((found.nats >= found.tau) | allowed):
        c = found.best[i]
        n = int(ad.item_size[i])
        ev = evidence_text(aud, c, item_ids) if c >= 0 else ""
        cid = g.item_campaign[i]
        if allowed[i]:
            reasons[i] = "on the allow-list" + (f" (its audience: {ev})" if ev and found.nats[i] >= found.tau else "")
        elif cid >= 0:
            reasons[i] = f"target of campaign {cid}: {_audience_text(aud, c, n, item_ids)}: {ev}"
        elif i in camo:
            reasons[i] = (f"campaign {camo[i]}'s accounts adopted it too, a small share of its {n} adopters "
                          f"(camouflage, not a target): {ev}")
        else:
            reasons[i] = f"an unusual audience ({ev}) but no campaign of {min_members} or more accounts on it"
    cid_item = pd.array(np.where(g.item_campaign >= 0, g.item_campaign, 0), dtype="Int64")
    cid_item[g.item_campaign < 0] = pd.NA
    items = pd.DataFrame({
        "item_id": item_col.iloc[item_first].astype(item_col.dtype).reset_index(drop=True),
        "campaign_score": found.score.astype(np.float64), "suspicious": g.item_campaign >= 0,
        "campaign_id": cid_item, "reasons": reasons.astype(str),
    })
    uix = log_.user_index()
    event_campaign = np.zeros(log_.n_events, bool)
    if len(g.member_rows):
        on = ad.event_pair >= 0
        event_campaign[on] = np.isin(ad.event_pair[on], g.member_rows)
    rows, user_score, user_fake = [], np.zeros(log_.n_users), np.zeros(log_.n_users, bool)
    users = log_.users
    for cid, targets in enumerate(g.targets):
        members = np.flatnonzero(g.user_campaign == cid)
        ev = np.flatnonzero(event_campaign & (g.user_campaign[uix] == cid))
        t_ids = list(item_ids[targets])
        lead = found.best[targets[0]]
        score = float(found.campaign_score[cid])
        if len(ev):
            first, last = ev[np.argmin(log_.ts[ev])], ev[np.argmax(log_.ts[ev])]
            t0, t1 = float(log_.ts[first]), float(log_.ts[last])
        else:
            first = last = 0
            t0, t1 = ad.t_min, ad.t_max
        rows.append({
            "campaign_id": cid, "user_ids": [str(u) for u in users[members]], "target_item_ids": t_ids,
            "first_ts": f["ts"].iloc[first], "last_ts": f["ts"].iloc[last], "n_events": len(ev), "score": score,
            "reasons": (f"{len(members)} accounts on {len(targets)} target item(s) ({_ids(t_ids)}); strongest target "
                        f"{t_ids[0]}: {_audience_text(aud, lead, int(ad.item_size[targets[0]]), item_ids)}: "
                        f"{evidence_text(aud, lead, item_ids)}"),
        })
        user_score[members] = score
        on_items = np.isin(item_codes, g.items[cid])
        share = np.bincount(uix[on_items], minlength=log_.n_users)[members] / np.maximum(ad.user_events[members], 1)
        inside = (ad.user_first[members] >= t0 - ACCOUNT_SLACK) & (ad.user_last[members] <= t1 + ACCOUNT_SLACK)
        user_fake[members] = (share >= FAKE_SHARE) | (ad.timed & inside)
    campaigns = pd.DataFrame(rows, columns=["campaign_id", "user_ids", "target_item_ids", "first_ts", "last_ts",
                                            "n_events", "score", "reasons"])
    campaigns = campaigns.astype({"campaign_id": np.int64, "n_events": np.int64, "score": np.float64})
    for col in ("first_ts", "last_ts"):
        campaigns[col] = campaigns[col].astype(f["ts"].dtype)
    return CampaignResult(items, campaigns, g.user_campaign.copy(), event_campaign, user_score, user_fake)



def item_codes(item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 code of each event's item id, codes in sorted id order, and (I,) each item's
    first event: ``np.unique(item, return_index=True, return_inverse=True)``'s, from a hash of
    the ids and a sort of the distinct ones only (a log's N ids repeat: sorting them all as
    Python strings was most of the campaign pass's first second, and 24 B/event)."""
    raw, uniques = pd.factorize(np.asarray(item, dtype=object), use_na_sentinel=False)
    raw = raw.astype(np.int64, copy=False)
    # factorize numbers ids in order of first appearance: a new code is one above all before it
    first = np.flatnonzero(np.r_[True, raw[1:] > np.maximum.accumulate(raw)[:-1]]) if len(raw) else raw
    order = np.argsort(np.asarray(uniques, dtype=object), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank[raw], first[order]


def detect_campaigns(detector: CampaignDetector, log_: EventLog, user_score: np.ndarray,
                     allow: AllowList | None = None) -> CampaignResult:
    """The campaigns of a scored log: ``user_score`` (U,) its users' scores from the per-user
    detectors; ``allow``: allowed users are never members (their adoptions do not count),
    allowed items never targets."""
    codes, item_first = item_codes(log_.item)
    n_items = len(item_first)
    left_out = allow.user_mask(log_.users) if allow else None
    allowed_items = allow.item_mask(log_.item[item_first]) if allow else np.zeros(n_items, bool)
    found = detector.find(log_.offsets, codes, log_.ts, log_.value, user_score, n_items=n_items, left_out=left_out,
                          target_ok=~allowed_items, row=log_.frame["_row"].to_numpy())
    return campaign_result(log_, codes, item_first, found, allowed_items=allowed_items,
                           min_members=int(detector.min_members))
