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
from seqguard_ray.core.tokens import N_SPECIAL, Vocab
from seqguard_ray.io.outputs import merge_summaries, read_output
from seqguard_ray.io.read_plan import plan_reads, read_unit, user_bucket

TINY = TrainConfig(epochs=1, hidden_size=32)
CAMPAIGN_TOL = 0.02  # campaign scores, Ray against in-process: the user scores they read agree within a step


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


@pytest.fixture(scope="module")
def planted(data):
    """The test log plus a lockstep group: 15 new accounts on the log's two rarest items and a few
    popular ones within one hour (as tests/test_cli.py plants one). Returns (path, members, targets)."""
    log = pd.concat([pd.read_parquet(data / "test" / f) for f in ("a.parquet", "b.parquet")], ignore_index=True)
    rng = np.random.default_rng(1)
    counts = log["item_id"].value_counts()
    targets = counts[counts == 2].index[:2].tolist()
    popular = counts.index[:8].to_numpy()
    t0 = int(log["ts"].max()) - 86400
    bots = pd.DataFrame([(f"bot{k}", int(item), t0 + int(rng.integers(0, 3600)))
                         for k in range(15) for item in targets + list(rng.choice(popular, 4, replace=False))],
                        columns=["user_id", "item_id", "ts"])
    bots = bots.assign(**{c: log[c].iloc[0] for c in log.columns if c not in bots.columns})[log.columns]
    path = data / "planted.parquet"
    pd.concat([log, bots], ignore_index=True).to_parquet(path, index=False, row_group_size=4000)
    return path, [f"bot{k}" for k in range(15)], targets


def _same_outputs(out, local_out, *, exact: bool, step: float = 0.0) -> None:
    """OUT of the Ray path against the in-process engine's: every output, items and campaigns too."""
    for name in ("items", "campaigns"):
        got, want = read_output(out, name), read_output(local_out, name)
        assert want is not None and got is not None, name
        assert list(got.columns) == list(want.columns) and (got.dtypes == want.dtypes).all(), name
        key = "item_id" if name == "items" else "campaign_id"
        got, want = got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
        if exact:
            pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9)
        elif name == "items":  # the evidence reads the user scores, which agree within ``step``
            assert got["item_id"].tolist() == want["item_id"].tolist()
            assert got["suspicious"].tolist() == want["suspicious"].tolist()
            assert got["campaign_id"].equals(want["campaign_id"])
            assert np.abs(got["campaign_score"] - want["campaign_score"]).max() <= CAMPAIGN_TOL
        else:
            same = ["campaign_id", "first_ts", "last_ts", "n_events"]
            pd.testing.assert_frame_equal(got[same], want[same])
            for c in ("user_ids", "target_item_ids"):
                assert [list(x) for x in got[c]] == [list(x) for x in want[c]]
            assert np.abs(got["score"] - want["score"]).max() <= CAMPAIGN_TOL
    users = read_output(out, "users").sort_values("user_id").reset_index(drop=True)
    want = read_output(local_out, "users").sort_values("user_id").reset_index(drop=True)
    assert list(users.columns) == list(want.columns) and (users.dtypes == want.dtypes).all()
    assert users["campaign_id"].equals(want["campaign_id"])
    if exact:
        for name in ("users", "events", "actions", "repaired"):
            got, want = read_output(out, name), read_output(local_out, name)
            key = {"users": ["user_id"], "events": ["row"], "actions": ["user_id"]}.get(name, list(want.columns[:3]))
            got, want = (f.sort_values(key, kind="stable").reset_index(drop=True) for f in (got, want))
            pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, obj=name)


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


def test_train_workers_share_their_nodes_cores_unless_told(monkeypatch):
    import os

    from seqguard_ray.runtime.ray.cluster import shared_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert shared_threads(None, 2) == 8       # Ray's OMP_NUM_THREADS from a 0.5-CPU label would be 1
    assert shared_threads(None, 1) == 16
    assert shared_threads(None, 32) == 1      # never 0
    assert shared_threads(3, 2) == 3          # as asked


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


def _part(lg, s, users):
    """The EventLog (input rows in ``_row``) and Scored of some users of a scored log."""
    from dataclasses import fields, replace

    from seqguard_ray.runtime.ray.campaigns import block_log

    n = np.diff(lg.offsets)
    ev = np.concatenate([np.arange(lg.offsets[u], lg.offsets[u + 1]) for u in users])
    frame = lg.frame.iloc[ev].rename(columns={"_row": "_in_row"})
    part = block_log(pa.Table.from_pandas(frame, preserve_index=False), "test")
    cut = {}
    for f in fields(s):
        v = getattr(s, f.name)
        if v is None:
            continue
        if isinstance(v, list):
            cut[f.name] = [v[u] for u in users]
        else:
            cut[f.name] = v[users] if len(v) == len(n) else v[ev]
    return part, replace(s, **cut)


def test_campaign_phases_on_blocks_of_users_equal_the_in_process_engine(data, planted, tmp_path):
    """The Ray path's phases run here on three blocks of whole users (no Ray): with the same
    verdicts in, every output equals the in-process engine's, the allow-list honoured too."""
    from seqguard_ray.core.allowlist import AllowList
    from seqguard_ray.io.outputs import prepare_parts, write_outputs
    from seqguard_ray.runtime.ray.campaigns import (
        apply_block,
        block_visits,
        campaign_pass,
        scored_block,
        scored_from_block,
    )
    from seqguard_ray.runtime.ray.payload import bundle_payload

    path, members, targets = planted
    sg = SeqGuard.load(data / "model")
    allow = AllowList.of(users=members[:3] + ["u00013"], items=[targets[0]])
    lg = read_events(path)
    scored = sg.score_log(lg)
    blocks = []
    for b in range(3):
        part, s = _part(lg, scored, np.flatnonzero(user_bucket(lg.users, 3) == b))
        blocks.append(scored_block(part, s, {"encode_nodes": ["n1"], "detect_nodes": ["n2"]}))
        back, s2, nodes = scored_from_block(blocks[-1].take(np.random.default_rng(b).permutation(blocks[-1].num_rows)))
        assert nodes == [{"encode_nodes": ["n1"], "detect_nodes": ["n2"]}]
        assert back.frame.columns.tolist() == part.frame.columns.tolist() and s2.reasons == s.reasons
    out = tmp_path / "blocks"
    prepare_parts(out)
    parts = [block_visits(t, allow) for t in blocks]
    # the global task gets each block's users, items and visits, never its events
    assert sum(len(p.users) for p in parts) == lg.n_users
    assert 0 < sum(len(p.v_row) for p in parts) < lg.n_events
    counts, found = campaign_pass(bundle_payload(data / "model"), allow, str(out), *parts)
    rows = [json.loads(apply_block(t, found, str(out), allow).column("summary")[0].as_py()) for t in blocks]
    summary = {**merge_summaries(rows), **counts}
    local = sg.score(path, allow=allow)
    local_summary = write_outputs(sg, local, tmp_path / "local")
    _same_outputs(out, tmp_path / "local", exact=True)
    assert {k: summary[k] for k in local_summary if k != "bad_rows_skipped"} == \
        {k: v for k, v in local_summary.items() if k != "bad_rows_skipped"}
    in_campaign = set(found.members.user_ids)
    assert local_summary["campaigns"] >= 1 and len(set(members[3:]) & in_campaign) >= 8 and not in_campaign & set(members[:3])


def test_without_a_campaign_stage_each_block_is_written_at_once_allow_list_and_all(data, planted, tmp_path):
    """A bundle without the campaign stage: no global pass; the allow-list is per user, so a block
    applies it before its repair, as the in-process engine does."""
    from seqguard_ray.core.allowlist import AllowList
    from seqguard_ray.io.outputs import prepare_parts, write_outputs
    from seqguard_ray.runtime.ray.campaigns import write_block
    from seqguard_ray.runtime.ray.payload import bundle_payload, has_campaign_stage

    payload = bundle_payload(data / "model")
    manifest = json.loads(payload["manifest.json"])
    assert has_campaign_stage(payload)
    assert not has_campaign_stage({**payload, "manifest.json": json.dumps({**manifest, "campaigns": None}).encode()})
    path, members, _ = planted
    sg = SeqGuard.load(data / "model")
    sg.campaign_detector = None  # as TrainConfig(campaigns=False) trains it
    allow = AllowList.of(users=members[:3] + ["u00013"])
    lg = read_events(path)
    prepare_parts(tmp_path / "block")
    summary = write_block(sg, lg, sg.score_log(lg), str(tmp_path / "block"), allow=allow)
    local = write_outputs(sg, sg.score(path, allow=allow), tmp_path / "local")
    assert read_output(tmp_path / "block", "items") is None and read_output(tmp_path / "local", "items") is None
    for name in ("users", "events", "actions", "repaired"):
        pd.testing.assert_frame_equal(read_output(tmp_path / "block", name), read_output(tmp_path / "local", name))
    assert summary == {k: v for k, v in local.items() if k != "bad_rows_skipped"}
    assert "campaigns" not in summary and summary["users_flagged"] >= 1


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
    # the campaign pass: the same campaigns, targets and members; items and campaigns tables alike
    _same_outputs(out, tmp_path / "local", exact=False)
    for k in ("campaigns", "campaign_members", "suspicious_items"):
        assert summary[k] == local_summary[k], k
    assert summary["campaigns"] >= 1  # the synthetic log holds some: the comparison is not vacuous


@pytest.mark.ray
def test_planted_campaign_and_allow_list_on_ray_equal_in_process(data, planted, ray_local, tmp_path):
    """A planted group, with three of its accounts and one of its targets allow-listed: the Ray
    engine finds the same campaigns (members, targets) as the in-process engine, and never flags
    nor repairs an allowed user."""
    from seqguard_ray.cli.main import main

    path, members, targets = planted
    allow = tmp_path / "allow.json"
    allow.write_text(json.dumps({"users": members[:3], "items": [int(targets[0])]}))
    for engine in ("ray", "local"):
        assert main(["-q", "score", "--events", str(path), "--model", str(data / "model"), "--out",
                     str(tmp_path / engine), "--engine", engine, "--allow-list", str(allow)]) == 0
    _same_outputs(tmp_path / "ray", tmp_path / "local", exact=False)
    users = read_output(tmp_path / "ray", "users").set_index("user_id")
    assert users.loc[members[3:], "campaign_id"].notna().sum() >= 8
    got = users.loc[members[:3]]
    assert not got["anomalous"].any() and got["campaign_id"].isna().all()
    assert got["reasons"].str.startswith("on the allow-list").all()
    assert not set(members[:3]) & set(read_output(tmp_path / "ray", "actions")["user_id"])
    items = read_output(tmp_path / "ray", "items").set_index("item_id")
    assert not items.loc[targets[0], "suspicious"] and items.loc[targets[1], "suspicious"]


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
def test_training_reads_the_log_once_and_groups_it_once(data, ray_local, tmp_path):
    """Ray training reads the log and shuffles it by user once (read_grouped materializes the
    grouped dataset): with the input file deleted after that, the vocabulary, the windows and the
    encodings still come out, equal to the in-process engine's. The control: the lazy dataset
    read_validated gives fails once the file is gone, so a re-read would be caught."""
    import shutil

    import ray

    from seqguard_ray.runtime.ray.batch import BatchOptions, encode_dataset, read_validated
    from seqguard_ray.runtime.ray.payload import partial_payload
    from seqguard_ray.runtime.ray.train import build_vocab, read_grouped, windows_dataset

    src = tmp_path / "train.parquet"
    shutil.copy(data / "train.parquet", src)
    lazy, _, _ = read_validated(src, events_per_bucket=5000)
    ds, _, n_buckets = read_grouped(src, events_per_bucket=5000)
    src.unlink()
    with pytest.raises(Exception, match="train.parquet"):
        lazy.count()
    sg = SeqGuard(TINY)
    sg.vocab = build_vocab(ds, min_count=TINY.min_item_count)
    log_ = read_events(data / "train.parquet")
    assert sg.vocab.items_ == Vocab(min_count=TINY.min_item_count).fit(log_.item, log_.action).items_
    _, n_windows = windows_dataset(ds, sg, n_buckets, grouped=True)
    assert n_windows == len(sg.encoder.windows(sg.tokenize(log_))[0])
    sg.encoder.init_model(len(sg.vocab.items_) + N_SPECIAL, len(sg.vocab.actions_) + N_SPECIAL)
    enc, _ = encode_dataset(ds, ray.put(partial_payload(sg)), n_buckets, BatchOptions(concurrency=1), grouped=True)
    assert enc.count() == log_.n_events


def test_the_detector_fit_receives_only_the_fit_sample_the_in_process_engine_picks(data, ray_local):
    """Over the budget, Ray's workers leave out the users outside the fit sample before the
    encodings are collected: the detector fit gets exactly the sample's rows, and its users are the
    ones the in-process engine fits on (core.sample decides for both)."""
    import ray

    from seqguard_ray.core.sample import fit_sample
    from seqguard_ray.runtime.ray.batch import BatchOptions, encode_dataset
    from seqguard_ray.runtime.ray.payload import partial_payload
    from seqguard_ray.runtime.ray.fit_sample import collect_encoded, plan_fit_sample, sample_block
    from seqguard_ray.runtime.ray.train import read_grouped

    log_ = read_events(data / "train.parquet")
    budget = log_.n_events // 3
    cfg = TrainConfig(epochs=1, hidden_size=32, fit_sample_events=budget, fit_sample_min_users=20)
    ds, _, n_buckets = read_grouped(data / "train.parquet", events_per_bucket=3000)
    plan, cut = plan_fit_sample(ds, cfg)
    want, keep = fit_sample(log_.users, np.diff(log_.offsets), budget, cfg.seed, cfg.fit_sample_min_users)
    assert plan == want and 0 < plan.fit_events <= budget and cut == {"users_truncated": 0, "events_truncated": 0}
    sg = SeqGuard(cfg)
    sg.vocab = Vocab(min_count=cfg.min_item_count).fit(log_.item, log_.action)
    sg.encoder.init_model(len(sg.vocab.items_) + N_SPECIAL, len(sg.vocab.actions_) + N_SPECIAL)
    sampled = ds.map_batches(sample_block, fn_args=(plan, cfg.max_events_per_user), batch_size=None,
                             batch_format="pyarrow")
    enc_ds, _ = encode_dataset(sampled, ray.put(partial_payload(sg)), n_buckets, BatchOptions(concurrency=1),
                               grouped=True)
    enc, _ = collect_encoded(sg, enc_ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert (enc.seqs.n_users, len(enc.seqs.ts)) == (plan.fit_users, plan.fit_events)
    assert sorted(np.diff(enc.seqs.offsets)) == sorted(np.diff(log_.offsets)[keep])


@pytest.mark.ray
def test_train_on_ray_gives_a_working_bundle_and_a_rerun_resumes_after_the_saved_epoch(data, ray_local, tmp_path,
                                                                                      monkeypatch):
    from seqguard_ray.runtime.ray.batch import read_validated
    from seqguard_ray.runtime.ray.train import (
        RayTrainOptions,
        fit,
        train_encoder_ray,
        windows_dataset,
    )

    def on_the_driver(*a, **k):
        raise AssertionError("the detectors were fitted on the driver")

    # the detector fit runs in a Ray task, so the driver never holds the fit sample
    monkeypatch.setattr(SeqGuard, "fit_detectors", on_the_driver)
    sg = fit(data / "train.parquet", tmp_path / "model", TINY,
             options=RayTrainOptions(num_workers=2, events_per_bucket=5000))
    log_ = read_events(data / "train.parquet")
    v = Vocab(min_count=TINY.min_item_count).fit(log_.item, log_.action)
    assert sg.vocab.items_ == v.items_ and sg.vocab.actions_ == v.actions_
    assert sg.metrics["train_events"] == log_.n_events and sg.metrics["ray_train_workers"] == 2
    phases = sg.metrics["phases_s"]  # where the run's time went, in the order the steps ran
    assert list(phases) == ["read_group", "vocab", "windows", "encoder", "sample_plan", "encode_sample", "detectors"]
    assert all(v >= 0 for v in phases.values()) and sum(phases.values()) <= sg.metrics["fit_s"] + 0.05  # rounding
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
    # the optimiser-step counter continues from the checkpoint's (a fresh run would start at 0)
    assert info["start_step"] == sg.metrics["global_step"] > 0 and info["global_step"] == 2 * info["start_step"]
