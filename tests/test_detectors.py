import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from seqguard_ray.core.calibration import BUDGET, Calibrator, combine
from seqguard_ray.core.detectors import DETECTORS, knn_distance
from seqguard_ray.core.ensemble import UserDetectors, decisive
from seqguard_ray.core.event_detector import EventDetector, ResidualCheck
from seqguard_ray.core.strata import LengthTrend


def test_calibrator_is_monotone_and_inside_unit_interval():
    cal = Calibrator().fit(np.arange(100.0))
    x = np.linspace(-10, 200, 500)
    p = cal.score(x)
    assert (np.diff(p) >= 0).all() and (p >= 0).all() and (p < 1).all()
    assert cal.score(np.array([1e9]))[0] > 0.99 and cal.score(np.array([-1e9]))[0] < 0.01


def test_combine_rewards_agreement():
    p = np.array([[0.5, 0.5], [0.99, 0.5], [0.99, 0.99]])
    c = combine(p)
    assert c[0] < c[1] < c[2]


def test_user_detectors_find_planted_outliers_and_respect_fpr():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(2000, 6))
    outliers = rng.normal(size=(40, 6)) + np.array([5, 0, 0, -5, 0, 0])
    X = np.vstack([normal, outliers])  # a poisoned training set
    det = UserDetectors(target_fpr=0.01, seed=0).fit(X)
    assert det.n_trimmed_ >= 30  # the planted group is left out of the calibration
    test_normal = rng.normal(size=(2000, 6))
    s_norm, per = det.score(test_normal)
    s_out, _ = det.score(outliers + 0.1)
    assert per.shape == (2000, len(DETECTORS))
    assert ((s_norm >= 0) & (s_norm <= 1)).all()
    # new normal users are flagged within 2x the budget (1.5% measured; it was about
    # target_fpr + trim_share when the threshold was the trimmed calibration's own)
    fpr = (s_norm >= det.threshold_).mean()
    assert fpr <= 2 * det.target_fpr
    assert (s_out >= det.threshold_).mean() > 0.9
    y = np.r_[np.zeros(2000), np.ones(40)]
    assert roc_auc_score(y, np.r_[s_norm, s_out]) > 0.99


def test_trim_share_costs_a_clean_log_less_than_its_share():
    """The trim makes the references robust; the threshold is the null of every training user, so
    a trim of 5% no longer adds 5% of a clean population to the flagged (0.9% without a trim,
    3.0% with one, measured; 6% when the threshold was the trimmed calibration's own). What it
    still adds: the trimmed users lie beyond their detectors' calibration, which makes the
    combined score's tail heavier than the null's exponential extrapolation (docs/decisions.md)."""
    rng = np.random.default_rng(1)
    X, test = rng.normal(size=(3000, 6)), rng.normal(size=(3000, 6))
    flagged = {}
    for trim in (0.0, 0.05):
        det = UserDetectors(target_fpr=0.01, trim_share=trim, seed=0).fit(X)
        flagged[trim] = (det.score(test)[0] >= det.threshold_).mean()
    assert flagged[0.0] <= 2 * 0.01
    assert flagged[0.05] <= 0.01 + 0.05 / 2


def test_user_detectors_refuse_bad_args_and_unfitted_use():
    with pytest.raises(ValueError, match="target_fpr"):
        UserDetectors(target_fpr=0.7).fit(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="at least 5 users"):
        UserDetectors().fit(np.zeros((3, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        UserDetectors().score(np.zeros((3, 2)))


def test_event_detector_flags_only_the_high_side():
    rng = np.random.default_rng(1)
    ef = rng.normal(size=(5000, 3))
    det = EventDetector().fit(ef)
    s = det.score(np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 6.0], [-6.0, -6.0, -6.0]]))
    assert s[1] > 0.999 and s[2] < s[0]


def test_fast_iforest_scores_equal_sklearns():
    from sklearn.ensemble import IsolationForest

    from seqguard_ray.core.iforest import FlatForest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    for max_features in (1.0, 0.5):
        f = IsolationForest(n_estimators=50, max_features=max_features, random_state=0).fit(X)
        q = np.vstack([rng.normal(size=(7, 6)), [[8.0] * 6]])
        flat = FlatForest.from_sklearn(f)
        np.testing.assert_allclose(flat(q), -f.score_samples(q), rtol=1e-10)
        # the bundle's form: plain arrays in, the same scores out
        again = FlatForest.from_state(*flat.to_state())
        np.testing.assert_array_equal(again(q), flat(q))


def test_flat_forest_refuses_arrays_that_do_not_fit():
    from sklearn.ensemble import IsolationForest

    from seqguard_ray.core.iforest import FlatForest

    X = np.random.default_rng(0).normal(size=(100, 3))
    arrays = FlatForest.from_sklearn(IsolationForest(n_estimators=5, random_state=0).fit(X)).to_state()[0]
    bad = dict(arrays, left=arrays["left"] + 10_000)
    with pytest.raises(ValueError, match="point outside the forest"):
        FlatForest.from_state(bad, {})
    bad = dict(arrays, threshold=arrays["threshold"][:, :-1])
    with pytest.raises(ValueError, match="do not fit together"):
        FlatForest.from_state(bad, {})
    with pytest.raises(ValueError, match="needs 3 feature columns"):
        FlatForest.from_state(arrays, {})(X[:, :2])


def _histories(rng, sizes, lo=0.0, hi=1.0):
    local = np.concatenate([rng.uniform(lo, hi, n) for n in sizes])
    return local, np.r_[0, np.cumsum(sizes)]


def test_residual_check_refuses_histories_whose_ordinary_events_are_odd():
    rng = np.random.default_rng(0)
    local, off = _histories(rng, rng.integers(15, 300, 400))  # normal users: calibrated, uniform
    check = ResidualCheck(cut=0.9).fit(local, off, np.ones(400, bool))
    a, b, sd, cut = check.coef_
    assert abs(a + b * np.log(100) - 0.45) < 0.02 and cut == 0.9 and 0 < sd < 0.1
    z_normal = check.z(*_histories(rng, [40, 120, 250]))
    assert (np.abs(z_normal) < 3).all()
    # a fake profile's events, its oddest ones removed: all in 0.55..0.9, not spread over 0..0.9
    z_fake = check.z(*_histories(rng, [40, 120], lo=0.55, hi=0.9))
    assert (z_fake > 3).all()
    # too few events below the cut to tell: never refused
    few = check.z(np.r_[np.full(5, 0.85), np.full(20, 0.95)], np.array([0, 25]))
    assert few[0] == -np.inf


def test_residual_check_is_off_without_enough_normal_users_and_refuses_bad_state():
    rng = np.random.default_rng(1)
    local, off = _histories(rng, [50] * 10)
    check = ResidualCheck(cut=0.9).fit(local, off, np.r_[np.ones(3, bool), np.zeros(7, bool)])
    assert (check.z(*_histories(rng, [50, 50], lo=0.8, hi=0.9)) == 0).all()
    for bad in ([0.1, 0.2, 0.0, 0.9], [0.1, 0.2, 0.1], [np.nan, 0.2, 0.1, 0.9]):
        with pytest.raises(ValueError, match="residual check"):
            ResidualCheck.from_state({"residual_check": np.array(bad)}, {})


def test_length_trend_moves_drifting_features_to_the_typical_length():
    rng = np.random.default_rng(3)
    n = np.exp(rng.uniform(np.log(20), np.log(700), 500)).round()
    x = np.log(n)
    # column 0 falls 0.3 per e-fold of events (like neighbour_lift), column 1 has no trend, column 2 may not drift
    feats = np.c_[1.5 - 0.3 * x + rng.normal(0, 0.1, 500), rng.normal(0, 1, 500), 2.0 * x]
    normal = np.ones(500, bool)
    normal[:20] = False
    feats[:20, 0] = -5.0  # outliers, not normal: ignored
    trend = LengthTrend(columns=[0, 1]).fit(feats, n, normal)
    pivot, slope = trend.coef_[0], trend.coef_[1:]
    assert abs(pivot - np.median(x[normal])) < 1e-9 and abs(trend.pivot_events - np.exp(pivot)) < 1e-6
    assert abs(slope[0] + 0.3) < 0.03 and abs(slope[1]) < 0.2 and slope[2] == 0.0
    adj = trend.adjust(feats[20:], n[20:])
    assert abs(np.corrcoef(adj[:, 0], x[20:])[0, 1]) < 0.1  # the drift is gone
    np.testing.assert_array_equal(adj[:, 2], feats[20:, 2])
    # a history at the pivot length is unchanged; a heavy one moves up to what it would be typically
    at = trend.adjust(np.array([[0.0, 0.0, 0.0]] * 2), np.array([np.exp(pivot), 700.0]))
    assert np.allclose(at[0], 0.0) and at[1, 0] > 0.3
    # too few normal users, or all of one length: no trend
    assert not LengthTrend(columns=[0]).fit(feats, n, np.arange(500) < 10).active
    assert not LengthTrend(columns=[0]).fit(feats, np.full(500, 50), normal).active
    for bad in (np.array([np.nan, 0.1]), np.zeros((2, 2)), np.zeros(0)):
        with pytest.raises(ValueError, match="length trend"):
            LengthTrend.from_state({"length_trend": bad}, {})
    with pytest.raises(ValueError, match="length trend has 3 feature slopes"):
        trend.adjust(np.zeros((1, 2)), np.ones(1))


def test_knn_distance_is_brute_force_with_the_point_itself_skipped():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(300, 5))
    x = np.vstack([ref[:4], rng.normal(size=(3, 5)) * 3])
    got = knn_distance(ref, x, 7, chunk=2)
    d = np.sqrt(((x[:, None, :] - ref[None]) ** 2).sum(-1))
    d[np.arange(4), np.arange(4)] = np.inf  # a reference row is not its own neighbour
    want = np.sort(d, axis=1)[:, :7].mean(1)
    assert np.allclose(got, want)
    assert knn_distance(ref[:3], x, 50).shape == (7,)  # k larger than the reference: all the others


def test_knn_reference_is_a_sample_beyond_its_cap(monkeypatch):
    import seqguard_ray.core.detectors as D

    monkeypatch.setattr(D, "MAX_KNN_REFERENCE", 500)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1500, 4))
    det = UserDetectors(seed=0).fit(X)
    knn = det.detectors_["knn"]
    assert knn.ref_.shape == (500, 4) and knn.k_ == 25
    s_norm, _ = det.score(rng.normal(size=(500, 4)))
    s_out, _ = det.score(rng.normal(size=(20, 4)) + 6)
    assert (s_out >= det.threshold_).all() and (s_norm >= det.threshold_).mean() < 0.15


def test_knn_distance_leaves_the_own_group_out():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(200, 3))
    ref_groups = rng.integers(0, 5, 200)
    x = np.vstack([ref[:3], rng.normal(size=(4, 3))])
    groups = np.r_[ref_groups[:3], [0, 1, 2, 4]]
    got = knn_distance(ref, x, 9, ref_groups=ref_groups, groups=groups, chunk=3)
    d = np.sqrt(((x[:, None, :] - ref[None]) ** 2).sum(-1))
    d[groups[:, None] == ref_groups[None, :]] = np.inf  # the own group, the row itself included
    assert np.allclose(got, np.sort(d, axis=1)[:, :9].mean(1))
    # a group that leaves fewer than k others: the mean over those there are
    few = knn_distance(ref[:4], ref[:1], 3, ref_groups=np.array([0, 0, 0, 1]), groups=np.array([0]))
    assert np.allclose(few, np.linalg.norm(ref[0] - ref[3]))


def test_leave_cluster_out_unmasks_a_crowd_of_alike_users():
    """40 near-identical users far from everyone else are each other's nearest neighbours: kNN with
    only the point itself skipped calls them ordinary, leaving their own cluster out does not."""
    rng = np.random.default_rng(5)
    normal = rng.normal(size=(760, 4))
    crowd = 4.0 + 0.05 * rng.normal(size=(40, 4))
    X = np.vstack([normal, crowd])
    det = UserDetectors(trim_share=0.0, seed=0).fit(X)
    knn = det.detectors_["knn"]
    assert knn.centroids_ is not None and len(knn.centroids_) == 800 // 50
    z = det._z(X)
    plain = knn_distance(knn.ref_, z, knn.k_)
    grouped = det._raw(X)[:, DETECTORS.index("knn")]
    assert np.median(plain[760:]) < np.median(plain[:760])  # masked: the crowd looks denser than normal
    assert grouped[760:].min() > np.quantile(grouped[:760], 0.99)
    det = UserDetectors(trim_share=0.075, seed=0).fit(X)  # a trim share above the crowd's 5%
    score, _ = det.score(X)
    assert (score[760:] >= det.threshold_).all() and (score[:760] >= det.threshold_).mean() < 0.05


def test_neighbour_similarity_is_brute_force_jaccard_with_the_containing_set_skipped():
    import scipy.sparse as sp

    from seqguard_ray.core.features import neighbour_similarity

    rng = np.random.default_rng(6)
    ref = (rng.random((30, 40)) < 0.2).astype(float)
    q = np.vstack([ref[:2], ref[2] * (rng.random(40) < 0.5), rng.random(40) < 0.2, np.zeros(40)])
    got = neighbour_similarity(sp.csr_matrix(q), sp.csr_matrix(ref), k=4, chunk=2)
    inter = q @ ref.T
    jac = inter / np.maximum(q.sum(1)[:, None] + ref.sum(1)[None, :] - inter, 1)
    for i in range(len(q)):
        j = jac[i].copy()
        contains = np.flatnonzero(inter[i] >= q[i].sum())
        if len(contains):  # itself (rows 0, 1) or the whole history it is a part of (row 2)
            j[contains[np.argmax(j[contains])]] = -1
        want = np.sort(j)[-4:].mean() if q[i].sum() else 0.0
        assert np.isclose(got[i], want), i
    assert got[4] == 0.0
    assert (neighbour_similarity(sp.csr_matrix(q), None) == 0).all()


def test_copy_overlap_is_brute_force_jaccard_with_earlier_starting_sources():
    import scipy.sparse as sp

    from seqguard_ray.core.features import COPY_MIN_ITEMS, copy_overlap

    rng = np.random.default_rng(8)
    ref = (rng.random((20, 60)) < 0.45).astype(float)
    ref_span = np.stack([np.arange(20) * 100.0, np.arange(20) * 100.0 + 50], axis=1)
    part = ref[3] * (rng.random(60) < 0.6)
    q = np.vstack([
        ref[5],         # itself: same start -> no source; everything else is less alike
        ref[5],         # a copy of user 5 a day later
        part,           # a part of user 3 inside its own time span: its own history
        part,           # the same items later than user 3 ended: a copy of a part
        ref[0],         # a copy of the earliest user, earlier than it: nobody started before
        ref[7] * (np.arange(60) < 12),  # too few items to call a copy
    ])
    span = np.array([ref_span[5], ref_span[5] + 86_400, [310, 340], [400, 420], [-5, 10], [900, 990]], float)
    got = copy_overlap(sp.csr_matrix(q), span, sp.csr_matrix(ref), ref_span, chunk=4)
    inter = q @ ref.T
    jac = inter / np.maximum(q.sum(1)[:, None] + ref.sum(1)[None, :] - inter, 1)
    for i in range(len(q)):
        own = (inter[i] >= q[i].sum()) & (ref_span[:, 0] <= span[i, 0]) & (ref_span[:, 1] >= span[i, 1])
        source = (ref_span[:, 0] < span[i, 0]) & ~own
        want = jac[i][source].max(initial=0.0) if q[i].sum() >= COPY_MIN_ITEMS else 0.0
        assert np.isclose(got[i], want), i
    assert got[1] == 1.0 and got[0] < 0.6 and got[4] == 0.0 and got[5] == 0.0
    assert got[3] == jac[3, 3] and got[2] < got[3]  # the part is a copy only once its owner is gone
    assert (copy_overlap(sp.csr_matrix(q), span, None, None) == 0).all()


def test_part_missing_is_brute_force_containment_in_sources_of_similar_size():
    """The fewest items a set has outside one source: a reference user who started earlier or holds
    more items, at most PART_SOURCE_RATIO times the set's, and not the set's own history."""
    import scipy.sparse as sp

    from seqguard_ray.core.features import PART_SOURCE_RATIO, part_missing

    rng = np.random.default_rng(12)
    ref = (rng.random((20, 200)) < 0.15).astype(float)
    ref[19] = 1.0                                   # a crawler's sweep: holds everything, too big to be a source
    ref_span = np.stack([np.arange(20) * 100.0, np.arange(20) * 100.0 + 50], axis=1)
    half = ref[4] * (rng.random(200) < 0.5)
    q = np.vstack([
        ref[6],                                     # itself: its own history is no source
        half,                                       # half of user 4, later: 0 missing
        np.maximum(half, np.arange(200) == np.flatnonzero(ref[4] == 0)[0]),  # ... plus one item user 4 lacks
        half,                                       # the same half, before user 4 started: 4 is bigger, still a source
        rng.random(200) < 0.15,                     # a person
    ])
    span = np.array([ref_span[6], [2000, 2100], [2000, 2100], [-50, -10], [2000, 2100]], float)
    got = part_missing(sp.csr_matrix(q), span, sp.csr_matrix(ref), ref_span, chunk=2)
    inter = q @ ref.T
    qn, rn = q.sum(1), ref.sum(1)
    for i in range(len(q)):
        own = (inter[i] >= qn[i]) & (ref_span[:, 0] <= span[i, 0]) & (ref_span[:, 1] >= span[i, 1])
        source = ((ref_span[:, 0] < span[i, 0]) | (rn > qn[i])) & ~own & (rn <= PART_SOURCE_RATIO * qn[i])
        want = (qn[i] - inter[i])[source].min(initial=qn[i])
        assert got[i] == want, i
    assert got[1] == 0 and got[2] == 1 and got[3] == 0 and got[4] > 0.2 * qn[4]
    assert got[0] > 0                               # not its own copy
    people = np.arange(20) != 4                     # user 4 taken for no person: no source
    assert part_missing(sp.csr_matrix(q), span, sp.csr_matrix(ref), ref_span, sources=people)[1] > 0
    assert (part_missing(sp.csr_matrix(q), span, None, None) == qn).all()


def test_part_copy_nats_is_the_binomial_tail_of_the_items_missed():
    from scipy.stats import binom

    from seqguard_ray.core.features import COPY_MIN_ITEMS, PART_LEAST, part_copy_nats

    size = np.array([200, 200, 50, 20, COPY_MIN_ITEMS - 1, 100, 100])
    most = int(round((1 - PART_LEAST) * 100, 6))   # the most a set of 100 may miss
    missing = np.array([0, 1, 0, 0, 0, most + 1, most])
    got = part_copy_nats(size, missing, np.full(7, 0.3))
    want = -binom.logcdf(missing, size, 0.3)
    np.testing.assert_allclose(got[[2, 3, 6]], want[[2, 3, 6]], rtol=1e-9)
    assert got[0] == got[1] == 50.0             # capped
    assert got[4] == 0.0 and got[5] == 0.0      # too few items; too much outside its source
    assert got[2] > got[3] > 0                  # a larger set inside another is stronger evidence
    assert part_copy_nats(size[:1], missing[:1], np.array([0.0]))[0] < 1  # people miss nothing: no evidence


def test_part_copy_detector_flags_partial_copies_alone_and_is_calibrated_without_them():
    """Partial copies look ordinary to the combined detectors; the part_copy detector flags them on
    its own share of the false-positive budget, copies in the training log do not calibrate it, and
    a log where nobody shows any evidence leaves it silent."""
    from seqguard_ray.core.detectors import DETECTORS, PART_COPY_CERTAIN

    rng = np.random.default_rng(13)
    feats = rng.standard_normal((1000, 6))
    feats[:, 5] = np.where(rng.random(1000) < 0.03, rng.exponential(3.0, 1000), 0.0)  # people: mostly none
    feats[:20, 5] = rng.uniform(35, 50, 20)                                          # 2% partial copies
    det = UserDetectors(seed=0, part_copy_column=5).fit(feats)
    score, p = det.score(feats)
    assert (score[:20] >= det.threshold_).all()
    assert (p[:20, DETECTORS.index("part_copy")] > 1 - 1e-4).all()
    assert (decisive(p, ("part_copy",)) >= det.threshold_)[20:].mean() <= 3 * BUDGET["part_copy"] * det.target_fpr
    assert det.calibrators_["part_copy"].reference_.max() < PART_COPY_CERTAIN
    assert (p[20:, DETECTORS.index("part_copy")][feats[20:, 5] == 0] == 0).all()
    assert det.ensemble_columns == [0, 1, 2, 3, 4]
    assert (det.score(feats[:20], whole=False)[0] < det.threshold_).mean() > 0.5  # a part of a history is no account
    # where nobody else shows any evidence, people's share of taste still sets the scale
    none = feats.copy()
    none[20:, 5] = 0.0
    none[20:25, 5] = [5, 10, 15, 20, 25]
    quiet = UserDetectors(seed=0, part_copy_column=5).fit(none)
    verdict = decisive(quiet.score(none)[1], ("part_copy",))
    assert (verdict[:20] >= quiet.threshold_).all() and (verdict[20:] < quiet.threshold_).all()


def test_copy_detector_flags_copies_alone_and_is_calibrated_without_them():
    """A copied account looks ordinary to the combined detectors; the copy detector flags it on its
    own share of the false-positive budget, and copies in the training log do not calibrate it."""
    from seqguard_ray.core.detectors import COPY_CERTAIN, DETECTORS

    rng = np.random.default_rng(9)
    feats = rng.standard_normal((1000, 6))
    feats[:, 5] = np.clip(rng.normal(0.3, 0.08, 1000), 0, 0.8)   # people's overlaps
    feats[:30, 5] = 1.0                                          # 3% copies in the training log
    det = UserDetectors(seed=0, copy_column=5).fit(feats)
    score, p = det.score(feats)
    assert (score[:30] >= det.threshold_).all()
    assert (p[:30, DETECTORS.index("copy")] > 1 - 1e-4).all()
    copy_only = (decisive(p) >= det.threshold_)[30:]
    assert copy_only.mean() <= 3 * BUDGET["copy"] * det.target_fpr
    assert det.calibrators_["copy"].reference_.max() < -np.log1p(-COPY_CERTAIN)
    # the copy column is the copy detector's alone: the kNN reference and the forest never see it
    assert det.detectors_["knn"].ref_.shape[1] == 5 and det.ensemble_columns == [0, 1, 2, 3, 4]


def test_replay_detector_flags_replays_alone_and_judges_what_is_left():
    """Replayed users (a share of their events repeating earlier stretches) look ordinary to the
    combined detectors; the replay detector flags them, is calibrated without the replays in the
    training log, and, unlike the copy detector, still judges a part of a history (the replay must
    be gone from it). Where many people replay (a habit, e.g. playlists) everyone calibrates it."""
    from seqguard_ray.core.detectors import DETECTORS, REPLAY_CERTAIN

    rng = np.random.default_rng(3)
    feats = rng.standard_t(3, (1000, 30))                  # 29 heavy-tailed ordinary features ...
    feats[:, 29] = np.where(rng.random(1000) < 0.05, rng.uniform(0, 0.1, 1000), 0.0)  # ... people's replay shares
    feats[:20, 29] = rng.uniform(0.2, 0.5, 20)                                        # 2% replayed users
    det = UserDetectors(seed=0, replay_column=29).fit(feats)
    score, p = det.score(feats)
    same = UserDetectors(seed=0).fit(feats)                # the same features, no replay detector
    s_same, _ = same.score(feats)
    assert (score[:20] >= det.threshold_).all() and (s_same[:20] >= same.threshold_).mean() < 0.5
    # on everyone else it adds at most a few times its share of the false-positive budget
    extra = (score[20:] >= det.threshold_).mean() - (s_same[20:] >= same.threshold_).mean()
    assert extra <= 3 * BUDGET["replay"] * det.target_fpr
    assert det.calibrators_["replay"].reference_.max() < REPLAY_CERTAIN
    part, _ = det.score(feats[:20], whole=False)
    assert (part >= det.threshold_).all()                  # a part that still replays is still flagged
    assert (p[20:, DETECTORS.index("replay")][feats[20:, 29] < 0.05] == 0).all()  # never below REPLAY_LEAST
    habit = feats.copy()
    habit[:300, 29] = rng.uniform(0.2, 0.5, 300)            # 30% of the users replay: a habit
    hd = UserDetectors(seed=0, replay_column=29).fit(habit)
    assert hd.calibrators_["replay"].reference_.max() >= 0.2
    assert (hd.score(habit)[0][:300] >= hd.threshold_).mean() < 0.1


def test_presumed_users_are_left_out_of_references_and_calibration():
    """A crowd of 15% alike outliers outnumbers a 5% trim and masks itself; presumed anomalous on
    other evidence, it is judged against the others and flagged."""
    rng = np.random.default_rng(7)
    X = np.vstack([rng.normal(size=(850, 4)), 3.0 + 0.3 * rng.normal(size=(150, 4))])
    crowd = np.r_[np.zeros(850, bool), np.ones(150, bool)]
    plain = UserDetectors(trim_share=0.05, seed=0).fit(X)
    s_plain, _ = plain.score(X)
    told = UserDetectors(trim_share=0.05, seed=0).fit(X, presumed=crowd)
    s_told, _ = told.score(X)
    assert (s_plain[crowd] >= plain.threshold_).mean() < 0.5
    assert (s_told[crowd] >= told.threshold_).all() and (s_told[~crowd] >= told.threshold_).mean() < 0.08
    with pytest.raises(ValueError, match="presumed must be a bool per user"):
        UserDetectors().fit(X, presumed=crowd[:10])
    with pytest.raises(ValueError, match="not presumed anomalous"):
        UserDetectors().fit(X[:8], presumed=np.r_[np.ones(4, bool), np.zeros(4, bool)])
