import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqguard_ray.core.readers import read_events
from seqguard_ray.core.schema import EventsError, from_frame


def frame(**cols):
    base = {"user_id": ["a", "a", "b"], "item_id": [1, 2, 3], "ts": [30, 10, 20]}
    base.update(cols)
    return pd.DataFrame(base)


def test_sorted_per_user_and_row_numbers_kept():
    log = from_frame(frame())
    assert log.user.tolist() == ["a", "a", "b"]
    assert log.ts.tolist() == [10.0, 30.0, 20.0]
    assert log.frame["_row"].tolist() == [1, 0, 2]
    assert log.offsets.tolist() == [0, 2, 3]
    assert log.action.tolist() == ["click"] * 3
    assert np.isnan(log.value).all()


def test_missing_column_is_named():
    with pytest.raises(EventsError, match=r"missing required column\(s\) \['ts'\]"):
        from_frame(pd.DataFrame({"user_id": [1], "item_id": [2]}))


@pytest.mark.parametrize("name", ["weight", "_row"])
def test_reserved_column_names_are_refused_not_overwritten(name):
    with pytest.raises(EventsError, match=rf"\['{name}'\] are reserved .*rename"):
        from_frame(frame(**{name: [1.0, 2.0, 3.0]}))


def test_empty_log_is_refused():
    with pytest.raises(EventsError, match="no events"):
        from_frame(frame().iloc[:0])


def test_bad_rows_error_counts_and_shows_them():
    df = frame(ts=[10, None, "yesterday-ish"], item_id=[1, 2, None])
    with pytest.raises(EventsError) as e:
        from_frame(df)
    msg = str(e.value)
    assert "2 bad row(s)" in msg and "ts is null" in msg and "row 1" in msg and "--on-bad-rows skip" in msg


def test_bad_rows_show_the_offending_value_plainly():
    with pytest.raises(EventsError) as e:
        from_frame(frame(value=[1.0, "abc", "x" * 500]))
    msg = str(e.value)
    assert "row 1: value is not a number: user_id='a', item_id=2, ts=10, value='abc'" in msg
    assert "np.int64" not in msg and "x" * 100 not in msg  # long cells are cut


def test_skip_leaves_bad_rows_out_and_reports_them(caplog):
    df = frame(ts=[10, -5, 20])
    log = from_frame(df, on_bad_rows="skip")
    assert log.n_events == 2 and log.bad_rows.count == 1
    assert log.bad_rows.reasons == {"ts is negative": 1}
    assert "skipping" in caplog.text


def test_skip_still_refuses_a_log_whose_every_row_is_bad():
    with pytest.raises(EventsError, match="every row is bad"):
        from_frame(frame(user_id=[None, None, None]), on_bad_rows="skip")


def test_milliseconds_and_timestamps_become_seconds():
    ms = from_frame(frame(ts=[1_600_000_000_000, 1_600_000_001_000, 1_600_000_002_000]))
    assert ms.ts.tolist() == [1_600_000_000.0, 1_600_000_001.0, 1_600_000_002.0]
    stamps = pd.to_datetime(["2024-01-01 00:00:10", "2024-01-01 00:00:00", "2024-01-02 00:00:00"])
    t = from_frame(frame(ts=stamps))
    assert t.ts[1] - t.ts[0] == 10.0


def test_timestamp_text_in_any_format_pandas_reads_becomes_seconds():
    """Text timestamps (a string column, pandas 3's str dtype) were all refused, and parsed ones
    came out in microseconds."""
    log = from_frame(frame(ts=pd.array(["2024/01/22 10:05", "2024-01-22 10:00:00", "2024-01-22T11:00:00+01:00"],
                                       dtype="str")))
    secs = pd.Timestamp("2024-01-22 10:00:00", tz="UTC").timestamp()
    assert log.ts.tolist() == [secs, secs + 300, secs]


def test_nonnumeric_value_is_a_bad_row():
    """(The input limits, ts range and value range included, are in test_bad_input's LIMIT_CASES.)"""
    with pytest.raises(EventsError, match="value is not a number"):
        from_frame(frame(value=[1.0, "x", 2.0]))


def test_integer_like_float_ids_and_duplicates_kept():
    log = from_frame(pd.DataFrame({"user_id": [1.0, 1.0], "item_id": [5.0, 5.0], "ts": [1, 1]}))
    assert log.user.tolist() == ["1", "1"] and log.item.tolist() == ["5", "5"]
    assert log.n_events == 2  # exact duplicates are a signal, never dropped


@pytest.mark.parametrize("col", [
    pd.Series(["u1", "u2", "u1", None, "", "u2"], dtype=object),
    pd.Series(["u1", "u2", "u1", None, "", "u2"], dtype="string[pyarrow]"),
    pd.Series([7, 8, 7, 7, 123456789, 8], dtype=np.int64),
    pd.Series([7.0, 8.5, 7.0, np.nan, -0.0, 0.0]),
    pd.Series([7, pd.NA, 7, 8, 8, 7], dtype="Int64"),
    pd.Series([1, True, 1, "1", 1.0, [1]], dtype=object),  # mixed: read row by row
], ids=["object", "arrow", "int64", "float", "nullable", "mixed"])
def test_ids_are_read_once_per_distinct_value_with_the_same_text_and_marks(col):
    """ids_to_str reads each distinct id once and its rows share one str object: the text and
    the bad-row marks are those of reading every row on its own (the private reader)."""
    from seqguard_ray.core.validate import _ids_to_str, ids_to_str

    def marks():
        got = {}

        def mark(mask, reason):
            for i in np.flatnonzero(np.asarray(mask, bool)):
                got.setdefault(int(i), reason)
        return got, mark

    got, mark = marks()
    ref, mark_ref = marks()
    out = ids_to_str(col, "user_id", mark)
    assert list(out) == list(_ids_to_str(col, "user_id", mark_ref)) and got == ref
    if col.dtype != object or col.map(type).eq(str).all():
        assert len({id(x) for x in out}) == len(set(out))  # one object per distinct text
    assert len(out) == len(col)


def test_the_default_action_is_one_object_not_one_per_event():
    lg = from_frame(pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": [1, 2, 1], "ts": [1, 2, 3]}))
    assert list(lg.action) == ["click"] * 3 and len({id(a) for a in lg.action}) == 1


def test_non_integer_float_id_is_bad():
    with pytest.raises(EventsError, match="item_id is not an integer or string"):
        from_frame(frame(item_id=[1.5, 2.0, 3.0]))


def test_unicode_ids_are_kept():
    log = from_frame(frame(user_id=["ユーザー", "ユーザー", "😀"]))
    assert log.n_users == 2 and sorted(set(log.user)) == ["ユーザー", "😀"]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "dir"])
def test_read_formats_keep_extra_columns(tmp_path, fmt):
    df = frame(extra=["x", "y", "z"])
    if fmt == "parquet":
        p = tmp_path / "e.parquet"
        df.to_parquet(p)
    elif fmt == "csv":
        p = tmp_path / "e.csv"
        df.to_csv(p, index=False)
    elif fmt == "jsonl":
        p = tmp_path / "e.jsonl"
        p.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    else:
        p = tmp_path / "d"
        p.mkdir()
        pq.write_table(pa.Table.from_pandas(df.iloc[:2]), p / "part-0.parquet")
        pq.write_table(pa.Table.from_pandas(df.iloc[2:]), p / "part-1.parquet")
    log = read_events(p)
    assert log.n_events == 3 and "extra" in log.frame.columns


def test_csv_keeps_the_text_of_ids_dates_and_zero_padded_columns(tmp_path):
    """Type inference alone reads ids "007" and "7" as one user 7, a zip code "02134" as 2134 and
    dates into date types: the outputs would lose data and not join back to the input."""
    p = tmp_path / "e.csv"
    p.write_text("user_id,item_id,ts,zip,day,n,x,ok,note\n"
                 "007,0012,2024-01-22 10:00:00,02134,2024-01-22,3,1.5,true,NA\n"
                 "7,12,2024/01/22 10:05,10001,2024-01-23,,2,false,\n"
                 "7,99999999999999999999,2024-01-22T11:00:00Z,10002,2024-01-24,5,,,x\n")
    log = read_events(p)
    assert sorted(log.user.tolist()) == ["007", "7", "7"] and log.n_users == 2
    f = log.frame.sort_values("_row")
    assert f["user_id"].tolist() == ["007", "7", "7"]
    assert f["item_id"].tolist() == ["0012", "12", "99999999999999999999"]  # beyond int64: text
    assert f["ts"].tolist() == ["2024-01-22 10:00:00", "2024/01/22 10:05", "2024-01-22T11:00:00Z"]
    assert f["zip"].tolist() == ["02134", "10001", "10002"] and f["day"].tolist()[0] == "2024-01-22"
    assert f["n"].tolist()[::2] == [3, 5] and pd.isna(f["n"].tolist()[1])
    assert f["x"].tolist()[:2] == [1.5, 2.0] and f["ok"].tolist()[:2] == [True, False]
    assert f["note"].tolist() == ["NA", "", "x"]  # text stays as written
    secs = pd.Timestamp("2024-01-22 10:00:00", tz="UTC").timestamp()
    assert sorted(log.ts.tolist()) == [secs, secs + 300, secs + 3600]
    # plain integer columns are still integers
    q = tmp_path / "i.csv"
    q.write_text("user_id,item_id,ts,value\n1,10,1700000000,4\n2,0,1700000001,\n")
    f = read_events(q).frame.sort_values("_row")
    assert [str(f[c].dtype) for c in ("user_id", "item_id", "ts")] == ["int64"] * 3


def test_jsonl_keeps_timestamp_text_as_text(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text('{"user_id": "007", "item_id": 1, "ts": "2024-01-22T10:00:00Z", "seen": "2024-01-22"}\n'
                 '{"user_id": "7", "item_id": 2, "ts": "2024-01-22T10:05:00Z", "seen": "2024-01-23"}\n')
    log = read_events(p)
    f = log.frame.sort_values("_row")
    assert f["ts"].tolist() == ["2024-01-22T10:00:00Z", "2024-01-22T10:05:00Z"]
    assert f["seen"].tolist() == ["2024-01-22", "2024-01-23"] and log.n_users == 2
    assert np.diff(np.sort(log.ts)).tolist() == [300.0]
    # ids may be integers or strings, in one column too
    q = tmp_path / "mixed.jsonl"
    q.write_text('{"user_id": 7, "item_id": 1, "ts": 1700000000}\n{"user_id": "007", "item_id": 2, "ts": 1700000005}\n'
                 '{"user_id": 7, "item_id": "sku-3", "ts": 1700000009}\n')
    log = read_events(q)
    assert log.n_users == 2 and sorted(log.frame["user_id"]) == ["007", "7", "7"]
    assert sorted(log.item.tolist()) == ["1", "2", "sku-3"]


def test_hive_partition_keys_become_columns(tmp_path):
    df = frame(extra=["x", "y", "z"])
    for i, (dt, rows) in enumerate([("2026-12-01", df.iloc[:2]), ("2026-12-02", df.iloc[2:])]):
        d = tmp_path / f"dt={dt}" / f"src=web%20app{i}"
        d.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), d / "part-0.parquet")
    log = read_events(tmp_path)
    f = log.frame.sort_values("_row")
    assert f["dt"].tolist() == ["2026-12-01", "2026-12-01", "2026-12-02"]
    assert f["src"].tolist() == ["web app0", "web app0", "web app1"]
    # a key that is also a column of the file is refused, not overwritten
    clash = tmp_path / "clash" / "extra=q"
    clash.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), clash / "p.parquet")
    with pytest.raises(EventsError, match="'extra' is both in the file and a partition key"):
        read_events(tmp_path / "clash")


def test_unreadable_files_are_refused_with_the_reason(tmp_path):
    with pytest.raises(EventsError, match="does not exist"):
        read_events(tmp_path / "nope.parquet")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(EventsError, match="empty"):
        read_events(empty)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(EventsError, match="cannot read"):
        read_events(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"user_id": 1, "item_id": 2, "ts": 3}\n{"user_id": 1, "item_id"\n')
    with pytest.raises(EventsError, match="cannot read"):
        read_events(broken)
    txt = tmp_path / "x.txt"
    txt.write_text("user_id,item_id,ts\n")
    with pytest.raises(EventsError, match="unsupported events format"):
        read_events(txt)
