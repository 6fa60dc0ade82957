import numpy as np
import pytest

from seqguard_ray.core.tokens import N_SPECIAL, UNK, Vocab, gap_buckets, owner_positions, windows


def test_vocab_unknown_bucket_and_min_count():
    v = Vocab.build(np.array(["a", "a", "b", "c", "c", "c"]), np.array(["view"] * 6), min_count=2)
    assert v.items == ["c", "a"]
    ids = v.item_ids(np.array(["c", "a", "b", "never-seen"]))
    assert ids.tolist() == [N_SPECIAL, N_SPECIAL + 1, UNK, UNK]
    assert Vocab.from_dict(v.to_dict()).items == v.items
    with pytest.raises(ValueError, match="min_count"):
        Vocab.build(np.array(["a"]), np.array(["v"]), min_count=0)


def test_item_keys_tell_unknown_items_apart():
    v = Vocab.build(np.array(["a", "a", "c", "c"]), np.array(["view"] * 4), min_count=2)
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
