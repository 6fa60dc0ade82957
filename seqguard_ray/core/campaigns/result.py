"""The campaign stage's answer: the items and campaigns frames (ids and timestamps as the input
had them), members, the visits repair undoes, reasons; from the joined visits of a log's
partitions (:mod:`.parts`), and for a whole log as a :class:`~..results.CampaignResult`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from ..allowlist import AllowList
from ..results import CampaignResult
from ..schema import EventLog
from .audience import COMPONENTS, Audiences
from .detector import CampaignDetector, Found
from .parts import Joined, VisitPart, join_parts, visit_part
from .verdicts import Membership, result_for

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


def campaign_result(j: Joined, found: Found, *, min_members: int = 3) -> tuple[pd.DataFrame, Membership]:
    """The items frame (every item of the log) and the :class:`~.verdicts.Membership` (the
    campaigns, their members and the visits repair undoes) of what the stage found in the joined
    log ``j``: O(items + members), whichever partitions the log came in."""
    ad, aud, g = found.ad, found.aud, found.groups
    n_items = ad.n_items
    item_ids = j.item_values.astype(str).to_numpy()
    allowed = np.asarray(j.allowed_items, bool)
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
        "item_id": j.item_values.reset_index(drop=True),
        "campaign_score": found.score.astype(np.float64), "suspicious": g.item_campaign >= 0,
        "campaign_id": cid_item, "reasons": reasons.astype(str),
    })
    rows, user_score, user_fake = [], np.zeros(ad.n_users), np.zeros(ad.n_users, bool)
    # a campaign's events: its members' visits to its targets (ties in time: the first in the
    # log's order of users, then input rows)
    mine = np.asarray(g.member_rows, np.int64)
    for cid, targets in enumerate(g.targets):
        members = np.flatnonzero(g.user_campaign == cid)
        vis = mine[g.user_campaign[ad.user[mine]] == cid]
        t_ids = list(item_ids[targets])
        lead = found.best[targets[0]]
        score = float(found.campaign_score[cid])
        if len(vis):
            row, end = j.visits_of(vis, "v_row"), j.visits_of(vis, "v_last")
            at = np.lexsort((row, ad.user[vis], ad.ts[vis]))[0]
            to = np.lexsort((row, ad.user[vis], -end))[0]
            t0, t1 = float(ad.ts[vis[at]]), float(end[to])
            first_ts, last_ts = j.input_ts(vis[at], "v_ts_in"), j.input_ts(vis[to], "v_last_in")
        else:
            t0, t1 = ad.t_min, ad.t_max
            first_ts = last_ts = j.first_ts.iloc[0]
        rows.append({
            "campaign_id": cid, "user_ids": [str(u) for u in j.users[members]], "target_item_ids": t_ids,
            "first_ts": first_ts, "last_ts": last_ts, "n_events": int(ad.n_events[vis].sum()), "score": score,
            "reasons": (f"{len(members)} accounts on {len(targets)} target item(s) ({_ids(t_ids)}); strongest target "
                        f"{t_ids[0]}: {_audience_text(aud, lead, int(ad.item_size[targets[0]]), item_ids)}: "
                        f"{evidence_text(aud, lead, item_ids)}"),
        })
        user_score[members] = score
        on_items = np.isin(ad.item, g.items[cid])
        share = (np.bincount(ad.user[on_items], weights=ad.n_events[on_items], minlength=ad.n_users)[members]
                 / np.maximum(ad.user_events[members], 1))
        inside = (ad.user_first[members] >= t0 - ACCOUNT_SLACK) & (ad.user_last[members] <= t1 + ACCOUNT_SLACK)
        user_fake[members] = (share >= FAKE_SHARE) | (ad.timed & inside)
    campaigns = pd.DataFrame(rows, columns=["campaign_id", "user_ids", "target_item_ids", "first_ts", "last_ts",
                                            "n_events", "score", "reasons"])
    campaigns = campaigns.astype({"campaign_id": np.int64, "n_events": np.int64, "score": np.float64})
    for col in ("first_ts", "last_ts"):
        campaigns[col] = campaigns[col].astype(j.first_ts.dtype)
    m = np.flatnonzero(g.user_campaign >= 0)  # the users are in id order
    ms = Membership(np.asarray(j.users[m]).astype(str), g.user_campaign[m].astype(np.int64),
                    user_score[m].astype(np.float64), user_fake[m], np.sort(j.visits_of(mine, "v_row")),
                    items[items["suspicious"].to_numpy(bool)].reset_index(drop=True), campaigns)
    return items, ms


def find_in_parts(detector: CampaignDetector, parts: list[VisitPart],
                  allow: AllowList | None = None) -> tuple[pd.DataFrame, Membership]:
    """The campaign stage over a log given as partitions of whole users (:mod:`.parts`): the
    items frame and the :class:`~.verdicts.Membership` each partition merges (``result_for``)."""
    j = join_parts(parts, allow)
    found = detector.find(j.ad, j.user_score, ~j.allowed_items)
    return campaign_result(j, found, min_members=int(detector.min_members))


def detect_campaigns(detector: CampaignDetector, log_: EventLog, user_score: np.ndarray,
                     allow: AllowList | None = None) -> CampaignResult:
    """The campaigns of a scored log: ``user_score`` (U,) its users' scores from the per-user
    detectors; ``allow``: allowed users are never members (their adoptions do not count),
    allowed items never targets. The log is one partition of :func:`find_in_parts`."""
    items, ms = find_in_parts(detector, [visit_part(log_, user_score, allow)], allow)
    return replace(result_for(ms, log_), items=items)
