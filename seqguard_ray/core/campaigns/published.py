"""A published campaign table (a batch ``seqguard score``'s campaigns and items frames) held in
memory for online scoring, and its evidence on a few users' events.

A request cannot see a campaign by itself: the campaigns are found over a whole log, then
published next to the model bundle (:mod:`seqguard_ray.io.campaign_table`). For each scored
user, :func:`apply_published` merges what the table says:

- a **member** of a published campaign is judged as the batch engine judges members
  (:func:`~.verdicts.apply_campaigns`: flagged, typed shilling / injection, the campaign named in
  its reasons) and its events on the campaign's targets are marked for repair (``event_campaign``);
- any user with events on a campaign's **target** items (member of another campaign, or of none)
  gets a reason naming the item and its campaign, and nothing else: a target's audience is mostly
  real people, so touching one is evidence, not a verdict.

Scores are in [0, 1]; higher means more anomalous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..results import CampaignResult, Scored
from ..validate import ids_to_str, ts_to_seconds
from .result import ACCOUNT_SLACK, FAKE_SHARE
from .verdicts import apply_campaigns

CAMPAIGN_COLUMNS = ("campaign_id", "user_ids", "target_item_ids", "first_ts", "last_ts", "n_events", "score", "reasons")
ITEM_COLUMNS = ("item_id", "campaign_score", "suspicious", "campaign_id", "reasons")
MAX_CAMPAIGNS = 100_000      # rows of campaigns.parquet
MAX_MEMBERS = 10_000_000     # user ids over all campaigns
MAX_TARGETS = 1_000_000      # target item ids over all campaigns


class CampaignTableError(ValueError):
    """A campaign table that cannot be served: the message names the file, the column and the problem."""


@dataclass(frozen=True)
class CampaignTable:
    """A validated campaign table. Ids are text, as the serving path reads them (``1042``, ``007``).

    ``campaigns``: the campaigns frame (index = campaign_id, times in seconds in ``t0`` / ``t1``);
    ``member_of`` / ``target_of``: user / target item id -> campaign id; ``item_reason``: each
    target's reasons from items.parquet. ``version``: the table's content hash (set by the publisher).
    """

    campaigns: pd.DataFrame
    member_of: dict[str, int]
    target_of: dict[str, int]
    item_reason: dict[str, str]
    version: str = ""

    @property
    def n_campaigns(self) -> int:
        return len(self.campaigns)

    @property
    def n_members(self) -> int:
        return len(self.member_of)

    @property
    def n_targets(self) -> int:
        return len(self.target_of)

    @classmethod
    def from_frames(cls, campaigns: pd.DataFrame, items: pd.DataFrame, *, version: str = "") -> CampaignTable:
        """Validate the two frames (as ``seqguard score`` writes them; items may hold only the
        suspicious rows) and index them; :class:`CampaignTableError` names what is wrong."""
        _require(campaigns, CAMPAIGN_COLUMNS, "campaigns.parquet")
        _require(items, ITEM_COLUMNS, "items.parquet")
        if len(campaigns) > MAX_CAMPAIGNS:
            raise CampaignTableError(f"campaigns.parquet has {len(campaigns):,} campaigns, over the limit of {MAX_CAMPAIGNS:,}")
        c = campaigns.reset_index(drop=True)
        cid = _int_column(c["campaign_id"], "campaigns.parquet", "campaign_id")
        if len(np.unique(cid)) != len(cid):
            dup = pd.Series(cid)[pd.Series(cid).duplicated()].iloc[0]
            raise CampaignTableError(f"campaigns.parquet: campaign_id {dup} appears twice")
        score = pd.to_numeric(c["score"], errors="coerce").to_numpy(np.float64)
        bad = ~(np.isfinite(score) & (score >= 0) & (score <= 1))
        if bad.any():
            raise CampaignTableError(f"campaigns.parquet: score must be in [0, 1]; campaign {cid[bad][0]} has {c['score'].iloc[np.argmax(bad)]!r}")
        t0, t1 = _seconds(c["first_ts"], "first_ts"), _seconds(c["last_ts"], "last_ts")
        members = _id_lists(c["user_ids"], cid, "user_ids", MAX_MEMBERS)
        targets = _id_lists(c["target_item_ids"], cid, "target_item_ids", MAX_TARGETS)
        member_of = _owner(members, cid, "user", "user_ids")
        target_of = _owner(targets, cid, "item", "target_item_ids")
        frame = pd.DataFrame({"user_ids": members, "target_item_ids": targets, "score": score, "t0": t0, "t1": t1,
                              "reasons": c["reasons"].astype(str).to_numpy()}, index=pd.Index(cid, name="campaign_id"))
        return cls(frame, member_of, target_of, _item_reasons(items, set(cid.tolist())), version)

    def evidence(self, offsets: np.ndarray, user_ids: Sequence[str], item: np.ndarray,
                 ts: np.ndarray) -> tuple[CampaignResult, list[list[int]]]:
        """What the table says about R users: ``offsets`` (R + 1,), ``user_ids`` (R,) text,
        ``item`` (N,) text and ``ts`` (N,) seconds of their events (each user's sorted by time).

        Returns a :class:`~..results.CampaignResult` over these users (the campaigns frame holds
        only their members' campaigns) and, per user, the campaigns whose targets it has events on."""
        n_users, n_ev = len(offsets) - 1, np.diff(offsets)
        uix = np.repeat(np.arange(n_users), n_ev)
        uc = np.array([self.member_of.get(str(u), -1) for u in user_ids], np.int64)
        ev_target = np.array([self.target_of.get(i, -1) for i in item.tolist()], np.int64)
        event_campaign = (uc[uix] >= 0) & (ev_target == uc[uix])
        user_score, user_fake = np.zeros(n_users), np.zeros(n_users, bool)
        for u in np.flatnonzero(uc >= 0):
            row = self.campaigns.loc[uc[u]]
            a, b = int(offsets[u]), int(offsets[u + 1])
            user_score[u] = row.score
            share = event_campaign[a:b].sum() / max(b - a, 1)
            timed = row.t1 > row.t0 and b > a
            inside = timed and ts[a] >= row.t0 - ACCOUNT_SLACK and ts[b - 1] <= row.t1 + ACCOUNT_SLACK
            user_fake[u] = share >= FAKE_SHARE or bool(inside)
        targeted = [sorted(set(ev_target[offsets[u]:offsets[u + 1]].tolist()) - {-1}) for u in range(n_users)]
        rows = self.campaigns.loc[sorted(set(uc[uc >= 0].tolist()))].reset_index()
        return CampaignResult(pd.DataFrame(columns=list(ITEM_COLUMNS)), rows, uc, event_campaign, user_score,
                              user_fake), targeted

    def target_reason(self, item_id: str, n_events: int) -> str:
        """The evidence of ``n_events`` events on target ``item_id``, for a user outside its campaign."""
        cid = self.target_of[item_id]
        row = self.campaigns.loc[cid]
        why = self.item_reason.get(item_id, "")
        return (f"{n_events} event(s) on item {item_id}, a target of campaign {cid} (score {row.score:.3f}, "
                f"{len(row.user_ids)} accounts); this account is not one of them" + (f": {why}" if why else ""))


def apply_published(offsets: np.ndarray, scored: Scored, table: CampaignTable, user_ids: Sequence[str],
                    item: np.ndarray, ts: np.ndarray, *, threshold: float) -> tuple[Scored, np.ndarray, list[list[int]]]:
    """``scored`` (R users, N events sorted by user then time) with ``table``'s evidence merged
    in (see the module docstring); ``threshold`` is the verdict threshold.

    Returns the new Scored (``event_campaign`` (N,) set), each user's campaign (R,) int64 (-1:
    none) and each user's targeted campaigns."""
    cr, targeted = table.evidence(offsets, user_ids, item, ts)
    members = cr.user_campaign >= 0
    out = apply_campaigns(offsets, scored, cr, threshold=threshold) if members.any() else \
        replace(scored, event_campaign=cr.event_campaign.copy())
    reasons = [list(r) for r in out.reasons]
    for u, cids in enumerate(targeted):
        a, b = int(offsets[u]), int(offsets[u + 1])
        for cid in cids:
            if cid == cr.user_campaign[u]:
                continue  # its own campaign: the member's reason names the targets
            on = [i for i in item[a:b].tolist() if table.target_of.get(i) == cid]
            for it in dict.fromkeys(on):
                reasons[u].append(table.target_reason(it, on.count(it)))
    return replace(out, reasons=reasons), cr.user_campaign.copy(), targeted


# --------------------------------------------------------------------------- validation helpers
def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CampaignTableError(f"{name} is missing column(s) {missing}; has {list(map(str, frame.columns))}")


def _int_column(col: pd.Series, name: str, column: str) -> np.ndarray:
    if col.isna().any() or not (pd.api.types.is_integer_dtype(col) or len(col) == 0):
        raise CampaignTableError(f"{name}: {column} must be integers without nulls, got dtype {col.dtype}"
                                 + (f" with {int(col.isna().sum())} null(s)" if col.isna().any() else ""))
    return col.to_numpy(np.int64)


def _collect(bad: list[str], what: str = ""):
    """A validate.Mark that appends the reason of each failing check to ``bad``."""
    def mark(mask, reason: str) -> None:
        n = int(np.asarray(mask).sum())
        if n:
            bad.append(f"{reason} in {n} {what}" if what else reason)
    return mark


def _seconds(col: pd.Series, column: str) -> np.ndarray:
    bad: list[str] = []
    secs = ts_to_seconds(col.rename("ts").reset_index(drop=True), _collect(bad, "campaign(s)")) if len(col) else np.zeros(0)
    if bad:
        raise CampaignTableError(f"campaigns.parquet: {column}: {'; '.join(bad)}")
    return secs


def _id_lists(col: pd.Series, cid: np.ndarray, column: str, limit: int) -> list[list[str]]:
    out, total = [], 0
    for c, ids in zip(cid.tolist(), col.tolist()):
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple, np.ndarray)):
            raise CampaignTableError(f"campaigns.parquet: {column} of campaign {c} must be a list of ids, "
                                     f"got {type(ids).__name__}")
        if len(ids) == 0:
            raise CampaignTableError(f"campaigns.parquet: {column} of campaign {c} is empty")
        bad: list[str] = []
        text = ids_to_str(pd.Series(list(ids), dtype=object), column, _collect(bad))
        if bad:
            raise CampaignTableError(f"campaigns.parquet: {column} of campaign {c}: {bad[0]}")
        total += len(text)
        if total > limit:
            raise CampaignTableError(f"campaigns.parquet holds more than {limit:,} {column}: over the limit")
        out.append([str(t) for t in text])
    return out


def _owner(lists: list[list[str]], cid: np.ndarray, what: str, column: str) -> dict[str, int]:
    owner: dict[str, int] = {}
    for c, ids in zip(cid.tolist(), lists):
        for i in ids:
            if owner.setdefault(i, c) != c:
                raise CampaignTableError(f"campaigns.parquet: {what} {i} is in the {column} of campaigns "
                                         f"{owner[i]} and {c}: an id belongs to one campaign")
    return owner


def _item_reasons(items: pd.DataFrame, known: set[int]) -> dict[str, str]:
    sus = items[items["suspicious"].astype(bool)] if len(items) else items
    if not len(sus):
        return {}
    cid = sus["campaign_id"]
    if cid.isna().any():
        raise CampaignTableError(f"items.parquet: {int(cid.isna().sum())} suspicious item(s) have no campaign_id")
    unknown = sorted(set(cid.astype(np.int64).tolist()) - known)
    if unknown:
        raise CampaignTableError(f"items.parquet names campaign(s) {unknown[:5]} that campaigns.parquet does not hold")
    bad: list[str] = []
    ids = ids_to_str(sus["item_id"].reset_index(drop=True), "item_id", _collect(bad))
    if bad:
        raise CampaignTableError(f"items.parquet: {bad[0]}")
    return dict(zip(ids.tolist(), sus["reasons"].astype(str).tolist()))
