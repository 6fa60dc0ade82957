"""The campaign stage (core/campaigns): planted groups found (members and targets), organic rises
left alone, logs without timing, the allow-list, evidence merged into verdicts, repair undoing the
push, and the stage in the pipeline and the bundle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqguard_ray.core.allowlist import AllowList
from seqguard_ray.core.campaigns import (
    CampaignDetector,
    apply_allow,
    apply_campaigns,
    detect_campaigns,
    find_in_parts,
    result_for,
    visit_part,
)
from seqguard_ray.core.repair import RepairPolicy
from seqguard_ray.core.results import Scored, score_result
from seqguard_ray.core.schema import from_frame

T0 = 1_600_000_000
DAY = 86_400
TARGETS = (250, 260, 270)


def simulate(n_users: int = 400, n_items: int = 300, seed: int = 0, days: int = 30) -> pd.DataFrame:
    """A clean ratings log: Zipf item popularity, each user's events spread over days, values 1-5."""
    rng = np.random.default_rng(seed)
    n = rng.integers(5, 40, n_users)
    pop = 1 / np.arange(1, n_items + 1) ** 0.9
    pop /= pop.sum()
    frames = []
    for u in range(n_users):
        items = rng.choice(n_items, n[u], replace=False, p=pop)
        start = rng.uniform(0, days * DAY * 0.8)
        ts = start + np.cumsum(rng.exponential(DAY / 2, n[u]))
        frames.append(pd.DataFrame({"user_id": f"u{u}", "item_id": items, "ts": (T0 + ts).astype(np.int64),
                                    "value": rng.choice([1.0, 2, 3, 4, 5], n[u], p=[.06, .11, .27, .34, .22])}))
    return pd.concat(frames, ignore_index=True)


def plant(df: pd.DataFrame, *, members: int = 20, targets=TARGETS, spread: float = 7200, start: float = 10 * DAY,
          seed: int = 1, real: bool = False, camouflage: int = 5) -> tuple[pd.DataFrame, set[str]]:
    """A campaign: ``members`` accounts (new ones, or established real users adding events) give
    the targets the top value within ``spread`` seconds, with popular camouflage items (new
    accounts only)."""
    rng = np.random.default_rng(seed)
    span = df.groupby("user_id")["ts"].agg(["min", "max", "size"])
    established = span[(span["size"] >= 10) & (span["max"] - span["min"] > 5 * DAY)].index.to_numpy()
    ids = (rng.choice(established, members, replace=False) if real
           else np.array([f"c{j}" for j in range(members)]))
    rows = []
    for u in ids:
        items = list(targets) + ([] if real else list(rng.choice(10, camouflage, replace=False)))
        for i in items:
            rows.append((u, int(i), int(T0 + start + rng.uniform(0, spread)), 5.0))
    out = pd.concat([df, pd.DataFrame(rows, columns=df.columns)], ignore_index=True)
    return out, set(ids.tolist())


def fit_detector(df: pd.DataFrame, seed: int = 0, **params) -> tuple[CampaignDetector, np.random.Generator]:
    lg = from_frame(df)
    rng = np.random.default_rng(seed)
    _, first, codes = np.unique(lg.item, return_index=True, return_inverse=True)
    det = CampaignDetector(**params).fit(lg.offsets, codes.ravel(), lg.ts, lg.value, rng.random(lg.n_users),
                                         n_items=len(first))
    return det, rng


def found(det, df, rng, allow=None):
    lg = from_frame(df)
    cr = detect_campaigns(det, lg, rng.random(lg.n_users), allow)
    members = {str(u) for c in cr.campaigns["user_ids"] for u in c}
    targets = {int(i) for i in cr.items.loc[cr.items["suspicious"], "item_id"]}
    return lg, cr, members, targets


@pytest.fixture(scope="module")
def clean():
    return simulate()


@pytest.fixture(scope="module")
def detector(clean):
    return fit_detector(clean)


def test_a_clean_log_has_no_campaign_in_sample(detector):
    det, _ = detector
    assert det.train_["campaigns"] == 0 and det.train_["members"] == 0
    assert det.tau_ > 0 and set(det.calibrators_) >= {"core", "w86400"}


def test_a_planted_group_on_a_few_targets_within_hours_is_found(clean, detector):
    det, rng = detector
    df, planted = plant(clean)
    lg, cr, members, targets = found(det, df, rng)
    assert members == planted and targets == set(TARGETS)
    assert len(cr.campaigns) == 1
    row = cr.campaigns.iloc[0]
    assert row["n_events"] == 60 and row["score"] >= 1 - det.target_fpr
    assert row["first_ts"] >= T0 + 10 * DAY and row["last_ts"] <= T0 + 10 * DAY + 7200
    assert cr.campaigns["first_ts"].dtype == df["ts"].dtype and cr.items["item_id"].dtype == df["item_id"].dtype
    assert str(cr.items["campaign_id"].dtype) == "Int64" and cr.items["campaign_score"].between(0, 1).all()
    # the members' events on the targets, and only those, are the campaign's
    on = np.isin(lg.user, list(planted)) & np.isin(lg.item, [str(t) for t in TARGETS])
    assert (cr.event_campaign == on).all()
    assert "target of campaign 0" in cr.items.loc[cr.items["item_id"] == TARGETS[0], "reasons"].iloc[0]
    # popular camouflage items carry the group too, but are not its targets
    assert not cr.items.loc[cr.items["item_id"] < 10, "suspicious"].any()


def test_farmed_events_inside_real_accounts_are_found(clean, detector):
    det, rng = detector
    df, planted = plant(clean, real=True, members=15, start=20 * DAY)
    _, cr, members, targets = found(det, df, rng)
    assert targets == set(TARGETS) and len(members & planted) >= 14 and len(members - planted) <= 1
    assert not cr.user_fake[cr.user_campaign >= 0].all()  # real accounts: their few campaign events


def test_an_organic_rise_of_a_popular_item_is_not_flagged(clean, detector):
    """A release: 90 established users (active for days before it) adopt a new item over the
    following week while they are active, more on its first days, with the values people give."""
    det, rng = detector
    out = T0 + 12 * DAY
    span = clean.groupby("user_id")["ts"].agg(["min", "max"])
    active = span[(span["min"] < out - 2 * DAY) & (span["max"] > out + DAY)]
    r = np.random.default_rng(5)
    fans = r.choice(active.index.to_numpy(), 90, replace=False)
    end = np.minimum(active.loc[fans, "max"].to_numpy(), out + 7 * DAY)
    when = out + (end - out) * r.beta(1.0, 2.0, 90)
    release = pd.DataFrame({"user_id": fans, "item_id": 999, "ts": when.astype(np.int64),
                            "value": r.choice([1.0, 2, 3, 4, 5], 90, p=[.06, .11, .27, .34, .22])})
    _, cr, members, targets = found(det, pd.concat([clean, release], ignore_index=True), rng)
    assert 999 not in targets and not members & set(fans)


def test_a_group_in_a_log_without_time_is_found_by_values_and_lockstep(clean):
    flat = clean.assign(ts=T0)
    det, rng = fit_detector(flat)
    assert not det.train_["timed"] and set(det.calibrators_) == {"core"}
    df, planted = plant(clean)
    _, cr, members, targets = found(det, df.assign(ts=T0), rng)
    assert targets == set(TARGETS) and len(members & planted) == 20 and len(members - planted) <= 1
    reasons = cr.items.loc[cr.items["suspicious"], "reasons"]
    assert reasons.str.contains("values unlike").any() and reasons.str.contains("who also adopted item").all()  # the lockstep core


def test_lockstep_partners_do_not_depend_on_the_blocks_of_items(clean, monkeypatch):
    """pair_lockstep counts co-adoption by blocks of items to bound its memory: any block size
    gives what one block gives, the planted targets locked onto each other, ties to the first code."""
    from seqguard_ray.core.campaigns import lockstep
    from seqguard_ray.core.campaigns.adoptions import build_adoptions

    df, _ = plant(clean)
    lg = from_frame(df)
    _, first, codes = np.unique(lg.item, return_index=True, return_inverse=True)
    ad = build_adoptions(lg.offsets, codes.reshape(-1).astype(np.int64), lg.ts, lg.value, n_items=len(first))
    whole = lockstep.pair_lockstep(ad, 2.0)
    names = [str(x) for x in lg.item[first]]
    targets = [names.index(str(t)) for t in TARGETS]
    assert {names[whole[0][t]] for t in targets} <= {str(t) for t in TARGETS}
    blocks = []
    row_blocks = lockstep._row_blocks
    monkeypatch.setattr(lockstep, "_row_blocks", lambda *a: blocks.append(row_blocks(*a)) or blocks[-1])
    for budget in (1, 500, 20_000):
        monkeypatch.setattr(lockstep, "_PAIR_CHUNK", budget)
        for a, b in zip(whole, lockstep.pair_lockstep(ad, 2.0)):
            np.testing.assert_array_equal(a, b)
    assert len(blocks[0]) == ad.n_items and len(blocks[0]) > len(blocks[1]) > len(blocks[2]) >= 1
    assert [lo for lo, _ in blocks[1]] == [0] + [hi for _, hi in blocks[1][:-1]] and blocks[1][-1][1] == ad.n_items


def test_the_stage_state_round_trips(clean, detector):
    det, _ = detector
    arrays, meta = det.to_state()
    again = CampaignDetector.from_state(arrays, meta)
    df, _ = plant(clean)
    a = found(det, df, np.random.default_rng(3))[1]
    b = found(again, df, np.random.default_rng(3))[1]
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.campaigns, b.campaigns)
    with pytest.raises(ValueError, match="share must be in"):
        CampaignDetector.from_state(arrays, {**meta, "share": 2.0})


def test_parameters_are_checked_at_fit(clean):
    for bad, match in (({"share": 0.0}, "share"), ({"min_members": 1}, "min_members"), ({"taste_lift": 0.5}, "taste_lift"),
                       ({"windows": (0.0,)}, "windows")):
        with pytest.raises(ValueError, match=match):
            fit_detector(clean.head(500), **bad)


def test_allowed_users_and_items_are_honoured(clean, detector):
    det, rng = detector
    df, planted = plant(clean)
    allowed = sorted(planted)[:3]
    lg, cr, members, targets = found(det, df, rng, AllowList.of(users=allowed, items=[TARGETS[0]]))
    assert not members & set(allowed) and members == planted - set(allowed)
    assert TARGETS[0] not in targets and targets == set(TARGETS[1:])
    assert cr.items.loc[cr.items["item_id"] == TARGETS[0], "reasons"].iloc[0].startswith("on the allow-list")
    assert not cr.event_campaign[(lg.item == str(TARGETS[0])) | np.isin(lg.user, allowed)].any()


def _scored(lg, flagged: set[str]) -> Scored:
    users = lg.users
    u = np.isin(users, list(flagged))
    n = lg.n_events
    return Scored(score=np.where(u, 0.999, 0.2), anomalous=u, anomaly_type=np.where(u, "bot", "normal").astype(object),
                  reasons=[[] for _ in users], event_score=np.full(n, 0.1), event_anomalous=np.repeat(u, np.diff(lg.offsets)),
                  detector_scores=np.zeros((len(users), 6)), length_doubt=np.zeros(len(users), bool))


def test_members_are_flagged_typed_and_repaired(clean, detector):
    det, rng = detector
    fake, planted = plant(clean)
    df, farmed = plant(fake, real=True, members=15, start=20 * DAY, targets=(280, 285, 290), seed=4)
    lg, cr, members, _ = found(det, df, rng)
    assert planted | farmed <= members | set(list(farmed)[:1])
    bot = sorted(planted)[0]  # already flagged by its own evidence: keeps its type
    s = apply_campaigns(lg.offsets, _scored(lg, {bot}), cr, threshold=0.99)
    types = dict(zip(lg.users, s.anomaly_type))
    assert types[bot] == "bot" and {types[u] for u in planted - {bot}} == {"shilling"}
    assert {types[u] for u in farmed & members} == {"injection"}
    u = list(lg.users).index(sorted(farmed & members)[0])
    assert s.anomalous[u] and s.score[u] >= 1 - det.target_fpr
    assert any("member of campaign" in r for r in s.reasons[u]) and "campaign" in s.reasons[u][0]
    own = slice(lg.offsets[u], lg.offsets[u + 1])
    assert (s.event_anomalous[own] == cr.event_campaign[own]).all() and cr.event_campaign[own].sum() == 3
    result = score_result(lg, s, cr)
    assert result.users["campaign_id"].notna().sum() == len(members)
    rep = RepairPolicy().repair(result)
    assert rep.summary["campaign_events_removed"] == int(cr.event_campaign.sum())
    kept = rep.repaired
    farm_time = kept["ts"].between(T0 + 20 * DAY, T0 + 20 * DAY + 7200)
    on_targets = kept["item_id"].isin([280, 285, 290]) & kept["user_id"].isin(farmed & members)
    assert not (on_targets & farm_time).any()
    # the real accounts keep their own history, their own visits to the targets too
    assert kept["user_id"].isin(farmed).sum() == df["user_id"].isin(farmed).sum() - 3 * len(farmed & members)



def _part(lg, users):
    """The sub-log of ``lg``'s users ``users`` (indices), and its events' positions in ``lg``."""
    ev = np.concatenate([np.arange(lg.offsets[u], lg.offsets[u + 1]) for u in users] or [np.zeros(0, int)])
    sub = from_frame(lg.frame.drop(columns="_row").iloc[ev])
    sub.frame["_row"] = lg.frame["_row"].to_numpy()[ev]
    return sub, ev


def test_the_stage_over_partitions_of_the_users_equals_the_whole(clean, detector):
    """find_in_parts / result_for: a partitioned engine hands over its blocks' visits, not their
    events, and merges the global result per block of whole users: the same items, campaigns,
    per-user and per-event verdicts as the whole log in one partition, whatever the partitions."""
    det, rng = detector
    df, planted = plant(clean)
    df = pd.concat([df, plant(clean, members=12, targets=(280, 285), start=20 * DAY, seed=4, real=True)[0].iloc[len(clean):]],
                   ignore_index=True)
    lg = from_frame(df)
    score = rng.random(lg.n_users)
    cr = detect_campaigns(det, lg, score)
    assert len(cr.campaigns) >= 2 and cr.event_campaign.any()
    s = _scored(lg, {sorted(planted)[0], lg.users[0]})
    whole = apply_campaigns(lg.offsets, s, cr, threshold=0.99)
    for k in (2, 5):
        blocks = np.array_split(np.random.default_rng(k).permutation(lg.n_users), k)
        parts = [_part(lg, np.sort(b)) for b in blocks]
        items, ms = find_in_parts(det, [visit_part(sub, score[np.searchsorted(lg.users, sub.users)]) for sub, _ in parts])
        pd.testing.assert_frame_equal(items, cr.items)
        pd.testing.assert_frame_equal(ms.campaigns, cr.campaigns)
        assert len(ms.user_ids) == (cr.user_campaign >= 0).sum() and ms.items["suspicious"].all()
        for (sub, ev), users in zip(parts, blocks):
            users = np.sort(users)
            part = result_for(ms, sub)
            for key in ("user_campaign", "user_score", "user_fake"):
                assert (getattr(part, key) == getattr(cr, key)[users]).all(), key
            assert (part.event_campaign == cr.event_campaign[ev]).all()
            got = apply_campaigns(sub.offsets, Scored(
                score=s.score[users], anomalous=s.anomalous[users], anomaly_type=s.anomaly_type[users],
                reasons=[s.reasons[u] for u in users], event_score=s.event_score[ev],
                event_anomalous=s.event_anomalous[ev], detector_scores=s.detector_scores[users],
                length_doubt=s.length_doubt[users]), part, threshold=0.99)
            assert (got.score == whole.score[users]).all() and got.reasons == [whole.reasons[u] for u in users]
            assert (got.event_anomalous == whole.event_anomalous[ev]).all()
    with pytest.raises(ValueError, match="more than one partition"):
        find_in_parts(det, [visit_part(lg, score), visit_part(lg, score)])


def test_campaign_events_get_the_campaign_action_whatever_the_users_own():
    """A member typed takeover has its stretch cut and its campaign events dropped; a policy may
    keep them at a low weight instead, or leave them."""
    offsets, types = np.array([0, 6]), np.array(["takeover"], dtype=object)
    anom = np.array([False, False, False, False, True, True])
    push = np.array([True, False, True, False, False, False])
    keep, weight, action, _ = RepairPolicy().apply(offsets, types, np.zeros(6), anom, None, push)
    assert keep.tolist() == [False, True, False, True, False, False] and "campaign" in action[0]
    keep, weight, _, _ = RepairPolicy(campaign_action="downweight").apply(offsets, types, np.zeros(6), anom, None, push)
    assert keep[:4].all() and weight[:4].tolist() == [0.1, 1.0, 0.1, 1.0]
    keep, weight, _, _ = RepairPolicy(campaign_action="pass").apply(offsets, types, np.zeros(6), anom, None, push)
    assert keep[:4].all() and (weight[:4] == 1).all()
    with pytest.raises(ValueError, match="campaign_action"):
        RepairPolicy(campaign_action="shred")
    with pytest.raises(ValueError, match="event_campaign must be a bool per event"):
        RepairPolicy().apply(offsets, types, np.zeros(6), anom, None, push[:3])


def test_allowed_users_are_never_flagged_by_any_stage(clean):
    lg = from_frame(clean.head(2000))
    s = _scored(lg, {lg.users[0], lg.users[1]})
    out = apply_allow(lg.offsets, s, np.isin(lg.users, [lg.users[0]]))
    assert not out.anomalous[0] and out.anomaly_type[0] == "normal" and out.reasons[0][0] == "on the allow-list"
    assert out.score[0] == s.score[0] and not out.event_anomalous[lg.offsets[0]:lg.offsets[1]].any()
    assert out.anomalous[1] and out.anomaly_type[1] == "bot"


# ---------------------------------------------------------------- the stage in the pipeline

@pytest.fixture(scope="module")
def small_model(clean):
    from seqguard_ray import SeqGuard, TrainConfig

    return SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4)).fit(clean)


def test_the_pipeline_finds_the_group_and_flags_its_members(small_model, clean):
    df, planted = plant(clean)
    result = small_model.score(df)
    cr = result.campaigns
    assert cr is not None and set(cr.items.loc[cr.items["suspicious"], "item_id"]) == set(TARGETS)
    users = result.users.set_index("user_id")
    assert users.loc[sorted(planted), "anomalous"].all()
    assert users.loc[sorted(planted), "campaign_id"].notna().all()
    assert str(result.users["campaign_id"].dtype) == "Int64"
    assert small_model.repair(result).summary["campaign_events_removed"] == 60
    # allow-listed: never flagged, never a member; the reason says so
    allowed = sorted(planted)[0]
    again = small_model.score(df, allow=AllowList.of(users=[allowed]))
    row = again.users.set_index("user_id").loc[allowed]
    assert not row["anomalous"] and row["anomaly_type"] == "normal" and pd.isna(row["campaign_id"])
    assert row["reasons"].startswith("on the allow-list")


def test_the_stage_off_leaves_todays_outputs(small_model, clean):
    df, _ = plant(clean)
    on = small_model.score(df)
    stage = small_model.campaign_detector
    try:
        small_model.campaign_detector = None
        off = small_model.score(df)
    finally:
        small_model.campaign_detector = stage
    assert off.campaigns is None and off.scored.event_campaign is None
    assert off.users["campaign_id"].isna().all()
    members = on.campaigns.user_campaign >= 0
    cols = ["user_id", "score", "anomalous", "anomaly_type", "reasons", "n_events"]
    pd.testing.assert_frame_equal(on.users.loc[~members, cols], off.users.loc[~members, cols])
    keep = ~on.events["user_id"].isin(set(on.users.loc[members, "user_id"]))
    pd.testing.assert_frame_equal(on.events[keep], off.events[keep])


def test_bundle_round_trip_with_the_stage(small_model, clean, tmp_path):
    from seqguard_ray import SeqGuard
    from seqguard_ray.core.bundle import FORMAT_VERSION, BundleError

    path = tmp_path / "model"
    small_model.save(path)
    loaded = SeqGuard.load(path)
    assert FORMAT_VERSION == "12" and loaded.campaign_detector is not None
    df, _ = plant(clean)
    a, b = small_model.score(df), loaded.score(df)
    pd.testing.assert_frame_equal(a.campaigns.items, b.campaigns.items)
    pd.testing.assert_frame_equal(a.campaigns.campaigns, b.campaigns.campaigns)
    pd.testing.assert_frame_equal(a.users, b.users)
    # a bundle trained with the stage but without its state is refused
    import json
    mf = path / "manifest.json"
    m = json.loads(mf.read_text())
    mf.write_text(json.dumps({**m, "campaigns": None}))
    with pytest.raises(BundleError, match="no campaign state"):
        SeqGuard.load(path)


def test_a_format_11_bundle_loads_with_the_stage_off():
    """tests/golden/format11/: the golden bundle as format 11 wrote it (before the campaign stage,
    the one budget and the change point), and the users it flagged then: it loads with the stage
    off and flags the same users (the ensemble keeps the calibration it was fitted with)."""
    from pathlib import Path

    from seqguard_ray import SeqGuard

    here = Path(__file__).resolve().parent / "golden"
    sg = SeqGuard.load(here / "format11")
    assert sg.campaign_detector is None and sg.config.campaigns is False and sg.changepoint is None
    users = sg.score(here / "events.parquet").users.set_index("user_id")
    then = pd.read_parquet(here / "format11" / "users.parquet").set_index("user_id")
    assert users.index.equals(then.index)
    np.testing.assert_array_equal(users["anomalous"].to_numpy(), then["anomalous"].to_numpy())
    # scores are ranks against the calibrator's 158 reference users (steps of 1/158): the scoring
    # pass's float rounding (the chunked item head, <= 1e-6 nats) may swap near-tied users by a step
    # or a few, never a flag
    assert np.abs(users["score"].to_numpy() - then["score"].to_numpy()).max() <= 3 / 158 + 1e-9


@pytest.mark.parametrize("n", [0, 1, 7, 5_000])
def test_item_codes_are_numpy_uniques_codes_and_first_events(n):
    """item_codes (a hash of the ids, a sort of the distinct ones) gives np.unique's codes in
    sorted id order and each item's first event, on ids that sort unlike numbers."""
    from seqguard_ray.core.campaigns.parts import item_codes

    rng = np.random.default_rng(n)
    pool = np.array(["10", "9", "", "é", "a", "A", "0010", "b" * 40] + [str(x) for x in range(50)], dtype=object)
    ids = pool[rng.integers(0, len(pool), n)]
    _, first, codes = np.unique(ids, return_index=True, return_inverse=True)
    got_codes, got_first = item_codes(ids)
    assert np.array_equal(got_codes, codes.reshape(-1)) and np.array_equal(got_first, first)
    assert got_codes.dtype == np.int64 and got_first.dtype == np.int64


def test_the_timing_check_over_parts_equals_the_whole():
    """time_part / time_signal: timestamps that are the input rows in disguise (an affine function
    of the row, gaps from skipped rows included) carry no timing, whichever partition of the
    events each part holds; real times, or a span under two days, are judged as on the whole."""
    from seqguard_ray.core.campaigns import has_time_signal, time_part, time_signal

    rng = np.random.default_rng(0)
    row = np.sort(rng.choice(10_000, 3_000, replace=False))  # rows with gaps: bad rows skipped
    cases = {
        "rows as seconds": (T0 + 60.0 * row, False),
        "real times": (T0 + np.cumsum(rng.exponential(600, len(row))), True),
        "one row off the line": (T0 + 60.0 * row + (row == row[1500]), True),
        "under two days": (T0 + 10.0 * np.arange(len(row)), False),
        "constant": (np.full(len(row), float(T0)), False),
    }
    for name, (ts, timed) in cases.items():
        assert has_time_signal(ts, row) is timed, name
        for k in (1, 2, 7):
            owner = rng.integers(0, k, len(row))  # any partition of the events, e.g. by user
            assert time_signal([time_part(ts[owner == b], row[owner == b]) for b in range(k)]) is timed, (name, k)
    assert has_time_signal(T0 + 60.0 * row) is True  # no rows: the span alone
    assert time_signal([time_part(np.array([float(T0)]), np.array([3]))]) is False  # one event
