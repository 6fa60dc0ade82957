"""Tests for seqguard_ray.core.allowlist: parsing the allow-list file and its clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from seqguard_ray.core import allowlist
from seqguard_ray.core.allowlist import AllowList


def test_ids_are_matched_as_text_the_way_ids_are_read():
    a = AllowList.of(users=["u1", 42, 7.0], items=["007"])
    assert a.users == {"u1", "42", "7"} and a.items == {"007"}
    assert a.user_mask(np.array(["u1", "u2", "42"], dtype=object)).tolist() == [True, False, True]
    assert a.user_mask(np.array([42, 7, 8])).tolist() == [True, True, False]
    assert a.item_mask(np.array(["007", "7"], dtype=object)).tolist() == [True, False]  # 007 stays 007
    assert a.item_mask(np.array([7])).tolist() == [False]


def test_empty_allow_list_is_false_and_allows_nothing():
    a = AllowList()
    assert not a and AllowList.of(users=["x"])
    assert a.user_mask(np.array(["x", "y"], dtype=object)).tolist() == [False, False]
    assert a.item_mask(np.array([], dtype=object)).shape == (0,)
    assert not AllowList.from_dict({"users": None, "items": []})


def test_reads_json_and_yaml(tmp_path):
    j = tmp_path / "allow.json"
    j.write_text('{"users": ["qa-1", 17], "items": ["sku-9"]}')
    y = tmp_path / "allow.yaml"
    y.write_text("users:\n  - qa-1\n  - 17\nitems: [sku-9]\n")
    yml = tmp_path / "allow.yml"
    yml.write_text("items: ['007']\n")
    assert AllowList.read(j) == AllowList.read(y) == AllowList.of(["qa-1", "17"], ["sku-9"])
    assert AllowList.read(yml).items == {"007"}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert not AllowList.read(empty)


@pytest.mark.parametrize("text, suffix, match", [
    ('{"users": ["a"', ".json", r"is not valid JSON"),
    ("users: [a\n", ".yaml", r"is not valid YAML"),
    ('["a", "b"]', ".json", r"a mapping with keys \['users', 'items'\], got list"),
    ('{"user": ["a"]}', ".json", r"unknown allow-list key\(s\) \['user'\]"),
    ('{"users": "a"}', ".json", r"allow-list users must be a list of ids, got the single string 'a'"),
    ('{"items": [1.5]}', ".json", r"allow-list items holds 1.5: ids are strings or integers"),
    ('{"users": [null]}', ".json", r"allow-list users holds None"),
    ('{"users": [true]}', ".json", r"allow-list users holds True"),
    ('{"users": [["a"]]}', ".json", r"allow-list users holds \['a'\]"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, suffix, match):
    p = tmp_path / f"allow{suffix}"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        AllowList.read(p)
    if "valid" in match:
        assert str(p) in str(err.value)


def test_missing_file_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read the allow-list .*nope.json"):
        AllowList.read(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="cannot read the allow-list"):
        AllowList.read(tmp_path)  # a directory


def test_size_is_capped(monkeypatch):
    monkeypatch.setattr(allowlist, "MAX_ENTRIES", 3)
    AllowList.of(users=range(3))
    with pytest.raises(ValueError, match="more than 3 ids"):
        AllowList.of(users=range(4))
