"""Campaign evidence into per-user verdicts, and the allow-list over every verdict.

A member with weak evidence of its own in a campaign at or above the threshold is flagged: its
score rises to the campaign's, it is typed by its history (a fake profile -> shilling, quarantined;
a real account with a few campaign events -> injection, those events marked), and its reasons
name the campaign and its targets. Members already flagged keep their type and gain the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..results import CampaignResult, Scored
from ..schema import EventLog
from .adoptions import user_visits
from .parts import item_codes


@dataclass
class Membership:
    """A whole log's campaign result reduced to what a partition of whole users needs to merge it
    (:func:`result_for`): O(members + their campaign visits), not O(users + events); made by
    ``result.campaign_result``.

    ``user_ids`` (M,) the members' ids as text, sorted; ``user_campaign``, ``user_score``,
    ``user_fake`` (M,) theirs; ``visit_rows`` (E,) sorted input rows of the first events of the
    members' visits to their campaign's targets (what ``event_campaign`` marks: those visits'
    events); ``items`` the suspicious items' rows; ``campaigns`` whole.
    """

    user_ids: np.ndarray
    user_campaign: np.ndarray
    user_score: np.ndarray
    user_fake: np.ndarray
    visit_rows: np.ndarray
    items: pd.DataFrame
    campaigns: pd.DataFrame


def result_for(ms: Membership, lg: EventLog) -> CampaignResult:
    """The part of a whole log's result that concerns ``lg``, a partition of whole users of it
    (``lg.frame["_row"]``: input rows; the whole log itself in process): per-user arrays for its
    users, ``event_campaign`` for its events (their visits, made again here: a visit is one user's
    events). :func:`apply_campaigns` on the parts equals the parts of :func:`apply_campaigns` on
    the whole; the items frame holds the suspicious items only (the whole table is written once)."""
    ids = np.asarray(lg.users).astype(str)
    pos = np.minimum(np.searchsorted(ms.user_ids, ids), max(len(ms.user_ids) - 1, 0))
    hit = (ms.user_ids[pos] == ids) if len(ms.user_ids) else np.zeros(len(ids), bool)
    pos = pos[hit]
    campaign = np.full(len(ids), -1, np.int64)
    score, fake = np.zeros(len(ids)), np.zeros(len(ids), bool)
    campaign[hit], score[hit], fake[hit] = ms.user_campaign[pos], ms.user_score[pos], ms.user_fake[pos]
    events = np.zeros(lg.n_events, bool)
    if hit.any() and len(ms.visit_rows):
        member_events = np.repeat(campaign >= 0, np.diff(lg.offsets))
        codes = np.zeros(lg.n_events, np.int64)  # the members' items only: a visit is one user's
        codes[member_events] = item_codes(lg.item[member_events])[0]
        vis = user_visits(lg.offsets, codes, lg.ts, np.full(lg.n_events, np.nan), ~(campaign >= 0))
        rows = lg.frame["_row"].to_numpy()
        marked = np.isin(rows[vis.first_event], ms.visit_rows)
        events[member_events] = marked[vis.event_visit[member_events]]
    return CampaignResult(ms.items, ms.campaigns, campaign, events, score, fake)


def _campaign_reasons(cr: CampaignResult) -> dict[int, str]:
    out = {}
    for row in cr.campaigns.itertuples(index=False):
        ids = list(row.target_item_ids)
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        out[int(row.campaign_id)] = (f"member of campaign {row.campaign_id} (score {row.score:.3f}): "
                                     f"{len(row.user_ids)} accounts pushing item(s) {shown}")
    return out


def apply_campaigns(offsets: np.ndarray, scored: Scored, cr: CampaignResult, *, threshold: float) -> Scored:
    """``scored`` (a log's per-user verdicts, U users and N sorted events) with the campaign
    evidence of ``cr`` merged in; ``threshold`` is the verdict threshold."""
    n_ev = np.diff(offsets)
    uix = np.repeat(np.arange(len(n_ev)), n_ev)
    members = cr.user_campaign >= 0
    score = np.where(members, np.maximum(scored.score, cr.user_score), scored.score)
    newly = members & ~scored.anomalous
    atype = scored.anomaly_type.astype(object).copy()
    atype[newly] = np.where(cr.user_fake[newly], "shilling", "injection")
    ev_anom = scored.event_anomalous.copy()
    ev_score = scored.event_score.copy()
    whole = (newly & (atype == "shilling"))[uix]  # a fake profile is anomalous throughout
    pushed = cr.event_campaign & (atype == "injection")[uix] & members[uix]
    mark = whole | pushed
    ev_anom |= mark
    ev_score[mark] = np.maximum(ev_score[mark], score[uix][mark])
    texts = _campaign_reasons(cr)
    reasons = [list(r) for r in scored.reasons]
    for u in np.flatnonzero(members):
        cid = int(cr.user_campaign[u])
        head = [f"score {score[u]:.3f} >= threshold {threshold:.3f} as a campaign member"] if newly[u] else []
        reasons[u] = head + reasons[u] + [texts.get(cid, f"member of campaign {cid}")]
        if newly[u] and atype[u] == "injection":
            reasons[u].append(f"{int(cr.event_campaign[offsets[u]:offsets[u + 1]].sum())} of its "
                              f"{n_ev[u]} events are the campaign's, on its targets")
    return replace(scored, score=score, anomalous=scored.anomalous | members, anomaly_type=atype,
                   reasons=reasons, event_score=ev_score, event_anomalous=ev_anom,
                   length_doubt=scored.length_doubt & ~newly, event_campaign=cr.event_campaign.copy())


def apply_allow(offsets: np.ndarray, scored: Scored, allowed: np.ndarray) -> Scored:
    """``scored`` with the ``allowed`` (U,) users never flagged: score kept, not anomalous, type
    normal, no anomalous or campaign event, and "on the allow-list" first in their reasons."""
    allowed = np.asarray(allowed, bool)
    if not allowed.any():
        return scored
    ev_allowed = np.repeat(allowed, np.diff(offsets))
    atype = scored.anomaly_type.astype(object).copy()
    atype[allowed] = "normal"
    reasons = [(["on the allow-list"] + list(r)) if a else r for r, a in zip(scored.reasons, allowed)]
    ec = None if scored.event_campaign is None else scored.event_campaign & ~ev_allowed
    return replace(scored, anomalous=scored.anomalous & ~allowed, anomaly_type=atype, reasons=reasons,
                   event_anomalous=scored.event_anomalous & ~ev_allowed, length_doubt=scored.length_doubt & ~allowed,
                   event_campaign=ec)
