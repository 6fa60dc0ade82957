"""Shadow rollout: sampling, agreement accumulators and the promotion guard without Ray, then the
Rollout rpc through the plain gRPC server (start -> status -> a blocked promotion -> abort -> promote).

The Ray Serve path is tests/test_serve_app.py::test_shadow_rollout_through_the_app_config."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from serving_helpers import TOKEN, PlainServer, flag_everything_bundle, score_events, tiny_bundle

from seqguard_ray.core.shadow import (
    MAX_FLAG_RATIO, MIN_USERS, PromotionGuard, ShadowStats, check_share, in_shadow, shadow_key, spearman,
)
from seqguard_ray.runtime.serve.batches import SeqBatch
from seqguard_ray.runtime.serve.metrics import InMemoryMetrics
from seqguard_ray.runtime.serve.shadow import Shadow
from seqguard_ray.runtime.serve.stages import ModelInfo, StageCalls

SC = grpc.StatusCode


# --------------------------------------------------------------------------- sampling
def test_sampling_is_deterministic_by_user_and_close_to_the_share():
    users = [f"user-{i}" for i in range(20_000)]
    a, b = in_shadow(users, 0.25), in_shadow(list(reversed(users)), 0.25)[::-1]
    assert (a == b).all()                          # the same users, whatever the batch order
    assert abs(a.mean() - 0.25) < 0.015
    assert not in_shadow(users, 0.0).any() and in_shadow(users, 1.0).all()
    assert (in_shadow(users, 0.1) <= in_shadow(users, 0.3)).all()  # a larger share keeps the smaller one's users
    assert 0 <= shadow_key("u1") < 1 and shadow_key("u1") == shadow_key("u1")


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_share_outside_0_1_is_refused_naming_the_value(bad):
    with pytest.raises(ValueError, match="share must be a number in \\[0, 1\\]"):
        check_share(bad)
    assert check_share(1) == 1.0


# --------------------------------------------------------------------------- accumulators
def test_stats_count_flag_agreement_and_flagged_shares():
    s = ShadowStats()
    s.add(np.array([0.1, 0.5, 0.995, 0.999]), np.array([0, 0, 1, 1], bool),
          np.array([0.2, 0.995, 0.99, 0.3]), np.array([0, 1, 1, 0], bool))
    assert (s.users, s.live_flagged, s.candidate_flagged, s.both_flagged, s.agreed) == (4, 2, 2, 1, 2)
    assert s.flag_agreement == 0.5 and s.flagged_share("live") == 0.5
    s.add_latency(0.010, 0.030)
    s.add_latency(0.020, 0.050)
    assert s.mean_latency_s("live") == pytest.approx(0.015) and s.mean_latency_s("candidate") == pytest.approx(0.04)
    empty = ShadowStats()
    assert empty.flag_agreement is None and empty.spearman is None and empty.mean_latency_s("live") is None
    with pytest.raises(ValueError, match="differ in length"):
        s.add(np.zeros(2), np.zeros(2, bool), np.zeros(3), np.zeros(3, bool))


def test_spearman_is_rank_correlation_over_the_last_window_users():
    x = np.linspace(0, 1, 50)
    assert spearman(x, x ** 3) == pytest.approx(1.0)          # monotone: ranks agree exactly
    assert spearman(x, 1 - x) == pytest.approx(-1.0)
    assert spearman(x, np.full(50, 0.5)) is None               # constant side: undefined
    assert spearman(x[:1], x[:1]) is None
    s = ShadowStats(window=10)
    s.add(x[:40], x[:40] > 2, 1 - x[:40], x[:40] > 2)          # anti-correlated, then pushed out
    s.add(x[40:], x[40:] > 2, x[40:], x[40:] > 2)
    assert s.spearman == pytest.approx(1.0) and s.users == 50


# --------------------------------------------------------------------------- guard
def _stats(users, live, cand) -> ShadowStats:
    s = ShadowStats()
    s.add(np.zeros(users), np.arange(users) < live, np.zeros(users), np.arange(users) < cand)
    return s


def test_guard_blocks_a_candidate_flagging_over_3x_the_live_share():
    g = PromotionGuard()
    assert (g.max_flag_ratio, g.min_users) == (MAX_FLAG_RATIO, MIN_USERS) == (3.0, 200)
    d = g.decide(_stats(400, 10, 400))
    assert not d.ok and "100.0% of 400 shadowed users" in d.reason and "above the 3x limit" in d.reason
    assert g.decide(_stats(400, 10, 30)).ok                  # exactly 3x: allowed
    assert not g.decide(_stats(400, 10, 31)).ok
    assert g.decide(_stats(400, 0, 3)).ok                     # live flags nobody: counted as 1
    assert not g.decide(_stats(400, 0, 4)).ok


def test_guard_needs_a_minimum_of_shadowed_users():
    d = PromotionGuard(min_users=200).decide(_stats(150, 5, 5))
    assert not d.ok and "only 150 users shadowed" in d.reason
    assert PromotionGuard(min_users=0).decide(_stats(1, 0, 0)).ok
    assert not PromotionGuard(min_users=0).decide(ShadowStats()).ok  # nothing at all is never evidence


@pytest.mark.parametrize("kw, msg", [({"max_flag_ratio": 0}, "max_flag_ratio"), ({"max_flag_ratio": float("inf")}, "max_flag_ratio"),
                                     ({"min_users": -1}, "min_users"), ({"min_users": 2.5}, "min_users")])
def test_guard_limits_are_checked(kw, msg):
    with pytest.raises(ValueError, match=msg):
        PromotionGuard(**kw)


# --------------------------------------------------------------------------- Shadow, no model
def _batch(users):
    n = len(users)
    return SeqBatch(list(users), np.arange(n + 1, dtype=np.int64) * 2, np.array(["i"] * 2 * n, dtype=object),
                    np.arange(2 * n, dtype=np.float64), np.array(["view"] * 2 * n, dtype=object), np.full(2 * n, np.nan))


class _Scored:
    def __init__(self, n, flag):
        self.score, self.anomalous = np.full(n, 0.5), np.full(n, flag)
        self.anomaly_type, self.drift_counts, self.model_version = np.full(n, "bot", dtype=object), None, "cand"


def _info(version="cand"):
    return ModelInfo(version, "12", 0.99, 0.01, {}, model_dir=f"/models/{version}")


def test_shadow_never_fails_nor_delays_the_live_answer_and_counts_candidate_errors():
    async def run():
        m = InMemoryMetrics()
        sh = Shadow(m)

        async def broken(batch):
            raise RuntimeError("candidate exploded")
        sh.start(_info(), StageCalls(encode=broken, detect=lambda e: e, repair=lambda s: s), 1.0)
        sh.observe(_batch(["a", "b", "c"]), _Scored(3, False), 0.01)   # returns at once, raises nothing
        await sh.drain()
        assert sh.candidate.stats.errors == 3 and sh.candidate.stats.users == 0
        assert m.counters[("seqguard_shadow_errors", (("reason", "error"),))] == 3
        sh.observe(_batch(["a"]), "not a ScoredBatch", 0.01)            # even a bad call only logs
        await sh.drain()

    asyncio.run(run())


def test_shadow_skips_users_while_busy_and_compares_only_the_sampled_ones():
    async def run():
        m = InMemoryMetrics()
        sh = Shadow(m, max_in_flight=1)
        gate = asyncio.Event()
        seen = []

        async def encode(batch):
            seen.append(list(batch.user_ids))
            await gate.wait()
            return batch

        async def detect(e):
            b = await e
            return _Scored(b.n_seqs, True)
        sh.start(_info(), StageCalls(encode=encode, detect=detect, repair=lambda s: s), 0.5)
        users = [f"u{i}" for i in range(40)]
        sh.observe(_batch(users), _Scored(40, False), 0.01)
        await asyncio.sleep(0)
        sh.observe(_batch(users), _Scored(40, False), 0.01)   # the first is still running: skipped
        gate.set()
        await sh.drain()
        sampled = [u for u, s in zip(users, in_shadow(users, 0.5)) if s]
        st = sh.candidate.stats
        assert seen == [sampled] and st.users == len(sampled) and st.skipped == len(sampled)
        assert st.flag_agreement == 0.0 and st.candidate_flagged == len(sampled)
        assert m.counters[("seqguard_shadow_users", (("flagged", "candidate_only"),))] == len(sampled)
        assert m.gauges[("seqguard_shadow_agreement", (("statistic", "flag_agreement"),))] == 0.0
        assert m.gauges[("seqguard_shadow_candidate", (("model_version", "cand"),))] == 0.5
        sh.stop()
        assert m.gauges[("seqguard_shadow_candidate", (("model_version", "cand"),))] == 0.0

    asyncio.run(run())


# --------------------------------------------------------------------------- the plain gRPC server
@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return tiny_bundle(tmp_path_factory, 0), tiny_bundle(tmp_path_factory, 1), flag_everything_bundle(tmp_path_factory, 1)


@pytest.fixture
def plain(bundles):
    from seqguard_ray.runtime.serve import Authenticator, InProcessBackend, Limits, ScoringService, token_digest

    backend = InProcessBackend.from_dir(str(bundles[0]))
    srv = PlainServer(ScoringService(backend, Authenticator(token_digest(TOKEN)), Limits()), backend)
    yield srv
    srv.stop()


def _client(plain, token=TOKEN):
    from seqguard_ray.client import SeqGuardClient

    return SeqGuardClient(f"127.0.0.1:{plain.port}", token, timeout_s=60, retries=0)


def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def _drain(plain):
    asyncio.run_coroutine_threadsafe(plain.backend.shadow.drain(), plain.loop).result(60)


def test_rollout_through_the_plain_server(plain, bundles, tmp_path):
    from seqguard_ray.core.bundle import read_manifest

    live_v, good_v = (read_manifest(b)["model_version"] for b in bundles[:2])
    df = score_events(n_users=12)
    with _client(plain) as c:
        assert _code(lambda: _client(plain, "wrong").rollout("status"))[0] == SC.UNAUTHENTICATED
        st = c.rollout("status")
        assert st.live_version == live_v and st.candidate_version == "" and st.guard == "no candidate"
        # bad input: clear errors, nothing held
        assert _code(lambda: c.rollout("start", candidate_dir=str(tmp_path / "nope"), share=0.5)) == \
            (SC.INVALID_ARGUMENT, f"candidate_dir {tmp_path / 'nope'}: not a model bundle this server can load "
                                  f"(model bundle {tmp_path / 'nope'} does not exist or is not a directory)")
        assert _code(lambda: c.rollout("start", candidate_dir=str(bundles[1]), share=1.5)) == \
            (SC.INVALID_ARGUMENT, "share must be in [0, 1], got 1.5")
        assert "the live one" in _code(lambda: c.rollout("start", candidate_dir=str(bundles[0]), share=1))[1]
        assert _code(lambda: c.rollout("promote"))[0] == SC.FAILED_PRECONDITION
        # the flag-everything candidate: set, shadow all traffic, live answers unchanged
        before = c.score_frame(df)
        st = c.rollout("start", candidate_dir=str(bundles[2]), share=1.0)
        assert st.candidate_version == good_v and st.share == 1.0 and "shadows 100%" in st.message
        after = c.score_frame(df)
        _drain(plain)
        assert [(r.score, r.anomalous, r.model_version) for r in after.responses] == \
            [(r.score, r.anomalous, r.model_version) for r in before.responses]
        st = c.rollout("status")
        n_live = sum(r.anomalous for r in after.responses)
        assert st.shadowed_users == 12 and st.candidate_flagged == 12 and st.live_flagged == n_live
        assert st.flag_agreement == pytest.approx(n_live / 12) and st.HasField("spearman")
        assert st.live_latency_ms > 0 and st.candidate_latency_ms > 0 and st.candidate_errors == 0
        assert not st.promotable and "only 12 users shadowed" in st.guard
        # promotion blocked by the guard, with the reason; the live bundle stays
        code, details = _code(lambda: c.rollout("promote", min_users=10))
        assert code == SC.FAILED_PRECONDITION
        assert details.startswith(f"promotion of {good_v} blocked: the candidate flags 100.0% of 12 shadowed users")
        assert "above the 3x limit" in details and "--force" in details
        assert c.model_info().model_version == live_v
        # abort: no candidate, the live bundle answers as before
        st = c.rollout("abort")
        assert st.candidate_version == "" and "aborted" in st.message and st.live_version == live_v
        assert c.rollout("abort").message == "no candidate held: nothing to abort"
        # a sound candidate at share 1: promoted (guard passes at a low min_users), it then answers
        c.rollout("start", candidate_dir=str(bundles[1]), share=1.0)
        c.score_frame(df)
        _drain(plain)
        st = c.rollout("promote", min_users=10, max_flag_ratio=100)
        assert st.live_version == good_v and st.candidate_version == "" and "promoted" in st.message
        assert {r.model_version for r in c.score_frame(df).responses} == {good_v}
        assert c.model_info().model_version == good_v
