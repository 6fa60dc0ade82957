"""The frozen reference (tests/golden, see make_golden.py): scoring its log with its bundle gives
the same flags, types, reasons and repaired rows as at the commit it was frozen at, and scores
within 1e-6. Guards every refactor of the pipeline against changing an answer by accident."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
SCORE_ATOL = 1e-6


@pytest.fixture(scope="module")
def rescored(tmp_path_factory):
    from seqguard_ray import SeqGuard
    from seqguard_ray.io.outputs import write_outputs

    out = tmp_path_factory.mktemp("golden_out")
    sg = SeqGuard.load(GOLDEN / "model")
    write_outputs(sg, sg.score(GOLDEN / "events.parquet"), out)
    return out


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """Trained afresh on the golden log with make_golden's config and seed, then scored."""
    import sys

    from seqguard_ray import SeqGuard
    from seqguard_ray.io.outputs import write_outputs

    import torch

    sys.path.insert(0, str(GOLDEN))
    from make_golden import TORCH_THREADS, config

    out = tmp_path_factory.mktemp("golden_retrained")
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)  # as frozen: other tests in this process may have set 1
    try:
        sg = SeqGuard(config()).fit(GOLDEN / "events.parquet")
        write_outputs(sg, sg.score(GOLDEN / "events.parquet"), out)
    finally:
        torch.set_num_threads(threads)
    return out


def test_training_with_the_same_seed_gives_the_same_answers(retrained):
    """The training path (vocabulary, encoder, detectors, calibration) is guarded too: on this
    machine's torch build, the same seed gives the same model, so the same outputs."""
    want, got = _pair(retrained, "users.parquet")
    for col in ("user_id", "anomalous", "anomaly_type", "reasons"):
        pd.testing.assert_series_equal(got[col], want[col])
    np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=SCORE_ATOL)
    want, got = _pair(retrained, "repaired.parquet")
    pd.testing.assert_frame_equal(got[list(want.columns)], want)


def _pair(rescored: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(GOLDEN / "expected" / name), pd.read_parquet(rescored / name)


def test_golden_users_have_the_same_flags_types_reasons_and_scores(rescored):
    want, got = _pair(rescored, "users.parquet")
    assert list(got.columns[: len(want.columns)]) == list(want.columns)
    for col in ("user_id", "anomalous", "anomaly_type", "reasons", "n_events"):
        pd.testing.assert_series_equal(got[col], want[col], check_names=True)
    np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=SCORE_ATOL)


def test_golden_events_have_the_same_verdicts_and_scores(rescored):
    want, got = _pair(rescored, "events.parquet")
    for col in ("user_id", "item_id", "ts", "anomalous", "row"):
        pd.testing.assert_series_equal(got[col], want[col])
    np.testing.assert_allclose(got["event_score"], want["event_score"], rtol=0, atol=SCORE_ATOL)


def test_golden_repair_keeps_the_same_rows_with_the_same_weights(rescored):
    for name in ("repaired.parquet", "actions.parquet"):
        want, got = _pair(rescored, name)
        pd.testing.assert_frame_equal(got[list(want.columns)], want)
    want = json.loads((GOLDEN / "expected" / "summary.json").read_text())
    got = json.loads((rescored / "summary.json").read_text())
    assert {k: got[k] for k in want} == want
