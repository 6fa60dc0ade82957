"""Ray Data scoring and Ray Train training against the in-process engine (one local Ray per session)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqguard_ray.core.config import TrainConfig
from seqguard_ray.core.pipeline import SeqGuard
from seqguard_ray.core.readers import read_events
from seqguard_ray.core.schema import EventsError
from seqguard_ray.io.outputs import merge_summaries, read_output
from seqguard_ray.io.read_plan import plan_reads, read_unit, user_bucket
from seqguard_ray.core.tokens import Vocab

TINY = TrainConfig(epochs=1, hidden_size=32)


def _events(n_users: int, seed: int) -> pd.DataFrame:
    from seqguard_ray.synth import generate
    return generate(n_users=n_users, seed=seed).events


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("raydata")
    train, test = _events(150, 0), _events(150, 1)
    train.to_parquet(d / "train.parquet", index=False)
    # two files with small row groups: several read units, input rows across files
    half = len(test) // 2
    (d / "test").mkdir()
    test.iloc[:half].to_parquet(d / "test" / "a.parquet", index=False, row_group_size=3000)
    test.iloc[half:].to_parquet(d / "test" / "b.parquet", index=False, row_group_size=3000)
    sg = SeqGuard(TINY).fit(d / "train.parquet")
    sg.save(d / "model")
    return d


# ------------------------------------------------------------------ no Ray


def test_plan_reads_numbers_rows_across_files_and_row_groups(data):
    units = plan_reads(data / "test")
    assert len(units) >= 4
    assert units[0].row0 == 0
    for a, b in zip(units, units[1:]):
        assert b.row0 == a.row0 + a.n_rows
    assert sum(u.n_rows for u in units) == len(read_events(data / "test").frame)


def test_read_units_carry_hive_partition_keys_like_the_local_reader(tmp_path):
    from dataclasses import asdict

    df = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": [1, 2, 3], "ts": [30, 10, 20]})
    for dt, rows in [("1", df.iloc[:2]), ("2", df.iloc[2:])]:
        (tmp_path / f"dt={dt}").mkdir()
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp_path / f"dt={dt}" / "p.parquet")
    parts = [read_unit(asdict(u), n_buckets=4, on_bad_rows="error").to_pandas() for u in plan_reads(tmp_path)]
    on_ray = pd.concat(parts).sort_values("_in_row")
    local = read_events(tmp_path).frame.sort_values("_row")
    assert on_ray["dt"].tolist() == local["dt"].tolist() == ["1", "1", "2"]


def test_plan_reads_errors_name_the_path(tmp_path):
    with pytest.raises(EventsError, match="does not exist"):
        plan_reads(tmp_path / "nope")
    with pytest.raises(EventsError, match="no .parquet files"):
        plan_reads(tmp_path)
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"user_id": ["a"], "item_id": [1], "ts": [1]}).iloc[:0].to_parquet(empty)
    with pytest.raises(EventsError, match=f"{empty}: the log holds no events"):  # as the local reader says
        plan_reads(empty)


def test_user_bucket_is_stable_and_in_range():
    users = np.array(["u1", "u2", "u3", "u1"], dtype=object)
    b = user_bucket(users, 7)
    assert b[0] == b[3] and ((b >= 0) & (b < 7)).all()
    assert (user_bucket(users, 7) == b).all()


def test_merge_summaries_adds_counts_merges_types_and_unites_node_lists():
    rows = [{"events_in": 3, "users": 1, "users_flagged": 1, "by_type": {"bot": 1}, "encode_nodes": ["b"], "detect_nodes": ["a"]},
            {"events_in": 4, "users": 2, "users_flagged": 2, "by_type": {"bot": 1, "farm": 1}, "encode_nodes": ["a"],
             "detect_nodes": ["a"]},
            {"events_in": 1, "users": 1, "users_flagged": 1, "by_type": {"farm": 2}, "encode_nodes": ["a"], "detect_nodes": ["c"]}]
    s = merge_summaries(rows)
    assert s["events_in"] == 8 and s["users"] == 4 and s["users_flagged"] == 4
    assert list(s["by_type"].items()) == [("farm", 3), ("bot", 2)]  # most first
    assert s["encode_nodes"] == ["a", "b"] and s["detect_nodes"] == ["a", "c"] and s["blocks"] == 3


def test_vocabulary_from_block_counts_equals_the_whole_logs(data):
    """Training on Ray adds up per-block item counts: the same Vocab as Vocab.fit on the whole log."""
    from seqguard_ray.core.schema import from_frame
    from seqguard_ray.runtime.ray.train import block_counts, vocab_from_blocks

    df = pd.read_parquet(data / "train.parquet")
    hot = np.arange(len(df)) % 7 == 0
    df["item_id"] = df["item_id"].where(~hot, 10**9)  # an item in every block: the most frequent only once added up
    parts = np.array_split(np.arange(len(df)), 5)
    blocks = [block_counts(pa.Table.from_pandas(df.iloc[ix].assign(_in_row=ix, _bucket=0), preserve_index=False))
              for ix in parts]
    lg = from_frame(df)
    want = Vocab(min_count=TINY.min_item_count).fit(lg.item, lg.action)
    got = vocab_from_blocks(blocks, min_count=TINY.min_item_count)
    assert got.items_ == want.items_ and got.actions_ == want.actions_
    assert got.item_counts_.tolist() == want.item_counts_.tolist()
    assert got.items_[0] == str(10**9) and got.item_counts_[0] == hot.sum()


def test_encode_bucket_warns_once_per_process_about_a_log_unlike_the_training_one(data, caplog, monkeypatch):
    """Buckets of a log without values, for a model that learned from them: said once, not once per
    bucket (a job has hundreds)."""
    from seqguard_ray.core import pipeline as engine
    from seqguard_ray.runtime.ray import stages

    monkeypatch.setattr(engine, "_WARNED_ONCE", set())
    sg = SeqGuard.load(data / "model")
    df = pd.read_parquet(data / "train.parquet").drop(columns="value")
    table = pa.Table.from_pandas(df.assign(_in_row=np.arange(len(df)), _bucket=0), preserve_index=False)
    with caplog.at_level("WARNING", logger="seqguard_ray.core.pipeline"):
        for _ in range(3):
            lg, enc = stages.encode_bucket(sg, table)
    assert lg.n_events == len(df) and enc.user_emb.shape[0] == lg.n_users
    assert caplog.text.count("learned from a 'value' column") == 1


def test_engine_auto_picks_local_for_small_input_and_ray_for_an_address(data, monkeypatch):
    from seqguard_ray.cli.main import build_parser
    from seqguard_ray.cli.ray_commands import choose_engine

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    base = ["score", "--events", str(data / "test"), "--model", "m", "--out", "o"]
    p = build_parser()
    assert choose_engine(p.parse_args(base)) == "local"
    assert choose_engine(p.parse_args(base + ["--address", "127.0.0.1:6379"])) == "ray"
    assert choose_engine(p.parse_args(base + ["--engine", "ray"])) == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "local")  # "start a local Ray", not a cluster to use
    assert choose_engine(p.parse_args(base)) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose_engine(p.parse_args(base)) == "ray"
    assert choose_engine(p.parse_args(base + ["--engine", "local"])) == "local"


# ------------------------------------------------------------------ Ray


@pytest.mark.ray
def test_cli_score_on_ray_equals_in_process_engine(data, ray_local, tmp_path):
    from seqguard_ray.cli.main import main
    from seqguard_ray.io.outputs import write_outputs

    out = tmp_path / "ray"
    assert main(["-q", "score", "--events", str(data / "test"), "--model", str(data / "model"),
                 "--out", str(out), "--engine", "ray", "--concurrency", "2", "--batch-size", "64"]) == 0
    sg = SeqGuard.load(data / "model")
    local = sg.score(data / "test")
    write_outputs(sg, local, tmp_path / "local")

    ev = read_output(out, "events")
    assert list(ev.columns) == list(local.events.columns)
    assert (ev.dtypes == local.events.dtypes).all()
    assert (ev["row"].to_numpy() == local.events["row"].to_numpy()).all()
    users = read_output(out, "users").set_index("user_id").loc[local.users["user_id"]].reset_index()
    assert list(users.columns) == list(local.users.columns) and len(users) == len(local.users)
    # Only the encoder's batch padding differs: raw scores agree to float rounding, which can move a
    # calibrated score by at most one step of the calibrator's reference (1 / (n + 1)).
    step = 1.0 / (len(sg.user_detectors.combined_.reference_) + 1) + 1e-9
    du = np.abs(users["score"].to_numpy() - local.users["score"].to_numpy())
    de = np.abs(ev["event_score"].to_numpy() - local.events["event_score"].to_numpy())
    assert du.max() <= step and (du < 1e-6).mean() >= 0.95
    assert de.max() <= step and (de < 1e-6).mean() >= 0.95
    close = np.abs(local.users["score"].to_numpy() - sg.user_detectors.threshold_) <= step
    assert (users["anomalous"].to_numpy() == local.users["anomalous"].to_numpy())[~close].all()
    summary = json.loads((out / "summary.json").read_text())
    local_summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert set(local_summary) <= set(summary)  # one summary, written by the same function for both engines
    assert summary["events_in"] == len(local.events) and summary["users"] == len(local.users)
    assert summary["bad_rows_skipped"] == 0
    rep, rep_local = pd.read_parquet(out / "repaired.parquet"), pd.read_parquet(tmp_path / "local" / "repaired.parquet")
    assert list(rep.columns) == list(rep_local.columns)
    assert abs(len(rep) - len(rep_local)) <= 0.02 * len(rep_local)


@pytest.mark.ray
def test_score_on_ray_reports_bad_rows(data, ray_local, tmp_path):
    from seqguard_ray.runtime.ray.batch import BatchOptions, score

    df = _events(20, 3)
    df.loc[5, "ts"] = -1
    df.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(EventsError, match="ts is negative"):
        score(data / "model", tmp_path / "bad.parquet", tmp_path / "o1", options=BatchOptions(concurrency=1))
    # the GPU clusters' layout (encoder and detector pools apart) on CPUs: same outputs
    s = score(data / "model", tmp_path / "bad.parquet", tmp_path / "o2", on_bad_rows="skip",
              options=BatchOptions(concurrency=1, fuse=False))
    assert s["bad_rows_skipped"] == 1 and s["events_in"] == len(df) - 1
    ev = read_output(tmp_path / "o2", "events")
    assert 5 not in set(ev["row"])
    sg = SeqGuard.load(data / "model")
    local = sg.score(tmp_path / "bad.parquet", on_bad_rows="skip")
    step = 1.0 / (len(sg.user_detectors.combined_.reference_) + 1) + 1e-9
    assert (ev["row"].to_numpy() == local.events["row"].to_numpy()).all()
    assert np.abs(ev["event_score"].to_numpy() - local.events["event_score"].to_numpy()).max() <= step


@pytest.mark.ray
def test_train_on_ray_gives_a_working_bundle_and_a_rerun_resumes_after_the_saved_epoch(data, ray_local, tmp_path):
    from seqguard_ray.runtime.ray.batch import read_validated
    from seqguard_ray.runtime.ray.train import RayTrainOptions, fit, train_encoder_ray, windows_dataset

    sg = fit(data / "train.parquet", tmp_path / "model", TINY,
             options=RayTrainOptions(num_workers=2, events_per_bucket=5000))
    log_ = read_events(data / "train.parquet")
    v = Vocab(min_count=TINY.min_item_count).fit(log_.item, log_.action)
    assert sg.vocab.items_ == v.items_ and sg.vocab.actions_ == v.actions_
    assert sg.metrics["train_events"] == log_.n_events and sg.metrics["ray_train_workers"] == 2
    loaded = SeqGuard.load(tmp_path / "model")
    res = loaded.score(data / "test")
    assert res.users["score"].between(0, 1).all()
    assert res.users["anomalous"].dtype == bool
    assert sg.metrics["train_flagged_share"] < 0.25  # calibrated on the training users
    run_dir = Path(sg.metrics["checkpoint_run_dir"])
    assert any(run_dir.glob("checkpoint_*"))
    assert (sg.metrics["start_epoch"], sg.metrics["last_epoch"]) == (0, 0)  # TINY: one epoch, from scratch

    # a re-run asking for 2 epochs with resume trains only epoch 1, from the checkpoint of epoch 0
    ds, _, n_buckets = read_validated(data / "train.parquet", events_per_bucket=5000)
    win, n_windows = windows_dataset(ds, sg, n_buckets)
    sg.encoder.epochs = 2
    _, info = train_encoder_ray(sg, win, n_windows, tmp_path / "model", RayTrainOptions(num_workers=2, resume=True))
    assert (info["start_epoch"], info["last_epoch"]) == (1, 1)
