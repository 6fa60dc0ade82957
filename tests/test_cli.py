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


# --------------------------------------------------------------------------- campaigns and allow-list
def is_text_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) and pa.types.is_string(t.value_type)


def hand_made_campaigns(result):
    """A CampaignResult-shaped object for ``result``: its two rarest items pushed by three users."""
    from types import SimpleNamespace

    import numpy as np

    ev, users = result.events, result.users
    counts = ev["item_id"].value_counts(sort=False)
    items = counts.index.to_numpy()
    targets = counts.sort_values(kind="stable").index[:2].to_numpy()
    members = users["user_id"].to_numpy()[:3]
    sus = np.isin(items, targets)
    item_frame = pd.DataFrame({"item_id": pd.Series(items, dtype=ev["item_id"].dtype),
                               "campaign_score": np.where(sus, 0.99, 0.1), "suspicious": sus,
                               "campaign_id": pd.array([0 if s else None for s in sus], dtype="Int64"),
                               "reasons": np.where(sus, "pushed by campaign 0", "")})
    on = ev["user_id"].isin(members) & ev["item_id"].isin(targets)
    camps = pd.DataFrame({"campaign_id": [0], "user_ids": [[str(u) for u in members]],
                          "target_item_ids": [[str(t) for t in targets]], "first_ts": ev["ts"].iloc[:1].to_numpy(),
                          "last_ts": ev["ts"].iloc[-1:].to_numpy(), "n_events": [int(on.sum())], "score": [0.99],
                          "reasons": ["hand-made"]})
    user_campaign = np.where(np.isin(users["user_id"].to_numpy(), members), 0, -1).astype(np.int64)
    return SimpleNamespace(items=item_frame, campaigns=camps, user_campaign=user_campaign,
                           event_campaign=np.zeros(len(ev), bool))


def test_write_outputs_writes_typed_campaign_tables_and_clears_stale_ones(tmp_path, tiny_model, tiny_events):
    import copy

    from seqguard_ray.io.outputs import write_outputs

    result = copy.copy(tiny_model.score(tiny_events))
    result.campaigns = hand_made_campaigns(result)
    out = tmp_path / "out"
    summary = write_outputs(tiny_model, result, out)
    assert {k: summary[k] for k in ("campaigns", "campaign_members", "suspicious_items")} == \
        {"campaigns": 1, "campaign_members": 3, "suspicious_items": 2}
    assert summary["campaign_events_removed"] >= 0
    assert json.loads((out / "summary.json").read_text())["campaigns"] == 1
    items = pd.read_parquet(out / "items.parquet")
    assert list(items.columns) == ["item_id", "campaign_score", "suspicious", "campaign_id", "reasons"]
    assert items["item_id"].dtype == tiny_events["item_id"].dtype and items["campaign_id"].dtype == "Int64"
    assert items["suspicious"].dtype == bool and items["campaign_id"].isna().sum() == len(items) - 2
    schema = pq.read_schema(out / "campaigns.parquet")
    assert schema.names == ["campaign_id", "user_ids", "target_item_ids", "first_ts", "last_ts", "n_events",
                            "score", "reasons"]
    assert all(is_text_list(schema.field(c).type) for c in ("user_ids", "target_item_ids"))
    assert str(schema.field("first_ts").type) == str(schema.field("last_ts").type) == "int64"  # the input ts type
    camps = pd.read_parquet(out / "campaigns.parquet")
    assert list(camps["user_ids"][0]) == list(result.campaigns.campaigns["user_ids"][0])
    result.campaigns = None  # the stage off: an earlier run's tables must not stay behind
    summary = write_outputs(tiny_model, result, out)
    assert "campaigns" not in summary
    assert not (out / "items.parquet").exists() and not (out / "campaigns.parquet").exists()


def test_empty_campaign_table_is_still_typed(tmp_path):
    from seqguard_ray.io.outputs import campaigns_table

    t = campaigns_table(pd.DataFrame({c: pd.Series([], dtype=object) for c in
                                      ("campaign_id", "user_ids", "target_item_ids", "first_ts", "last_ts",
                                       "n_events", "score", "reasons")}))
    assert t.num_rows == 0 and is_text_list(t.schema.field("user_ids").type)
    assert str(t.schema.field("campaign_id").type) == "int64"


def _score(tmp_path, events_path, bundle, out_name, *extra):
    out = tmp_path / out_name
    rc = main(["-q", "score", "--events", str(events_path), "--model", str(bundle), "--out", str(out), *extra])
    return rc, out


@pytest.fixture(scope="module")
def planted(tiny_events, tmp_path_factory):
    """tiny_events plus a lockstep group: 15 new accounts, each on the log's two rarest items and a
    few popular ones (camouflage) within one hour. Returns (path, members, targets)."""
    import numpy as np

    rng = np.random.default_rng(1)
    counts = tiny_events["item_id"].value_counts()
    targets = counts[counts == 2].index[:2].tolist()
    popular = counts.index[:8].to_numpy()
    t0 = int(tiny_events["ts"].max()) - 86400
    rows = [(f"bot{k}", int(item), t0 + int(rng.integers(0, 3600)), "click", 1.0)
            for k in range(15) for item in targets + list(rng.choice(popular, 4, replace=False))]
    log = pd.concat([tiny_events, pd.DataFrame(rows, columns=list(tiny_events.columns))], ignore_index=True)
    path = tmp_path_factory.mktemp("planted") / "events.parquet"
    log.to_parquet(path)
    return path, [f"bot{k}" for k in range(15)], targets


def test_score_cli_writes_campaign_outputs_typed(tmp_path, planted, tiny_events, tiny_bundle):
    ev, members, targets = planted
    log = pd.read_parquet(ev)
    rc, out = _score(tmp_path, ev, tiny_bundle, "out", "--report", str(tmp_path / "r.html"))
    assert rc == 0
    users = pd.read_parquet(out / "users.parquet")
    assert list(users.columns[:6]) == ["user_id", "score", "anomalous", "anomaly_type", "reasons", "n_events"]
    assert users["campaign_id"].dtype == "Int64"
    items = pd.read_parquet(out / "items.parquet")
    assert len(items) == log["item_id"].nunique() and set(items["item_id"]) == set(log["item_id"])
    assert items["item_id"].dtype == log["item_id"].dtype and items["campaign_id"].dtype == "Int64"
    assert items["campaign_score"].between(0, 1).all() and items["suspicious"].dtype == bool
    assert items["reasons"].map(type).eq(str).all()
    schema = pq.read_schema(out / "campaigns.parquet")
    assert all(is_text_list(schema.field(c).type) for c in ("user_ids", "target_item_ids"))
    assert str(schema.field("first_ts").type) == str(schema.field("last_ts").type) == "int64"  # the input ts type
    assert str(schema.field("campaign_id").type) == str(schema.field("n_events").type) == "int64"
    camps = pd.read_parquet(out / "campaigns.parquet")
    # the planted group is found: its accounts are members, its targets suspicious
    [cid] = users.loc[users["user_id"].isin(members), "campaign_id"].dropna().unique()
    c = camps.set_index("campaign_id").loc[cid]
    assert set(members) <= set(c["user_ids"]) and {str(t) for t in targets} <= set(c["target_item_ids"])
    assert log["ts"].min() <= c["first_ts"] <= c["last_ts"] <= log["ts"].max() and 0 <= c["score"] <= 1
    assert items.set_index("item_id").loc[targets, "suspicious"].all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["campaign_members"] == int(users["campaign_id"].notna().sum()) >= len(members)
    assert summary["suspicious_items"] == int(items["suspicious"].sum()) >= len(targets)
    assert summary["campaigns"] == len(camps) and summary["campaign_events_removed"] >= 2 * len(members)
    section = (tmp_path / "r.html").read_text().split('id="campaigns"')[1].split("</section>")[0]
    assert "bot0" in section and f"target {targets[0]}" in section and "fig-campaign-members-0" in section


def test_score_cli_honours_the_allow_list(tmp_path, planted, tiny_bundle):
    ev, members, targets = planted
    log = pd.read_parquet(ev)
    assert _score(tmp_path, ev, tiny_bundle, "before")[0] == 0
    before = pd.read_parquet(tmp_path / "before" / "users.parquet")
    flagged = before.loc[before["anomalous"], "user_id"].tolist()
    assert set(members) <= set(flagged)
    flagged = [u for u in flagged if u not in members[3:]]  # three of the group's accounts among the allowed
    allow = tmp_path / "allow.json"
    allow.write_text(json.dumps({"users": flagged, "items": [int(targets[0])]}))
    rc, out = _score(tmp_path, ev, tiny_bundle, "after", "--allow-list", str(allow))
    assert rc == 0
    after = pd.read_parquet(out / "users.parquet").set_index("user_id").loc[before["user_id"]]
    got = after.loc[flagged]
    assert not got["anomalous"].any() and (got["anomaly_type"] == "normal").all()
    assert got["reasons"].str.contains("allow-list").all()
    # scores stay as the per-user evidence gives them (an allowed member loses the campaign's)
    alone = before.loc[before["user_id"].isin(flagged) & before["campaign_id"].isna(), "user_id"].tolist()
    assert alone
    assert got.loc[alone, "score"].to_numpy() == pytest.approx(before.set_index("user_id").loc[alone, "score"].to_numpy())
    assert got["campaign_id"].isna().all()  # never a campaign member
    assert not set(flagged) & set(pd.read_parquet(out / "actions.parquet")["user_id"])
    repaired = pd.read_parquet(out / "repaired.parquet")
    assert repaired["user_id"].isin(flagged).sum() == log["user_id"].isin(flagged).sum()  # never repaired
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    assert not items.loc[targets[0], "suspicious"] and pd.isna(items.loc[targets[0], "campaign_id"])
    camps = pd.read_parquet(out / "campaigns.parquet")
    assert not any(str(targets[0]) in list(t) for t in camps["target_item_ids"])
    assert not any(set(flagged) & set(u) for u in camps["user_ids"])
    # the rest of the group still pushes the other target
    assert items.loc[targets[1], "suspicious"] and after.loc[members[3:], "campaign_id"].notna().any()


@pytest.mark.parametrize("text, suffix, message", [
    ('{"users": ["a"', ".json", "is not valid JSON"),
    ("users: [a\n", ".yaml", "is not valid YAML"),
    ('{"user": ["a"]}', ".json", "unknown allow-list key(s) ['user']"),
    (None, ".json", "cannot read the allow-list"),
])
def test_score_cli_bad_allow_list_exits_2_naming_the_file(tmp_path, tiny_bundle, capsys, text, suffix, message):
    allow = tmp_path / f"allow{suffix}"
    if text is not None:
        allow.write_text(text)
    rc, out = _score(tmp_path, "no-events-needed.csv", tiny_bundle, "o", "--allow-list", str(allow))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("seqguard score: error:") and message in err and str(allow) in err
    assert not (out / "users.parquet").exists()  # failed before any work
