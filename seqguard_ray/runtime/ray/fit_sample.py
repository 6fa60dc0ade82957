"""The training fit sample on Ray Data (core/sample.py decides; this module only moves counts):
each grouped block's users and events per length stratum and hash bin, added up on the driver
(a few KB a block) into the plan, then each block filtered to its sampled users before encoding,
so the driver collects only the sample."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ...core.config import TrainConfig
from ...core.sample import N_BINS, FitSample, plan_sample, sample_counts
from ...core.strata import STRATA
from ...core.validate import ids_to_str
from .cluster import TASK_CPUS


def _block_users(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block of whole users: (U,) their ids as the engine reads them, (U,) their rows, (N,) each row's user."""
    ids = ids_to_str(table.column("user_id").to_pandas(), "user_id", lambda mask, reason: None)  # rows valid already
    users, row_user, n = np.unique(ids.astype(str), return_inverse=True, return_counts=True)
    return users, n, row_user.reshape(-1)


def block_sample_counts(table: pa.Table, seed: int, max_events: int) -> dict[str, np.ndarray]:
    """One row: the block's :func:`~seqguard_ray.core.sample.sample_counts` (flattened) and the
    history cap's counts (users_truncated, events_truncated: the read tasks' cuts and the cap's)."""
    users, n, row_user = _block_users(table)
    cut_rows = table.column("_cut").to_numpy() if "_cut" in table.column_names else np.zeros(len(row_user))
    cut = np.bincount(row_user, weights=cut_rows, minlength=len(users)) + np.maximum(n - max_events, 0)
    return {"counts": sample_counts(users, np.minimum(n, max_events), seed).reshape(1, -1),
            "cut": np.array([[int((cut > 0).sum()), int(cut.sum())]], np.int64)}


def plan_fit_sample(ds, config: TrainConfig) -> tuple[FitSample, dict]:
    """The fit sample of a grouped dataset (the blocks' counts added up here: a few KB a block) and
    the history cap's counts over the whole log (users_truncated, events_truncated)."""
    blocks = ds.map_batches(block_sample_counts, fn_args=(config.seed, config.max_events_per_user), batch_size=None,
                            batch_format="pyarrow", num_cpus=TASK_CPUS).iter_batches(batch_size=None, batch_format="numpy")
    counts, cut = np.zeros(len(STRATA) * N_BINS * 2, np.int64), np.zeros(2, np.int64)
    for b in blocks:
        counts += np.asarray(b["counts"], np.int64).sum(0)
        cut += np.asarray(b["cut"], np.int64).sum(0)
    plan = plan_sample(counts.reshape(len(STRATA), N_BINS, 2), config.fit_sample_events, config.seed,
                       config.fit_sample_min_users)
    return plan, {"users_truncated": int(cut[0]), "events_truncated": int(cut[1])}


def sample_block(table: pa.Table, plan: FitSample, max_events: int) -> pa.Table:
    """The rows of a block of whole users whose users are in the fit sample."""
    users, n, row_user = _block_users(table)
    return table.filter(pa.array(plan.keep(users, np.minimum(n, max_events))[row_user]))
