"""The campaign stage: groups of accounts pushing a few items, found over all users of a scored
log at once, after per-user scoring (issue 29; docs/campaigns.md).

The pass, and where each part runs on a partitioned (Ray) log:

1. :func:`~.parts.visit_part`, per partition of whole users: its events -> its visits (one row
   per visit of a user to an item, :func:`~.adoptions.user_visits`), its users and items, and
   the timing check's part (:func:`~.adoptions.time_part`). :func:`~.parts.join_parts` joins the
   partitions' visits into the log's adoptions with global user and item codes. The in-process
   engine is one partition: both engines run the same code from here on.
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
5. :func:`~.result.campaign_result` builds the items table and the :class:`~.verdicts.Membership`
   (the campaigns, their members and the visits repair undoes: O(members)), from visits, not
   events; each partition takes its part of it (:func:`~.verdicts.result_for`, which makes its
   members' visits again to mark their events) and :func:`~.verdicts.apply_campaigns` merges it
   into the per-user verdicts; :func:`~.verdicts.apply_allow` applies the allow-list to every
   verdict (runtime/ray/campaigns.py; docs/scaling.md, "Campaigns at 1B events").
"""

from .adoptions import Adoptions, build_adoptions, has_time_signal, time_part, time_signal
from .audience import COMPONENTS, WINDOWS, Audiences, ItemContext, candidate_audiences
from .detector import CampaignDetector, Found, user_evidence
from .groups import Groups, group_campaigns
from .parts import VisitPart, item_codes, join_parts, visit_part
from .result import campaign_result, detect_campaigns, find_in_parts
from .verdicts import Membership, apply_allow, apply_campaigns, result_for

__all__ = [
    "COMPONENTS", "WINDOWS", "Adoptions", "Audiences", "CampaignDetector", "Found", "Groups", "ItemContext",
    "Membership", "VisitPart", "apply_allow", "apply_campaigns", "build_adoptions", "campaign_result",
    "candidate_audiences", "detect_campaigns", "find_in_parts", "group_campaigns", "has_time_signal", "item_codes",
    "join_parts", "result_for", "time_part", "time_signal", "user_evidence", "visit_part",
]
