"""The campaign stage: groups of accounts pushing a few items, found over all users of a scored
log at once, after per-user scoring (issue 29; docs/campaigns.md).

The pass, and where each part runs on a partitioned (Ray) log:

1. :func:`~.adoptions.build_adoptions`: events -> one row per (user, item) pair (a group-by).
2. :func:`~.audience.window_audiences`: per item, its densest windows and their burst: one
   item's adoptions at a time, so a pass partitioned by item runs it with bounded memory.
3. :mod:`.lockstep`: each window audience's members' other adoptions in its period (a join by
   user, then a count by (audience, item)); over the whole log, the item-item co-adoption counts
   (``pair_lockstep``: a map-reduce over users), from which each item's lockstep core.
   :func:`~.audience.audience_tests` then compares each audience with its item's other adopters
   (per item again; it needs only the per-user evidence joined onto the adoptions and the
   fitted scalars of ``ItemContext``).
4. :class:`CampaignDetector` calibrates each item's statistic against the training items and
   keeps those past the threshold; :func:`~.groups.group_campaigns` (small: only those items'
   audiences) joins them into campaigns with targets and members.
5. :func:`~.result.campaign_result` builds the :class:`~..results.CampaignResult`;
   :func:`~.verdicts.apply_campaigns` merges it into the per-user verdicts, and
   :func:`~.verdicts.apply_allow` applies the allow-list to every verdict. A partitioned pass
   reduces the result to its members and their events (:func:`~.verdicts.membership`); each
   partition of whole users takes its part of that (:func:`~.verdicts.result_for`) and merges
   it there (runtime/ray/campaigns.py; docs/scaling.md, "Campaigns at 1B events").
"""

from .adoptions import Adoptions, build_adoptions, has_time_signal
from .audience import COMPONENTS, WINDOWS, Audiences, ItemContext, candidate_audiences
from .detector import CampaignDetector, Found, user_evidence
from .groups import Groups, group_campaigns
from .result import campaign_result, detect_campaigns
from .verdicts import Membership, apply_allow, apply_campaigns, membership, result_for

__all__ = [
    "COMPONENTS", "WINDOWS", "Adoptions", "Audiences", "CampaignDetector", "Found", "Groups", "ItemContext",
    "Membership", "apply_allow", "apply_campaigns", "build_adoptions", "campaign_result", "candidate_audiences",
    "detect_campaigns", "group_campaigns", "has_time_signal", "membership", "result_for", "user_evidence",
]
