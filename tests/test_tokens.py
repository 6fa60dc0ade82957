import numpy as np
import pytest

from seqguard_ray.core.tokens import N_SPECIAL, UNK, Vocab, count_items, gap_buckets, owner_positions, windows


def test_vocab_keeps_items_seen_min_count_times_by_frequency_and_buckets_the_rest():
    v = Vocab(min_count=2).fit(np.array(["a", "a", "b", "c", "c", "c"]), np.array(["view"] * 6))
    assert v.items_ == ["c", "a"] and v.item_counts_.tolist() == [3, 2] and v.n_items == 2 + N_SPECIAL
    ids = v.item_ids(np.array(["c", "a", "b", "never-seen"]))
    assert ids.tolist() == [N_SPECIAL, N_SPECIAL + 1, UNK, UNK]
    assert v.action_ids(np.array(["view", "buy"])).tolist() == [N_SPECIAL, UNK]
    with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
        Vocab(min_count=0).fit(np.array(["a"]), np.array(["v"]))


def test_vocab_from_counts_of_parts_equals_vocab_of_the_whole():
    items = np.array(["b", "a", "b", "c", "c", "c", "a", "d"])
    whole = Vocab(min_count=2).fit(items, np.array(["view"] * 8))
    uniq, counts = count_items(items)
    parts = Vocab(min_count=2).fit_counts(uniq, counts, np.array(["view"]))
    assert parts.items_ == whole.items_ == ["c", "a", "b"] and parts.item_counts_.tolist() == [3, 2, 2]


def test_item_keys_tell_unknown_items_apart():
    v = Vocab(min_count=2).fit(np.array(["a", "a", "c", "c"]), np.array(["view"] * 4))
    items = np.array(["c", "new1", "a", "new2", "new1", "b"])
    keys = Vocab.item_keys(items, v.item_ids(items))
    # known items keep their vocab id; each unknown item its own negative key, the same each time
    assert keys[[0, 2]].tolist() == v.item_ids(items)[[0, 2]].tolist()
    assert (keys[[1, 3, 4, 5]] < 0).all() and keys[1] == keys[4] and len({keys[1], keys[3], keys[5]}) == 3


def test_gap_buckets_first_event_and_log_scale():
    ts = np.array([0.0, 0.0, 1.0, 100.0, 5.0])
    b = gap_buckets(ts, np.array([0, 4, 5]))
    assert b[0] == 1 and b[4] == 1  # first events of each user
    assert b[1] == 2 and b[2] == 3 and b[3] > b[2]


@pytest.mark.parametrize("n", [1, 5, 32, 33, 100, 257])
def test_windows_own_every_event_once(n):
    offsets = np.array([0, n, n + 3])
    starts, lengths, own = windows(offsets, max_len=32, context=4)
    assert (lengths <= 32).all()
    win, pos = owner_positions(starts, lengths, own, n + 3)
    assert np.array_equal(starts[win] + pos, np.arange(n + 3))
    # every owned position has at least `context` events of left context unless at a user start
    left = pos
    at_start = np.isin(starts[win], offsets[:-1])
    assert ((left >= 4) | at_start).all()


def test_windows_reject_bad_context():
    with pytest.raises(ValueError, match="context"):
        windows(np.array([0, 5]), max_len=8, context=4)
