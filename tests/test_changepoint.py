"""The change-point stage (core/changepoint.py): where a history stops being its owner's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqguard_ray.core.changepoint import GROUPS, ChangePoint, chi2_nats
from seqguard_ray.core.features import ItemStats, Seqs
from seqguard_ray.core.schema import from_frame
from seqguard_ray.core.tokens import Vocab

N_ITEMS, N_CLUSTERS = 160, 4


def _history(rng, n: int, cluster: int, hour: float, gap_scale: float, click: float, t0: float) -> pd.DataFrame:
    """n events of one person: items mostly from one taste cluster, sessions starting near ``hour``."""
    size = N_ITEMS // N_CLUSTERS
    items = np.where(rng.random(n) < 0.85, cluster * size + rng.integers(0, size, n), rng.integers(0, N_ITEMS, n))
    ts, t = [], t0
    while len(ts) < n:
        day = np.floor(t / 86400) + rng.integers(1, 3)
        t = day * 86400 + (hour + rng.normal(0, 1.0)) % 24 * 3600
        for _ in range(int(rng.integers(3, 9))):
            ts.append(t)
            t += rng.lognormal(4.0, 0.8) * gap_scale
    return pd.DataFrame({"item_id": items, "ts": np.array(ts[:n]).astype(np.int64),
                         "action": np.where(rng.random(n) < click, "click", "view"), "value": rng.random(n)})


def _log(n_users: int, seed: int, takeovers: int = 0) -> tuple[pd.DataFrame, dict[str, int]]:
    """A log of people (one taste cluster, habitual hours each); the first ``takeovers`` users' last
    40% are another person's (other cluster, hours 12 h away, faster, more clicks). Returns the log
    and each taken-over user's first intruder event (position in its history)."""
    rng = np.random.default_rng(seed)
    frames, cut = [], {}
    for u in range(n_users):
        n = int(rng.integers(20, 70))
        c, hour = int(rng.integers(N_CLUSTERS)), float(rng.uniform(0, 24))
        h = _history(rng, n, c, hour, 1.0, 0.2, 1.7e9)
        if u < takeovers:
            k = int(0.6 * n)
            tail = _history(rng, n - k, (c + 2) % N_CLUSTERS, (hour + 12) % 24, 0.2, 0.7, float(h.ts.iloc[k - 1]) + 86400)
            h = pd.concat([h.iloc[:k], tail], ignore_index=True)
            cut[f"u{u:03d}"] = k
        frames.append(h.assign(user_id=f"u{u:03d}"))
    return pd.concat(frames, ignore_index=True), cut


def _seqs(df: pd.DataFrame, vocab: Vocab | None = None) -> tuple[Seqs, Vocab, list[str]]:
    lg = from_frame(df)
    vocab = vocab or Vocab(min_count=1).fit(lg.item, lg.action)
    item, action, key = vocab.transform(lg.item, lg.action)
    seqs = Seqs(offsets=lg.offsets, ts=lg.ts, item=item, action=action, value=lg.value,
                surprisal=np.zeros((lg.n_events, 3), np.float32), key=key)
    return seqs, vocab, list(lg.users)


@pytest.fixture(scope="module")
def fitted():
    """A stage fitted on a poisoned log (300 people, 6 taken over), with its item statistics."""
    df, cut = _log(300, seed=0, takeovers=6)
    seqs, vocab, users = _seqs(df)
    stats = ItemStats(seed=0).fit(seqs, vocab.n_items, items=vocab.items_)
    cp = ChangePoint().fit(seqs, stats)
    return cp, stats, vocab, seqs, users, cut


def test_a_switch_in_taste_and_hours_is_located_within_five_events(fitted):
    cp, stats, _, seqs, users, cut = fitted
    ch = cp.transform(seqs, stats)
    n = np.diff(seqs.offsets)
    for user, k in cut.items():
        u = users.index(user)
        assert abs(int(ch.start[u]) - k) <= 5, (user, int(ch.start[u]), k)   # the tolerance
        assert ch.end[u] == n[u]   # a tail: the owner never comes back
        assert ch.changed(u)[0] == "taste", ch.changed(u)
        assert ch.groups[u, GROUPS.index("hours of day")] > 3, ch.groups[u]   # hours moved too: 3 nats and more
    taken = np.isin(users, list(cut))
    # far beyond the people's: evidence a budget share of 0.1% would flag
    assert (ch.nats[taken] > -np.log(0.001)).all(), ch.nats[taken]


def test_the_owner_coming_back_ends_the_stretch(fitted):
    cp, stats, vocab, _, _, _ = fitted
    rng = np.random.default_rng(5)
    owner = _history(rng, 60, 0, 9.0, 1.0, 0.2, 1.7e9)
    intruder = _history(rng, 20, 2, 21.0, 0.2, 0.7, float(owner.ts.iloc[29]) + 3600)
    back = owner.iloc[30:].assign(ts=owner.ts.iloc[30:] + int(intruder.ts.iloc[-1] - owner.ts.iloc[29]) + 86400)
    h = pd.concat([owner.iloc[:30], intruder, back], ignore_index=True).assign(user_id="x")
    seqs, _, _ = _seqs(h, vocab)
    ch = cp.transform(seqs, stats)
    assert abs(int(ch.start[0]) - 30) <= 3 and abs(int(ch.end[0]) - 50) <= 3, (ch.start[0], ch.end[0])
    assert "until event" in ch.describe(0, seqs.ts, taken=True)


def test_normal_histories_are_not_flagged_beyond_their_share(fitted):
    """Calibrated on a poisoned log, people of a fresh log of the same kind get tail probabilities
    about as small as their share: at most twice as many below 10% and 2% (and none below 0.1%)."""
    cp, stats, vocab, _, _, _ = fitted
    df, _ = _log(400, seed=1)
    seqs, _, _ = _seqs(df, vocab)
    tail = np.exp(-cp.transform(seqs, stats).nats)
    assert np.mean(tail < 0.1) <= 0.2, np.mean(tail < 0.1)
    assert np.mean(tail < 0.02) <= 0.04, np.mean(tail < 0.02)
    assert np.mean(tail < 0.001) <= 0.005, np.sort(tail)[:5]


def test_short_histories_and_logs_without_time_are_not_judged_by_what_they_lack(fitted):
    cp, stats, vocab, seqs, _, _ = fitted
    short = seqs.subset(np.concatenate([np.arange(a, b) < a + 5 for a, b in zip(seqs.offsets[:-1], seqs.offsets[1:])]))
    ch = cp.transform(short, stats)
    assert (ch.nats == 0).all() and (ch.start == 0).all() and (ch.end == 0).all()
    flat = Seqs(seqs.offsets, np.zeros_like(seqs.ts), seqs.item, seqs.action, seqs.value, seqs.surprisal, seqs.key)
    ch = cp.transform(flat, stats)   # every event at one instant: hours and pace carry nothing
    assert (ch.groups[:, [GROUPS.index("hours of day"), GROUPS.index("pace")]] == 0).all()


def test_state_round_trip(fitted):
    cp, stats, _, seqs, _, _ = fitted
    arrays, meta = cp.to_state()
    back = ChangePoint.from_state(arrays, meta)
    a, b = cp.transform(seqs, stats), back.transform(seqs, stats)
    for f in ("stat", "nats", "start", "end", "groups"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    with pytest.raises(ValueError, match="inflation"):
        ChangePoint.from_state({**arrays, "inflation": arrays["inflation"][:, :2]}, meta)


def test_parameters_are_checked_and_unfitted_use_is_an_error():
    from seqguard_ray.core.stage import NotFittedError

    with pytest.raises(ValueError, match="min_segment"):
        ChangePoint(min_segment=0).fit(None, None)
    with pytest.raises(ValueError, match="min_events"):
        ChangePoint(min_events=6, min_segment=4).fit(None, None)
    with pytest.raises(NotFittedError):
        ChangePoint().transform(None, None)


def test_chi2_tail_is_monotone_and_close_to_scipy_near_the_bulk():
    from scipy import stats

    x = np.linspace(0.5, 40, 50)
    for k in (1, 2, 8, 32):
        got = chi2_nats(x, k)
        assert (np.diff(got) >= 0).all()
        want = -stats.chi2.logsf(x, k)
        near = want < 6
        np.testing.assert_allclose(got[near], want[near], atol=0.5)


def test_the_pipeline_flags_types_and_reports_a_located_takeover_and_bundles_the_stage(tmp_path):
    """End to end on a tiny encoder: the change point flags the planted takeovers on its budget
    share, types them with the located cut (users.parquet's takeover_at, the reasons), repair cuts
    there, and the bundle round trip keeps the stage."""
    from seqguard_ray import SeqGuard, TrainConfig

    df, cut = _log(300, seed=0, takeovers=6)
    sg = SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4, campaigns=False)).fit(df)
    assert sg.changepoint is not None
    res = sg.score(df)
    users = res.users.set_index("user_id")
    assert users["takeover_at"].dtype == "Int64" and list(res.users.columns[-1:]) == ["takeover_at"]
    taken = users.loc[list(cut)]
    assert (taken["anomaly_type"] == "takeover").mean() >= 0.5, taken[["score", "anomaly_type"]]
    for user, row in taken[taken["anomaly_type"] == "takeover"].iterrows():
        ts = np.sort(df.loc[df.user_id == user, "ts"].to_numpy())
        assert abs(int(np.searchsorted(ts, row["takeover_at"])) - cut[user]) <= 5
        assert "taken over from" in row["reasons"] and "taste" in row["reasons"]
    assert users.loc[users["anomaly_type"] != "takeover", "takeover_at"].isna().all()
    kept = sg.repair(res).repaired
    first = next(u for u in cut if users.loc[u, "anomaly_type"] == "takeover")
    assert (kept.user_id == first).sum() <= cut[first] + 5   # cut from the change point on
    back = SeqGuard.load(sg.save(tmp_path / "model"))
    assert back.changepoint is not None and back.changepoint.n_fit_ == sg.changepoint.n_fit_
    pd.testing.assert_frame_equal(back.score(df).users, res.users)
