"""Seeded quality floor on the generator: fails if detection quality regresses badly."""

import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from seqguard_ray import SeqGuard, TrainConfig
from seqguard_ray.synth import PARTIAL_TYPES, generate


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
    # inside real histories with injected events (click farms, takeovers, replays) the events must
    # be told apart, not only the users: 0.78 here, 0.20 with the event scores reversed
    partial = r.events.user_id.isin(set(data.user_type.index[data.user_type.isin(PARTIAL_TYPES)])).to_numpy()
    assert average_precision_score(inj[partial], r.events.event_score[partial]) >= 0.6
    rep = sg.repair(r)
    assert rep.summary["events_dropped"] > 0
    keep, _, _, _ = sg.policy.decide(r.log.offsets, r.scored)
    inj_sorted = data.event_injected[r.log.frame["_row"].to_numpy()]
    # repair must not harm clean events: 3.5% of this small log's are removed (11 of its 235 normal
    # users flagged), 1.9% before fake profiles that resemble nobody were left out of the references
    # on top of the trim share, which raised the injected events removed from 0.64 to 0.78
    assert (~keep & ~inj_sorted).sum() / (~inj_sorted).sum() <= 0.04
    assert (~keep & inj_sorted).sum() / inj_sorted.sum() >= 0.7


def test_new_items_are_not_taken_for_attacks(scored):
    """Catalogue churn: the same log scored with a tenth of its items under ids the model never
    saw (as new items would come). Unknown items carry no item statistics, so normal users are
    flagged about as often as in-sample (each new item counted as the rarest item there is, and
    all of them as one item repeated, flagged 53% of MovieLens' normal users at 5% new events;
    bench/robustness.py --protocol new-items)."""
    import numpy as np

    data, sg, r = scored
    ev = data.events
    items = ev["item_id"].unique()
    new = np.random.default_rng(0).choice(items, len(items) // 10, replace=False)
    renamed = ev.assign(item_id=ev["item_id"].where(~ev["item_id"].isin(new), ev["item_id"] + 10**9))
    churned = sg.score(renamed)
    assert (churned.events.item_id != ev["item_id"].to_numpy()).mean() > 0.05
    lab = data.user_type.reindex(churned.users.user_id).to_numpy()
    y = lab != "normal"
    assert roc_auc_score(y, churned.users.score.to_numpy()) >= 0.85
    # 5.1% in-sample, 6.8% churned; 16.6% before unknown items were told apart and left without statistics
    assert churned.users.anomalous[~y].mean() <= r.users.set_index("user_id").anomalous.reindex(churned.users.user_id).to_numpy()[~y].mean() + 0.03
