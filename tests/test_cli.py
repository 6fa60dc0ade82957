import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from seqguard_ray.cli.main import main


def test_score_writes_the_output_contract_and_a_report(tmp_path, tiny_events, tiny_bundle):
    ev = tmp_path / "events.csv"
    tiny_events.assign(extra="x").to_csv(ev, index=False)
    out = tmp_path / "out"
    assert main(["-q", "score", "--events", str(ev), "--model", str(tiny_bundle), "--out", str(out),
                 "--report", str(out / "report.html")]) == 0
    users = pq.read_table(out / "users.parquet").to_pandas()
    events = pq.read_table(out / "events.parquet").to_pandas()
    repaired = pq.read_table(out / "repaired.parquet").to_pandas()
    assert {"user_id", "score", "anomalous", "anomaly_type", "reasons"} <= set(users.columns)
    assert len(events) == len(tiny_events) and events.item_id.dtype == tiny_events.item_id.dtype
    assert list(repaired.columns) == list(tiny_events.columns) + ["extra", "weight"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events_in"] == len(tiny_events) == summary["events_kept"] + summary["events_dropped"]
    assert (out / "report.html").stat().st_size > 1000


def test_train_stores_its_options_in_the_bundle_config(tmp_path, tiny_events):
    ev = tmp_path / "events.parquet"
    tiny_events.to_parquet(ev)
    assert main(["-q", "train", "--events", str(ev), "--model", str(tmp_path / "m"), "--epochs", "1",
                 "--trim-share", "0"]) == 0
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["train_config"]["trim_share"] == 0.0


def test_cli_errors_name_the_problem_and_exit_2(tmp_path, tiny_bundle, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"user_id": [1], "item": [2], "ts": [3]}).to_csv(bad, index=False)
    assert main(["score", "--events", str(bad), "--model", str(tiny_bundle), "--out", str(tmp_path / "o")]) == 2
    assert "missing required column(s) ['item_id']" in capsys.readouterr().err
    assert main(["score", "--events", str(bad), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--events", "x", "--model", "y", "--epochs", "0"])
