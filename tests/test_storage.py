"""Locations through one resolver (core/storage.py): local paths and URIs, and the CLI's events,
bundles, outputs and reports on a real S3 API (moto's server, started here on 127.0.0.1 with the
endpoint and fake credentials of ``s3_env`` in the environment), in process and on Ray."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_events
from pyarrow import fs

from seqguard_ray.cli.main import main
from seqguard_ray.core import storage
from seqguard_ray.io.outputs import OUTPUTS, read_output

# --------------------------------------------------------------------------- the resolver


def test_a_plain_path_is_the_local_filesystem_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    filesystem, path = storage.resolve("sub/events.parquet")
    assert isinstance(filesystem, fs.LocalFileSystem) and path == str(tmp_path / "sub" / "events.parquet")
    assert storage.absolute("sub") == str(tmp_path / "sub")
    assert storage.join("sub", "a", "b.parquet") == os.path.join("sub", "a", "b.parquet")


def test_a_file_uri_is_the_local_filesystem(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    filesystem, path = storage.resolve(f"file://{tmp_path}/x.txt")
    assert isinstance(filesystem, fs.LocalFileSystem) and path == f"{tmp_path}/x.txt"
    assert storage.read_text(f"file://{tmp_path}/x.txt") == "hello"
    assert storage.list_files(f"file://{tmp_path}") == [(f"file://{tmp_path}/x.txt", 5)]


def test_an_s3_uri_takes_its_endpoint_from_aws_endpoint_url(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    filesystem, path = storage.resolve("s3://bucket/dir/events.parquet")
    assert isinstance(filesystem, fs.S3FileSystem) and path == "bucket/dir/events.parquet"
    options = filesystem.__reduce__()[1][0]  # what a Ray worker gets when the filesystem is pickled
    assert options["endpoint_override"] == "http://127.0.0.1:9"
    # URI options ride along through join and sibling, before the query
    uri = "s3://bucket/m/model?region=eu-west-1"
    assert storage.join(uri, "manifest.json") == "s3://bucket/m/model/manifest.json?region=eu-west-1"
    assert storage.sibling(uri, "model.train") == "s3://bucket/m/model.train?region=eu-west-1"
    assert storage.name(uri) == "model"
    assert storage.resolve(uri)[0].region == "eu-west-1"


@pytest.mark.parametrize("uri", ["nosuch://bucket/key", "s3:///no-bucket"])
def test_a_bad_uri_is_a_clear_error_naming_it(uri):
    with pytest.raises(storage.StorageError, match=f"cannot open '{uri}'"):
        storage.resolve(uri)


def test_relative_parts_of_a_file_below_its_root():
    assert storage.relative_parts("s3://b/ev/dt=1/h=2/p.parquet", "s3://b/ev") == ["dt=1", "h=2"]
    assert storage.relative_parts("/d/ev/dt=1/p.parquet", "/d/ev") == ["dt=1"]
    assert storage.relative_parts("s3://b/ev/p.parquet", "s3://b/ev/") == []


def test_atomic_local_writes_leave_no_temporary_files(tmp_path):
    storage.write_text(tmp_path / "a" / "CURRENT.json", "{}", atomic=True)
    storage.write_text(tmp_path / "a" / "CURRENT.json", '{"v": 2}', atomic=True)
    assert os.listdir(tmp_path / "a") == ["CURRENT.json"]
    assert json.loads((tmp_path / "a" / "CURRENT.json").read_text()) == {"v": 2}


# --------------------------------------------------------------------------- a real S3 API


@pytest.fixture(scope="module")
def s3(s3_env):
    """moto's S3 server on the port of ``s3_env``, with a bucket; stopped after the module."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=s3_env, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    client = boto3.client("s3")  # boto3 reads AWS_ENDPOINT_URL too
    client.create_bucket(Bucket="sgtest")
    yield client
    server.stop()


def keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="sgtest", Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="module")
def on_s3(s3, tiny_events, tmp_path_factory):
    """A Hive-partitioned events directory, locally and as the same objects on S3 (uploaded with
    boto3, not with seqguard); then `seqguard train` on each: a local bundle and an S3 one."""
    local = tmp_path_factory.mktemp("s3case")
    (local / "tiny.json").write_text(json.dumps({"hidden_size": 32, "num_layers": 1, "max_len": 32, "context": 4}))
    train = ["--config", str(local / "tiny.json"), "--epochs", "1", "--seed", "3"]
    users = tiny_events["user_id"].unique()
    for i, part in enumerate(np.array_split(users, 2)):
        d = local / "events" / f"dt=2026-0{i + 1}"
        d.mkdir(parents=True)
        tiny_events[tiny_events["user_id"].isin(part)].to_parquet(d / "part-0.parquet", index=False)
        s3.upload_file(str(d / "part-0.parquet"), "sgtest", f"events/dt=2026-0{i + 1}/part-0.parquet")
    # a held-out log, to score across engines: in-sample scores sit on the calibrators' reference
    # points, where float rounding (Ray's buckets pad the encoder's batches differently) moves a
    # score by the size of a tie group, not by one step
    (local / "new").mkdir()
    make_events(seed=1).to_parquet(local / "new" / "part-0.parquet", index=False)
    s3.upload_file(str(local / "new" / "part-0.parquet"), "sgtest", "new/part-0.parquet")
    assert main(["-q", "train", "--events", str(local / "events"), "--model", str(local / "model"), *train]) == 0
    assert main(["-q", "train", "--events", "s3://sgtest/events", "--model", "s3://sgtest/model", *train]) == 0
    return local


def test_train_and_score_on_s3_equal_a_local_run(s3, on_s3):
    """`seqguard train` and `score` with every location on S3: the bundle is written there (the
    same bytes as a local run's), read back, and scores as the local bundle scores; outputs and
    report are S3 objects."""
    local = on_s3
    assert keys(s3, "model/") == {"model/manifest.json", "model/encoder.safetensors", "model/state.npz"}
    s3_manifest = json.loads(s3.get_object(Bucket="sgtest", Key="model/manifest.json")["Body"].read())
    local_manifest = json.loads((local / "model" / "manifest.json").read_text())
    assert s3_manifest["files"] == local_manifest["files"]  # same training, same bytes

    assert main(["-q", "score", "--events", "s3://sgtest/events", "--model", "s3://sgtest/model", "--out", "s3://sgtest/out",
                 "--report", "s3://sgtest/out/report.html"]) == 0
    assert main(["-q", "score", "--events", str(local / "events"), "--model", str(local / "model"),
                 "--out", str(local / "out")]) == 0
    written = keys(s3, "out/")
    assert {f"out/{n}.parquet" for n in OUTPUTS} | {"out/summary.json", "out/report.html"} <= written
    assert not (local / "out" / "report.html").exists()
    for name in OUTPUTS + ("items", "campaigns"):
        got, want = read_output("s3://sgtest/out", name), read_output(local / "out", name)
        assert (got is None) == (want is None), name
        if want is not None:
            pd.testing.assert_frame_equal(got, want, check_exact=True, obj=name)
    assert "dt" in read_output("s3://sgtest/out", "repaired").columns  # the Hive partition key, carried through
    summary = json.loads(s3.get_object(Bucket="sgtest", Key="out/summary.json")["Body"].read())
    assert summary == json.loads((local / "out" / "summary.json").read_text())


def test_missing_objects_and_bad_uris_are_clear_cli_errors(s3, on_s3, capsys):
    cases = [
        (["score", "--events", "s3://sgtest/nope.parquet", "--model", "s3://sgtest/model", "--out", "s3://sgtest/o"],
         "events path does not exist: s3://sgtest/nope.parquet"),
        (["score", "--events", "s3://sgtest/events", "--model", "s3://sgtest/no-model", "--out", "s3://sgtest/o"],
         "model bundle s3://sgtest/no-model does not exist"),
        (["score", "--events", "nosuch://x/events", "--model", "s3://sgtest/model", "--out", "s3://sgtest/o"],
         "cannot open 'nosuch://x/events'"),
        (["score", "--events", "s3://sgtest/events", "--model", "s3://sgtest/model", "--out", "s3://sgtest/model/manifest.json"],
         "--out s3://sgtest/model/manifest.json exists and is not a directory"),
    ]
    for argv, expect in cases:
        assert main(["-q", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert expect in err and "Traceback" not in err, err


@pytest.mark.ray
def test_ray_engine_reads_and_writes_s3(s3, on_s3, ray_local):
    """`seqguard score --engine ray`: the read tasks read the events' objects, the actors load the
    bundle from S3 and write their parts there; the same verdicts as the in-process engine (on a
    held-out log: see ``on_s3``)."""
    from seqguard_ray.core.pipeline import SeqGuard

    assert main(["-q", "score", "--engine", "ray", "--concurrency", "1", "--events", "s3://sgtest/new",
                 "--model", "s3://sgtest/model", "--out", "s3://sgtest/ray-out"]) == 0
    written = keys(s3, "ray-out/")
    for name in OUTPUTS:
        assert any(k.startswith(f"ray-out/{name}.parquet/part-") for k in written), name
    assert "ray-out/summary.json" in written
    sg = SeqGuard.load("s3://sgtest/model")
    local = sg.score(on_s3 / "new")
    users = read_output("s3://sgtest/ray-out", "users").set_index("user_id").loc[local.users["user_id"]]
    events = read_output("s3://sgtest/ray-out", "events")
    step = 1.0 / (len(sg.user_detectors.combined_.reference_) + 1) + 1e-9  # see test_ray_batch
    assert np.abs(users["score"].to_numpy() - local.users["score"].to_numpy()).max() <= step
    assert (events["row"].to_numpy() == local.events["row"].to_numpy()).all()
    assert np.abs(events["event_score"].to_numpy() - local.events["event_score"].to_numpy()).max() <= step
    assert pq.read_table("sgtest/ray-out/users.parquet", filesystem=storage.resolve("s3://sgtest")[0]).num_rows == len(local.users)


def test_campaign_table_published_to_s3_is_served_from_there(s3, on_s3, tmp_path):
    """`seqguard campaigns publish --from s3://... --model s3://...`: the version's files, then
    CURRENT.json, on the store; a serving process loads bundle and table from S3 and sees a newer
    table published there."""
    from serving_helpers import campaign_out

    from seqguard_ray.io.campaign_table import read_current
    from seqguard_ray.runtime.serve.stages import ModelInfo, load_engine

    for name, members in (("pub-a", ["m1", "m2", "m3"]), ("pub-b", ["x1", "x2", "x3"])):
        out = campaign_out(tmp_path, name, members, ["t1"])
        for f in ("campaigns.parquet", "items.parquet"):
            s3.upload_file(str(out / f), "sgtest", f"{name}/{f}")
    assert main(["-q", "campaigns", "publish", "--from", "s3://sgtest/pub-a", "--model", "s3://sgtest/model"]) == 0
    version = read_current("s3://sgtest/model").version
    assert {f"model/campaigns/{version}/{f}" for f in ("campaigns.parquet", "items.parquet", "table.json")} | \
        {"model/campaigns/CURRENT.json"} == keys(s3, "model/campaigns/")
    sg = load_engine("s3://sgtest/model", campaigns_check_s=0.0)
    assert ModelInfo.from_dir("s3://sgtest/model").model_version == sg.model_version
    assert set(sg.campaign_watch.current().member_of) == {"m1", "m2", "m3"}
    assert main(["-q", "campaigns", "publish", "--from", "s3://sgtest/pub-b", "--model", "s3://sgtest/model"]) == 0
    assert set(sg.campaign_watch.current().member_of) == {"x1", "x2", "x3"}  # picked up from the store


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_keeps_checkpoints_and_bundle_on_s3(s3, on_s3, ray_local):
    """`seqguard train --engine ray` on S3: Ray Train's checkpoints go to MODEL.train beside the
    bundle through the resolver's filesystem, the bundle to MODEL; both S3 objects (about a
    minute: Ray Train's fixed cost)."""
    from seqguard_ray.core.pipeline import SeqGuard

    assert main(["-q", "train", "--engine", "ray", "--workers", "1", "--events", "s3://sgtest/events",
                 "--model", "s3://sgtest/ray-model", "--config", str(on_s3 / "tiny.json"), "--epochs", "1"]) == 0
    assert {"ray-model/manifest.json", "ray-model/encoder.safetensors", "ray-model/state.npz"} == keys(s3, "ray-model/")
    assert any(k.startswith("ray-model.train/seqguard-train/checkpoint_") and k.endswith("/state.pt")
               for k in keys(s3, "ray-model.train/"))
    sg = SeqGuard.load("s3://sgtest/ray-model")
    assert sg.metrics["engine"] == "ray" and sg.metrics["checkpoint_run_dir"] == "s3://sgtest/ray-model.train/seqguard-train"


def test_pretrained_encoder_written_to_and_read_from_s3(s3, on_s3):
    """`seqguard pretrain --out s3://...`: the encoder's files on the store, loadable from there."""
    from seqguard_ray.core.pretrained import load_pretrained

    assert main(["-q", "pretrain", "--events", "s3://sgtest/events", "--out", "s3://sgtest/encoder",
                 "--config", str(on_s3 / "tiny.json"), "--epochs", "1"]) == 0
    assert keys(s3, "encoder/") == {"encoder/encoder.json", "encoder/encoder.safetensors", "encoder/items.npz"}
    pre = load_pretrained("s3://sgtest/encoder")
    assert pre.path == "s3://sgtest/encoder" and pre.model.config.hidden_size == 32
