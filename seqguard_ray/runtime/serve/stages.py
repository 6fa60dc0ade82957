"""The three serving stages (encode, detect, repair), their one sequencing, and the models a
serving process holds.

Each stage is one function over core objects; the in-process server and the Ray Serve
deployments call the same functions, and :func:`run_stages` is the one place that chains them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .batches import EncodedBatch, RepairedBatch, ScoredBatch, SeqBatch
from .errors import Unavailable
from .metrics import NullMetrics, ServingMetrics

if TYPE_CHECKING:
    from ...core.drift import DriftReference

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- stage functions
def encode_stage(sg, batch: SeqBatch, model_dir: str = "") -> EncodedBatch:
    """Tokenize and encode (the Encoder deployment's work). ``sg`` is a loaded SeqGuard."""
    log_ = batch.to_log()
    sg.check_log(log_, once=True)
    enc = sg.encode(sg.tokenize(log_))
    return EncodedBatch(enc, log_.frame["_row"].to_numpy(), getattr(sg, "model_version", ""),
                        getattr(sg, "model_dir", model_dir), list(batch.user_ids), log_.item)


def detect_stage(sg, eb: EncodedBatch) -> ScoredBatch:
    """Score with the calibrated ensemble (the DetectorEnsemble deployment's work), then merge the
    evidence of the campaign table published with the bundle (``sg.campaign_watch``), if any. The
    batch's drift counts ride along (``drift_counts``): this stage holds the vocabulary that bins
    items, the front end's metrics add them up (:func:`run_stages`)."""
    from ...core.campaigns.published import apply_published
    from ...core.detectors import DETECTORS

    s = sg.detect(eb.encoded)
    drift = getattr(sg, "drift", None)  # counted before the campaign table's evidence, as its reference was
    counts = drift.count(eb.encoded.seqs, s.score, s.anomalous) if drift is not None else None
    watch = getattr(sg, "campaign_watch", None)
    table = watch.current() if watch is not None else None
    campaign = targeted = None
    if table is not None and eb.user_ids is not None and eb.items is not None:
        seqs = eb.encoded.seqs
        s, campaign, targeted = apply_published(seqs.offsets, s, table, eb.user_ids, eb.items, seqs.ts,
                                                threshold=float(sg.strata.threshold_))
    return ScoredBatch(eb.encoded.seqs.offsets, eb.order, s.score, s.anomalous, s.anomaly_type, s.reasons,
                       s.event_score, s.event_anomalous, s.detector_scores, s.length_doubt, tuple(DETECTORS),
                       float(sg.user_detectors.threshold_), eb.model_version, eb.model_dir,
                       s.event_campaign if campaign is not None else None, campaign, targeted,
                       table.version if campaign is not None else "", counts)


def repair_stage(policy, sb: ScoredBatch) -> RepairedBatch:
    """Apply the repair policy (the RepairPolicy deployment's work)."""
    keep, weight, ev_action, user_action = policy.decide(sb.offsets, sb)
    return RepairedBatch(sb, keep, weight, ev_action, user_action)


# --------------------------------------------------------------------------- sequencing
@dataclass(frozen=True)
class StageCalls:
    """How a front end calls the three stages.

    Each call takes the previous stage's output as that stage returned it (the value, or an
    awaitable of it) and returns an awaitable of its own. With Ray Serve these are deployment
    handle calls: a ``DeploymentResponse`` handed on unresolved sends the data from replica to
    replica, not through the ingress.
    """

    encode: Callable[[SeqBatch], Awaitable[EncodedBatch]]
    detect: Callable[[Any], Awaitable[ScoredBatch]]
    repair: Callable[[Any], Awaitable[RepairedBatch]]


async def run_stages(calls: StageCalls, batch: SeqBatch, repair: bool,
                     metrics: ServingMetrics | None = None) -> ScoredBatch | RepairedBatch:
    """Encode -> detect [-> repair] one batch and count what came out; a RepairedBatch when ``repair``."""
    metrics = metrics or NullMetrics()
    scored = calls.detect(calls.encode(batch))
    if not repair:
        sb = await scored
        metrics.scored(sb.score, sb.anomalous, sb.anomaly_type, drift=sb.drift_counts, model_version=sb.model_version)
        return sb
    rb = await calls.repair(scored)
    sb = rb.scored
    metrics.scored(sb.score, sb.anomalous, sb.anomaly_type, drift=sb.drift_counts, model_version=sb.model_version)
    metrics.repaired(rb.user_action)
    return rb


def local_stage_calls(engine: Callable[[], Any], pool: Executor, model_dir: str = "") -> StageCalls:
    """StageCalls that run each stage in this process on ``pool``. ``engine()`` returns the loaded
    SeqGuard (or raises :class:`Unavailable`); it is not thread-safe, so give ``pool`` one thread."""

    async def hop(fn: Callable[[Any], Any], upstream: Any) -> Any:
        x = await upstream if inspect.isawaitable(upstream) else upstream
        return await asyncio.get_running_loop().run_in_executor(pool, fn, x)

    # a batch's later stages use the engine that encoded it, even if engine() changed meanwhile (a
    # promoted rollout candidate): the last two engines by version (one thread: no lock needed)
    used: OrderedDict[str, Any] = OrderedDict()

    def encode(x: SeqBatch) -> EncodedBatch:
        sg = engine()
        used[getattr(sg, "model_version", "")] = sg
        used.move_to_end(getattr(sg, "model_version", ""))
        while len(used) > 2:
            used.popitem(last=False)
        return encode_stage(sg, x, model_dir)

    def same(version: str) -> Any:
        return used.get(version) or engine()

    return StageCalls(encode=lambda b: hop(encode, b),
                      detect=lambda e: hop(lambda x: detect_stage(same(x.model_version), x), e),
                      repair=lambda s: hop(lambda x: repair_stage(same(x.model_version).policy, x), s))


# --------------------------------------------------------------------------- models in a replica
class ModelStore:
    """The bundle a stage serves, plus recently replaced ones, keyed by model version.

    During a rollout, upstream stages may still send work encoded with the previous bundle: a
    stage looks the version up here (loading it from ``model_dir`` if needed), so stages never mix
    two bundles in one request. ``keep`` 3: the current, the previous and a shadow rollout's candidate.
    """

    def __init__(self, loader: Callable[[str], Any], *, keep: int = 3):
        self._loader = loader
        self._keep = keep
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._current: str | None = None
        self._lock = threading.Lock()

    def load(self, model_dir: str) -> Any:
        """Load ``model_dir`` and make it current (blocking; run it off the event loop)."""
        with self._lock:
            m = self._loader(str(model_dir))
            self._put(m)
            self._current = m.model_version
            log.info("serving model %s from %s", m.model_version, model_dir)
            return m

    def preload(self, model_dir: str) -> Any:
        """Load ``model_dir`` beside the current bundle (a rollout's candidate), not making it current."""
        with self._lock:
            m = self._loader(str(model_dir))
            self._put(m)
            return m

    def _put(self, m) -> None:
        self._models[m.model_version] = m
        self._models.move_to_end(m.model_version)
        for old in [v for v in self._models if v not in (m.model_version, self._current)]:
            if len(self._models) <= self._keep:
                break
            del self._models[old]

    @property
    def current(self) -> Any:
        if self._current is None:
            raise Unavailable("no model is loaded yet: retry shortly")
        return self._models[self._current]

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def get(self, version: str, model_dir: str) -> Any:
        m = self._models.get(version)
        if m is not None:
            return m
        with self._lock:
            m = self._models.get(version)
            if m is None:
                m = self._loader(str(model_dir))
                if m.model_version != version:
                    raise Unavailable(f"model {version} is no longer available (bundle {model_dir} now holds {m.model_version}): retry")
                self._put(m)
            return m


@dataclass
class PolicyModel:
    """What the repair stage needs from a bundle: only its policy (no weights are loaded)."""

    policy: Any
    model_version: str


def load_policy(model_dir: str) -> PolicyModel:
    from ...core.bundle import read_manifest
    from ...core.repair import RepairPolicy

    m = read_manifest(model_dir)
    return PolicyModel(RepairPolicy(**m["repair_policy"]), m["model_version"])


def load_engine(model_dir: str, *, device: str | None = None, torch_threads: int | None = None,
                campaigns: bool = True, campaigns_check_s: float = 1.0, warm_up: bool = False):
    """A SeqGuard from a bundle for a serving process (encoder on ``device``, few torch threads).
    ``warm_up``: a process that encodes compiles a ``score_compile`` bundle's pass here, before
    its first request (:meth:`~seqguard_ray.core.encoder.Encoder.warm_up`).
    ``campaigns``: also load the campaign table published with it (``sg.campaign_watch``, re-read
    when a new one is published, looked at every ``campaigns_check_s`` seconds); a broken table
    fails the load like a broken bundle."""
    import torch

    from ...core.bundle import BundleError
    from ...core.campaigns.published import CampaignTableError
    from ...core.pipeline import SeqGuard
    from ...io.campaign_table import CampaignWatch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    sg = SeqGuard.load(model_dir)
    if device and device != "cpu":
        sg.model.to(device)
    if warm_up:
        sg.encoder.warm_up()
    sg.model_dir = str(model_dir)
    if campaigns:
        try:
            sg.campaign_watch = CampaignWatch(model_dir, check_s=campaigns_check_s)
        except CampaignTableError as exc:
            raise BundleError(f"model bundle {model_dir}: its published campaign table cannot be served: {exc}") from None
    return sg


@dataclass
class ModelInfo:
    """ModelInfo fields that come from the bundle, and from the campaign table published with it."""

    model_version: str
    format_version: str
    threshold: float
    target_fpr: float
    repair_actions: dict[str, str]
    model_dir: str = ""
    campaigns_version: str = ""   # "" when no table is published
    campaigns: int = 0
    campaign_members: int = 0
    campaign_targets: int = 0
    max_events_per_user: int | None = None  # the bundle's history cap (TrainConfig.max_events_per_user)
    max_len: int | None = None              # the encoder's window (TrainConfig.max_len): ScoreStream's default window
    drift: DriftReference | None = None     # the bundle's drift reference, for reporting only (None: it has none)

    @classmethod
    def from_dir(cls, model_dir: str) -> ModelInfo:
        from ...core.bundle import read_drift, read_manifest

        from ...core.validate import MAX_EVENTS_PER_USER

        m = read_manifest(model_dir)
        tc = m.get("train_config", {})
        cap = int(tc.get("max_events_per_user", MAX_EVENTS_PER_USER))
        max_len = int(tc["max_len"]) if "max_len" in tc else None
        return cls(m["model_version"], str(m["format_version"]), float(m["detectors"]["threshold"]),
                   float(m["detectors"]["target_fpr"]), dict(m["repair_policy"]["actions"]),
                   str(model_dir), max_events_per_user=cap, max_len=max_len,
                   drift=read_drift(m, path=str(model_dir))).with_campaigns()

    def with_campaigns(self) -> ModelInfo:
        """This info with the campaign table published now (read from its table.json: cheap)."""
        from ...core.campaigns.published import CampaignTableError
        from ...io.campaign_table import current_meta

        try:
            meta = current_meta(self.model_dir) if self.model_dir else None
        except CampaignTableError as exc:
            log.error("%s", exc)
            meta = None
        meta = meta or {}
        return replace(self, campaigns_version=str(meta.get("version", "")), campaigns=int(meta.get("campaigns", 0)),
                       campaign_members=int(meta.get("members", 0)), campaign_targets=int(meta.get("targets", 0)))
