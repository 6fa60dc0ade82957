"""The Ray Data stages of scoring: actor classes that run the in-process engine's stages on blocks
of whole users (``from_frame``, ``tokenize``, ``encode``, ``detect``, ``repair``, and the output
writer of io.outputs), and the conversions between blocks and the engine's objects."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from ...core.schema import from_frame
from ...io.read_plan import cap_block, cut_column
from .cluster import node_id, shared_threads
from .payload import load_payload

SUR_COLS = ("_sur_item", "_sur_action", "_sur_gap")
# helper columns that travel between stages and never reach an output
HELPER_COLS = ("_in_row", "_bucket", "_cut", "_n", "_emb", "_encode_node", *SUR_COLS)
NO_SUMMARY = pa.table({"summary": pa.array([], pa.string())})   # what an empty block returns


def encode_bucket(sg, table: pa.Table):
    """(EventLog, Encoded) of one bucket of whole users, each cut to the bundle's history cap
    (``lg.cut``: events left out per user); ``lg.frame`` keeps the input columns, ``_in_row`` and
    ``_row`` (the row in this bucket)."""
    df = table.to_pandas().drop(columns="_bucket").sort_values("_in_row", kind="stable")
    lg = cap_block(from_frame(df, on_bad_rows="error", source="bucket"), sg.config.max_events_per_user)
    sg.check_log(lg, once=True)
    return lg, sg.encode(sg.tokenize(lg))


def encoded_from_table(sg, table: pa.Table):
    """Rebuild (EventLog, Encoded) from an :class:`EncodeStage` block (whole users; any block order);
    ``lg.frame`` as :func:`restore_input_rows` leaves it."""
    from ...core.results import Encoded

    emb_col = table.column("_emb")
    lg = cap_block(from_frame(table.drop_columns(["_emb"]).to_pandas(), on_bad_rows="error", source="encoded block"),
                   None)
    n = np.diff(lg.offsets)
    if not np.array_equal(lg.frame["_n"].to_numpy()[lg.offsets[:-1]], n):
        raise RuntimeError("a block holds only part of a user's history: Ray Data split a group")
    seqs = sg.tokenize(lg)
    seqs.surprisal = np.stack([lg.frame[c].to_numpy(np.float32) for c in SUR_COLS], axis=1)  # (N, 3)
    first = lg.frame["_row"].to_numpy()[lg.offsets[:-1]]  # block rows of each user's first event
    H = sg.model.config.hidden_size
    emb_rows = emb_col.take(pa.array(first)).combine_chunks() if len(first) else pa.array([], pa.list_(pa.float32()))
    user_emb = np.asarray(emb_rows.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(first), H)
    restore_input_rows(lg)
    return lg, Encoded(seqs, user_emb)


def restore_input_rows(lg) -> None:
    """``lg.frame["_row"]`` becomes the input row number and the helper columns go: the frame the
    engine's users_frame / events_frame / repair expect."""
    lg.frame["_row"] = lg.frame["_in_row"].to_numpy()
    lg.frame = lg.frame.drop(columns=[c for c in HELPER_COLS if c in lg.frame.columns])


def detect_and_write(sg, lg, enc, out: str, *, encode_nodes: list[str], detect_node: str, allow=None,
                     keep: bool = False) -> pa.Table:
    """Detectors on one block of whole users; ``lg.frame["_row"]`` holds the input row numbers.

    ``keep`` (a bundle with the campaign stage): the block goes on to the global campaign pass as
    its events with the verdicts as columns (runtime/ray/campaigns.py). Otherwise the allow-list
    (``allow``), repair and this block's parts of OUT follow here; one summary row.
    """
    from .campaigns import scored_block, write_block

    scored = sg.detect(enc)
    nodes = {"encode_nodes": list(encode_nodes), "detect_nodes": [detect_node]}
    if keep:
        return scored_block(lg, scored, nodes)
    summary = write_block(sg, lg, scored, out, allow=allow)
    summary.update(nodes)
    return pa.table({"summary": [json.dumps(summary)]})


class EncodeStage:
    """Actor: one bucket of events (whole users) -> the same events, sorted, with encoder outputs.

    Adds ``_sur_item``, ``_sur_action``, ``_sur_gap`` (N,) float32, ``_cut`` (the user's events left out
    by the history cap, on the first event), ``_n`` (the user's event count),
    ``_emb`` (the user's embedding, (H,) float32, on the user's first event; null elsewhere) and
    ``_encode_node``.
    """

    def __init__(self, payload: dict, *, score_batch_size: int | None = None, threads: int | None = None,
                 pool_size: int = 1, score_precision: str | None = None,
                 score_compile: bool | None = None):
        import torch

        torch.set_num_threads(shared_threads(threads, pool_size))  # OMP_NUM_THREADS is 1
        self.sg = load_payload(payload)
        if score_batch_size:
            self.sg.encoder.score_batch_size = score_batch_size
        if score_precision:
            self.sg.encoder.score_precision = score_precision
        if score_compile is not None:
            self.sg.encoder.score_compile = score_compile
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.sg.model.to(self.device)
        self.node_id = node_id()

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:  # e.g. a block none of whose users is in the training fit sample
            return table
        lg, enc = encode_bucket(self.sg, table)
        frame = lg.frame.drop(columns="_row")
        frame["_cut"] = cut_column(lg)
        for j, c in enumerate(SUR_COLS):
            frame[c] = enc.seqs.surprisal[:, j].astype(np.float32)
        n = np.diff(lg.offsets)
        frame["_n"] = np.repeat(n, n)
        out = pa.Table.from_pandas(frame, preserve_index=False)
        emb = [None] * len(frame)
        for u, a in enumerate(lg.offsets[:-1].tolist()):
            emb[a] = enc.user_emb[u]
        out = out.append_column("_emb", pa.array(emb, type=pa.list_(pa.float32())))
        return out.append_column("_encode_node", pa.array([self.node_id] * len(frame), pa.string()))


class DetectStage:
    """Actor: an encoded block -> detectors -> repair -> this block's Parquet parts; returns a summary row."""

    def __init__(self, payload: dict, out: str, *, allow=None, keep: bool = False):
        self.sg = load_payload(payload)
        self.out = out
        self.allow, self.keep = allow, keep
        self.node_id = node_id()

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return NO_SUMMARY
        enc_nodes = sorted(set(table.column("_encode_node").to_pylist()))
        lg, enc = encoded_from_table(self.sg, table)
        return detect_and_write(self.sg, lg, enc, self.out, encode_nodes=enc_nodes, detect_node=self.node_id,
                                allow=self.allow, keep=self.keep)


class ScoreStage(EncodeStage):
    """Actor (clusters without GPUs): one bucket -> encode -> detect -> repair -> its Parquet parts,
    in one process: a separate detector pool would share the same cores and cost a table round
    trip per block."""

    def __init__(self, payload: dict, out: str, *, allow=None, keep: bool = False, **kw):
        super().__init__(payload, **kw)
        self.out = out
        self.allow, self.keep = allow, keep

    def __call__(self, table: pa.Table) -> pa.Table:
        if table.num_rows == 0:
            return NO_SUMMARY
        lg, enc = encode_bucket(self.sg, table)
        restore_input_rows(lg)
        return detect_and_write(self.sg, lg, enc, self.out, encode_nodes=[self.node_id], detect_node=self.node_id,
                                allow=self.allow, keep=self.keep)
