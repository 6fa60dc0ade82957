"""The training fit sample on Ray Data (core/sample.py decides; this module only moves counts and
blocks): each grouped block's users and events per length stratum and hash bin, added up on the
driver (a few KB a block) into the plan; each block filtered to its sampled users before encoding;
then one task (:func:`fit_detectors_task`) fits the detectors on the sample's encoded blocks, so
the driver never holds the sample."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from ...core.config import TrainConfig
from ...core.features import Seqs
from ...core.pipeline import SeqGuard
from ...core.results import Encoded
from ...core.sample import N_BINS, FitSample, plan_sample, sample_counts
from ...core.strata import STRATA
from ...core.validate import ids_to_str
from .cluster import TASK_CPUS, shared_threads
from .payload import bundle_payload, load_payload
from .stages import encoded_from_table


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


def _concat_seqs(parts: list[Seqs]) -> Seqs:
    """The users of several Seqs, one after another."""
    lens = np.concatenate([np.diff(s.offsets) for s in parts])

    def cat(f: str) -> np.ndarray:
        return np.concatenate([getattr(s, f) for s in parts])

    return Seqs(offsets=np.r_[0, np.cumsum(lens)].astype(np.int64), ts=cat("ts"), item=cat("item"),
                action=cat("action"), value=cat("value"), surprisal=cat("surprisal"), key=cat("item_key"))


def collect_encoded(sg: SeqGuard, tables: Iterable[pa.Table]) -> tuple[Encoded, set]:
    """Encoded blocks (:func:`stages.encoded_from_table`'s) as one compact Encoded (no frames kept)
    and the nodes that encoded them."""
    parts, embs, nodes = [], [], set()
    for table in tables:
        if table.num_rows == 0:
            continue
        nodes.update(table.column("_encode_node").unique().to_pylist())
        _, enc = encoded_from_table(sg, table)
        parts.append(enc.seqs)
        embs.append(enc.user_emb)
    if not parts:
        raise ValueError("no events to train on")
    return Encoded(_concat_seqs(parts), np.concatenate(embs)), nodes


def fit_detectors_task(payload: dict, fit_args: dict, *tables: pa.Table) -> tuple[dict[str, bytes], list[str]]:
    """A Ray task: SeqGuard.fit_detectors on the fit sample's encoded blocks (``tables``, passed as
    refs: Ray moves them from the object store to this task's node, never through the driver).
    ``payload``: ``payload.partial_payload`` of the trained SeqGuard; ``fit_args``: ``history``,
    ``t_train``, ``bad_rows`` and ``sample`` (the :class:`~...core.sample.FitSample` the blocks
    hold). Returns the bundle's files (``SeqGuard.save``'s: the same format a bundle is read back
    from, no pickles) and the nodes that encoded the sample.

    The task asks Ray for one CPU (it runs alone: the encoder pool has finished) and lets numpy /
    scikit-learn use its node's cores, as the in-process fit does."""
    from threadpoolctl import threadpool_limits

    sg = load_payload(payload)
    with threadpool_limits(shared_threads(None, 1)):
        enc, nodes = collect_encoded(sg, tables)
        sample = fit_args["sample"]
        if (enc.seqs.n_users, len(enc.seqs.ts)) != (sample.fit_users, sample.fit_events):
            raise RuntimeError(f"the fit sample moved: {enc.seqs.n_users} users / {len(enc.seqs.ts)} events encoded, "
                               f"{sample.fit_users} / {sample.fit_events} planned")
        sg.fit_detectors(enc, history=fit_args["history"], t_train=fit_args["t_train"], sample=sample,
                         bad_rows=fit_args["bad_rows"])
    with tempfile.TemporaryDirectory(prefix="seqguard-fit-") as d:
        sg.save(d)
        return bundle_payload(d), sorted(nodes)
