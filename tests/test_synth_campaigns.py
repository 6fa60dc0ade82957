"""Tests for seqguard_ray.synth.campaigns: the campaign injector and its named settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from seqguard_ray.synth import (
    CAMPAIGN,
    CAMPAIGN_SETTINGS,
    NORMAL,
    AttackMix,
    CampaignSetting,
    LabeledCampaign,
    generate,
    inject_campaign,
)
from seqguard_ray.synth.campaigns import PROFILES

DAY = 86400


def rating_log(n_users: int = 260, n_items: int = 400, seed: int = 0) -> pd.DataFrame:
    """A MovieLens-like log: ratings 1-5 over ~200 days, Zipf-ish item popularity."""
    rng = np.random.default_rng(seed)
    n = rng.integers(10, 40, n_users)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    p /= p.sum()
    rows = []
    for u in range(n_users):
        items = rng.choice(np.arange(1, n_items + 1), n[u], replace=False, p=p)
        t0 = 880_000_000 + int(rng.integers(0, 200 * DAY))
        ts = t0 + np.cumsum(rng.choice([5, 30, 90, 4000, 90_000], n[u]))
        rows += [(f"{u + 1}", int(i), int(t), "rating", float(rng.integers(1, 6))) for i, t in zip(items, ts)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "action", "value"])


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return rating_log()


@pytest.fixture(scope="module")
def shop() -> pd.DataFrame:
    return generate(n_users=250, n_items=600, events_per_user=30.0, mix=AttackMix.none(), seed=1).events


@pytest.fixture(scope="module")
def injected(ratings) -> dict[str, LabeledCampaign]:
    return {name: inject_campaign(ratings, name, seed=0, value_range=(1.0, 5.0)) for name in CAMPAIGN_SETTINGS}


def test_settings_span_the_issue() -> None:
    s = list(CAMPAIGN_SETTINGS.values())
    assert 10 <= len(s) <= 16
    assert min(x.n_accounts for x in s) == 5 and max(x.n_accounts for x in s) == 200
    fill = [x.filler for x in s if x.accounts == "new"]
    assert min(fill) == pytest.approx(0.01) and max(fill) == pytest.approx(0.10)
    assert min(x.spread_s for x in s) == 3600 and max(x.spread_s for x in s) == 30 * DAY
    assert {x.camouflage for x in s} == {True, False}
    assert set(PROFILES) == {x.profile for x in s}
    assert {x.accounts for x in s} == {"new", "real"} and {x.goal for x in s} == {"push", "nuke"}
    assert {x.n_targets for x in s} >= {1, 5}
    assert sum(x.in_target_scope for x in s) >= 6
    assert all(name == x.name for name, x in CAMPAIGN_SETTINGS.items())


@pytest.mark.parametrize("name", list(CAMPAIGN_SETTINGS))
def test_each_setting_injects_what_its_name_says(ratings, injected, name) -> None:
    lc, s = injected[name], CAMPAIGN_SETTINGS[name]
    ev, inj = lc.events, lc.event_injected
    assert list(ev.columns) == list(ratings.columns) and inj.shape == (len(ev),) and inj.dtype == bool
    assert len(ev) == len(ratings) + int(inj.sum())
    # members: the group size, typed "campaign", and every injected event is a member's
    assert len(lc.members) == s.n_accounts and len(set(lc.members)) == s.n_accounts
    assert set(lc.user_type.index[lc.user_type == CAMPAIGN]) == set(lc.members)
    assert (lc.user_type.drop(lc.members) == NORMAL).all()
    assert set(ev.loc[inj, "user_id"]) == set(lc.members)
    real = set(ratings["user_id"])
    assert (set(lc.members) <= real) == (s.accounts == "real")
    assert not set(lc.members) & real if s.accounts == "new" else True
    # targets: their number, each member acts on its share of them, at the log's max (push) / min (nuke)
    assert len(lc.target_items) == s.n_targets and lc.target_items.dtype == np.int64
    on_target = inj & ev["item_id"].isin(lc.target_items).to_numpy()
    per_member = ev[on_target].groupby("user_id")["item_id"].nunique()
    assert set(per_member.index) == set(lc.members)
    assert (per_member >= max(1, round(s.target_share * s.n_targets))).all()
    assert (ev.loc[on_target, "value"] == (5.0 if s.goal == "push" else 1.0)).all()
    counts = ratings["item_id"].value_counts()
    n_items = len(counts)
    if s.goal == "push":  # from the less popular half
        assert (counts.rank(ascending=False, method="max").reindex(lc.target_items) >= n_items / 2).all()
    else:  # from the top 10%
        assert (counts.rank(ascending=False, method="min").reindex(lc.target_items) <= 0.1 * n_items + 1).all()
    # time: inside the window, which is the setting's spread, inside the log's span
    ts = ev.loc[inj, "ts"].to_numpy()
    lo, hi = lc.window
    assert hi - lo == s.spread_s and lo <= ts.min() and ts.max() <= hi
    assert ratings["ts"].min() <= lo and hi <= ratings["ts"].max()
    if s.spread_s >= 2 * DAY:  # spread over the window, not bunched at one end
        assert ts.max() - ts.min() >= 0.3 * s.spread_s
    # values inside the log's range, on the rating grid
    v = ev.loc[inj, "value"].to_numpy()
    assert ((v >= 1) & (v <= 5) & (v == np.round(v))).all()
    # clean rows untouched
    pd.testing.assert_frame_equal(
        ev[~inj].reset_index(drop=True),
        ratings.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True), check_like=True)


def test_profiles_follow_their_models(ratings, injected) -> None:
    pop = ratings["item_id"].value_counts()
    top = set(pop.index[: max(10, round(0.05 * len(pop)))])

    def member_events(name: str) -> pd.DataFrame:
        lc = injected[name]
        ev = lc.events[lc.event_injected]
        return ev[~ev["item_id"].isin(lc.target_items)]

    n_items = ratings["item_id"].nunique()
    per_acct = member_events("no_camouflage_random").groupby("user_id").size()
    assert per_acct.median() == pytest.approx(0.10 * n_items, rel=0.25)  # filler size
    # no camouflage: fillers at random; with it, popular items mixed in
    share_top = lambda name: member_events(name)["item_id"].isin(top).mean()
    assert share_top("no_camouflage_random") < 0.15 < share_top("small_group_5")
    bw = member_events("bandwagon_50_week")
    assert (bw.loc[bw["item_id"].isin(top), "value"] == 5.0).mean() > 0.6
    lh = member_events("nuke_love_hate")
    assert (lh["value"] == 5.0).all()
    aop = member_events("aop_30_days")
    assert (pop.rank(ascending=False, method="min").reindex(aop["item_id"]) <= round(0.2 * len(pop))).all()


def test_farm_adds_to_real_histories(ratings, injected) -> None:
    lc = injected["farm_in_real_accounts_day"]
    ev = lc.events
    members = ev["user_id"].isin(lc.members).to_numpy()
    assert (~lc.event_injected[members]).any()  # their own history stays
    per = pd.Series(lc.event_injected[members]).groupby(ev.loc[members, "user_id"].to_numpy()).sum()
    assert (per >= 1).all() and (per <= 5).all()


def test_deterministic_and_seeded(ratings) -> None:
    a = inject_campaign(ratings, "bandwagon_50_week", seed=3)
    b = inject_campaign(ratings, "bandwagon_50_week", seed=3)
    c = inject_campaign(ratings, "bandwagon_50_week", seed=4)
    pd.testing.assert_frame_equal(a.events, b.events)
    assert np.array_equal(a.event_injected, b.event_injected) and np.array_equal(a.members, b.members)
    assert not a.events.equals(c.events)


def test_generator_log_funnel_and_item_text(shop) -> None:
    lc = inject_campaign(shop, "lockstep_new_accounts_hours", seed=0)
    ev = lc.events[lc.event_injected]
    on_target = ev[ev["item_id"].isin(lc.target_items)]
    # a pushed target gets the whole funnel; injected events carry the item's text
    assert set(on_target["action"]) == {"view", "click", "cart", "purchase"}
    titles = shop.drop_duplicates("item_id").set_index("item_id")["title"]
    assert (ev["title"].to_numpy() == titles.reindex(ev["item_id"]).to_numpy()).all()
    assert ev["ts"].max() - ev["ts"].min() <= 6 * 3600
    assert shop["value"].min() <= ev["value"].min() and ev["value"].max() <= shop["value"].max()


def test_minimal_log_without_action_value_and_text_ids(ratings) -> None:
    base = ratings[["user_id", "item_id", "ts"]].copy()
    base["item_id"] = "sku-" + base["item_id"].astype(str)
    base["ts"] = pd.to_datetime(base["ts"], unit="s")
    lc = inject_campaign(base, "small_group_5", seed=1)
    assert list(lc.events.columns) == ["user_id", "item_id", "ts"]
    assert lc.events["ts"].dtype == base["ts"].dtype
    assert all(str(t).startswith("sku-") for t in lc.target_items)
    assert set(lc.events.loc[lc.event_injected, "item_id"]) <= set(base["item_id"])


def test_bad_input_named() -> None:
    with pytest.raises(ValueError, match="nope"):
        inject_campaign(rating_log(30, 60), "nope")
    with pytest.raises(ValueError, match="ts"):
        inject_campaign(rating_log(30, 60).drop(columns="ts"), "small_group_5")
    with pytest.raises(ValueError, match="real accounts"):
        inject_campaign(rating_log(30, 60), dataclasses.replace(CAMPAIGN_SETTINGS["farm_in_real_accounts_day"],
                                                                n_accounts=500))
    with pytest.raises(ValueError, match="goal"):
        dataclasses.replace(CAMPAIGN_SETTINGS["nuke_love_hate"], goal="push")
    with pytest.raises(ValueError, match="camouflage"):
        dataclasses.replace(CAMPAIGN_SETTINGS["bandwagon_50_week"], camouflage=False)
    with pytest.raises(ValueError, match="seed"):
        inject_campaign(rating_log(30, 60), "small_group_5", seed=-1)
    assert isinstance(CAMPAIGN_SETTINGS["small_group_5"], CampaignSetting)


def test_fraudar_baseline_finds_a_camouflaged_block() -> None:
    """bench/fraudar.py, the campaign sweep's baseline: a planted 30 x 10 block whose users also
    rate popular items is its first block; the organic graph stays out of it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "fraudar.py"
    spec = importlib.util.spec_from_file_location("bench_fraudar", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 1000, 20_000), np.minimum(rng.zipf(1.5, 20_000), 2000) - 1
    bu, bi = np.repeat(np.arange(1000, 1030), 10), np.tile(np.arange(2000, 2010), 30)
    cu, ci = np.repeat(np.arange(1000, 1030), 10), np.minimum(rng.zipf(1.5, 300), 50) - 1
    um, im, g = mod.fraudar(np.r_[u, bu, cu], np.r_[i, bi, ci])
    assert um[1000:].all() and um.sum() <= 33 and im[2000:].all() and im.sum() <= 15 and g > 1.5
    with pytest.raises(ValueError, match="equal-length"):
        mod.fraudar(np.arange(3), np.arange(2))
