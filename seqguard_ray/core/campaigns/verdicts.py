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


@dataclass
class Membership:
    """A whole log's :class:`~..results.CampaignResult` reduced to what a partition of whole users
    needs to merge it (:func:`membership`; :func:`result_for`): O(members + their campaign
    events), not O(users + events).

    ``user_ids`` (M,) the members' ids as text, sorted; ``user_campaign``, ``user_score``,
    ``user_fake`` (M,) theirs; ``event_rows`` (E,) sorted input rows of the campaign's events on
    its targets (``event_campaign``); ``items`` the suspicious items' rows; ``campaigns`` whole.
    """

    user_ids: np.ndarray
    user_campaign: np.ndarray
    user_score: np.ndarray
    user_fake: np.ndarray
    event_rows: np.ndarray
    items: pd.DataFrame
    campaigns: pd.DataFrame


def membership(cr: CampaignResult, users: np.ndarray, rows: np.ndarray) -> Membership:
    """The :class:`Membership` of ``cr``, the result for a log whose users are ``users`` (U,) (ids
    as text) and whose sorted events have input rows ``rows`` (N,)."""
    if len(users) != len(cr.user_campaign) or len(rows) != len(cr.event_campaign):
        raise ValueError(f"a result for {len(cr.user_campaign)} users and {len(cr.event_campaign)} events, "
                         f"given {len(users)} users and {len(rows)} rows")
    m = np.flatnonzero(np.asarray(cr.user_campaign) >= 0)
    ids = np.asarray(users).astype(str)[m]
    order = np.argsort(ids, kind="stable")
    m = m[order]
    return Membership(ids[order], cr.user_campaign[m].astype(np.int64), cr.user_score[m].astype(np.float64),
                      cr.user_fake[m].astype(bool), np.sort(np.asarray(rows, np.int64)[np.asarray(cr.event_campaign, bool)]),
                      cr.items[cr.items["suspicious"].to_numpy(bool)].reset_index(drop=True), cr.campaigns)


def result_for(ms: Membership, users: np.ndarray, rows: np.ndarray) -> CampaignResult:
    """The part of a whole log's result that concerns a partition of whole users: ``users`` (k,)
    their ids, ``rows`` (n,) the input rows of their sorted events. :func:`apply_campaigns` on
    the parts equals the parts of :func:`apply_campaigns` on the whole; the items frame holds
    the suspicious items only (the whole table is written once, by the global pass)."""
    ids = np.asarray(users).astype(str)
    pos = np.minimum(np.searchsorted(ms.user_ids, ids), max(len(ms.user_ids) - 1, 0))
    hit = (ms.user_ids[pos] == ids) if len(ms.user_ids) else np.zeros(len(ids), bool)
    pos = pos[hit]
    campaign = np.full(len(ids), -1, np.int64)
    score, fake = np.zeros(len(ids)), np.zeros(len(ids), bool)
    campaign[hit], score[hit], fake[hit] = ms.user_campaign[pos], ms.user_score[pos], ms.user_fake[pos]
    events = np.isin(np.asarray(rows, np.int64), ms.event_rows)
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
