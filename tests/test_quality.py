"""Seeded quality floor on the generator: fails if detection quality regresses badly."""

import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from seqguard_ray import SeqGuard, TrainConfig
from seqguard_ray.demo import generate


@pytest.fixture(scope="module")
def scored():
    data = generate(n_users=250, seed=3)
    sg = SeqGuard(TrainConfig(epochs=4, hidden_size=32, num_layers=1, max_len=64, context=8, seed=3)).fit(data.events)
    return data, sg, sg.score(data.events)


def test_user_level_auc_floor(scored):
    data, sg, r = scored
    lab = data.user_type.reindex(r.users.user_id).to_numpy()
    y = lab != "normal"
    s = r.users.score.to_numpy()
    assert roc_auc_score(y, s) >= 0.85
    assert roc_auc_score(lab[(lab == "bot") | ~y] == "bot", s[(lab == "bot") | ~y]) >= 0.95
    # false positives stay under the target rate plus the share the robust fit presumes anomalous
    # (docs/metrics.md): 4.7% of this small log's 235 normal users (0.9-1.9% on the bench logs)
    assert r.users.anomalous[~y].mean() <= sg.config.target_fpr + sg.config.trim_share


def test_event_level_and_repair_floor(scored):
    data, sg, r = scored
    inj = data.event_injected[r.events.row.to_numpy()]
    attacked = r.events.user_id.isin(set(data.user_type.index[data.user_type != "normal"])).to_numpy()
    assert average_precision_score(inj[attacked], r.events.event_score[attacked]) >= 0.8
    rep = sg.repair(r)
    assert rep.summary["events_dropped"] > 0
    keep, _, _, _ = sg.policy.apply(r.log.offsets, r.scored.anomaly_type, r.scored.event_score, r.scored.event_anomalous)
    inj_sorted = data.event_injected[r.log.frame["_row"].to_numpy()]
    # repair must not harm clean events: 3.5% of this small log's are removed (11 of its 235 normal
    # users flagged), 1.9% before fake profiles that resemble nobody were left out of the references
    # on top of the trim share, which raised the injected events removed from 0.64 to 0.78
    assert (~keep & ~inj_sorted).sum() / (~inj_sorted).sum() <= 0.04
    assert (~keep & inj_sorted).sum() / inj_sorted.sum() >= 0.7
