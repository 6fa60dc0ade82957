"""Per-event and per-user features from token ids, timing, values and the encoder's surprisal.

- :mod:`.seqs`: :class:`Seqs` (flat sequences cut by ``offsets``) and per-user reductions
- :mod:`.items`: :class:`ItemStats`, the item statistics stage (counts, values, taste, catalogue)
- :mod:`.neighbours`: item-set comparisons and the :class:`Neighbours` reference stage
- :mod:`.events`: ``EVENT_FEATURES`` and :func:`event_features`
- :mod:`.users`: ``USER_FEATURES`` and :func:`user_features`
"""

from .events import EVENT_FEATURES, event_features, item_surprisal, known_or_user_mean, user_profiles
from .items import TASTE_DIM, ItemStats, catalogue_order, catalogue_rank
from .neighbours import (
    COPY_MIN_ITEMS,
    MAX_NATS,
    PART_LEAST,
    PART_SOURCE_RATIO,
    Neighbours,
    copy_overlap,
    item_sets,
    neighbour_similarity,
    part_copy_nats,
    part_missing,
)
from .seqs import Seqs, prev_index, prev_occurrences, segment_sums, user_spans
from .users import USER_FEATURES, best_segment, segment_novelty, user_features

__all__ = [
    "COPY_MIN_ITEMS", "EVENT_FEATURES", "MAX_NATS", "PART_LEAST", "PART_SOURCE_RATIO", "TASTE_DIM", "USER_FEATURES",
    "ItemStats", "Neighbours", "Seqs",
    "best_segment", "catalogue_order", "catalogue_rank", "copy_overlap", "event_features", "item_sets",
    "item_surprisal", "known_or_user_mean", "neighbour_similarity", "part_copy_nats", "part_missing",
    "prev_index", "prev_occurrences", "segment_novelty", "segment_sums", "user_features", "user_profiles",
    "user_spans",
]
