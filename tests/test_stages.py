"""Every learned step follows the stage protocol (seqguard_ray/core/stage.py): what ``to_state``
writes rebuilds a stage that gives the same outputs, using a stage before ``fit`` is an error that
names it, constructor arguments are stored as given, and bad parameters are refused at ``fit``
with the bad value in the message."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from seqguard_ray.core.calibration import Calibrator
from seqguard_ray.core.detectors import KNN, CopyDetector, ReplayDetector, SurprisalDetector
from seqguard_ray.core.encoder import Encoder
from seqguard_ray.core.ensemble import UserDetectors
from seqguard_ray.core.event_detector import EventDetector, ResidualCheck
from seqguard_ray.core.explain import Evidence, Explainer
from seqguard_ray.core.features import event_features, user_features
from seqguard_ray.core.iforest import IForest
from seqguard_ray.core.pipeline import as_log
from seqguard_ray.core.stage import NotFittedError
from seqguard_ray.core.strata import LengthStrata, LengthTrend
from seqguard_ray.core.tokens import Vocab


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_events):
    """The tiny fitted pipeline and what flows between its stages on its training log."""
    sg = tiny_model
    log_ = as_log(tiny_events)
    seqs = sg.encode(sg.tokenize(log_)).seqs
    ef = event_features(seqs, sg.stats)
    local = sg.event_detector.score(ef)
    uf, segments = user_features(seqs, sg.stats, ef, local)
    n_ev = np.diff(seqs.offsets)
    score, per_det = sg.strata.score(uf, n_ev)
    ev = Evidence(seqs, ef, local, uf, segments, score, per_det)
    return SimpleNamespace(sg=sg, log=log_, seqs=seqs, ef=ef, local=local, uf=uf, n_ev=n_ev, ev=ev,
                           z=sg.user_detectors._z(uf))


def _rebuilt(stage):
    """``type(stage).from_state(*stage.to_state())``, checking the state is plain arrays + JSON."""
    arrays, meta = stage.to_state()
    assert all(isinstance(v, np.ndarray) for v in arrays.values()), type(stage).__name__
    json.dumps(meta)
    again = type(stage).from_state(arrays, meta)
    assert type(again) is type(stage)
    return again


def _same(a, b) -> None:
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        np.testing.assert_array_equal(a, b)


def _outputs(t):
    """name -> (the fitted stage, what it computes on the tiny data)."""
    sg, main = t.sg, t.sg.user_detectors
    dets = main.detectors_
    grouped = KNN(seed=0).fit(np.random.default_rng(0).normal(size=(200, 4)))  # 4 leave-cluster-out groups
    return {
        "Vocab": (sg.vocab, lambda s: s.transform(t.log.item, t.log.action)),
        "Encoder": (sg.encoder, lambda s: (lambda e: (e.seqs.surprisal, e.user_emb))(s.transform(sg.tokenize(t.log)))),
        "ItemStats": (sg.stats, lambda s: (event_features(t.seqs, s), *user_features(t.seqs, s, t.ef, t.local)[:1])),
        "EventDetector": (sg.event_detector, lambda s: (s.decision_function(t.ef), s.score(t.ef))),
        "Calibrator": (main.combined_, lambda s: s.score(np.linspace(-1, 60, 50))),
        "IForest": (dets["iforest"], lambda s: s.decision_function(t.z)),
        "KNN": (dets["knn"], lambda s: s.decision_function(t.z)),
        "KNN grouped": (grouped, lambda s: s.decision_function(np.random.default_rng(1).normal(size=(20, 4)))),
        "SurprisalDetector": (dets["encoder"], lambda s: s.decision_function(t.z)),
        "CopyDetector": (dets["copy"], lambda s: (s.decision_function(t.uf), s.silent(t.uf))),
        "PartCopyDetector": (dets["part_copy"], lambda s: (s.decision_function(t.uf), s.silent(t.uf))),
        "ReplayDetector": (dets["replay"], lambda s: (s.decision_function(t.uf), s.silent(t.uf))),
        "UserDetectors": (main, lambda s: (*s.score(t.uf), s.feature_tails(t.uf))),
        "LengthStrata": (sg.strata, lambda s: s.score(t.uf, t.n_ev)),
        "ResidualCheck": (sg.explainer.residual_check_, lambda s: s.z(t.local, t.seqs.offsets)),
        "LengthTrend": (sg.explainer.length_trend_, lambda s: s.adjust(t.uf, t.n_ev)),
        "Explainer": (sg.explainer, lambda s: (lambda r: (r.score, r.anomalous, r.anomaly_type, np.array(r.reasons, object),
                                                          r.event_score, r.event_anomalous, r.length_doubt))(
            s.explain(t.ev, strata=sg.strata, stats=sg.stats, n_items=sg.vocab.n_items,
                      known_actions=len(sg.vocab.actions_)))),
        "RepairPolicy": (sg.policy, lambda s: s.apply(t.seqs.offsets, np.array(["injection"] * len(t.n_ev), object),
                                                      t.local, t.local > 0.9)),
    }


STAGES = ["Vocab", "Encoder", "ItemStats", "EventDetector", "Calibrator", "IForest", "KNN", "KNN grouped", "SurprisalDetector",
          "CopyDetector", "PartCopyDetector", "ReplayDetector", "UserDetectors", "LengthStrata", "ResidualCheck",
          "LengthTrend", "Explainer", "RepairPolicy"]


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_rebuilt_from_its_state_gives_the_same_outputs(tiny, name):
    stage, apply = _outputs(tiny)[name]
    _same(apply(_rebuilt(stage)), apply(stage))


def test_the_explainer_reasons_the_same_after_a_round_trip_on_flagged_users(tiny):
    """The round trip above compares reasons too; it means something only if some user is flagged."""
    assert tiny.ev.score.max() >= tiny.sg.strata.threshold_


X = np.random.default_rng(0).normal(size=(30, 4))
UNFITTED = {
    "Vocab": (Vocab, lambda s: s.transform(np.array(["a"]), np.array(["v"]))),
    "Encoder": (Encoder, lambda s: s.transform(None)),
    "EventDetector": (EventDetector, lambda s: s.score(X)),
    "Calibrator": (Calibrator, lambda s: s.score(np.zeros(3))),
    "IForest": (IForest, lambda s: s.decision_function(X)),
    "KNN": (KNN, lambda s: s.decision_function(X)),
    "SurprisalDetector": (SurprisalDetector, lambda s: s.decision_function(X)),
    "CopyDetector": (CopyDetector, lambda s: s.decision_function(X)),
    "UserDetectors": (UserDetectors, lambda s: s.score(X)),
    "LengthStrata": (LengthStrata, lambda s: s.score(X, np.ones(30))),
    "ResidualCheck": (ResidualCheck, lambda s: s.z(np.zeros(3), np.array([0, 3]))),
    "LengthTrend": (LengthTrend, lambda s: s.adjust(X, np.ones(30))),
    "Explainer": (Explainer, lambda s: s.explain(None, strata=None, stats=None, n_items=0, known_actions=0)),
}


@pytest.mark.parametrize("name", sorted(UNFITTED))
def test_using_a_stage_before_fit_raises_not_fitted_naming_it(name):
    cls, apply = UNFITTED[name]
    with pytest.raises(NotFittedError, match=f"this {cls.__name__} is not fitted"):
        apply(cls())
    with pytest.raises(NotFittedError, match=cls.__name__):
        cls().to_state()


PARAMS = [
    (Vocab, {"min_count": 3, "max_items": 7}),
    (Encoder, {"max_len": 16, "context": 2, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "epochs": 1,
               "target_steps": 5, "batch_size": 4, "lr": 1e-3, "seed": 3, "score_batch_size": 8}),
    (EventDetector, {"seed": 4}),
    (Calibrator, {"max_reference": 50}),
    (IForest, {"columns": [0, 2], "n_estimators": 7, "seed": 1}),
    (KNN, {"columns": (1, 3), "seed": 2}),
    (SurprisalDetector, {"columns": (0, 1)}),
    (ReplayDetector, {"column": 3}),
    (UserDetectors, {"target_fpr": 0.02, "trim_share": 0.1, "seed": 5, "encoder_columns": (1,), "copy_column": 2,
                     "part_copy_column": None, "replay_column": 3}),
    (LengthStrata, {"detectors": UserDetectors(seed=9), "strata": (1, 4), "min_users": 10}),
    (ResidualCheck, {"cut": 0.8}),
    (LengthTrend, {"columns": [0, 1]}),
    (Explainer, {"residual_normal": 0.9, "residual_z": 2.0, "max_explained": 0.5, "doubtful_event": 0.8,
                 "whole_spread": 0.0}),
]


@pytest.mark.parametrize("cls,params", PARAMS, ids=[c.__name__ for c, _ in PARAMS])
def test_constructor_arguments_are_stored_unchanged(cls, params):
    stage = cls(**params)
    for k, v in params.items():
        assert getattr(stage, k) is v, k


def _seqs():
    from seqguard_ray.core.features import Seqs

    n = 40
    return Seqs(np.array([0, 20, n]), np.arange(n) * 60.0, 3 + np.arange(n) % 5, np.full(n, 3), np.full(n, np.nan),
                np.zeros((n, 3), np.float32))


BAD = [
    (Vocab(min_count=0), lambda s: s.fit(np.array(["a"]), np.array(["v"])), "got 0"),
    (Vocab(max_items=-3), lambda s: s.fit(np.array(["a"]), np.array(["v"])), "got -3"),
    (Encoder(max_len=16, context=10), lambda s: s.fit(_seqs(), n_items=10, n_actions=5), "context=10"),
    (EventDetector(seed=-2), lambda s: s.fit(X), "got -2"),
    (Calibrator(max_reference=1), lambda s: s.fit(np.zeros(5)), "got 1"),
    (IForest(n_estimators=0), lambda s: s.fit(X), "got 0"),
    (CopyDetector(column=42), lambda s: s.fit(X), "got 42"),
    (UserDetectors(target_fpr=0.7), lambda s: s.fit(X), "got 0.7"),
    (UserDetectors(trim_share=0.6), lambda s: s.fit(X), "got 0.6"),
    (LengthStrata(strata=(2, 5)), lambda s: s.fit(X, np.ones(30)), r"got \(2, 5\)"),
    (LengthStrata(min_users=0), lambda s: s.fit(X, np.ones(30)), "got 0"),
    (ResidualCheck(cut=1.5), lambda s: s.fit(np.zeros(3), np.array([0, 3]), np.ones(1, bool)), "got 1.5"),
    (LengthTrend(columns=[99]), lambda s: s.fit(X, np.ones(30), np.ones(30, bool)), r"got \[99\]"),
    (Explainer(max_explained=1.5), lambda s: s.fit(np.zeros(3), np.array([0, 3]), X[:1], np.ones(1, bool),
                                                   main_stratum=1, drift_columns=[]), "got 1.5"),
]


@pytest.mark.parametrize("stage,fit,quoted", BAD, ids=[f"{type(s).__name__}-{q}" for s, _, q in BAD])
def test_bad_parameters_are_refused_at_fit_quoting_the_value(stage, fit, quoted):
    with pytest.raises(ValueError, match=quoted):
        fit(stage)
