import numpy as np
import pandas as pd
import pytest

from seqguard_ray import ANOMALY_TYPES, SeqGuard, TrainConfig
from seqguard_ray.core.bundle import BundleError


def test_score_gives_users_and_events_in_input_order_with_unit_scores(tiny_model, tiny_events):
    r = tiny_model.score(tiny_events)
    u, e = r.users, r.events
    assert list(u.columns[:5]) == ["user_id", "score", "anomalous", "anomaly_type", "reasons"]
    assert len(u) == tiny_events.user_id.nunique() and len(e) == len(tiny_events)
    assert u.score.between(0, 1).all() and e.event_score.between(0, 1).all()
    assert set(u.anomaly_type) <= set(ANOMALY_TYPES)
    assert (u.anomaly_type[~u.anomalous] == "normal").all()
    # events come back in input order with the input's values and types
    assert (e.user_id.to_numpy() == tiny_events.user_id.to_numpy()).all()
    assert e.item_id.dtype == tiny_events.item_id.dtype and (e.ts.to_numpy() == tiny_events.ts.to_numpy()).all()
    # anomalous events only in anomalous users; flagged users have reasons
    flagged = set(u.user_id[u.anomalous])
    assert set(e.user_id[e.anomalous]) <= flagged
    assert all(u.reasons[u.anomalous].str.len() > 0)


def test_unknown_items_and_single_event_users_are_scored(tiny_model):
    df = pd.DataFrame({"user_id": ["new", "solo", "new"], "item_id": [999999, 1, 123456], "ts": [10, 20, 30],
                       "action": ["view", "never-seen-action", "view"], "value": [1.0, 2.0, np.nan]})
    r = tiny_model.score(df)
    assert len(r.users) == 2 and len(r.events) == 3
    assert np.isfinite(r.events.event_score).all()


def test_repair_keeps_columns_and_adds_weight(tiny_model, tiny_events):
    df = tiny_events.assign(note=np.arange(len(tiny_events)).astype(str))
    r = tiny_model.score(df)
    rep = tiny_model.repair(r)
    assert list(rep.repaired.columns) == list(df.columns) + ["weight"]
    assert rep.summary["events_in"] == len(df) == rep.summary["events_kept"] + rep.summary["events_dropped"]
    assert rep.repaired.weight.between(0, 1).all()
    assert (rep.repaired["note"].isin(df["note"])).all()


def test_scoring_is_deterministic(tiny_model, tiny_events):
    a = tiny_model.score(tiny_events).users.score.to_numpy()
    b = tiny_model.score(tiny_events).users.score.to_numpy()
    assert np.array_equal(a, b)


def test_an_unfitted_model_and_bad_configs_are_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        SeqGuard().score(pd.DataFrame({"user_id": [1], "item_id": [1], "ts": [1]}))
    with pytest.raises(ValueError, match="num_heads"):
        TrainConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown training config key"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="at least 5 users"):
        SeqGuard().fit(pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "ts": [1, 2]}))


def test_a_loaded_bundle_scores_like_the_model_that_wrote_it(tiny_model, tiny_bundle, tiny_events):
    loaded = SeqGuard.load(tiny_bundle)
    a = tiny_model.score(tiny_events)
    b = loaded.score(tiny_events)
    np.testing.assert_allclose(a.users.score, b.users.score, atol=1e-6)
    np.testing.assert_allclose(a.events.event_score, b.events.event_score, atol=1e-6)
    assert len(loaded.model_version) == 12
    np.testing.assert_array_equal(loaded.explainer.residual_check_.coef_, tiny_model.explainer.residual_check_.coef_)
    np.testing.assert_array_equal(loaded.explainer.length_trend_.coef_, tiny_model.explainer.length_trend_.coef_)
    np.testing.assert_array_equal(loaded.explainer.quantiles_, tiny_model.explainer.quantiles_)
    np.testing.assert_array_equal(a.scored.length_doubt, b.scored.length_doubt)


def test_bundle_round_trip_keeps_knn_groups_and_neighbour_reference(tiny_events, tmp_path, monkeypatch):
    import seqguard_ray.core.detectors as D

    import seqguard_ray.core.features.neighbours as F

    monkeypatch.setattr(D, "KNN_GROUP_SIZE", 10)  # 60 users: a handful of leave-cluster-out groups
    monkeypatch.setattr(F, "MISS_BIN_USERS", 10)  # ... and a miss-rate curve of a few points
    sg = SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4)).fit(tiny_events)
    assert sg.user_detectors.detectors_["knn"].centroids_ is not None and sg.stats.neighbours_.ref_.shape[0] == 60
    assert len(sg.stats.neighbours_.miss_rate_) >= 2
    loaded = SeqGuard.load(sg.save(tmp_path / "model"))
    ud, lu = sg.user_detectors, loaded.user_detectors
    np.testing.assert_array_equal(lu.detectors_["knn"].groups_, ud.detectors_["knn"].groups_)
    np.testing.assert_array_equal(lu.detectors_["knn"].centroids_, ud.detectors_["knn"].centroids_)
    assert (loaded.stats.neighbours_.ref_ != sg.stats.neighbours_.ref_).nnz == 0
    np.testing.assert_array_equal(loaded.stats.neighbours_.null_, sg.stats.neighbours_.null_)
    np.testing.assert_array_equal(loaded.stats.neighbours_.span_, sg.stats.neighbours_.span_)
    np.testing.assert_array_equal(loaded.stats.neighbours_.miss_sizes_, sg.stats.neighbours_.miss_sizes_)
    np.testing.assert_array_equal(loaded.stats.neighbours_.miss_rate_, sg.stats.neighbours_.miss_rate_)
    np.testing.assert_array_equal(loaded.stats.neighbours_.part_source_, sg.stats.neighbours_.part_source_)
    assert lu.copy_column == ud.copy_column is not None and set(lu.calibrators_) == set(ud.calibrators_)
    assert lu.part_copy_column == ud.part_copy_column is not None
    np.testing.assert_allclose(loaded.score(tiny_events).users.score, sg.score(tiny_events).users.score, atol=1e-6)


def test_corrupt_bundles_are_refused_with_a_clear_error(tiny_bundle, tmp_path):
    import json
    import shutil

    with pytest.raises(BundleError, match="does not exist"):
        SeqGuard.load(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="no manifest.json"):
        SeqGuard.load(empty)

    def copy(name):
        d = tmp_path / name
        shutil.copytree(tiny_bundle, d)
        return d

    d = copy("tampered")
    with open(d / "state.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="checksum"):
        SeqGuard.load(d)
    d = copy("version")
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = "999"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version '999'"):
        SeqGuard.load(d)
    d = copy("features")
    m = json.loads((d / "manifest.json").read_text())
    m["detectors"]["user_features"] = m["detectors"]["user_features"][:-1]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="other user features"):
        SeqGuard.load(d)
    d = copy("garbled")
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        SeqGuard.load(d)
    d = copy("missing_file")
    (d / "state.npz").unlink()
    with pytest.raises(BundleError, match="missing state.npz"):
        SeqGuard.load(d)


def test_catalogue_order_flags_sweeps_not_people():
    """A crawler walking the catalogue in id or popularity order scores near 1; shuffled items near 0."""
    from seqguard_ray.core.features import Seqs, USER_FEATURES, catalogue_order, catalogue_rank
    from seqguard_ray.core.tokens import N_SPECIAL

    items = [str(i) for i in (5, 3, 40, 12, 7, 100, 2, 9, 61, 8)]   # vocab (popularity) order
    V = len(items) + N_SPECIAL
    rank = catalogue_rank(items, V)
    assert rank[N_SPECIAL:].tolist() == [3, 2, 8, 7, 4, 10, 1, 6, 9, 5]  # numeric, not string, order
    by_id = N_SPECIAL + np.argsort(rank[N_SPECIAL:])            # vocab ids in item id order
    by_pop = np.arange(N_SPECIAL, V)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(np.tile(by_pop, 3))
    item = np.concatenate([by_id, by_pop[::-1], shuffled])
    off = np.array([0, 10, 20, 50])
    n = len(item)
    seqs = Seqs(off, np.arange(n, dtype=float), item, np.zeros(n, np.int64), np.full(n, np.nan), np.zeros((n, 3), np.float32))
    got = catalogue_order(seqs, rank, seqs.user_index())
    assert got[0] > 0.8 and got[1] > 0.8 and got[2] < 0.4, got
    assert "catalogue_order" in USER_FEATURES


def test_partial_explanations_must_leave_ordinary_events(monkeypatch):
    """A flagged history is typed injection/replay/takeover only when the events left look like a
    normal user's (or the explanation is a push of a few items); with a check that finds every
    remainder odd, the other partly anomalous users become whole-history."""
    import seqguard_ray.core.explain as E
    from seqguard_ray.core.event_detector import ResidualCheck
    from seqguard_ray.synth import AttackMix, generate

    mix = AttackMix(**{**vars(AttackMix.none()), "click_farm": 0.1, "takeover": 0.1})
    events = generate(n_users=100, mix=mix, seed=0).events
    sg = SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4, target_fpr=0.1)).fit(events)
    assert np.isfinite(sg.explainer.residual_check_.coef_).all()
    before = sg.score(events).users
    partial = before.anomaly_type.isin(["injection", "replay", "takeover"])
    assert partial.any(), "the log should have partly anomalous users"
    # every remainder is far above normal
    sg.explainer.residual_check_ = ResidualCheck.from_state({"residual_check": np.array([-10.0, 0.0, 0.01, 0.9])}, {})
    monkeypatch.setattr(ResidualCheck, "MIN_EVENTS", 1)  # judge remainders of any length
    res = sg.score(events)
    after = res.users
    assert (after.anomalous == before.anomalous).all()
    # what stays partial is a push of a few items (more events per item than two passes down the
    # action funnel), an explanation by its structure; everything else became whole-history, saying why
    still = after[after.anomaly_type.isin(["injection", "replay", "takeover"])]
    ev = res.events[res.events.anomalous]
    for u in still.user_id:
        items = ev.item_id[ev.user_id == u]
        assert len(items) >= 2 * events.action.nunique() * items.nunique()
    refused = after[partial.to_numpy() & ~after.user_id.isin(still.user_id).to_numpy()]
    assert len(refused) > 0 and refused.reasons.str.contains("the events left are still unusual").all()
    # what is left must resemble other people too, a push or not: remainders that resemble nobody
    # (filler of a fake profile) make every partial explanation whole-history, saying why
    monkeypatch.setattr(ResidualCheck, "MIN_EVENTS", 10**9)  # the residual check off: nothing else refuses
    assert sg.score(events).users.anomaly_type.isin(["injection", "replay", "takeover"]).any()
    real = E.resembles_nobody
    monkeypatch.setattr(E, "resembles_nobody", lambda seqs, uf, n_items, training=True:
                        real(seqs, uf, n_items, training=training) | (not training))
    after = sg.score(events).users
    assert (after.anomalous == before.anomalous).all()
    assert not after.anomaly_type.isin(["injection", "replay", "takeover"]).any()
    assert after[partial.to_numpy()].reasons.str.contains("the events left still resemble other users' less than random").all()


def test_target_items_gather_every_event_on_an_item_pushed_repeatedly():
    from seqguard_ray.core.explain import distinct_items as _distinct_items, on_targets as _on_targets
    from seqguard_ray.core.tokens import N_SPECIAL, UNK

    t = N_SPECIAL + 5
    uix = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    item = np.array([t, t, t, t + 1, t, t + 1, t, UNK, UNK, UNK])
    hot = np.array([1, 1, 0, 1, 1, 0, 0, 1, 1, 0], bool)
    got = _on_targets(uix, item, hot)
    # user 0 pushed t twice: all three of its t events; user 1 had one odd t event: nothing;
    # the unknown-item bucket is not an item and gathers nothing
    assert got.tolist() == [True, True, True, False, False, False, False, False, False, False]
    assert _distinct_items(uix, item, got | hot, 4).tolist() == [2, 1, 1, 0]
    # with item keys, a new item (negative key) pushed twice is a target like any other
    keys = np.r_[item[:7], -1, -1, -2]
    assert _on_targets(uix, keys, hot)[7:].tolist() == [True, True, False]
    assert _distinct_items(uix, keys, hot, 4).tolist() == [2, 1, 1, 0]


def test_profiles_that_resemble_nobody_are_presumed_anomalous(caplog):
    """Random-filler fake profiles resemble other users less than random item sets drawn by
    popularity do; real users resemble each other more. A log where most users fail the test has
    too little shared taste for it, and nobody is presumed."""
    from seqguard_ray.core.explain import resembles_nobody
    from seqguard_ray.core.features import USER_FEATURES, event_features, user_features
    from seqguard_ray.synth import AttackMix, generate

    data = generate(n_users=200, mix=AttackMix.only("shilling_random", 0.15), seed=1)
    sg = SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4)).fit(data.events)
    res = sg.score(data.events)
    log_ = res.log
    seqs = sg.encode(sg.tokenize(log_)).seqs
    ef = event_features(seqs, sg.stats)
    uf, _ = user_features(seqs, sg.stats, ef, sg.event_detector.score(ef))
    presumed = resembles_nobody(seqs, uf, sg.vocab.n_items)
    fake = data.user_type.reindex(log_.frame.user_id.to_numpy()[log_.offsets[:-1]]).to_numpy() == "shilling_random"
    assert fake.sum() == 30 and presumed[fake].mean() >= 0.9 and presumed[~fake].mean() <= 0.02
    assert sg.metrics["presumed_users"] == presumed.sum()
    said = res.users.reasons.str.contains("resemble other users' less than random item sets").to_numpy()
    assert said[fake & res.users.anomalous.to_numpy()].all() and not said[~presumed].any()
    lift = USER_FEATURES.index("neighbour_lift")
    assert (uf[fake, lift] < 0).all() and np.median(uf[~fake, lift]) > 0.5
    uf[:, lift] = -1.0
    with caplog.at_level("WARNING"):
        assert not resembles_nobody(seqs, uf, sg.vocab.n_items).any()
    assert "too little shared taste" in caplog.text


def test_whole_history_event_scores_keep_the_local_order():
    """Every event of a quarantined history scores about the user's score, and the locally odder
    ones rank higher (a tie would hide where in the history the anomaly is strongest)."""
    from seqguard_ray.synth import AttackMix, generate
    from seqguard_ray.core.features import event_features

    events = generate(n_users=100, mix=AttackMix.only("bot", 0.05), seed=2).events
    sg = SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4)).fit(events)
    r = sg.score(events)
    enc = sg.encode(sg.tokenize(r.log))
    local = sg.event_detector.score(event_features(enc.seqs, sg.stats))
    whole = np.flatnonzero(np.isin(r.scored.anomaly_type, ["bot", "shilling", "other"]))
    assert len(whole) >= 3
    off = r.log.offsets
    for u in whole:
        ev, loc, s = r.scored.event_score[off[u]:off[u + 1]], local[off[u]:off[u + 1]], r.scored.score[u]
        assert (ev >= s - 1e-4).all() and (ev <= 1).all() and len(np.unique(ev)) > 1
        order = np.argsort(loc, kind="stable")
        assert (np.diff(ev[order]) >= -1e-12).all()


def test_best_segment_of_a_changed_tail_is_the_tail():
    """A history whose last 30% is in another taste splits alike as prefix | rest and as rest |
    suffix; the segment returned is the later part (the takeover), not the owner's."""
    from seqguard_ray.core.features import best_segment

    rng = np.random.default_rng(8)
    owner = np.tile([1.0, 0.0, 0.0], (70, 1)) + 0.05 * rng.normal(size=(70, 3))
    intruder = np.tile([0.0, 1.0, 0.0], (30, 1)) + 0.05 * rng.normal(size=(30, 3))
    r2, a, b = best_segment(np.vstack([owner, intruder]))
    assert r2 > 0.9 and abs(a - 70) <= 5 and b == 100
    # a changed stretch in the middle is still the middle, and a changed start is still the start
    _, a, b = best_segment(np.vstack([owner[:40], intruder, owner[40:]]))
    assert abs(a - 40) <= 5 and abs(b - 70) <= 5
    _, a, b = best_segment(np.vstack([intruder[:15], owner, owner[:15]]))
    assert a == 0 and abs(b - 15) <= 5


def test_replay_needs_the_timing_of_the_copied_stretch():
    """Items seen again in the same order are a replay only when their gaps match the earlier
    ones too: people come back to items, copied traffic also keeps its timing."""
    from seqguard_ray.core.features import EVENT_FEATURES, ItemStats, Seqs, event_features
    from seqguard_ray.core.tokens import N_SPECIAL

    items = N_SPECIAL + np.array([1, 2, 3, 4, 5, 6])
    gaps = np.array([0, 30, 45, 20, 60, 15], float)
    copy_ts = np.cumsum(gaps)
    later = copy_ts[-1] + 86400 + np.cumsum(gaps + np.array([0, 2, -2, 1, 3, -1]))  # a copy, +-3 s
    again = copy_ts[-1] + 86400 + np.cumsum(np.array([0, 300, 5, 900, 40, 200], float))  # revisited
    item = np.r_[items, items, items, items]
    ts = np.r_[copy_ts, later, copy_ts, again]
    n = len(item)
    seqs = Seqs(np.array([0, 12, 24]), ts, item, np.full(n, N_SPECIAL), np.full(n, np.nan), np.zeros((n, 3), np.float32))
    V = int(item.max()) + 1
    stats = ItemStats.from_state({"log_count": np.zeros(V), "value_mean": np.zeros(V), "taste": np.zeros((V, 2), np.float32),
                                  "value_std": np.array(1.0), "main_action": np.array(N_SPECIAL), "value_range": np.zeros(2)}, {})
    replay = event_features(seqs, stats)[:, EVENT_FEATURES.index("replay")]
    assert replay[:6].sum() == 0 and replay[6:12].all()   # the copy, every event of it
    assert replay[12:].sum() == 0                          # the same items, other gaps


def test_copied_accounts_are_flagged_as_replay_and_quarantined():
    """A new account replaying a real user's history later looks like a person to every other
    detector; the copy detector flags it, types it replay, says which evidence, and repair drops it."""
    from seqguard_ray.synth import AttackMix, generate
    from seqguard_ray.core.detectors import COPY_CERTAIN
    from seqguard_ray.core.features import USER_FEATURES, event_features, user_features

    data = generate(n_users=150, mix=AttackMix.only("account_copy", 0.04), seed=3)
    sg = SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4)).fit(data.events)
    r = sg.score(data.events)
    seqs = sg.encode(sg.tokenize(r.log)).seqs
    ef = event_features(seqs, sg.stats)
    uf, _ = user_features(seqs, sg.stats, ef, sg.event_detector.score(ef))
    overlap = pd.Series(uf[:, USER_FEATURES.index("copy_overlap")], index=r.users.user_id.to_numpy())
    copies = data.user_type.index[data.user_type == "account_copy"]
    sure = overlap[copies].index[overlap[copies] >= COPY_CERTAIN]
    assert len(copies) == 6 and len(sure) >= 3 and (overlap.drop(copies) < 0.6).all()
    users = r.users.set_index("user_id")
    assert users.loc[sure, "anomalous"].all() and (users.loc[sure, "anomaly_type"] == "replay").all()
    said = users.reasons.str.contains("a copy of an account that started earlier")
    assert said[sure].all() and not said.drop(copies).any()  # the originals are not copies of their copies
    assert not sg.repair(r).repaired.user_id.isin(sure).any()


def test_partial_copies_of_power_users_are_flagged_as_replay_and_quarantined():
    """Half of a heavy user's items with other timing (an obfuscated copy, before or after its
    source) resembles people to every other detector and its Jaccard similarity to the source is
    only 0.5; the part_copy detector flags it, types it replay even when its timing is a script's,
    says why, and repair drops it; the sources are kept."""
    from seqguard_ray.synth import AttackMix, generate
    from seqguard_ray.core.features import USER_FEATURES, event_features, user_features

    data = generate(n_users=200, mix=AttackMix.none(), seed=5)
    ev = data.events
    distinct = ev.groupby("user_id")["item_id"].nunique().sort_values(ascending=False)
    rng = np.random.default_rng(0)
    copies, sources = [], list(distinct.index[:4])
    sizes = ev.groupby("user_id").size()
    for i, src in enumerate(sources):
        rows = ev[ev.user_id == src]
        items = rows.item_id.unique()
        take = rows[rows.item_id.isin(rng.choice(items, len(items) // 2, replace=False))]  # half its items
        donor = ev[ev.user_id == rng.choice(sizes.index[(sizes > len(take)) & ~sizes.index.isin(sources)])]
        gaps = np.diff(donor.ts.to_numpy()[: len(take)])       # a person's timing, shifted back or forth ...
        if i == 0:
            gaps = np.full(len(take) - 1, 60)                     # ... or a script's: still a copy of a person
        start = int(rows.ts.iloc[0]) + int(rng.integers(1, 30)) * 86_400 * (1 if i % 2 else -1)
        copies.append(take.assign(user_id=f"copy{i}", ts=start + np.r_[0, np.cumsum(gaps)]))
    log = pd.concat([ev[["user_id", "item_id", "ts", "action", "value"]], *copies], ignore_index=True)
    sg = SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4)).fit(log)
    r = sg.score(log)
    users = r.users.set_index("user_id")
    names = [f"copy{i}" for i in range(4)]
    seqs = sg.encode(sg.tokenize(r.log)).seqs
    ef = event_features(seqs, sg.stats)
    uf, _ = user_features(seqs, sg.stats, ef, sg.event_detector.score(ef))
    feats = pd.DataFrame(uf, columns=USER_FEATURES, index=r.users.user_id.to_numpy())
    assert (feats.loc[names, "copy_overlap"] < 0.6).all()            # no whole copies
    assert feats.loc[names, "part_copy"].min() > feats.drop(names)["part_copy"].max()
    assert users.loc[names, "anomalous"].all() and (users.loc[names, "anomaly_type"] == "replay").all()
    said = users.reasons.str.contains("a partial copy")
    assert said[names].all() and not said.drop(names).any()
    assert not users.loc[sources, "anomalous"].any()
    assert not sg.repair(r).repaired.user_id.isin(names).any()


def test_short_histories_are_judged_against_histories_of_their_own_length(tmp_path):
    """Half the users with one event (Zipf lengths): judged against one detector, every long history
    looked extreme; judged by length stratum, long histories keep their events."""
    from seqguard_ray.core.strata import LengthStrata

    rng = np.random.default_rng(4)
    n_users, n_items = 2500, 3000
    lens = np.minimum(rng.zipf(1.9, n_users), 400)
    p = 1 / np.arange(1, n_items + 1) ** 0.9
    p /= p.sum()
    rows = []
    for u, n in enumerate(lens):
        ts = 1_700_000_000 + rng.integers(0, 86_400 * 60) + np.cumsum(rng.lognormal(4, 2, n).astype(np.int64))
        centre = rng.integers(0, n_items)
        items = np.where(rng.random(n) < 0.5, (centre + rng.integers(-40, 40, n)) % n_items, rng.choice(n_items, n, p=p))
        rows.append(pd.DataFrame({"user_id": u, "item_id": items, "ts": ts,
                                  "action": rng.choice(["view", "cart"], n, p=[0.95, 0.05])}))
    events = pd.concat(rows, ignore_index=True)
    sg = SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4)).fit(events)
    assert sg.metrics["length_strata"][0] == 1 and sg.strata.main_stratum_ == sg.metrics["length_strata"][-1] > 1
    r = sg.score(events)
    n = np.diff(r.log.offsets)
    flagged = r.users.anomalous.to_numpy()
    assert flagged[n > 20].mean() < 0.2 and flagged[n == 1].mean() < 0.2
    assert len(sg.repair(r).repaired) > 0.9 * len(events)
    loaded = SeqGuard.load(sg.save(tmp_path / "model"))
    assert loaded.strata.bounds_ == sg.strata.bounds_
    np.testing.assert_allclose(loaded.score(events).users.score, r.users.score, atol=1e-6)
    # one stratum when short histories are too few to judge on their own
    assert LengthStrata().split(np.full(500, 40)) == [1]
    assert LengthStrata().split(np.r_[np.full(150, 1), np.full(50, 3), np.full(500, 40)]) == [1, 10]


def test_unknown_items_carry_no_item_statistics(tiny_model):
    """An item outside the vocabulary may be new rather than rare: its events take their user's
    mean rarity and item surprisal over known items, and two new items are not one item repeated."""
    from seqguard_ray.core.features import EVENT_FEATURES, USER_FEATURES, Seqs, event_features, user_features
    from seqguard_ray.core.tokens import N_SPECIAL, UNK

    stats = tiny_model.stats
    known = np.arange(N_SPECIAL, N_SPECIAL + 6)
    item = np.r_[known, UNK, UNK, UNK]
    key = np.r_[known, -1, -2, -3]
    n = len(item)
    sur = np.zeros((n, 3), np.float32)
    sur[:, 0] = np.r_[np.arange(6) + 1.0, 30.0, 30.0, 30.0]  # the encoder's p(UNK) is tiny
    seqs = Seqs(np.array([0, n]), np.arange(n) * 100.0, item, np.full(n, N_SPECIAL), np.full(n, np.nan), sur, key)
    ef = event_features(seqs, stats)
    col = {f: ef[:, i] for i, f in enumerate(EVENT_FEATURES)}
    assert np.allclose(col["item_surprisal"][6:], 3.5)  # mean of 1..6
    assert np.allclose(col["rarity"][6:], -stats.log_count_[known].mean())
    assert (col["repeat"] == 0).all()
    uf, _ = user_features(seqs, stats, ef, np.zeros(n))
    f = dict(zip(USER_FEATURES, uf[0]))
    assert f["distinct_item_share"] == 1.0 and f["top_item_share"] == 0.0
    assert np.isclose(f["mean_log_count"], stats.log_count_[known].mean())
    # the same unknown item three times is a repeat; without keys the bucket is one item
    same = Seqs(seqs.offsets, seqs.ts, item, seqs.action, seqs.value, sur, np.r_[known, -1, -1, -1])
    assert event_features(same, stats)[6:, EVENT_FEATURES.index("repeat")].tolist() == pytest.approx(np.log1p([0, 1, 2]))
    # a user of new items only: a typical item, the surprisal of a uniform guess
    only = Seqs(np.array([0, 3]), np.arange(3.0), np.full(3, UNK), np.full(3, N_SPECIAL), np.full(3, np.nan),
                sur[6:], np.array([-1, -2, -3]))
    ef = event_features(only, stats)
    assert np.allclose(ef[:, EVENT_FEATURES.index("rarity")], -stats.typical_log_count_)
    assert np.allclose(ef[:, EVENT_FEATURES.index("item_surprisal")], np.log(len(stats.log_count_) - N_SPECIAL))


def test_user_features_do_not_depend_on_batch_mates(tiny_model, tiny_events):
    """Per-user sums run over the user's own events only, so a user's features are the same bits
    wherever in a batch it sits (a difference of batch-wide running totals was not: a value on a
    tie of a detector's reference then moved a served score by 1e-4)."""
    from seqguard_ray.core.pipeline import as_log
    from seqguard_ray.core.features import Seqs, event_features, user_features

    def feats(seqs):
        ef = event_features(seqs, tiny_model.stats)
        return user_features(seqs, tiny_model.stats, ef, tiny_model.event_detector.score(ef))[0]

    s = tiny_model.encode(tiny_model.tokenize(as_log(tiny_events))).seqs
    a, b = s.offsets[-2], s.offsets[-1]  # the last user, alone (the same encoder output)
    alone = Seqs(np.array([0, b - a]), s.ts[a:b], s.item[a:b], s.action[a:b], s.value[a:b], s.surprisal[a:b], s.key[a:b])
    assert np.array_equal(feats(s)[-1], feats(alone)[0])


def test_segment_sums_count_bools_and_leave_empty_users_at_zero():
    from seqguard_ray.core.features import segment_sums

    assert segment_sums(np.array([True, True, False]), np.array([0, 2, 2, 3])).tolist() == [2, 0, 0]
    x = np.arange(10.0).reshape(5, 2)
    assert segment_sums(x, np.array([0, 0, 3, 5])).tolist() == [[0, 0], [6, 9], [14, 16]]


def test_flagged_users_normal_at_a_typical_length_are_down_weighted_not_dropped(tiny_model, tiny_events, monkeypatch):
    """A flagged history that scores clearly normal once its features are moved to the typical
    length (LengthTrend) keeps its verdict and type, but its events are kept at lower weights."""
    from seqguard_ray.core.strata import LengthTrend

    sg = tiny_model
    before = sg.score(tiny_events)
    flagged = before.users.anomalous.to_numpy()
    assert flagged.any() and not before.scored.length_doubt[~flagged].any()
    # every history judged at the detectors' centre: clearly normal there
    monkeypatch.setattr(LengthTrend, "adjust", lambda self, feats, n: np.tile(sg.user_detectors.center_, (len(feats), 1)))
    trend = LengthTrend.from_state({"length_trend": np.r_[np.log(30.0), np.full(len(sg.user_detectors.center_), 0.1)]}, {})
    monkeypatch.setattr(sg.explainer, "length_trend_", trend)
    res = sg.score(tiny_events)
    doubt = res.scored.length_doubt
    main = res.users.n_events.to_numpy() >= sg.strata.main_stratum_
    # takeovers are not judged at a typical length: their evidence is a located stretch
    judged = flagged & main & (res.users.anomaly_type != "takeover").to_numpy()
    assert (doubt == judged).all() and doubt.any()
    assert (res.users.anomalous == before.users.anomalous).all() and (res.users.anomaly_type == before.users.anomaly_type).all()
    assert res.users.reasons[doubt].str.contains("users of its length").all()
    rep = sg.repair(res)
    acted = rep.actions.set_index("user_id")
    doubted_ids = res.users.user_id[doubt]
    assert (acted.loc[doubted_ids, "action"] == "downweight").all() and (acted.loc[doubted_ids, "events_dropped"] == 0).all()
    assert rep.summary["users_length_doubt"] == doubt.sum()
    sg.policy.doubtful_action = None  # the type's action: none counted as given the doubtful one
    try:
        assert sg.repair(res).summary["users_length_doubt"] == 0
    finally:
        sg.policy.doubtful_action = "downweight"
    w = rep.repaired[rep.repaired.user_id.isin(doubted_ids)]
    assert len(w) == res.users.n_events[doubt].sum() and (w.weight < 1).any()


def test_scoring_a_bundle_imports_no_scikit_learn(tiny_bundle, tiny_events, tmp_path):
    """Scoring needs only numpy and torch: the Isolation Forest, the kNN clusters and the item
    tastes are plain arrays in the bundle (scikit-learn fits them, in training only)."""
    import subprocess
    import sys

    tiny_events.to_parquet(tmp_path / "ev.parquet")
    code = ("import sys; from seqguard_ray import SeqGuard; sg = SeqGuard.load(sys.argv[1]); "
            "sg.repair(sg.score(sys.argv[2])); print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_bundle), str(tmp_path / "ev.parquet")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
