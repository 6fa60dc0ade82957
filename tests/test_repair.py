import numpy as np
import pytest

from seqguard_ray.core.repair import RepairPolicy


def test_each_type_gets_its_action_and_a_reason_per_event():
    offsets = np.array([0, 3, 6, 9, 12, 15])
    types = np.array(["normal", "bot", "injection", "takeover", "replay"], dtype=object)
    score = np.array([0.1, 0.95, 0.2] * 5)
    anom = np.array([False] * 3 + [True] * 3 + [False, True, False] + [False, True, True] + [False, False, True])
    keep, weight, ev_action, user_action = RepairPolicy().apply(offsets, types, score, anom)
    assert keep[:3].all() and (weight[:3][[0, 2]] == 1).all()
    assert not keep[3:6].any() and "quarantined as bot" in ev_action[3]
    assert keep[6:9].tolist() == [True, False, True] and "anomalous event" in ev_action[7]
    assert keep[9:12].tolist() == [True, False, False] and "cut" in ev_action[10]
    assert keep[12:15].tolist() == [True, True, False]
    assert user_action.tolist() == ["pass", "quarantine", "drop_events", "cut", "drop_events"]
    assert (weight[~keep] == 0).all()
    # doubtful (score >= 0.9, not anomalous) events of flagged users are down-weighted
    assert weight[7 - 6 + 6] == 0  # dropped
    assert np.isclose(weight[1], 1.0)  # normal users untouched even if doubtful


def test_downweight_keeps_events_and_cut_keeps_the_owners_return():
    keep, weight, _, _ = RepairPolicy(actions={"other": "downweight"}).apply(
        np.array([0, 4]), np.array(["other"], dtype=object), np.array([0.99, 0.95, 0.1, 0.99]), np.array([True, False, False, True]))
    assert keep.all() and weight.tolist() == [0.1, 0.5, 1.0, 0.1]
    keep, _, _, _ = RepairPolicy().apply(np.array([0, 5]), np.array(["takeover"], dtype=object), np.zeros(5),
                                         np.array([False, True, False, True, False]))
    assert keep.tolist() == [True, False, False, False, True]


def test_users_doubted_at_a_typical_length_are_down_weighted_not_dropped():
    offsets = np.array([0, 3, 6, 9])
    types = np.array(["shilling", "injection", "bot"], dtype=object)
    score = np.array([0.99, 0.95, 0.1] * 3)
    anom = np.array([True] * 3 + [True, False, False] + [True] * 3)
    doubt = np.array([True, True, False])
    keep, weight, ev_action, user_action = RepairPolicy().apply(offsets, types, score, anom, doubt)
    assert keep[:6].all() and not keep[6:].any()
    assert user_action.tolist() == ["downweight", "downweight", "quarantine"]
    assert weight[:6].tolist() == [0.1, 0.1, 0.1, 0.1, 0.5, 1.0] and "down-weighted" in ev_action[0]
    # None: the type's action whatever the doubt; another action is taken as given
    assert RepairPolicy(doubtful_action=None).apply(offsets, types, score, anom, doubt)[3].tolist() == [
        "quarantine", "drop_events", "quarantine"]
    assert RepairPolicy(doubtful_action="pass").apply(offsets, types, score, anom, doubt)[0][:6].all()
    # a normal user stays untouched, doubt or not
    assert RepairPolicy().apply(offsets[:2], np.array(["normal"], dtype=object), score[:3], anom[:3],
                                np.array([True]))[3].tolist() == ["pass"]
    with pytest.raises(ValueError, match="length_doubt must be a bool per user"):
        RepairPolicy().apply(offsets, types, score, anom, np.array([True]))
    with pytest.raises(ValueError, match="doubtful_action"):
        RepairPolicy(doubtful_action="shrug")


def test_policies_naming_unknown_types_or_actions_are_refused():
    with pytest.raises(ValueError, match="unknown anomaly type"):
        RepairPolicy(actions={"gremlin": "pass"})
    with pytest.raises(ValueError, match="unknown action"):
        RepairPolicy(actions={"bot": "explode"})
    with pytest.raises(ValueError, match="doubt_weight"):
        RepairPolicy(doubt_weight=2.0)
