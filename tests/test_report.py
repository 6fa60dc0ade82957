"""Tests for seqguard_ray.report: a self-contained, escaped, size-bounded HTML page whose Plotly
figures carry the data they claim to show."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs
from sklearn.metrics import roc_auc_score, roc_curve

from seqguard_ray.report import write_report
from seqguard_ray.report.charts import CURVE_POINTS, downsample_index
from seqguard_ray.report.sections import TOP_USERS
from seqguard_ray.report.timelines import TIMELINE_MAX_EVENTS, pick_timeline_users

EVIL = "<script>alert(1)</script>"
TYPES = ["bot", "injection", "shilling", "takeover", "replay"]


def make_inputs(n_users: int = 120, events_per_user: int = 30, seed: int = 0, attack_rate: float = 0.2):
    """Users, events, user labels and event labels; attacked users score higher."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    ids[0] = EVIL
    truth = np.full(n_users, "normal", dtype=object)
    attacked = rng.random(n_users) < attack_rate
    attacked[0] = True
    truth[attacked] = rng.choice(TYPES, size=int(attacked.sum()))
    score = np.clip(np.where(attacked, rng.beta(5, 2, n_users), rng.beta(2, 5, n_users)), 0, 1)
    score[0] = 0.95
    flagged = score > 0.6
    users = pd.DataFrame(
        {
            "user_id": ids,
            "score": score,
            "anomalous": flagged,
            "anomaly_type": np.where(flagged, truth, "normal"),
            "reasons": np.where(flagged, "burst of 40 events in 1 min; <b>new</b> items", ""),
        }
    )
    uid = np.repeat(ids, events_per_user)
    injected = np.repeat(attacked, events_per_user) & (rng.random(len(uid)) < 0.5)
    ev_score = np.where(injected, rng.beta(5, 2, len(uid)), rng.beta(2, 6, len(uid)))
    events = pd.DataFrame(
        {
            "user_id": uid,
            "item_id": rng.integers(0, 1000, len(uid)),
            "ts": 1_700_000_000 + np.tile(np.arange(events_per_user) * 60, n_users),
            "event_score": ev_score,
            "anomalous": ev_score > 0.6,
        }
    )
    return users, events, pd.Series(truth, index=ids), injected


REPAIR = {"events_in": 3600, "events_kept": 3400, "events_dropped": 150, "events_downweighted": 50, "users_quarantined": 4}
MODEL = {"model_version": "test-1", "threshold": 0.6, "target_fpr": 0.01, "training": {"val_auc": 0.93}}


PLOTLY_JS = get_plotlyjs()


@pytest.fixture
def inputs():
    return make_inputs()


def own_html(page: str) -> str:
    """The page without the inlined plotly.js library (whose source holds URLs and tags as text)."""
    assert page.count(PLOTLY_JS) == 1
    return page.replace(PLOTLY_JS, "")


def figures(page: str) -> dict[str, tuple[list, dict]]:
    """div id -> (traces, layout) of every ``Plotly.newPlot`` call in the page."""
    dec = json.JSONDecoder()
    out = {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        data, end = dec.raw_decode(page, m.end())
        layout, _ = dec.raw_decode(page, page.index("{", end))
        out[m.group(1)] = (data, layout)
    return out


def trace(fig: tuple[list, dict], name_start: str) -> dict:
    [t] = [t for t in fig[0] if t.get("name", "").startswith(name_start)]
    return t


def full_report(tmp_path, inputs, **kw):
    users, events, labels, injected = inputs
    args = dict(users=users, events=events, user_labels=labels, event_labels=injected,
                repair_summary=REPAIR, model_info=MODEL)
    args.update(kw)
    path = write_report(tmp_path / "sub" / "report.html", **args)
    return path, path.read_text(encoding="utf-8")


def test_writes_file_and_returns_path(tmp_path, inputs):
    path, page = full_report(tmp_path, inputs)
    assert path.is_file() and path.name == "report.html"
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")


def test_self_contained_with_plotly_inlined_once(tmp_path, inputs):
    _, page = full_report(tmp_path, inputs)
    own = own_html(page)  # plotly.js is in the page exactly once
    assert page.index(PLOTLY_JS) < page.index("<body>")  # before any figure needs it
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", own, re.I)
    assert not re.search(r"<(link|iframe|img)\b", own, re.I)
    assert "@import" not in own and "url(" not in own
    # every figure div has its newPlot call, ids unique
    ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', own)
    assert len(ids) == len(set(ids)) == len(figures(own)) >= 6


def test_contains_sections(tmp_path, inputs):
    _, page = full_report(tmp_path, inputs)
    for anchor in ("summary", "quality", "scores", "timelines", "repair", "flagged", "model"):
        assert f'id="{anchor}"' in page
    assert "ROC-AUC" in page and "AP " in page
    assert "Per attack type" in page
    assert "threshold 0.6" in page  # decision line on the user histogram
    assert "users quarantined" in page and "events downweighted" in page
    assert "test-1" in page and "val_auc" in page
    assert page.count('class="card timeline"') == 6


def test_escapes_untrusted_text(tmp_path, inputs):
    _, page = full_report(tmp_path, inputs, title="<i>t</i>")
    page = own_html(page)
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>new</b>" not in page and "&lt;b&gt;new&lt;/b&gt;" in page
    assert "<i>t</i>" not in page


def test_works_without_labels(tmp_path, inputs):
    users, events, _, _ = inputs
    path = write_report(tmp_path / "r.html", users=users, events=events)
    page = own_html(path.read_text(encoding="utf-8"))
    assert 'id="quality"' not in page
    assert 'id="timelines"' in page and "No repair summary" in page
    assert "ROC" not in page and "fig-roc" not in figures(page)


def test_event_labels_only(tmp_path, inputs):
    users, events, _, injected = inputs
    page = write_report(tmp_path / "r.html", users=users, events=events, event_labels=injected).read_text()
    assert 'id="quality"' in page and "events of attacked users" in page


def test_empty_flagged_set(tmp_path, inputs):
    users, events, labels, injected = inputs
    users = users.assign(anomalous=False)
    events = events.assign(anomalous=False)
    page = write_report(tmp_path / "r.html", users=users, events=events, user_labels=labels,
                        event_labels=injected).read_text()
    assert "No flagged users to show." in page
    assert "No users were flagged." in page
    assert 'class="card timeline"' not in page


def test_empty_frames(tmp_path, inputs):
    users, events, _, _ = inputs
    path = write_report(tmp_path / "r.html", users=users.iloc[:0], events=events.iloc[:0])
    assert "No users were flagged." in path.read_text()


@pytest.mark.parametrize("column", ["user_id", "score", "anomalous", "anomaly_type", "reasons"])
def test_rejects_users_missing_column(tmp_path, inputs, column):
    users, events, _, _ = inputs
    with pytest.raises(ValueError, match=f"users is missing required column.*'{column}'"):
        write_report(tmp_path / "r.html", users=users.drop(columns=column), events=events)
    assert not (tmp_path / "r.html").exists()


def test_rejects_events_missing_column(tmp_path, inputs):
    users, events, _, _ = inputs
    with pytest.raises(ValueError, match="events is missing required column.*'event_score'"):
        write_report(tmp_path / "r.html", users=users, events=events.drop(columns="event_score"))


def test_rejects_score_out_of_range(tmp_path, inputs):
    users, events, _, _ = inputs
    users.loc[5, "score"] = 1.5
    with pytest.raises(ValueError, match=r"users.score must lie in \[0, 1\].*1.5"):
        write_report(tmp_path / "r.html", users=users, events=events)


def test_rejects_misaligned_event_labels(tmp_path, inputs):
    users, events, _, injected = inputs
    with pytest.raises(ValueError, match="event_labels must have shape"):
        write_report(tmp_path / "r.html", users=users, events=events, event_labels=injected[:-1])


def test_nan_scores_are_reported_not_fatal(tmp_path, inputs):
    users, events, labels, injected = inputs
    events.loc[:9, "event_score"] = np.nan
    page = write_report(tmp_path / "r.html", users=users, events=events, user_labels=labels,
                        event_labels=injected).read_text()
    assert "10 rows have no events.event_score" in page


def test_datetime_timestamps(tmp_path, inputs):
    users, events, _, _ = inputs
    events["ts"] = pd.to_datetime(events["ts"], unit="s", utc=True)
    page = write_report(tmp_path / "r.html", users=users, events=events).read_text()
    assert "from 2023-11-14" in page


def test_timeline_users_diverse_types_first():
    users = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "d", "e"],
            "score": [0.99, 0.98, 0.97, 0.6, 0.1],
            "anomalous": [True, True, True, True, False],
            "anomaly_type": ["bot", "bot", "bot", "replay", "normal"],
            "reasons": [""] * 5,
        }
    )
    picked = users.loc[pick_timeline_users(users, 2), "user_id"].tolist()
    assert picked == ["a", "d"]
    assert pick_timeline_users(users, 0) == []
    assert len(pick_timeline_users(users, 10)) == 4


def test_downsample_keeps_ends_and_bounds_points():
    x = np.linspace(0, 1, 100_000)
    y = np.sqrt(x)
    idx = downsample_index(x, y, 300)
    xs, ys = x[idx], y[idx]
    assert len(xs) <= 302
    assert (xs[0], ys[0], xs[-1], ys[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(xs) >= 0)


def test_large_input_gives_bounded_file(tmp_path):
    users, events, labels, injected = make_inputs(n_users=4000, events_per_user=100, seed=1)
    users.loc[1:5, "reasons"] = "x" * 50_000  # huge reasons are truncated
    path, page = full_report(tmp_path, (users, events, labels, injected))
    assert path.stat().st_size - len(PLOTLY_JS) < 1_500_000
    figs = figures(page)
    for fid in ("fig-roc", "fig-pr", "fig-roc-types"):
        for t in figs[fid][0]:
            assert len(t["x"]) <= CURVE_POINTS + 2
    ev_roc = trace(figs["fig-roc"], "events of attacked users")  # 80k events: downsampled, ends kept
    assert (ev_roc["x"][0], ev_roc["y"][0], ev_roc["x"][-1], ev_roc["y"][-1]) == (0, 0, 1, 1)
    n_rows = page.split('id="flagged"')[1].split("</table>")[0].count("<tr>") - 1
    assert n_rows == TOP_USERS


def test_label_types_map_true_labels_to_predicted_types(tmp_path, inputs):
    """Regression: generator labels (click_farm, shilling_*) never matched predicted types."""
    users, events, labels, injected = inputs
    t = labels[users.user_id[users.anomalous]].iloc[0]
    renamed = labels.replace({t: "renamed_" + t})
    _, plain = full_report(tmp_path, (users, events, renamed, injected))
    _, mapped = full_report(tmp_path, (users, events, renamed, injected), label_types={"renamed_" + t: t})
    # every other type is predicted as itself, so only the renamed label can show 0 matches
    zero = '0 <span class="muted">(0.0%)'
    assert zero in plain and zero not in mapped


def test_timeline_figure_carries_the_users_events(tmp_path, inputs):
    users, events, labels, injected = inputs
    events = events.assign(action=np.where(np.arange(len(events)) % 2, "click", "view"))
    _, page = full_report(tmp_path, (users, events, labels, injected))
    uid = users.loc[pick_timeline_users(users, 6)[0], "user_id"]
    rows = np.flatnonzero(events["user_id"].to_numpy() == uid)  # already in time order
    fig = figures(page)["fig-timeline-0"]
    drawn = {}  # event index -> (item, action, score, injected)
    for t in fig[0]:
        if t["name"] in ("event", "injected event (label)"):
            for x, y, c in zip(t["x"], t["y"], t["customdata"]):
                drawn[x] = (c[0], c[1], y, t["name"] != "event")
    assert sorted(drawn) == list(range(len(rows)))
    for k, r in enumerate(rows):
        item, action, score, inj = drawn[k]
        assert item == str(events["item_id"].iloc[r]) and action == " · " + events["action"].iloc[r]
        assert score == pytest.approx(events["event_score"].iloc[r], abs=1e-4)
        assert inj == bool(injected[r])
    flagged = trace(fig, "flagged event")["x"]
    assert flagged == [k for k, r in enumerate(rows) if events["anomalous"].iloc[r]]
    assert '"hovertemplate":"event #%{x}' in page  # hover is on


def test_long_timelines_are_thinned_but_keep_the_top_events(tmp_path):
    users, events, labels, injected = make_inputs(n_users=3, events_per_user=2000, seed=2)
    users["anomalous"] = [True, False, False]
    page = write_report(tmp_path / "r.html", users=users, events=events, max_timelines=1).read_text()
    fig = figures(page)["fig-timeline-0"]
    xs = [x for t in fig[0] if t["name"] != "flagged event" for x in t["x"]]
    assert len(xs) <= TIMELINE_MAX_EVENTS and len(set(xs)) == len(xs)
    top = np.argsort(-events["event_score"].to_numpy()[:2000], kind="stable")[: TIMELINE_MAX_EVENTS // 3]
    assert set(top) <= set(xs) and {0, 1999} <= set(xs)
    assert f"showing {len(xs)} of 2,000 events" in page


def test_roc_figure_is_sklearns_curve(tmp_path, inputs):
    users, events, labels, injected = inputs
    _, page = full_report(tmp_path, inputs)
    y = (labels.reindex(users["user_id"]) != "normal").to_numpy()
    auc = roc_auc_score(y, users["score"])
    t = trace(figures(page)["fig-roc"], f"users (ROC-AUC {auc:.3f}, n={len(y)})")
    fpr, tpr, _ = roc_curve(y, users["score"])
    np.testing.assert_allclose(t["x"], fpr, atol=1e-4)
    np.testing.assert_allclose(t["y"], tpr, atol=1e-4)


def test_histograms_count_every_finite_score(tmp_path, inputs):
    users, events, labels, injected = inputs
    events.loc[:9, "event_score"] = np.nan
    _, page = full_report(tmp_path, (users, events, labels, injected))
    figs = figures(page)
    attacked = (labels.reindex(users["user_id"]) != "normal").to_numpy()
    user_counts = {t["name"]: sum(c or 0 for c in t["y"]) for t in figs["fig-user-scores"][0]}
    assert user_counts == {f"normal (label) (n={(~attacked).sum()})": (~attacked).sum(),
                           f"attacked (label) (n={attacked.sum()})": attacked.sum()}
    inj_counts = sum(c or 0 for c in trace(figs["fig-event-scores"], "injected events (label)")["y"])
    assert inj_counts == np.isfinite(events["event_score"].to_numpy()[injected]).sum()
    assert any(s.get("x0") == 0.6 for s in figs["fig-user-scores"][1]["shapes"])  # threshold line


# --------------------------------------------------------------------------- campaigns section
TARGETS = ["9001", "9002<i>"]  # one target id that needs escaping


def with_campaign(inputs, n_members: int = 12, spread_s: int = 3600, seed: int = 4):
    """``inputs`` plus a planted campaign: ``n_members`` users (u0 = EVIL among them), each with one
    event on each target within ``spread_s`` seconds; returns users, events, items, campaigns."""
    users, events, _, _ = inputs
    rng = np.random.default_rng(seed)
    members = list(users["user_id"].iloc[:n_members])
    t0 = int(events["ts"].min()) + 600
    rows = [(m, t, t0 + int(rng.integers(0, spread_s))) for m in members for t in TARGETS]
    camp = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).assign(event_score=0.9, anomalous=True)
    organic = pd.DataFrame({"user_id": users["user_id"].iloc[-5:].to_numpy(), "item_id": TARGETS[0],
                            "ts": t0 + 10 * 86400, "event_score": 0.1, "anomalous": False})
    events = pd.concat([events.assign(item_id=events["item_id"].astype(str)), camp, organic], ignore_index=True)
    ids = pd.unique(events["item_id"])
    sus = np.isin(ids, TARGETS)
    items = pd.DataFrame({"item_id": ids, "campaign_score": np.where(sus, 0.97, 0.05), "suspicious": sus,
                          "campaign_id": pd.array(np.where(sus, 0, -1), dtype="Int64").astype("Int64"),
                          "reasons": np.where(sus, "pushed by campaign 0", "")})
    items.loc[~sus, "campaign_id"] = pd.NA
    campaigns = pd.DataFrame({"campaign_id": [0], "user_ids": [members], "target_item_ids": [TARGETS],
                              "first_ts": [int(camp["ts"].min())], "last_ts": [int(camp["ts"].max())],
                              "n_events": [len(camp)], "score": [0.97], "reasons": ["lockstep within 1h on 2 items"]})
    return users, events, items, campaigns


def test_campaigns_section_carries_the_members_and_targets(tmp_path, inputs):
    users, events, items, campaigns = with_campaign(inputs)
    page = write_report(tmp_path / "r.html", users=users, events=events, items=items, campaigns=campaigns).read_text()
    own = own_html(page)
    assert 'id="campaigns"' in own and "lockstep within 1h on 2 items" in own
    assert EVIL not in own and "9002<i>" not in own and "9002&lt;i&gt;" in own
    figs = figures(own)
    members = campaigns["user_ids"][0]
    drawn = [t for t in figs["fig-campaign-members-0"][0]]
    ys = {y for t in drawn for y in t["y"]}
    assert ys == {str(m).replace("<", "&lt;").replace(">", "&gt;") for m in members}
    assert sum(len(t["x"]) for t in drawn) == campaigns["n_events"][0]  # one mark per campaign event
    assert {t["name"] for t in drawn} == {"target 9001", "target 9002&lt;i&gt;"}
    counts = figs["fig-campaign-targets-0"][0]
    for tgt in ("9001", "9002&lt;i&gt;"):
        camp = trace(figs["fig-campaign-targets-0"], f"target {tgt}: campaign's")
        assert sum(v or 0 for v in camp["y"]) == len(members)
        [total] = [t for t in counts if t["name"] == f"target {tgt}"]
        assert sum(total["y"][:-1]) == (events["item_id"] == tgt.replace("&lt;", "<").replace("&gt;", ">")).sum()
    normal = trace(figs["fig-campaign-targets-0"], "target 9001: normal level")  # the 5 organic events
    assert normal["y"][0] > 0 and len(counts) == 6
    sus = own.split("<h3>Suspicious items</h3>")[1].split("</table>")[0]
    assert sus.count("<tr>") - 1 == 2 and "pushed by campaign 0" in sus


def test_campaigns_section_is_bounded_and_says_so(tmp_path):
    users, events, items, campaigns = with_campaign(make_inputs(n_users=300), n_members=200)
    page = write_report(tmp_path / "r.html", users=users, events=events, items=items, campaigns=campaigns).read_text()
    from seqguard_ray.report.campaigns import MAX_MEMBER_ROWS
    ys = {y for t in figures(page)["fig-campaign-members-0"][0] for y in t["y"]}
    assert len(ys) == MAX_MEMBER_ROWS and f"the {MAX_MEMBER_ROWS} earliest of 200 members" in page
    assert "+194 more" in page  # member ids written out in the table: the first 6


def test_campaigns_without_time_signal_or_campaigns(tmp_path, inputs):
    users, events, items, campaigns = with_campaign(inputs)
    page = write_report(tmp_path / "r.html", users=users, events=events.assign(ts=1_700_000_000), items=items,
                        campaigns=campaigns).read_text()
    assert "carry no time signal" in page and "fig-campaign-members-0" not in page
    page = write_report(tmp_path / "r.html", users=users, events=events, items=items.assign(suspicious=False),
                        campaigns=campaigns.iloc[:0]).read_text()
    assert "found no campaign" in page and "No item is a suspicious campaign target" in page
    page = write_report(tmp_path / "r.html", users=users, events=events).read_text()
    assert 'id="campaigns"' not in page


def test_campaigns_read_back_from_parquet(tmp_path, inputs):
    """The CLI's Ray path reads OUT/items and OUT/campaigns back: list columns come as arrays."""
    from types import SimpleNamespace

    from seqguard_ray.io.outputs import read_output, write_campaigns

    users, events, items, campaigns = with_campaign(inputs)
    write_campaigns(SimpleNamespace(items=items, campaigns=campaigns), tmp_path)
    items2, campaigns2 = read_output(tmp_path, "items"), read_output(tmp_path, "campaigns")
    assert items2["campaign_id"].dtype == "Int64" and isinstance(campaigns2["user_ids"][0], np.ndarray)
    page = write_report(tmp_path / "r.html", users=users, events=events, items=items2, campaigns=campaigns2).read_text()
    assert "fig-campaign-members-0" in page and "9002&lt;i&gt;" in page


def test_rejects_bad_campaign_frames(tmp_path, inputs):
    users, events, items, campaigns = with_campaign(inputs)
    with pytest.raises(ValueError, match="campaigns is missing required column.*'user_ids'"):
        write_report(tmp_path / "r.html", users=users, events=events, campaigns=campaigns.drop(columns="user_ids"))
    with pytest.raises(ValueError, match=r"items.campaign_score must lie in \[0, 1\]"):
        write_report(tmp_path / "r.html", users=users, events=events, items=items.assign(campaign_score=2.0))
    with pytest.raises(ValueError, match="campaigns.target_item_ids must hold a list of ids per row"):
        write_report(tmp_path / "r.html", users=users, events=events,
                     campaigns=campaigns.assign(target_item_ids="9001"))
