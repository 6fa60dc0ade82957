"""Serving metrics: what seqguard counts, in one place, behind a small framework-free interface.

:class:`ServingMetrics` turns serving events (an rpc answered with a status code, a batch of
sequences scored, a batch repaired, a model bundle loaded) into updates of the metrics in
:data:`METRICS`, and keeps the drift monitor whose report the drift gauges show
(:mod:`seqguard_ray.core.drift`). Subclasses only say where the updates go:

- :class:`NullMetrics`: nowhere (the default, e.g. for the plain ``grpc.aio`` server);
- :class:`InMemoryMetrics`: a dict (unit tests);
- :class:`RayMetrics`: Ray's metrics API, exported in Prometheus format by every node's metrics
  agent (the Ray Serve ingress).

Names are registered as ``seqguard_*``; Ray's exporter adds the ``ray_`` prefix and, for counters,
the ``_total`` suffix (:attr:`MetricSpec.exported`). See docs/metrics.md.

Scores are in [0, 1]; higher means more anomalous.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ...core.drift import MIN_COUNT, DriftMonitor, DriftReference

log = logging.getLogger(__name__)

# Bucket upper bounds for sequence scores. Scores are calibrated tail probabilities, so the
# threshold sits at 1 - target_fpr (0.99 by default): the buckets are dense near 1.
SCORE_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its registered name, kind, help text, tag keys and (histograms) buckets."""

    name: str                             # registered name, ``seqguard_...``
    kind: str                             # "counter", "histogram" or "gauge"
    description: str                      # Prometheus HELP text
    tag_keys: tuple[str, ...] = ()        # tags set on every update
    boundaries: tuple[float, ...] = ()    # histogram bucket upper bounds (positive, increasing)

    @property
    def exported(self) -> str:
        """The name Prometheus sees (``_bucket``/``_count``/``_sum`` follow it for histograms)."""
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")


REQUESTS = MetricSpec("seqguard_requests", "counter",
                      "seqguard rpcs answered by the ingress, by rpc and gRPC status code", ("rpc", "code"))
USER_SCORE = MetricSpec("seqguard_user_score", "histogram",
                        "sequence (user) anomaly scores in [0, 1], higher = more anomalous", (), SCORE_BUCKETS)
ANOMALIES = MetricSpec("seqguard_anomalies", "counter",
                       "sequences scored anomalous, by anomaly type", ("anomaly_type",))
REPAIR_ACTIONS = MetricSpec("seqguard_repair_actions", "counter",
                            "sequences repaired, by the repair action applied (pass included)", ("action",))
BATCH_REQUESTS = MetricSpec("seqguard_batch_requests", "histogram",
                            "requests merged into one stage call by the ingress (ContinuousBatcher)", (),
                            (1, 2, 4, 8, 16, 32, 64, 128, 256))
MODEL_VERSION = MetricSpec("seqguard_model_version", "gauge",
                           "1 for the model version this replica serves, 0 for versions it served before",
                           ("model_version",))

DRIFT_PSI = MetricSpec("seqguard_drift_psi", "gauge",
                       "population stability index of live inputs and scores against the training reference, "
                       "by signal (0.1: watch, 0.25: act)", ("signal",))
DRIFT_FLAGGED = MetricSpec("seqguard_drift_flagged_share", "gauge",
                           "share of users flagged: live (the drift window) and in the training reference",
                           ("population",))
DRIFT_FLAGGED_Z = MetricSpec("seqguard_drift_flagged_z", "gauge",
                             "two-proportion z of the live flagged share against the training reference's")

# shadow rollout (a candidate bundle scoring a share of the traffic beside the live one; docs/serving.md)
SHADOW_USERS = MetricSpec("seqguard_shadow_users", "counter",
                          "users scored by the live bundle and the shadow candidate, by who flagged them "
                          "(both | live_only | candidate_only | neither)", ("flagged",))
SHADOW_AGREEMENT = MetricSpec("seqguard_shadow_agreement", "gauge",
                              "candidate vs live since the candidate was set: flag agreement (share of users both "
                              "flagged or both passed) and spearman (score rank correlation, last 10k users)",
                              ("statistic",))
SHADOW_LATENCY = MetricSpec("seqguard_shadow_latency_seconds", "histogram",
                            "latency of a shadowed batch through the stages, live and candidate", ("model",),
                            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
SHADOW_ERRORS = MetricSpec("seqguard_shadow_errors", "counter",
                           "users the candidate did not score: error (it failed) or busy (the shadow was still "
                           "scoring earlier users)", ("reason",))
SHADOW_CANDIDATE = MetricSpec("seqguard_shadow_candidate", "gauge",
                              "the shadow share (0 to 1) of the candidate version held beside the live bundle",
                              ("model_version",))

METRICS: tuple[MetricSpec, ...] = (REQUESTS, USER_SCORE, ANOMALIES, REPAIR_ACTIONS, BATCH_REQUESTS, MODEL_VERSION,
                                   DRIFT_PSI, DRIFT_FLAGGED, DRIFT_FLAGGED_Z, SHADOW_USERS, SHADOW_AGREEMENT,
                                   SHADOW_LATENCY, SHADOW_ERRORS, SHADOW_CANDIDATE)
DRIFT_WINDOW = 50_000  # users the drift gauges compare by default (the most recent; blocks of a tenth)
DRIFT_EVERY = 16       # scored batches between two exports of the drift gauges (refresh() exports too)


def _counts(values: Iterable) -> list[tuple[str, int]]:
    arr = np.asarray(list(values), dtype=object).astype(str)
    if arr.size == 0:
        return []
    keys, n = np.unique(arr, return_counts=True)
    return [(str(k), int(c)) for k, c in zip(keys, n)]


class ServingMetrics:
    """What is counted. Subclasses implement the three primitives ``_inc``, ``_observe`` and ``_set``.

    A failing primitive never fails a request: the error is logged (with its traceback the first
    time for each metric) and the update is lost.

    Drift: :meth:`model_loaded` with the bundle's drift reference starts a
    :class:`~seqguard_ray.core.drift.DriftMonitor` over the last ``drift_window`` users (None: all
    since the load); :meth:`scored` adds each batch's drift counts to it; every ``drift_every``
    batches, and on :meth:`refresh`, the drift gauges are set from its report (not for a signal with
    fewer than ``drift_min_count`` live observations).
    """

    def __init__(self, *, drift_window: int | None = DRIFT_WINDOW, drift_every: int = DRIFT_EVERY,
                 drift_min_count: int = MIN_COUNT) -> None:
        if isinstance(drift_every, bool) or not isinstance(drift_every, int) or drift_every < 1:
            raise ValueError(f"drift_every must be an int >= 1, got {drift_every!r}")
        DriftMonitor(None, window=drift_window, min_count=drift_min_count)  # checks them
        self._version: str | None = None
        self._failed: set[str] = set()
        self.drift_window, self.drift_every, self.drift_min_count = drift_window, drift_every, drift_min_count
        self.drift_monitor: DriftMonitor | None = None  # None: no bundle loaded yet
        self._drift_batches = 0
        self._drift_verdicts: dict[str, str] = {}  # the last export's, to log a change once

    # ------------------------------------------------------------------ events
    def request(self, rpc: str, code: str) -> None:
        """One rpc answered; ``code`` is the gRPC status name (``"OK"``, ``"INVALID_ARGUMENT"``...)."""
        self._safe(REQUESTS, self._inc, REQUESTS, 1, {"rpc": rpc, "code": code})

    def scored(self, score: np.ndarray, anomalous: np.ndarray, anomaly_type: np.ndarray, *,
               drift: Mapping[str, np.ndarray] | None = None, model_version: str | None = None) -> None:
        """A batch of R sequences scored: score (R,) in [0, 1], anomalous (R,) bool, anomaly_type (R,) str;
        ``drift``: its drift counts (``ScoredBatch.drift_counts``), added to the drift monitor when
        the batch was scored with the model version loaded here (``model_version`` None: assumed so)."""
        score = np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
        flagged = np.asarray(anomaly_type, dtype=object)[np.asarray(anomalous, dtype=bool)]
        self._safe(USER_SCORE, self._observe, USER_SCORE, score)
        for t, n in _counts(flagged):
            self._safe(ANOMALIES, self._inc, ANOMALIES, n, {"anomaly_type": t})
        if drift is not None and self.drift_monitor is not None and model_version in (None, self._version):
            self._safe(DRIFT_PSI, self.drift_monitor.update, drift)
            self._drift_batches += 1
            if self._drift_batches % self.drift_every == 0:
                self._export_drift()

    def repaired(self, user_action: np.ndarray) -> None:
        """A batch of R sequences repaired: user_action (R,) str, the action applied to each."""
        for a, n in _counts(user_action):
            self._safe(REPAIR_ACTIONS, self._inc, REPAIR_ACTIONS, n, {"action": a})

    def batched(self, n_requests: int) -> None:
        """One stage call carried ``n_requests`` merged requests."""
        self._safe(BATCH_REQUESTS, self._observe, BATCH_REQUESTS, np.array([n_requests], dtype=np.float64))

    def shadowed(self, live_flag: np.ndarray, cand_flag: np.ndarray, live_s: float, candidate_s: float,
                 agreement: Mapping[str, float | None]) -> None:
        """A shadowed batch: flags (R,) bool of both bundles, each one's latency (seconds), and the
        agreement so far (``{"flag_agreement": .., "spearman": ..}``, None: not defined yet)."""
        lf, cf = np.asarray(live_flag, bool), np.asarray(cand_flag, bool)
        for who, n in (("both", lf & cf), ("live_only", lf & ~cf), ("candidate_only", ~lf & cf), ("neither", ~lf & ~cf)):
            if n.any():
                self._safe(SHADOW_USERS, self._inc, SHADOW_USERS, int(n.sum()), {"flagged": who})
        for model, s in (("live", live_s), ("candidate", candidate_s)):
            self._safe(SHADOW_LATENCY, self._observe_tagged, SHADOW_LATENCY, s, {"model": model})
        for stat, v in agreement.items():
            if v is not None:
                self._safe(SHADOW_AGREEMENT, self._set, SHADOW_AGREEMENT, float(v), {"statistic": stat})

    def shadow_missed(self, n_users: int, reason: str) -> None:
        """``n_users`` the candidate did not score: ``reason`` "error" or "busy"."""
        self._safe(SHADOW_ERRORS, self._inc, SHADOW_ERRORS, int(n_users), {"reason": reason})

    def shadow_candidate(self, version: str, share: float) -> None:
        """The candidate held now (share 0: none any more, its gauge goes to 0)."""
        self._safe(SHADOW_CANDIDATE, self._set, SHADOW_CANDIDATE, float(share), {"model_version": version})

    def model_loaded(self, version: str, drift: DriftReference | None = None) -> None:
        """This replica now serves ``version``: its gauge goes to 1, the previous version's to 0
        (with Ray, that 0 is exported for a while and then the series is dropped, see :meth:`refresh`).
        ``drift``: the bundle's drift reference (None: it has none, no drift gauge is set); a new
        version starts a new drift window, the same one reloaded keeps it."""
        old, self._version = self._version, version
        if old is not None and old != version:
            self._safe(MODEL_VERSION, self._set, MODEL_VERSION, 0.0, {"model_version": old})
        self._safe(MODEL_VERSION, self._set, MODEL_VERSION, 1.0, {"model_version": version})
        if old != version or self.drift_monitor is None or self.drift_monitor.reference is None:
            self.drift_monitor = DriftMonitor(drift, window=self.drift_window, min_count=self.drift_min_count)
            self._drift_batches, self._drift_verdicts = 0, {}

    def refresh(self) -> None:
        """Set the gauges again. Call it every few seconds: Ray's metrics agent drops a gauge series
        that was not set for two export intervals (2 x 10 s by default), counters and histograms stay."""
        if self._version is not None:
            self._safe(MODEL_VERSION, self._set, MODEL_VERSION, 1.0, {"model_version": self._version})
        self._export_drift()

    def _export_drift(self) -> None:
        """Set the drift gauges from the monitor's report; log a signal's move to watch or act once."""
        if self.drift_monitor is None or self.drift_monitor.reference is None:
            return
        rows = self.drift_monitor.report()
        for row in rows:
            if row.verdict in ("watch", "act") and self._drift_verdicts.get(row.signal) != row.verdict:
                log.warning("drift of %s from the training reference: %s %.3f, %s (%s)", row.signal, row.statistic,
                            row.value, row.verdict, row.detail)
        self._drift_verdicts = {r.signal: r.verdict for r in rows}
        for row in rows:
            if row.verdict in ("too few", "no reference"):
                continue
            if row.signal == "flagged":
                live, ref = self.drift_monitor.totals()["flagged"], self.drift_monitor.reference.counts_["flagged"]
                for population, (n0, k) in (("live", live), ("reference", ref)):
                    self._safe(DRIFT_FLAGGED, self._set, DRIFT_FLAGGED, float(k / (n0 + k)), {"population": population})
                self._safe(DRIFT_FLAGGED_Z, self._set, DRIFT_FLAGGED_Z, float(row.value), {})
            else:
                self._safe(DRIFT_PSI, self._set, DRIFT_PSI, float(row.value), {"signal": row.signal})

    # ------------------------------------------------------------------ primitives
    def _inc(self, spec: MetricSpec, n: int, tags: dict[str, str]) -> None:
        raise NotImplementedError

    def _observe(self, spec: MetricSpec, values: np.ndarray) -> None:
        raise NotImplementedError

    def _set(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        raise NotImplementedError

    def _observe_tagged(self, spec: MetricSpec, value: float, tags: dict[str, str]) -> None:
        """One observation with tags (the untagged ``_observe`` serves the other histograms)."""
        raise NotImplementedError

    def _safe(self, spec: MetricSpec, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:  # metrics must not fail a request; logged below
            first = spec.name not in self._failed
            self._failed.add(spec.name)
            log.warning("could not update metric %s", spec.name, exc_info=first)


class NullMetrics(ServingMetrics):
    """Records nothing."""

    def _inc(self, spec, n, tags) -> None:
        pass

    def _observe(self, spec, values) -> None:
        pass

    def _set(self, spec, value, tags) -> None:
        pass

    def _observe_tagged(self, spec, value, tags) -> None:
        pass


class InMemoryMetrics(ServingMetrics):
    """Keeps counter totals, observed values and gauge values in dicts keyed by (name, sorted tags)."""

    def __init__(self, **drift) -> None:
        super().__init__(**drift)
        self.counters: dict[tuple[str, tuple], float] = {}
        self.observed: dict[str, list[float]] = {}
        self.gauges: dict[tuple[str, tuple], float] = {}

    def _inc(self, spec, n, tags) -> None:
        key = (spec.name, tuple(sorted(tags.items())))
        self.counters[key] = self.counters.get(key, 0) + n

    def _observe(self, spec, values) -> None:
        self.observed.setdefault(spec.name, []).extend(np.asarray(values, dtype=float).tolist())

    def _set(self, spec, value, tags) -> None:
        self.gauges[(spec.name, tuple(sorted(tags.items())))] = value

    def _observe_tagged(self, spec, value, tags) -> None:
        self.observed.setdefault(spec.name, []).append(float(value))


class RayMetrics(ServingMetrics):
    """Ray's metrics API. Create it inside a Serve replica: ``ray.serve.metrics`` then adds the
    ``application``, ``deployment`` and ``replica`` tags to every series (outside a replica they
    are plain ``ray.util.metrics`` objects). Needs a connected Ray worker or driver.
    """

    def __init__(self, **drift) -> None:
        super().__init__(**drift)
        from ray.serve import metrics as m

        self._m = {}
        for spec in METRICS:
            if spec.kind == "counter":
                self._m[spec.name] = m.Counter(spec.name, spec.description, spec.tag_keys)
            elif spec.kind == "histogram":
                self._m[spec.name] = m.Histogram(spec.name, spec.description, list(spec.boundaries), spec.tag_keys)
            else:
                self._m[spec.name] = m.Gauge(spec.name, spec.description, spec.tag_keys)

    def _inc(self, spec, n, tags) -> None:
        self._m[spec.name].inc(float(n), tags=tags)

    def _observe(self, spec, values) -> None:
        h = self._m[spec.name]
        for v in np.asarray(values, dtype=float).tolist():
            h.observe(v)

    def _set(self, spec, value, tags) -> None:
        self._m[spec.name].set(float(value), tags=tags)

    def _observe_tagged(self, spec, value, tags) -> None:
        self._m[spec.name].observe(float(value), tags=tags)


__all__ = [
    "ANOMALIES",
    "BATCH_REQUESTS",
    "DRIFT_EVERY",
    "DRIFT_FLAGGED",
    "DRIFT_FLAGGED_Z",
    "DRIFT_PSI",
    "DRIFT_WINDOW",
    "METRICS",
    "MODEL_VERSION",
    "REPAIR_ACTIONS",
    "REQUESTS",
    "SCORE_BUCKETS",
    "SHADOW_AGREEMENT",
    "SHADOW_CANDIDATE",
    "SHADOW_ERRORS",
    "SHADOW_LATENCY",
    "SHADOW_USERS",
    "USER_SCORE",
    "InMemoryMetrics",
    "MetricSpec",
    "NullMetrics",
    "RayMetrics",
    "ServingMetrics",
]
