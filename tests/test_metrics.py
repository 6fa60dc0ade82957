"""Serving metrics without Ray: what is counted, and the docs and Grafana dashboard that use the names.

The Prometheus scrape of the running Serve app is tests/test_serve_app.py::test_prometheus_metrics.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from seqguard_ray.runtime.serve.metrics import (
    ANOMALIES,
    BATCH_REQUESTS,
    METRICS,
    MODEL_VERSION,
    REPAIR_ACTIONS,
    REQUESTS,
    SCORE_BUCKETS,
    USER_SCORE,
    InMemoryMetrics,
    NullMetrics,
    ServingMetrics,
)

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana" / "seqguard.json"


def test_counts_requests_scores_anomalies_and_actions():
    m = InMemoryMetrics()
    m.request("Score", "OK")
    m.request("Score", "OK")
    m.request("ModelInfo", "UNAUTHENTICATED")
    m.scored(np.array([0.2, 0.995, 1.0, 0.999]), np.array([False, True, True, True]),
             np.array(["normal", "bot", "bot", "replay"], dtype=object))
    m.repaired(np.array(["pass", "quarantine", "quarantine"], dtype=object))
    assert m.counters == {
        (REQUESTS.name, (("code", "OK"), ("rpc", "Score"))): 2,
        (REQUESTS.name, (("code", "UNAUTHENTICATED"), ("rpc", "ModelInfo"))): 1,
        (ANOMALIES.name, (("anomaly_type", "bot"),)): 2,
        (ANOMALIES.name, (("anomaly_type", "replay"),)): 1,
        (REPAIR_ACTIONS.name, (("action", "pass"),)): 1,
        (REPAIR_ACTIONS.name, (("action", "quarantine"),)): 2,
    }
    assert m.observed[USER_SCORE.name] == [0.2, 0.995, 1.0, 0.999]


def test_nothing_flagged_counts_no_anomaly_and_empty_batches_are_fine():
    m = InMemoryMetrics()
    m.scored(np.array([0.1, 0.5]), np.array([False, False]), np.array(["normal", "normal"], dtype=object))
    m.scored(np.array([]), np.array([], bool), np.array([], dtype=object))
    m.repaired(np.array([], dtype=object))
    assert m.counters == {}
    assert m.observed[USER_SCORE.name] == [0.1, 0.5]


def test_batched_observes_requests_per_stage_call():
    m = InMemoryMetrics()
    m.batched(1)
    m.batched(7)
    assert m.observed[BATCH_REQUESTS.name] == [1.0, 7.0]


def test_scores_are_clipped_into_the_histogram_range():
    m = InMemoryMetrics()
    m.scored(np.array([-1e-9, 1 + 1e-9], dtype=np.float32), np.array([False, True]), np.array(["normal", "bot"]))
    assert m.observed[USER_SCORE.name] == [0.0, 1.0]


def test_model_version_gauge_moves_to_the_new_version_on_rollout():
    m = InMemoryMetrics()
    m.model_loaded("v1")
    m.model_loaded("v1")  # reconfigured with the same bundle
    assert m.gauges == {(MODEL_VERSION.name, (("model_version", "v1"),)): 1.0}
    m.model_loaded("v2")
    assert m.gauges == {(MODEL_VERSION.name, (("model_version", "v1"),)): 0.0,
                        (MODEL_VERSION.name, (("model_version", "v2"),)): 1.0}


def test_null_metrics_take_every_event_without_a_failed_update(caplog):
    m = NullMetrics()
    with caplog.at_level("WARNING", logger="seqguard_ray.runtime.serve.metrics"):
        m.request("Score", "OK")
        m.scored(np.array([0.5]), np.array([True]), np.array(["bot"]))
        m.repaired(np.array(["quarantine"]))
        m.batched(3)
        m.model_loaded("v1")
        m.refresh()
    assert caplog.records == []  # a primitive left unimplemented would log "could not update metric"


def test_a_failing_backend_never_fails_the_caller(caplog):
    class Broken(ServingMetrics):
        def _inc(self, spec, n, tags):
            raise RuntimeError("exporter down")

        def _observe(self, spec, values):
            raise RuntimeError("exporter down")

        def _set(self, spec, value, tags):
            raise RuntimeError("exporter down")

    m = Broken()
    for _ in range(2):
        m.request("Score", "OK")
        m.scored(np.array([0.5]), np.array([True]), np.array(["bot"]))
        m.model_loaded("v1")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warnings and all("could not update metric" in r.getMessage() for r in warnings)
    # the traceback is logged once per metric, not on every request
    assert sum(bool(r.exc_info) for r in warnings) == 4


def test_metric_names_are_unique_prometheus_names_and_buckets_sorted():
    names = [s.name for s in METRICS]
    assert len(set(names)) == len(names) and all(n.startswith("seqguard_") for n in names)
    assert all(re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", n) for n in names)  # else Ray drops the metric
    assert list(SCORE_BUCKETS) == sorted(SCORE_BUCKETS) and SCORE_BUCKETS[0] > 0 and SCORE_BUCKETS[-1] == 1.0
    assert REQUESTS.exported == "ray_seqguard_requests_total"
    assert USER_SCORE.exported == "ray_seqguard_user_score"
    assert MODEL_VERSION.exported == "ray_seqguard_model_version"


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_parses_and_uses_every_metric():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    exprs = "\n".join(_dashboard_exprs())
    for spec in METRICS:
        assert spec.exported in exprs, f"no panel uses {spec.exported}"
    assert "histogram_quantile" in exprs and f"{USER_SCORE.exported}_bucket" in exprs
    assert "ray_serve_grpc_request_latency_ms_bucket" in exprs


def test_grafana_dashboard_names_only_exported_metrics():
    known = {s.exported for s in METRICS}
    known |= {f"{s.exported}_{part}" for s in METRICS if s.kind == "histogram" for part in ("bucket", "count", "sum")}
    for expr in _dashboard_exprs():
        for name in re.findall(r"\bray_seqguard_[a-z_]+", expr):
            assert name in known, f"{name} in {expr!r} is not a metric seqguard exports"


@pytest.mark.parametrize("doc", ["docs/metrics.md"])
def test_metrics_doc_lists_every_metric(doc):
    text = (ROOT / doc).read_text()
    for spec in METRICS:
        assert f"`{spec.exported}`" in text, f"{doc} does not mention {spec.exported}"
    assert "grafana/seqguard.json" in text
    assert "metrics.md" in (ROOT / "README.md").read_text()
    assert "metrics.md" in (ROOT / "docs" / "operations.md").read_text()


def test_refresh_sets_the_current_version_again():
    calls = []

    class Recorder(NullMetrics):
        def _set(self, spec, value, tags):
            calls.append((spec.name, value, tags))

    m = Recorder()
    m.refresh()  # nothing loaded yet: nothing to set
    assert calls == []
    m.model_loaded("v1")
    m.model_loaded("v2")
    calls.clear()
    m.refresh()
    assert calls == [(MODEL_VERSION.name, 1.0, {"model_version": "v2"})]
