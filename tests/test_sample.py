"""The bounded fit sample (core/sample.py, issue 30 item 1): deterministic, independent of row order
and partitioning, within its budget, stratified by history length; a log within the budget is fitted
whole, exactly as before."""

import numpy as np
import pytest

from seqguard_ray import SeqGuard, TrainConfig
from seqguard_ray.core.pipeline import as_log
from seqguard_ray.core.sample import MIN_STRATUM_USERS, fit_sample, length_strata, plan_sample, sample_counts

FAST = dict(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4)


def _users(n_users: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = np.where(rng.random(n_users) < 0.1, rng.integers(1, 10, n_users), rng.integers(10, 200, n_users))
    return np.array([f"user{i}" for i in range(n_users)], dtype=object), n


def test_the_sample_is_the_same_whatever_the_order_or_partitioning():
    users, n = _users()
    plan, keep = fit_sample(users, n, 60_000, seed=3, min_users=100)
    assert not plan.whole
    parts = np.array_split(np.random.default_rng(0).permutation(len(users)), 7)
    added = sum(sample_counts(users[p], n[p], seed=3) for p in parts)
    assert plan_sample(added, 60_000, seed=3, min_users=100) == plan
    for p in parts:  # each part decides its own users alone, as a Ray block does
        np.testing.assert_array_equal(plan.keep(users[p], n[p]), keep[p])
    assert not np.array_equal(fit_sample(users, n, 60_000, seed=4, min_users=100)[1], keep)  # another seed, another sample


def test_the_sample_fits_the_budget_and_keeps_the_short_strata():
    users, n = _users()
    short = length_strata(n) < length_strata(np.array([10]))[0]
    plan, keep = fit_sample(users, n, 60_000, seed=0)
    assert short.sum() < MIN_STRATUM_USERS and keep.all() and plan.whole  # the default floor: all 3,000 users
    plan, keep = fit_sample(users, n, 60_000, seed=0, min_users=100)
    assert plan.fit_events == n[keep].sum() <= 60_000 < plan.seen_events == n.sum()
    assert plan.fit_users == keep.sum() and not plan.whole
    assert plan.fit_events <= 60_000 and 100 <= keep[short].sum() < short.sum()  # a lower floor: sampled too
    assert 0.2 < keep[~short].mean() < 0.3  # the rest at one rate
    tiny = plan_sample(sample_counts(users, n, 0), 100, 0, min_users=50)
    tiny_keep = tiny.keep(users, n)
    per_stratum = np.bincount(length_strata(n))
    assert tiny.fit_events > 100  # the floors beat the budget: 50 users a stratum, all of a smaller one
    assert (np.bincount(length_strata(n)[tiny_keep], minlength=len(per_stratum)) >= np.minimum(per_stratum, 50)).all()


def test_a_log_within_the_budget_is_used_whole():
    users, n = _users()
    plan, keep = fit_sample(users, n, int(n.sum()), seed=0)
    assert plan.whole and keep.all() and plan.fit_events == n.sum()


@pytest.mark.parametrize("bad", [0, -5, 1.5, True])
def test_a_bad_budget_names_the_field(bad):
    with pytest.raises(ValueError, match="fit_sample_events"):
        TrainConfig(fit_sample_events=bad)


def test_fit_within_the_budget_is_unchanged_and_over_it_fits_the_sample(tiny_events, tiny_model):
    whole = SeqGuard(TrainConfig(**FAST, fit_sample_events=len(tiny_events))).fit(tiny_events)
    ref = tiny_model.score(tiny_events).users
    # two trainings of one config agree to float noise (torch's CPU kernels may sum in another order)
    np.testing.assert_allclose(whole.score(tiny_events).users["score"], ref["score"], rtol=0, atol=1e-6)
    assert whole.metrics["fit_events"] == whole.metrics["train_events"] == len(tiny_events)

    budget = len(tiny_events) // 2
    sg = SeqGuard(TrainConfig(**FAST, fit_sample_events=budget, fit_sample_min_users=20)).fit(tiny_events)
    lg = as_log(tiny_events)
    plan, keep = fit_sample(lg.users, np.diff(lg.offsets), budget, 0, 20)
    m = sg.metrics
    assert (m["fit_events"], m["fit_users"]) == (plan.fit_events, plan.fit_users)
    assert m["fit_events"] <= budget and (m["train_events"], m["train_users"]) == (lg.n_events, lg.n_users)
    # item popularity stays the whole log's: the vocabulary's counts, not the sample's
    np.testing.assert_allclose(sg.stats.log_count_, tiny_model.stats.log_count_)
    assert sg.score(tiny_events).users["score"].between(0, 1).all()


def test_the_train_command_takes_the_budget_into_the_stored_config():
    from seqguard_ray.cli.common import train_config
    from seqguard_ray.cli.main import build_parser

    args = build_parser().parse_args(["train", "--events", "x.parquet", "--model", "m", "--fit-sample-events", "500000"])
    assert train_config(args).fit_sample_events == 500_000
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--events", "x.parquet", "--model", "m", "--fit-sample-events", "0"])
