"""The group side of the campaign stage: suspicious items whose audiences overlap become one
campaign; its targets are the items it pushes; its members are the accounts on most targets.

Small by construction: only items whose audience evidence passed the calibrated threshold, and
their audiences, take part (a restricted user x item graph, as FRAUDAR needs on organic data
whose dense part is popular items and heavy users, not campaigns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .adoptions import Adoptions
from .audience import COMPONENTS, Audiences

PUSH_SHARE = 0.25  # a target: the audience is at least this share of the item's adopters ...
# ... or the audience's values are most of its evidence (a nuke of a popular item)
LINK_SHARE = 0.5   # two items are one campaign when this share of the smaller audience is shared
TIE = 0.5  # a member adopted at least this share of its campaign's targets (in their audiences), and two
# where there are two: one adoption of one target in its window is what organic adopters do too


@dataclass
class Groups:
    """Campaigns found among the suspicious items (K campaigns)."""

    item_campaign: np.ndarray   # (I,) campaign of each item it targets, -1: none
    member_rows: np.ndarray     # (P,) adoption rows of members on their campaign's targets
    user_campaign: np.ndarray   # (U,) each user's campaign, -1: none
    nats: np.ndarray            # (K,) each campaign's evidence: its strongest target's calibrated nats
    targets: list[np.ndarray]   # per campaign: item codes of its targets, strongest first
    items: list[np.ndarray]     # per campaign: every suspicious item of it (targets and camouflage)


def pushed(ad: Adoptions, aud: Audiences, best: np.ndarray, value_mean: float) -> np.ndarray:
    """(len(best),) whether each item's best audience pushes it: a large share of its adopters, or
    values against the item's other adopters' that are most of the evidence (a nuke of a liked
    item; a bandwagon's top values on items already liked are camouflage, not a push)."""
    item = aud.item[best]
    share = aud.size[best] / np.maximum(ad.item_size[item], 1)
    ev = aud.evidence[best]
    aud_nats = ev[:, 1:].sum(1)
    d = aud.direction[best]
    by_value = (d != 0) & (ev[:, COMPONENTS.index("value")] >= 0.5 * aud_nats)
    if by_value.any() and np.isfinite(value_mean):
        against = np.zeros(len(best), bool)
        for k in np.flatnonzero(by_value):
            rows = np.arange(ad.item_offsets[item[k]], ad.item_offsets[item[k] + 1])
            others = ad.value[np.setdiff1d(rows, aud.rows_of(best[k]))]
            others = others[np.isfinite(others)]
            against[k] = len(others) == 0 or d[k] * (others.mean() - value_mean) < 0
        by_value &= against
    # each value against the consensus moves the item's mean further than an adoption moves
    # its popularity: half the share makes a push
    return (share >= PUSH_SHARE) | (by_value & (share >= PUSH_SHARE / 2))


def _hits(ad: Adoptions, aud: Audiences, c: int, value_mean: float) -> np.ndarray:
    """Rows of audience ``c`` that count as the campaign's: all, or where the audience pushes a
    value those on its side of the log's mean value (or without a value)."""
    rows = aud.rows_of(c)
    d = aud.direction[c]
    if d == 0 or not np.isfinite(value_mean):
        return rows
    v = ad.value[rows]
    return rows[~np.isfinite(v) | (np.sign(v - value_mean) == d)]


def group_campaigns(ad: Adoptions, aud: Audiences, best: np.ndarray, nats: np.ndarray, tau: float, *,
                    min_members: int, value_mean: float = np.nan, target_ok: np.ndarray | None = None) -> Groups:
    """Campaigns among the items whose calibrated evidence ``nats`` (I,) reaches ``tau``.

    Greedy from the pushed item with the largest audience: its audience (less accounts already in a campaign) is
    a campaign's core; its targets are the pushed items of the same component (items linked by
    shared audiences) that at least TIE of the core adopted; its members, the accounts on enough
    of those targets. A pushed item whose audience holds ``min_members`` of an earlier campaign's
    members (or is mostly theirs) is that campaign's too, not a new campaign of whoever else
    adopted it then: its target where the campaign's members make LINK_SHARE of the item's pushing
    audience (the rule that links two items; a campaign whose accounts each push only part of its
    targets has no single core that holds them all), else a camouflage item it moved. A campaign that gains targets so has its members recounted
    over all of them.

    ``best`` (I,): each item's best audience (index into ``aud``, -1: none); ``target_ok`` (I,):
    items that may be targets (False: allow-listed); ``value_mean``: the log's mean value.
    """
    n_items = ad.n_items
    item_campaign = np.full(n_items, -1, np.int64)
    user_campaign = np.full(ad.n_users, -1, np.int64)
    strong = np.flatnonzero((nats >= tau) & (best >= 0))
    if len(strong) == 0:
        return Groups(item_campaign, np.zeros(0, np.int64), user_campaign, np.zeros(0), [], [])
    sb = best[strong]
    hit_rows = [_hits(ad, aud, c, value_mean) for c in sb]
    hit_users = [np.unique(ad.user[r]) for r in hit_rows]
    rows = [aud.rows_of(c) for c in sb]
    m = sp.csr_matrix((np.ones(sum(map(len, rows))), (np.repeat(np.arange(len(strong)), [len(r) for r in rows]),
                                                       ad.user[np.concatenate(rows)])), shape=(len(strong), ad.n_users))
    m.sum_duplicates()
    m.data[:] = 1.0
    overlap = (m @ m.T).tocoo()
    k = aud.size[sb]
    link = overlap.data >= np.maximum(min_members, LINK_SHARE * np.minimum(k[overlap.row], k[overlap.col]))
    graph = sp.coo_matrix((np.ones(link.sum()), (overlap.row[link], overlap.col[link])), shape=(len(strong),) * 2)
    _, comp = connected_components(graph, directed=False)
    is_target = pushed(ad, aud, sb, value_mean)
    if target_ok is not None:
        is_target &= target_ok[strong]
    n_hits = np.array([len(h) for h in hit_users])
    campaigns: list[dict] = []
    taken = np.zeros(len(strong), bool)
    for s0 in np.lexsort((-nats[strong], -n_hits)):  # the largest audiences first: a campaign before its fillers
        if not is_target[s0] or taken[s0]:
            continue
        owner = user_campaign[hit_users[s0]]
        if (owner >= 0).sum() >= min_members or (owner >= 0).mean() >= 0.5:  # an earlier campaign's item
            cid = int(np.bincount(owner[owner >= 0]).argmax())
            if (owner == cid).sum() >= LINK_SHARE * len(owner):  # linked to its accounts as to an item: its target
                campaigns[cid]["targets"].append(int(s0))
                campaigns[cid]["grown"] = True
            else:
                campaigns[cid]["items"].add(int(s0))
            taken[s0] = True
            continue
        core = hit_users[s0][owner < 0]
        if len(core) < min_members:
            continue
        tg = [s0] + [t for t in np.flatnonzero((comp == comp[s0]) & is_target & ~taken)
                     if t != s0 and np.isin(hit_users[t], core).sum() >= TIE * len(core)]
        users, hits = np.unique(np.concatenate([hit_users[t] for t in tg]), return_counts=True)
        members = users[(hits >= max(min(len(tg), 2), np.ceil(TIE * len(tg)))) & (user_campaign[users] < 0)]
        if len(members) < min_members:
            continue
        cid = len(campaigns)
        user_campaign[members] = cid
        taken[tg] = True
        campaigns.append({"strength": float(nats[strong[s0]]), "targets": tg,
                          "items": set(np.flatnonzero(comp == comp[s0]).tolist())})
    for cid, c in enumerate(campaigns):  # recount the members of a campaign that gained targets
        if c.get("grown"):
            tg = c["targets"]
            users, hits = np.unique(np.concatenate([hit_users[t] for t in tg]), return_counts=True)
            free = (user_campaign[users] < 0) | (user_campaign[users] == cid)
            user_campaign[users[free & (hits >= max(min(len(tg), 2), np.ceil(TIE * len(tg))))]] = cid
    member_rows = []
    for cid, c in enumerate(campaigns):
        item_campaign[strong[c["targets"]]] = cid
        r = np.concatenate([hit_rows[t] for t in c["targets"]])
        member_rows.append(r[user_campaign[ad.user[r]] == cid])
    return Groups(item_campaign, np.unique(np.concatenate(member_rows)) if member_rows else np.zeros(0, np.int64),
                  user_campaign, np.array([c["strength"] for c in campaigns]),
                  [strong[c["targets"]] for c in campaigns],
                  [strong[sorted(c["items"] | set(c["targets"]))] for c in campaigns])
