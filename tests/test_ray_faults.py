"""Limits and faults on the local Ray (issue 30, items 4 and 5): the history cap on the Ray batch
path, a training worker killed mid-epoch (the run continues from its last checkpoint), and a
scoring actor killed mid-run (every input row scored exactly once)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqguard_ray.core.config import TrainConfig
from seqguard_ray.core.pipeline import SeqGuard
from seqguard_ray.io.outputs import read_output

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
CAP = 40


def _events(n_users: int, seed: int) -> pd.DataFrame:
    from seqguard_ray.synth import generate
    return generate(n_users=n_users, seed=seed).events


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rayfaults")
    train = _events(150, 0)
    train.to_parquet(d / "train.parquet", index=False)
    SeqGuard(TrainConfig(epochs=1, hidden_size=32, max_events_per_user=CAP)).fit(train).save(d / "capped")
    SeqGuard(TrainConfig(epochs=1, hidden_size=32, campaigns=False)).fit(train).save(d / "plain")
    test = _events(150, 1)
    bot = pd.DataFrame({"user_id": "runaway", "item_id": test["item_id"].iloc[:600].to_numpy(),
                        "ts": int(test["ts"].min()) + 7 * np.arange(600)})
    bot = bot.assign(**{c: test[c].iloc[0] for c in test.columns if c not in bot.columns})[test.columns]
    log = pd.concat([test, bot]).sample(frac=1, random_state=0).reset_index(drop=True)
    # small row groups: the runaway user's events are spread over many read units
    pq.write_table(pa.Table.from_pandas(log, preserve_index=False), d / "test.parquet", row_group_size=2000)
    return d


def test_history_cap_on_ray_equals_in_process(work, ray_local, tmp_path):
    from seqguard_ray.io.outputs import write_outputs
    from seqguard_ray.runtime.ray.batch import BatchOptions, score

    summary = score(work / "capped", work / "test.parquet", tmp_path / "ray",
                    options=BatchOptions(concurrency=1, events_per_bucket=3000, fuse=False))
    sg = SeqGuard.load(work / "capped")
    local = sg.score(work / "test.parquet")
    want = write_outputs(sg, local, tmp_path / "local")
    n_in = pd.read_parquet(work / "test.parquet").groupby("user_id").size()
    assert want["users_truncated"] == int((n_in > CAP).sum()) >= 1
    for k in ("users_truncated", "events_truncated", "events_in", "bad_rows_skipped"):
        assert summary[k] == want[k], k
    ev = read_output(tmp_path / "ray", "events")
    assert (ev["row"].to_numpy() == local.events["row"].to_numpy()).all()  # the same most recent events
    assert ev.groupby("user_id").size().max() == CAP


def test_a_large_text_log_is_refused_on_ray_with_the_convert_command(work, ray_local, tmp_path, monkeypatch):
    from seqguard_ray.core.schema import EventsError
    from seqguard_ray.io import read_plan
    from seqguard_ray.runtime.ray.batch import score

    csv = tmp_path / "big.csv"
    _events(20, 2).to_csv(csv, index=False)
    monkeypatch.setattr(read_plan, "TEXT_SINGLE_TASK_BYTES", 1000)
    with pytest.raises(EventsError, match=r"seqguard convert --events .*big\.csv --out .*big\.parquet"):
        score(work / "plain", csv, tmp_path / "o")


def _prepare_training(work: Path, epochs: int):
    from seqguard_ray.core.pretrained import init_encoder
    from seqguard_ray.runtime.ray.batch import read_validated
    from seqguard_ray.runtime.ray.train import build_vocab, windows_dataset

    sg = SeqGuard(TrainConfig(epochs=epochs, hidden_size=32, batch_size=16))
    ds, _, n_buckets = read_validated(work / "train.parquet", events_per_bucket=20_000)
    sg.vocab = build_vocab(ds, min_count=sg.config.min_item_count)
    win, n_windows = windows_dataset(ds, sg, n_buckets)
    init_encoder(sg.encoder, sg.vocab, sg.config)
    return sg, win, n_windows


def test_training_worker_killed_mid_epoch_resumes_from_the_last_checkpoint(work, ray_local, tmp_path):
    """Rank 1 dies (os._exit) at batch 2 of epoch 1, once: FailureConfig restarts the worker
    group, which continues at epoch 1 with epoch 0's weights, optimiser and step counter. A run
    that restarted from scratch (or from epoch 1 with the counter reset) fails the asserts. The
    worker waits 6 s before dying: Ray Train registers a checkpoint at its next 2-s poll of the
    workers, and a worker that dies before that restarts the run from the checkpoint before."""
    from seqguard_ray.runtime.ray.train import RayTrainOptions, train_encoder_ray

    sg, win, n_windows = _prepare_training(work, epochs=3)
    marker = tmp_path / "worker_exited"
    _, info = train_encoder_ray(sg, win, n_windows, tmp_path / "model", RayTrainOptions(num_workers=2, max_failures=1),
                                exit_at={"epoch": 1, "batch": 2, "rank": 1, "marker": str(marker), "wait_s": 6})
    died_epoch, died_batch, died_start_epoch, died_step = map(int, marker.read_text().split())
    assert (died_epoch, died_batch, died_start_epoch) == (1, 2, 0)  # the first attempt died inside epoch 1
    steps_per_epoch = died_step  # rank 1 had finished epoch 0 only
    assert steps_per_epoch > 2
    assert info["start_epoch"] == 1, info                      # not 0: restarted after epoch 0's checkpoint
    assert info["start_step"] == steps_per_epoch, info         # the step counter came from that checkpoint
    assert info["last_epoch"] == 2 and info["global_step"] == 3 * steps_per_epoch, info  # and went on counting
    assert np.isfinite(sg.encoder.history_[-1]["loss"])


def _pool_actor_pids() -> list[int]:
    import ray

    return [a["Pid"] for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and "ScoreStage" in a["ActorClassName"]]


def test_batch_job_survives_a_killed_actor_and_scores_every_row_once(work, ray_local, tmp_path):
    """A scoring actor is SIGKILLed after it wrote some of its blocks' parts: Ray restarts it and
    retries the lost block; its parts have deterministic names, so every input row is in the
    outputs exactly once, with the in-process engine's scores."""
    from seqguard_ray.runtime.ray.batch import BatchOptions, score

    src = work / "test.parquet"
    out = tmp_path / "out"
    parts = out / "events.parquet"
    kill: dict = {}

    def killer():
        t = time.perf_counter()
        while time.perf_counter() - t < 300 and not kill:
            done = len(list(parts.glob("part-*.parquet"))) if parts.is_dir() else 0
            pids = _pool_actor_pids()
            if done >= 1 and pids:
                os.kill(pids[0], signal.SIGKILL)
                kill.update(pid=pids[0], parts_at_kill=done)
                return
            time.sleep(0.05)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    summary = score(work / "plain", src, out, options=BatchOptions(concurrency=1, events_per_bucket=1500, fuse=True))
    th.join(5)
    total_parts = len(list(parts.glob("part-*.parquet")))
    assert kill and kill["parts_at_kill"] < total_parts, (kill, total_parts)  # killed mid-run
    n_rows = pq.ParquetFile(src).metadata.num_rows
    ev = read_output(out, "events")
    assert ev["row"].is_unique and len(ev) == n_rows == summary["events_in"]
    assert sorted(ev["row"]) == list(range(n_rows))
    users = read_output(out, "users")
    assert users["user_id"].is_unique
    rep = read_output(out, "repaired")
    sg = SeqGuard.load(work / "plain")
    local = sg.score(src)
    assert len(users) == len(local.users) and len(rep) == len(sg.repair(local).repaired)
    step = 1.0 / (len(sg.user_detectors.combined_.reference_) + 1) + 1e-9
    assert np.abs(ev["event_score"].to_numpy() - local.events["event_score"].to_numpy()).max() <= step
