"""Tests for seqguard_ray.synth: the seeded demo-data generator and attack injector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqguard_ray.synth import (
    ATTACK_TYPES,
    FAKE_USER_TYPES,
    HELD_OUT_TYPES,
    NORMAL,
    PARTIAL_TYPES,
    AttackMix,
    LabeledEvents,
    generate,
    inject_attacks,
    write_events,
)

TINY = dict(n_users=60, n_items=150, events_per_user=25.0)
GOLDEN_EVENTS = Path(__file__).resolve().parent / "golden" / "events.parquet"


@pytest.fixture(scope="module")
def all_types() -> LabeledEvents:
    return generate(**TINY, mix=AttackMix.all(0.05), seed=3)


def rating_log(n_users: int = 40, n_items: int = 80, seed: int = 0) -> pd.DataFrame:
    """A small hand-made MovieLens-like log: numeric string ids, one action, ratings 1-5."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        n = int(rng.integers(8, 30))
        t = 880_000_000 + int(rng.integers(0, 5_000_000))
        for i in rng.choice(np.arange(1, n_items + 1), n, replace=False):
            t += int(rng.choice([0, 5, 30, 90, 40_000]))
            rows.append((str(u), int(i), t, "rating", float(rng.integers(1, 6))))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "action", "value"])


def per_user(le: LabeledEvents) -> pd.DataFrame:
    """Per user: number of events, number injected, type."""
    g = pd.Series(le.event_injected).groupby(le.events["user_id"].to_numpy())
    out = pd.DataFrame({"n": g.size(), "injected": g.sum()})
    out["type"] = le.user_type.reindex(out.index).to_numpy()
    return out


def check_labels(le: LabeledEvents) -> pd.DataFrame:
    stats = per_user(le)
    assert set(stats.index) == set(le.user_type.index)
    assert not stats["type"].isna().any()
    normal = stats["type"] == NORMAL
    assert (stats.loc[normal, "injected"] == 0).all()
    fake = stats["type"].isin(FAKE_USER_TYPES)
    assert (stats.loc[fake, "injected"] == stats.loc[fake, "n"]).all()
    partial = stats["type"].isin(PARTIAL_TYPES)
    assert (stats.loc[partial, "injected"] > 0).all()
    assert (stats.loc[partial, "injected"] < stats.loc[partial, "n"]).all()
    assert set(stats["type"]) <= set(ATTACK_TYPES) | {NORMAL}
    return stats


def check_schema(le: LabeledEvents) -> None:
    ev = le.events
    assert list(ev.columns[:5]) == ["user_id", "item_id", "ts", "action", "value"]
    assert pd.api.types.is_string_dtype(ev["user_id"]) and pd.api.types.is_string_dtype(ev["action"])
    assert ev["item_id"].dtype == np.int64 and ev["ts"].dtype == np.int64 and ev["value"].dtype == np.float64
    assert isinstance(ev.index, pd.RangeIndex) and ev.index.start == 0
    assert le.event_injected.dtype == bool and le.event_injected.shape == (len(ev),)
    assert le.target_items.dtype == np.int64
    assert le.user_type.index.is_unique
    assert ev[["user_id", "ts"]].isna().sum().sum() == 0
    resorted = ev.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(resorted, ev)


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_is_seeded():
    a = generate(**TINY, mix=AttackMix.all(0.05), seed=7)
    b = generate(**TINY, mix=AttackMix.all(0.05), seed=7)
    c = generate(**TINY, mix=AttackMix.all(0.05), seed=8)
    pd.testing.assert_frame_equal(a.events, b.events)
    np.testing.assert_array_equal(a.event_injected, b.event_injected)
    pd.testing.assert_series_equal(a.user_type, b.user_type)
    np.testing.assert_array_equal(a.target_items, b.target_items)
    assert len(a.events) != len(c.events) or not a.events.equals(c.events)


def test_generate_reproduces_the_frozen_golden_log():
    """The seeded output is part of the contract: tests/golden/events.parquet was written by
    ``generate(n_users=150, seed=7, mix=AttackMix.all(0.03))`` (tests/golden/make_golden.py)."""
    ev = generate(n_users=150, seed=7, mix=AttackMix.all(0.03)).events
    pd.testing.assert_frame_equal(ev, pd.read_parquet(GOLDEN_EVENTS), check_exact=True)


def test_generate_schema_and_order(all_types):
    check_schema(all_types)
    ev = all_types.events
    assert {"title", "category"} <= set(ev.columns)
    assert set(ev["action"]) == {"view", "click", "cart", "purchase"}
    assert (ev["value"] > 0).all()
    # every item has one title and one category
    assert (ev.groupby("item_id")[["title", "category"]].nunique() == 1).all().all()


def test_generate_labels_consistent(all_types):
    stats = check_labels(all_types)
    assert set(stats["type"]) == set(ATTACK_TYPES) | {NORMAL}
    assert len(all_types.target_items) > 0
    assert set(all_types.target_items) <= set(all_types.events["item_id"])


def test_clean_log_is_plausible():
    le = generate(n_users=120, n_items=300, events_per_user=40.0, mix=AttackMix.none(), seed=1)
    ev = le.events
    assert not le.event_injected.any() and (le.user_type == NORMAL).all() and len(le.target_items) == 0
    share = ev["action"].value_counts(normalize=True)
    assert share["view"] > 0.6 and share["view"] > share["click"] > share["cart"] > share["purchase"]
    # a purchase follows a cart of the same item by the same user
    first_cart = ev[ev["action"] == "cart"].groupby(["user_id", "item_id"])["ts"].min()
    buys = ev[ev["action"] == "purchase"].set_index(["user_id", "item_id"])["ts"]
    assert (first_cart.reindex(buys.index).to_numpy() <= buys.to_numpy()).all()
    # one price per item
    assert (ev[ev["action"].isin(["cart", "purchase"])].groupby("item_id")["value"].nunique() == 1).all()
    # about 60 days, variable activity
    assert 40 * 86400 < ev["ts"].max() - ev["ts"].min() < 62 * 86400
    counts = ev.groupby("user_id").size()
    assert counts.max() > 4 * counts.median()


def test_default_mix_leaves_held_out_types_out():
    mix = AttackMix()
    assert all(getattr(mix, t) == 0 for t in HELD_OUT_TYPES)
    assert all(getattr(mix, t) > 0 for t in ATTACK_TYPES if t not in HELD_OUT_TYPES)


@pytest.mark.parametrize("attack", ATTACK_TYPES)
def test_each_attack_type_can_be_produced(attack):
    le = generate(n_users=40, n_items=100, events_per_user=25.0, mix=AttackMix.only(attack, 0.05), seed=2)
    stats = check_labels(le)
    types = set(stats["type"]) - {NORMAL}
    assert types == {attack}
    assert (stats["type"] == attack).sum() == 2
    assert le.event_injected.any()
    ev = le.events
    inj = ev[le.event_injected]
    assert inj["ts"].between(ev.loc[~le.event_injected, "ts"].min(), ev.loc[~le.event_injected, "ts"].max()).all()
    assert set(inj["action"]) <= {"view", "click", "cart", "purchase"}


def test_fake_users_get_fresh_ids_of_the_same_shape(all_types):
    ids = all_types.user_type.index
    fake = all_types.user_type[all_types.user_type.isin(FAKE_USER_TYPES)].index
    assert len(set(ids)) == len(ids)
    lengths = {len(i) for i in ids}
    assert len(lengths) == 1
    assert all(i.startswith("u") and i[1:].isdigit() for i in fake)


# ---------------------------------------------------------------------------------------------
# inject_attacks on other logs


def test_inject_into_rating_log_keeps_action_and_values():
    clean = rating_log()
    le = inject_attacks(clean, mix=AttackMix.all(0.1), seed=0)
    check_schema(le)
    check_labels(le)
    ev = le.events
    assert set(ev["action"]) == {"rating"}
    assert set(ev["value"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    inj = ev[le.event_injected]
    assert inj["ts"].between(clean["ts"].min(), clean["ts"].max()).all()
    assert set(inj["item_id"]) <= set(clean["item_id"])
    fake = le.user_type[le.user_type.isin(FAKE_USER_TYPES)].index
    assert all(i.isdigit() for i in fake) and not set(fake) & set(clean["user_id"])
    # kept clean events are unchanged rows of the input
    kept = ev[~le.event_injected][["user_id", "item_id", "ts", "action", "value"]]
    merged = kept.merge(clean.drop_duplicates(), how="left", indicator=True)
    assert (merged["_merge"] == "both").all()


@pytest.mark.parametrize(("attack", "rating"), [("shilling_random", 5.0), ("shilling_bandwagon", 5.0), ("love_hate", 1.0)])
def test_shilling_targets_get_extreme_ratings(attack, rating):
    le = inject_attacks(rating_log(seed=4), mix=AttackMix.only(attack, 0.05), seed=0)
    ev = le.events
    fake = ev["user_id"].isin(le.user_type[le.user_type == attack].index)
    on_target = ev[fake & ev["item_id"].isin(le.target_items)]
    assert 1 <= on_target["item_id"].nunique() <= 3
    assert (on_target["value"] == rating).all()


def test_inject_is_seeded_and_none_mix_is_identity():
    clean = rating_log(seed=1)
    a = inject_attacks(clean, mix=AttackMix.all(0.1), seed=5)
    b = inject_attacks(clean, mix=AttackMix.all(0.1), seed=5)
    pd.testing.assert_frame_equal(a.events, b.events)
    np.testing.assert_array_equal(a.event_injected, b.event_injected)
    same = inject_attacks(clean.sample(frac=1.0, random_state=0), mix=AttackMix.none())
    assert not same.event_injected.any() and len(same.target_items) == 0
    expected = clean.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    assert len(same.events) == len(expected)
    pd.testing.assert_frame_equal(
        same.events[["user_id", "ts"]].astype({"user_id": object}), expected[["user_id", "ts"]].astype({"user_id": object})
    )


def test_inject_value_range_and_actions():
    clean = rating_log(seed=2)
    le = inject_attacks(clean, mix=AttackMix.all(0.1), seed=0, value_range=(0.0, 10.0), actions=("rating",))
    inj = le.events.loc[le.event_injected, "value"]
    assert inj.between(0.0, 10.0).all() and inj.max() == 10.0
    assert set(le.events["action"]) == {"rating"}


def test_inject_carries_item_text():
    clean = rating_log(seed=3)
    clean["title"] = "Movie " + clean["item_id"].astype(str)
    clean["category"] = np.where(clean["item_id"] % 2 == 0, "Drama", "Comedy")
    le = inject_attacks(clean, mix=AttackMix.all(0.1), seed=0)
    ev = le.events
    assert (ev["title"] == "Movie " + ev["item_id"].astype(str)).all()
    assert ev["category"].notna().all()


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("field", ATTACK_TYPES)
def test_negative_fraction_names_the_field(field):
    with pytest.raises(ValueError, match=field):
        AttackMix(**{field: -0.01})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_users": 2.5}, "n_users"),
        ({"n_items": 0}, "n_items"),
        ({"events_per_user": 0.0}, "events_per_user"),
        ({"seed": -1}, "seed"),
        ({"mix": {"bot": 0.1}}, "mix"),
    ],
)
def test_generate_bad_args_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate(**{**TINY, **kwargs})


def test_inject_bad_args_raise():
    clean = rating_log()
    with pytest.raises(ValueError, match="value"):
        inject_attacks(clean.drop(columns="value"))
    with pytest.raises(ValueError, match="value_range"):
        inject_attacks(clean, value_range=(5.0, 1.0))
    with pytest.raises(ValueError, match="actions"):
        inject_attacks(clean, actions=())
    with pytest.raises(ValueError, match="no rows"):
        inject_attacks(clean.iloc[:0])


def test_only_rejects_unknown_attack():
    with pytest.raises(ValueError, match="attack"):
        AttackMix.only("nope", 0.1)


# ---------------------------------------------------------------------------------------------
# files


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_write_events_round_trip(tmp_path, suffix, all_types):
    ev = all_types.events.head(50)
    path = tmp_path / "sub" / f"events{suffix}"
    write_events(ev, path)
    if suffix == ".parquet":
        back = pd.read_parquet(path)
    elif suffix == ".csv":
        back = pd.read_csv(path, dtype={"user_id": str})
    else:
        back = pd.read_json(path, lines=True, dtype={"user_id": str})
    assert len(back) == len(ev)
    assert list(back.columns) == list(ev.columns)
    np.testing.assert_array_equal(back["ts"].to_numpy(), ev["ts"].to_numpy())
    np.testing.assert_array_equal(back["user_id"].astype(str).to_numpy(), ev["user_id"].to_numpy())


def test_write_events_rejects_unknown_suffix(tmp_path, all_types):
    with pytest.raises(ValueError, match="path"):
        write_events(all_types.events, tmp_path / "events.xlsx")


# ---------------------------------------------------------------------------------------------
# MovieLens (only where the RecBole wheel is already cached: no download in unit tests)


def test_movielens_loader_if_cached():
    cache = Path("~/.cache/seqguard").expanduser()
    if not any(cache.glob("recbole-1.2.1-*.whl")):
        pytest.skip("RecBole 1.2.1 wheel not cached; run `python bench/movielens.py` once")
    from bench.movielens import load_movielens_100k

    df = load_movielens_100k(cache)
    assert len(df) == 100_000 and df["user_id"].nunique() == 943
    assert list(df.columns) == ["user_id", "item_id", "ts", "action", "value", "title", "category"]
    assert set(df["action"]) == {"rating"} and df["value"].between(1, 5).all()
    le = inject_attacks(df, mix=AttackMix(), seed=0, value_range=(1.0, 5.0))
    check_labels(le)
    assert set(le.events["action"]) == {"rating"}


def test_every_type_has_a_family():
    from seqguard_ray.synth import ATTACK_FAMILY

    assert set(ATTACK_FAMILY) == set(ATTACK_TYPES) | {NORMAL}
    assert set(FAKE_USER_TYPES) | set(PARTIAL_TYPES) == set(ATTACK_TYPES)


def test_unseen_bench_injects_what_it_says():
    """bench/unseen.py's two attack types: popular filler near the mean, half-copies of heavy users,
    a shared target rated high, and rating times borrowed from real users."""
    from bench.unseen import inject_unseen

    base = generate(n_users=80, mix=AttackMix.none(), seed=4).events
    base["user_id"] = base["user_id"].astype(str)
    base["value"] = np.random.default_rng(0).integers(1, 6, len(base)).astype(float)  # ratings, as MovieLens
    ev, user_type = inject_unseen(base, 3, seed=1)
    fake = ev[ev["injected"]]
    assert len(ev) == len(base) + len(fake) and not ev.loc[: len(base) - 1, "injected"].any()
    assert (user_type != "normal").sum() == 6 and set(user_type[user_type != "normal"]) == {"aop", "power_copy"}
    counts = base["item_id"].value_counts()
    popular = set(counts.index[: int(0.1 * len(counts))])
    real_gaps = {tuple(np.diff(g["ts"].to_numpy())) for _, g in base.groupby("user_id")}
    assert fake["value"].between(1, 5).all()
    targets = {"aop": [], "power_copy": []}
    for uid, g in fake.groupby("user_id"):
        kind = user_type[uid]
        gaps = tuple(np.diff(g["ts"].to_numpy()))
        assert any(r[: len(gaps)] == gaps for r in real_gaps)  # a real user's rating times
        items = set(g["item_id"])
        if kind == "aop":
            odd = items - popular
            assert len(odd) <= 1  # popular filler, and the target unless it is popular itself
        else:  # half of one real user's items, and the target
            odd = min((items - set(b["item_id"]) for _, b in base.groupby("user_id")), key=len)
            assert len(odd) <= 1 and len(items) >= 2
        targets[kind].append(g.loc[g["value"] == g["value"].max(), "item_id"].tolist())
    for kind, rated_high in targets.items():  # one campaign (3 < CAMPAIGN): a target rated highest by all
        assert set.intersection(*map(set, rated_high)), kind


def test_robustness_bench_scales_every_attack_share():
    """bench/robustness.py's heavy-poisoning log: every share of the mix times the scale, so a 3x
    mix attacks about three times as many users."""
    from bench.robustness import scaled

    base = AttackMix()
    mix = scaled(base, 3.0)
    assert all(getattr(mix, f) == pytest.approx(3 * getattr(base, f)) for f in vars(base))
    share = {k: (generate(n_users=300, mix=m, seed=2).user_type != NORMAL).mean() for k, m in (("1x", base), ("3x", mix))}
    assert 2.2 < share["3x"] / share["1x"] < 3.8


def test_robustness_bench_new_items_reach_the_share_and_spare_attack_targets():
    """bench/robustness.py's new-items protocol leaves out items (never an attack's target) whose
    events make the asked share of the log, and says so when the log cannot."""
    from bench.robustness import new_item_choice

    lab = generate(n_users=200, seed=4)
    new = new_item_choice(lab, 0.05, seed=1)
    share = lab.events["item_id"].isin(new).mean()
    assert 0.05 <= share < 0.1 and not np.isin(new, lab.target_items).any()
    assert not np.array_equal(new, new_item_choice(lab, 0.05, seed=2))
    with pytest.raises(ValueError, match="under"):
        new_item_choice(lab, 1.01, seed=1)


def test_campaign_pass_bench_measures_both_layouts_to_the_same_answer():
    """bench/campaign_pass.py: the global task over gathered events and over the blocks' visits
    give equal items and campaigns frames (it checks), and it reports what it measured."""
    from bench.campaign_pass import first_rows, fitted_detector, load, measure

    df = first_rows(load(60_000, None), 60_000, False)
    r = measure(df, fitted_detector(df))
    assert r["events"] == 60_000 and 0 < r["visits"] < r["events"] and r["blocks"] == 3
    assert r["gathered_mb"] > 0 and r["visits_mb"] > 0 and r["wire_mb"] > 0
    ratings = first_rows(load(60_000, None), 60_000, True)  # one event per (user, item): visits = events
    assert ratings.duplicated(["user_id", "item_id"]).sum() == 0
    assert measure(ratings, fitted_detector(ratings))["visits"] == len(ratings)
