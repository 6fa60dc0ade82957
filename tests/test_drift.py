"""Drift (core.drift): the training reference, the monitor's distances and verdicts, the bundle round
trip, old bundles, the serving hook (plain in-process backend, InMemoryMetrics), `seqguard monitor`
and the dashboard panel. No Ray."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqguard_ray.core.drift import (
    PSI_ACT,
    PSI_SIGNALS,
    PSI_WATCH,
    SIGNALS,
    DriftMonitor,
    DriftReference,
    flagged_verdict,
    psi,
    psi_verdict,
    report_table,
    two_proportion_z,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"


def _report(sg, events, *, min_count=1, **kw) -> dict:
    """signal -> SignalDrift of ``events`` scored by ``sg``, against its reference."""
    from seqguard_ray.core.pipeline import as_log

    log_ = as_log(events)
    seqs = sg.tokenize(log_)
    s = sg.detect(sg.encode(seqs))
    m = DriftMonitor(sg.drift, min_count=min_count, **kw)
    m.update(sg.drift.count(seqs, s.score, s.anomalous))
    return {r.signal: r for r in m.report()}


# --------------------------------------------------------------------------- statistics
def test_psi_is_zero_for_equal_shares_and_matches_the_formula():
    assert psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0, abs=1e-12)
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert psi([50, 50], [90, 10]) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert psi([50, 50, 0], [40, 40, 20]) == pytest.approx(psi([50, 50, 1e-4 * 100], [40, 40, 20]), rel=1e-3)  # floor
    assert np.isfinite(psi([100, 0], [0, 100]))
    assert psi([0, 0], [1, 2]) == 0.0 and psi([1, 2], [0, 0]) == 0.0


def test_verdicts_follow_the_psi_convention_and_flagged_needs_significance_and_size():
    assert [psi_verdict(v) for v in (0.0, 0.099, PSI_WATCH, 0.2, PSI_ACT, 3.0)] == \
        ["ok", "ok", "watch", "watch", "act", "act"]
    assert flagged_verdict(10.0, 1.2) == "ok"        # significant, small
    assert flagged_verdict(2.0, 5.0) == "ok"         # large, chance
    assert flagged_verdict(4.0, 1.6) == "watch"
    assert flagged_verdict(4.0, 2.5) == "act" and flagged_verdict(-4.0, 0.4) == "act"
    assert flagged_verdict(-5.0, 0.0) == "act"       # nothing flagged any more
    # 5% vs 10% of 1000 users each: pooled 7.5%, se sqrt(0.075 * 0.925 * 2 / 1000) = 0.01178, z -4.245
    assert two_proportion_z(100, 1000, 50, 1000) == pytest.approx(-4.245, abs=0.001)
    assert two_proportion_z(0, 10, 0, 10) == 0.0 and two_proportion_z(1, 0, 1, 10) == 0.0


# --------------------------------------------------------------------------- the reference
def test_reference_bins_the_training_log(tiny_model, tiny_events):
    r = tiny_model.drift
    assert r is not None
    n_events, n_users = len(tiny_events), tiny_events["user_id"].nunique()
    sizes = r.sizes()
    assert {s: len(r.counts_[s]) for s in SIGNALS} == sizes
    assert r.counts_["items"].sum() == r.counts_["actions"].sum() == n_events
    assert r.counts_["gaps"].sum() == n_events - n_users  # a user's first event has no gap
    assert r.counts_["lengths"].sum() == r.counts_["scores"].sum() == r.counts_["flagged"].sum() == n_users
    assert r.actions_ == sorted(tiny_events["action"].unique()) and r.counts_["actions"][-1] == 0
    # popularity buckets hold roughly equal shares of the events in the vocabulary
    known = r.counts_["items"][:-1] / r.counts_["items"][:-1].sum()
    assert len(known) >= 3 and known.max() < 0.5
    assert all(len(v) == sizes[s] for s, v in r.labels().items())


def test_the_training_log_itself_shows_no_drift(tiny_model, tiny_events):
    rows = _report(tiny_model, tiny_events)
    for s in PSI_SIGNALS:
        assert rows[s].value < 1e-6 and rows[s].verdict == "ok", rows[s]
    assert rows["flagged"].value == pytest.approx(0.0) and rows["flagged"].verdict == "ok"


def _more_purchases(ev):
    ev = ev.copy()
    ev.loc[ev.index % 2 == 0, "action"] = "purchase"  # an action the model never saw
    return ev


def _longer_gaps(ev):
    ev = ev.sort_values(["user_id", "ts"]).copy()
    first = ev.groupby("user_id")["ts"].transform("min")
    ev["ts"] = first + (ev["ts"] - first) * 1000
    return ev


def _new_items(ev):
    ev = ev.copy()
    ev.loc[ev.index % 2 == 0, "item_id"] = 10_000 + ev.index[ev.index % 2 == 0]
    return ev


def _bots(ev):
    """The same population plus as many bot accounts: 80 events each, 1 s apart, on 3 popular items,
    with the population's action mix."""
    top = ev["item_id"].value_counts().index[:3].to_numpy()
    n = ev["user_id"].nunique()
    bots = pd.DataFrame({"user_id": np.repeat([f"bot{i}" for i in range(n)], 80),
                         "item_id": np.tile(np.resize(top, 80), n),
                         "ts": np.tile(1_600_500_000 + np.arange(80), n),
                         "action": ev["action"].sample(80 * n, replace=True, random_state=0).to_numpy(), "value": 0.5})
    return pd.concat([ev, bots], ignore_index=True)


@pytest.mark.parametrize("shift, moved, steady", [
    (_more_purchases, {"actions"}, {"items", "gaps", "lengths"}),
    (_longer_gaps, {"gaps"}, {"items", "actions", "lengths"}),
    (_new_items, {"items"}, {"actions", "gaps", "lengths"}),
    (_bots, {"scores", "flagged", "lengths", "gaps"}, {"actions"}),
], ids=["action mix", "longer gaps", "new items", "bot-heavy"])
def test_a_shifted_log_moves_its_signals_past_act_and_not_the_others(tiny_model, tiny_events, shift, moved, steady):
    rows = _report(tiny_model, shift(tiny_events))
    assert {s for s in moved if rows[s].verdict == "act"} == moved, {s: (rows[s].value, rows[s].detail) for s in moved}
    assert {s for s in steady if rows[s].value >= PSI_WATCH} == set(), {s: rows[s].value for s in steady}
    assert all(rows[s].detail for s in moved)


def test_few_live_observations_report_too_few(tiny_model, tiny_events):
    rows = _report(tiny_model, tiny_events, min_count=10_000)
    assert {r.verdict for r in rows.values()} == {"too few"}


# --------------------------------------------------------------------------- the monitor
def _counts(r: DriftReference, users: int, rng) -> dict:
    return {s: (rng.multinomial(users * (5 if s in ("items", "actions", "gaps") else 1),
                                np.ones(n) / n) if s != "flagged" else np.array([users - 1, 1]))
            for s, n in r.sizes().items()}


def test_monitor_memory_is_bounded_and_the_window_keeps_the_recent_users(tiny_model):
    r, rng = tiny_model.drift, np.random.default_rng(0)
    m = DriftMonitor(r, window=100, blocks=10)
    for _ in range(2000):
        m.update(_counts(r, 3, rng))
    users = m.totals()["flagged"].sum()
    assert 100 <= users <= 100 + 10 + 3
    assert len(m._blocks) <= 10 and m._current.shape == (sum(r.sizes().values()),)
    whole = DriftMonitor(r)  # no window: one vector, all batches
    for _ in range(50):
        whole.update(_counts(r, 3, rng))
    assert whole.totals()["flagged"].sum() == 150 and len(whole._blocks) == 0


def test_monitor_rejects_counts_of_another_reference_naming_the_signal(tiny_model):
    r = tiny_model.drift
    bad = {s: np.zeros(n + (s == "gaps"), np.int64) for s, n in r.sizes().items()}
    with pytest.raises(ValueError, match="signal 'gaps'"):
        DriftMonitor(r).update(bad)
    with pytest.raises(ValueError, match="window"):
        DriftMonitor(r, window=0)


def test_no_reference_reports_so_and_ignores_batches():
    m = DriftMonitor(None)
    m.update({"items": np.ones(3)})
    rows = m.report()
    assert [r.signal for r in rows] == list(SIGNALS) and {r.verdict for r in rows} == {"no reference"}
    assert "no reference" in report_table(rows)


# --------------------------------------------------------------------------- the bundle
def test_bundle_round_trip_keeps_the_reference_and_it_still_counts(tiny_model, tiny_bundle, tiny_events):
    from seqguard_ray import SeqGuard
    from seqguard_ray.core.bundle import read_manifest

    sg = SeqGuard.load(tiny_bundle)
    a, b = tiny_model.drift, sg.drift
    assert b.to_state() == a.to_state() and json.dumps(read_manifest(tiny_bundle)["drift"])
    np.testing.assert_array_equal(b.item_bin_, a.item_bin_)
    rows = _report(sg, tiny_events)
    assert all(rows[s].value < 1e-6 for s in PSI_SIGNALS)


def test_a_bundle_without_a_reference_loads_and_reports_none(tiny_bundle, tmp_path):
    """Bundles trained before the drift reference (the golden one; an older manifest) load with drift
    None; ModelInfo too; a broken reference is the bundle's error, naming it."""
    from seqguard_ray import SeqGuard
    from seqguard_ray.core.bundle import BundleError
    from seqguard_ray.runtime.serve import ModelInfo

    assert SeqGuard.load(GOLDEN / "model").drift is None
    assert ModelInfo.from_dir(str(GOLDEN / "model")).drift is None
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("drift")
    (old / "manifest.json").write_text(json.dumps(manifest))  # the manifest is not under the checksums
    assert SeqGuard.load(old).drift is None
    manifest["drift"] = {**json.loads((Path(tiny_bundle) / "manifest.json").read_text())["drift"],
                         "counts": {s: [1] for s in SIGNALS}}
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="drift reference signal 'items'"):
        SeqGuard.load(old)


def test_a_reference_read_without_the_vocabulary_reports_but_does_not_count(tiny_bundle):
    from seqguard_ray.core.bundle import read_drift, read_manifest
    from seqguard_ray.core.stage import NotFittedError

    r = read_drift(read_manifest(tiny_bundle))
    assert DriftMonitor(r).report()[0].verdict == "too few"
    with pytest.raises(NotFittedError, match="cannot count"):
        r.count(None, np.zeros(1), np.zeros(1, bool))


# --------------------------------------------------------------------------- serving
def _batch(events: pd.DataFrame):
    from seqguard_ray.runtime.serve import SeqBatch

    ev = events.sort_values(["user_id", "ts"], kind="stable")
    n = ev.groupby("user_id", sort=False).size()
    return SeqBatch(list(n.index.astype(str)), np.r_[0, np.cumsum(n.to_numpy())].astype(np.int64),
                    ev["item_id"].astype(str).to_numpy(object), ev["ts"].to_numpy(np.float64),
                    ev["action"].astype(str).to_numpy(object), ev["value"].to_numpy(np.float64))


def _gauge(m, name, **tags):
    return m.gauges.get((name, tuple(sorted(tags.items()))))


def test_the_serving_path_updates_the_drift_gauges(tiny_model, tiny_events):
    """Both front ends run run_stages: on the plain in-process backend each scored batch's counts
    (from the DetectorEnsemble stage) reach the metrics' monitor, and the gauges show its report."""
    from seqguard_ray.runtime.serve import InProcessBackend
    from seqguard_ray.runtime.serve.metrics import (
        DRIFT_FLAGGED,
        DRIFT_FLAGGED_Z,
        DRIFT_PSI,
        InMemoryMetrics,
    )

    m = InMemoryMetrics(drift_every=1, drift_min_count=1)
    shifted = _longer_gaps(tiny_events)
    users = sorted(shifted["user_id"].unique())

    async def main():
        backend = InProcessBackend(tiny_model, batching=False, metrics=m)
        try:
            for part in np.array_split(np.array(users), 3):  # three batches, one monitor
                await backend.score(_batch(shifted[shifted["user_id"].isin(part)]))
        finally:
            await backend.aclose()

    asyncio.run(main())
    assert m.drift_monitor.totals()["flagged"].sum() == len(users)
    want = _report(tiny_model, shifted)
    for s in PSI_SIGNALS:
        assert _gauge(m, DRIFT_PSI.name, signal=s) == pytest.approx(want[s].value, abs=1e-9), s
    assert _gauge(m, DRIFT_PSI.name, signal="gaps") >= PSI_ACT
    assert _gauge(m, DRIFT_PSI.name, signal="actions") < PSI_WATCH
    ref = tiny_model.drift.counts_["flagged"]
    assert _gauge(m, DRIFT_FLAGGED.name, population="reference") == pytest.approx(ref[1] / ref.sum())
    assert _gauge(m, DRIFT_FLAGGED.name, population="live") is not None
    assert _gauge(m, DRIFT_FLAGGED_Z.name) == pytest.approx(want["flagged"].value)


def test_metrics_count_only_batches_of_the_loaded_version_and_a_new_version_restarts(tiny_model):
    from seqguard_ray.runtime.serve.metrics import DRIFT_PSI, InMemoryMetrics

    r, rng = tiny_model.drift, np.random.default_rng(1)
    m = InMemoryMetrics(drift_every=1, drift_min_count=1)
    counts = _counts(r, 5, rng)
    m.scored(np.zeros(5), np.zeros(5, bool), np.array(["normal"] * 5), drift=counts, model_version="v1")
    assert m.drift_monitor is None and m.gauges == {}  # nothing loaded: nothing to compare with
    m.model_loaded("v1", drift=r)
    m.scored(np.zeros(5), np.zeros(5, bool), np.array(["normal"] * 5), drift=counts, model_version="v1")
    m.scored(np.zeros(5), np.zeros(5, bool), np.array(["normal"] * 5), drift=counts, model_version="v0")  # old
    assert m.drift_monitor.totals()["flagged"].sum() == 5
    assert _gauge(m, DRIFT_PSI.name, signal="items") is not None
    m.model_loaded("v1", drift=r)  # the same bundle reconfigured: the window stays
    assert m.drift_monitor.totals()["flagged"].sum() == 5
    m.model_loaded("v2", drift=None)  # a bundle without a reference: no monitor counts, nothing fails
    m.scored(np.zeros(5), np.zeros(5, bool), np.array(["normal"] * 5), drift=None, model_version="v2")
    assert m.drift_monitor.reference is None
    m.refresh()


def test_app_args_carry_the_drift_window_to_the_ingress():
    from pydantic import ValidationError

    from seqguard_ray.runtime.serve.app import AppArgs, ingress_kwargs

    kw = ingress_kwargs(AppArgs(model_dir="m", insecure_no_auth=True, drift_window=1000, drift_min_count=50))
    assert (kw["drift_window"], kw["drift_min_count"]) == (1000, 50)
    assert ingress_kwargs(AppArgs(model_dir="m", insecure_no_auth=True, drift_window=None))["drift_window"] is None
    with pytest.raises(ValidationError, match="drift_window"):
        AppArgs(model_dir="m", drift_window=0)


def test_a_drift_signal_moving_to_act_is_logged_once(tiny_model, caplog):
    from seqguard_ray.runtime.serve.metrics import NullMetrics

    r = tiny_model.drift
    m = NullMetrics(drift_every=1, drift_min_count=1)
    m.model_loaded("v1", drift=r)
    shifted = {s: c.copy() for s, c in r.counts_.items()}
    shifted["actions"] = np.r_[np.zeros(len(shifted["actions"]) - 1, np.int64), 1000]  # unseen actions only
    with caplog.at_level("WARNING", logger="seqguard_ray.runtime.serve.metrics"):
        m.scored(np.zeros(1), np.zeros(1, bool), np.array(["normal"]), drift=shifted)
        m.refresh()
    logged = [rec.getMessage() for rec in caplog.records if "drift of actions" in rec.getMessage()]
    assert len(logged) == 1 and "act" in logged[0] and "unseen actions" in logged[0]


# --------------------------------------------------------------------------- seqguard monitor
def test_monitor_command_prints_the_table_and_json(tiny_bundle, tiny_events, tmp_path, capsys):
    from seqguard_ray.cli.main import main

    path = tmp_path / "shifted.parquet"
    _new_items(tiny_events).to_parquet(path)
    assert main(["-q", "monitor", "--model", str(tiny_bundle), "--events", str(path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(lines) == set(SIGNALS) and "act" in lines["items"] and "unknown items" in lines["items"]
    assert main(["-q", "monitor", "--model", str(tiny_bundle), "--events", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["reference"] and rep["events"] == len(tiny_events) and rep["thresholds"]["psi_act"] == PSI_ACT
    assert [s["signal"] for s in rep["signals"]] == list(SIGNALS)
    assert next(s for s in rep["signals"] if s["signal"] == "items")["verdict"] == "act"


def test_monitor_command_reads_scores_of_seqguard_score(tiny_bundle, tiny_events, tmp_path, capsys):
    from seqguard_ray.cli.main import main

    path, out = tmp_path / "log.parquet", tmp_path / "out"
    tiny_events.to_parquet(path)
    assert main(["-q", "score", "--model", str(tiny_bundle), "--events", str(path), "--out", str(out), "--engine", "local"]) == 0
    assert main(["-q", "monitor", "--model", str(tiny_bundle), "--events", str(path), "--scores", str(out), "--json"]) == 0
    with_scores = json.loads(capsys.readouterr().out)["signals"]
    assert main(["-q", "monitor", "--model", str(tiny_bundle), "--events", str(path), "--json"]) == 0
    scored_here = json.loads(capsys.readouterr().out)["signals"]
    for a, b in zip(with_scores, scored_here):
        if a["signal"] != "flagged":  # users.parquet's flags include campaign members; the reference's do not
            assert a["value"] == pytest.approx(b["value"], abs=1e-9), a["signal"]


def test_monitor_command_bad_inputs_get_clear_errors(tiny_bundle, tiny_events, tmp_path, capsys):
    from seqguard_ray.cli.main import main

    path = tmp_path / "log.parquet"
    tiny_events.to_parquet(path)
    base = ["monitor", "--model", str(tiny_bundle), "--events", str(path)]
    assert main([*base, "--scores", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    out = tmp_path / "out"
    out.mkdir()
    assert main([*base, "--scores", str(out)]) == 2
    assert "no readable users.parquet" in capsys.readouterr().err
    pd.DataFrame({"user_id": ["u0"], "score": [0.5], "anomalous": [False]}).to_parquet(out / "users.parquet")
    assert main([*base, "--scores", str(out)]) == 2
    err = capsys.readouterr().err
    assert "users.parquet has no score for" in err and "of the log's" in err
    pd.DataFrame({"user_id": ["u0"], "score": [0.5]}).to_parquet(out / "users.parquet")
    assert main([*base, "--scores", str(out)]) == 2
    assert "lacks column(s) ['anomalous']" in capsys.readouterr().err
    assert main(["monitor", "--model", str(tmp_path / "nomodel"), "--events", str(path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_monitor_command_on_a_bundle_without_a_reference_says_so(capsys):
    from seqguard_ray.cli.main import main

    assert main(["-q", "monitor", "--model", str(GOLDEN / "model"), "--events", str(GOLDEN / "events.parquet"),
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["reference"] is False and {s["verdict"] for s in rep["signals"]} == {"no reference"}


# --------------------------------------------------------------------------- dashboard and docs
def test_dashboard_has_a_drift_panel_with_the_act_threshold():
    dash = json.loads((ROOT / "docs" / "grafana" / "seqguard.json").read_text())
    panels = [p for p in dash["panels"] if any("ray_seqguard_drift_psi" in t["expr"] for t in p.get("targets", []))]
    assert len(panels) == 1
    steps = panels[0]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps if s["value"] is not None] == [PSI_WATCH, PSI_ACT]
    rules = (ROOT / "docs" / "metrics.md").read_text()
    assert "ray_seqguard_drift_psi > 0.25" in rules and "SeqguardDrift" in rules
    for doc in ("serving.md", "operations.md"):
        assert "seqguard monitor" in (ROOT / "docs" / doc).read_text(), doc


# --------------------------------------------------------------------------- the library cross-check
def test_psi_agrees_with_evidently_on_the_same_bins():
    """docs/decisions.md: Evidently is not a dependency; where it imports (0.7.23 needs pandas < 3),
    its PSI on the same bins (categorical: one value per bin) equals ours, an empty bin included."""
    stattests = pytest.importorskip("evidently.legacy.calculations.stattests.psi", exc_type=ImportError)
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(0)
    ref_counts, live_counts = rng.integers(50, 500, 12), rng.integers(50, 500, 12)
    live_counts[3] = 0  # both floor an empty bin's share at 1e-4
    ref = pd.Series(np.repeat(np.arange(12), ref_counts))
    live = pd.Series(np.repeat(np.arange(12), live_counts))
    theirs, _ = stattests._psi(ref, live, ColumnType.Categorical, PSI_ACT)
    assert psi(ref_counts, live_counts) == pytest.approx(theirs, rel=1e-9)
