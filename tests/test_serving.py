"""Serving core without Ray: validation, limits, conversions, auth, status mapping, generated code,
and the plain grpc.aio server end to end (real gRPC client)."""

from __future__ import annotations

import asyncio
import os
import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pandas as pd
import pytest
from serving_helpers import TOKEN, PlainServer, campaign_out, score_events, tiny_bundle

from seqguard_ray.core.bundle import FORMAT_VERSION, BundleError
from seqguard_ray.core.detectors import DETECTORS
from seqguard_ray.client import SeqGuardClient
from seqguard_ray.core.schema import EventsError
from seqguard_ray.proto.seqguard.v1 import seqguard_pb2 as pb
from seqguard_ray.runtime.serve import (
    Authenticator, ContinuousBatcher, InvalidArgument, Limits, ModelStore, ResourceExhausted, ScoringService, SeqBatch,
    Unauthenticated, Unavailable, check_size, events_to_proto, load_token, parse_batch_request, parse_score_request,
    requests_from_frame, status_for, token_digest,
)

SC = grpc.StatusCode


def req(n=3, user="u1", **ev):
    base = dict(item_id="i1", ts=1_700_000_000, action="view")
    base.update(ev)
    return pb.ScoreRequest(user_id=user, events=[pb.Event(**{**base, "ts": base["ts"] + i}) for i in range(n)])


# --------------------------------------------------------------------------- generated code
def test_generated_code_is_up_to_date():
    from seqguard_ray.protos_gen import stale_files

    assert stale_files() == [], "run `python -m seqguard_ray.protos_gen` after editing protos/"


def test_proto_keeps_contract_names_and_numbers():
    f = pb.ScoreResponse.DESCRIPTOR.fields_by_name
    assert [(n, f[n].number) for n in ("user_id", "score", "anomalous", "anomaly_type", "event_scores", "reasons")] == \
        [("user_id", 1), ("score", 2), ("anomalous", 3), ("anomaly_type", 4), ("event_scores", 5), ("reasons", 6)]
    e = pb.Event.DESCRIPTOR.fields_by_name
    assert [e[n].number for n in ("item_id", "ts", "action", "value")] == [1, 2, 3, 4]
    assert [f[n].number for n in ("campaign_id", "event_campaign", "targeted_campaigns", "campaigns_version")] == \
        [11, 12, 13, 14]  # appended: the fields before them keep their numbers
    r = pb.RepairResponse.DESCRIPTOR.fields_by_name
    assert [r[n].number for n in ("score", "events", "weights", "actions")] == [1, 2, 3, 4]
    svc = pb.DESCRIPTOR.services_by_name["SeqGuard"]
    assert svc.full_name == "seqguard.v1.SeqGuard"
    assert {m.name for m in svc.methods} == {"Score", "ScoreBatch", "Repair", "ModelInfo", "ScoreStream", "ScoreStreamFrames", "Rollout"}


# --------------------------------------------------------------------------- validation
def test_parse_fills_the_batch_paths_defaults_for_unset_action_and_value():
    r = req(2)
    r.events[0].value = 2.5
    r.events[1].action = ""
    b = parse_score_request(r, Limits())
    assert b.n_seqs == 1 and b.n_events == 2 and b.user_ids == ["u1"]
    assert b.value[0] == 2.5 and np.isnan(b.value[1])
    assert list(b.action) == ["view", "click"]  # empty action = the batch path's default
    assert b.ts.dtype == np.float64 and b.ts[0] == 1_700_000_000


def test_parse_reads_milliseconds_per_sequence():
    b = parse_score_request(req(2, ts=1_700_000_000_123), Limits())
    assert b.ts[0] == pytest.approx(1_700_000_000.123)


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.events[1].ClearField("item_id"), "events[1].item_id is empty"),
    (lambda r: setattr(r.events[2], "ts", 0), "events[2].ts is missing (0)"),
    (lambda r: setattr(r.events[0], "ts", -5), "events[0].ts is negative: got -5"),
    (lambda r: setattr(r.events[1], "ts", 5_000_000_000), "events[1].ts is after the year 2100: got 5000000000"),
    (lambda r: setattr(r.events[0], "value", float("inf")), "events[0].value is infinite"),
    (lambda r: setattr(r.events[0], "action", "a" * 65), "events[0].action is longer"),
    (lambda r: setattr(r.events[0], "item_id", "x" * 300), "events[0].item_id is longer"),
    (lambda r: r.ClearField("user_id"), "user_id is empty"),
    (lambda r: r.ClearField("events"), "events is empty"),
])
def test_bad_input_names_the_field(mutate, field):
    r = req(3)
    mutate(r)
    with pytest.raises(InvalidArgument, match=re.escape(field)):
        parse_score_request(r, Limits())


def test_limits_reject_oversized_requests_naming_the_limit():
    lim = Limits(max_events_per_sequence=5, max_sequences_per_batch=2)
    with pytest.raises(InvalidArgument, match="events has 6 events, over the limit of 5"):
        parse_score_request(req(6), lim)
    with pytest.raises(InvalidArgument, match="requests has 3 sequences, over the limit of 2"):
        parse_batch_request(pb.ScoreBatchRequest(requests=[req(1)] * 3), lim)
    with pytest.raises(InvalidArgument, match="requests is empty"):
        parse_batch_request(pb.ScoreBatchRequest(), lim)
    bad = req(2)
    bad.events[1].item_id = ""
    with pytest.raises(InvalidArgument, match=r"requests\[1\]\.events\[1\]\.item_id"):
        parse_batch_request(pb.ScoreBatchRequest(requests=[req(2), bad]), lim)
    with pytest.raises(ResourceExhausted, match="over the limit of 100"):
        check_size(req(20), Limits(max_message_bytes=100))
    with pytest.raises(ValueError, match="max_events_per_sequence"):
        Limits(max_events_per_sequence=0)
    with pytest.raises(ValueError, match="unknown limit"):
        Limits.from_dict({"max_events": 3})


def test_concat_and_to_log_keep_sequences_apart_in_sent_order():
    a, b = parse_score_request(req(2, user="x"), Limits()), parse_score_request(req(3, user="x"), Limits())
    m, bounds = SeqBatch.concat([a, b, a])
    assert list(bounds) == [0, 1, 2, 3] and list(m.offsets) == [0, 2, 5, 7] and m.user_ids == ["x", "x", "x"]
    log_ = m.to_log()
    assert log_.n_users == 3 and list(log_.offsets) == [0, 2, 5, 7]  # same caller id, separate sequences


def test_to_log_sorts_each_sequence_like_the_batch_path():
    """Unsorted events with ties: the same per-sequence order, rows and arrays as from_frame."""
    from seqguard_ray.core.schema import from_frame

    r = pb.ScoreRequest(user_id="u", events=[pb.Event(item_id=i, ts=t, action=a) for i, t, a in
                                              [("a", 30, "view"), ("b", 10, ""), ("c", 30, "buy"), ("d", 20, "view")]])
    m, _ = SeqBatch.concat([parse_score_request(r, Limits()), parse_score_request(req(3), Limits())])
    got = m.to_log()
    ref = from_frame(pd.DataFrame({"user_id": np.repeat(["0", "1"], np.diff(m.offsets)), "item_id": m.item,
                                   "ts": m.ts, "action": m.action, "value": m.value}))
    assert list(got.item[:4]) == ["b", "d", "a", "c"]  # by time; the tie at 30 in the order sent
    np.testing.assert_array_equal(got.frame["_row"].to_numpy(), ref.frame["_row"].to_numpy())
    for name in ("item", "ts", "action", "offsets"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    np.testing.assert_array_equal(np.isnan(got.value), np.isnan(ref.value))


class _Parts:
    """Stands in for a ScoredBatch: split() hands each caller its (first, last) sequence numbers."""

    def split(self, bounds):
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


async def until(cond, timeout_s: float = 5.0) -> None:
    """Let the event loop run until ``cond()`` holds; fail after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0)


class _GatedStages:
    """A batcher's ``run``: records each merged batch's size, holds it until ``gate`` is set,
    and fails batches of ``fail_size`` sequences."""

    def __init__(self, fail_size: int = -1):
        self.gate, self.sizes, self.running, self.peak, self.fail_size = asyncio.Event(), [], 0, 0, fail_size

    async def __call__(self, merged, repair):
        self.sizes.append(merged.n_seqs)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        if merged.n_seqs == self.fail_size:
            raise ValueError("bad batch")
        return _Parts()


def _one():
    return parse_score_request(req(2), Limits())


def test_continuous_batcher_merges_what_queues_while_busy_and_a_failed_batch_fails_only_its_callers():
    async def main():
        run = _GatedStages(fail_size=3)
        b = ContinuousBatcher(run, max_batch=4, concurrency=2)
        first = []
        for k in range(2):                 # one at a time: two batches of one, nothing waits to fill
            first.append(asyncio.ensure_future(b.submit(_one())))
            await until(lambda: len(run.sizes) == k + 1)
        rest = [asyncio.ensure_future(b.submit(_one())) for _ in range(7)]
        await until(lambda: b._queue.qsize() == 7)
        assert run.sizes == [1, 1] and run.peak == 2  # both slots busy: the 7 wait, unmerged yet
        run.gate.set()                     # the 7 that queued go as 4 + 3 (max_batch 4)
        out = await asyncio.gather(*first, *rest, return_exceptions=True)
        assert run.sizes == [1, 1, 4, 3]
        assert out[:6] == [(0, 1), (0, 1), (0, 1), (1, 2), (2, 3), (3, 4)]
        assert all(isinstance(e, ValueError) for e in out[6:])  # a failed batch fails its callers only
        assert await b.submit(_one()) == (0, 1)  # and the batcher goes on
        await b.aclose()

    asyncio.run(main())


def test_continuous_batcher_replaces_a_worker_whose_batch_was_cancelled():
    async def main():
        async def cancelled(merged, repair):  # e.g. a stage call cancelled under the worker
            raise asyncio.CancelledError

        c = ContinuousBatcher(cancelled, concurrency=1)
        with pytest.raises(Unavailable, match="cancelled"):
            await c.submit(_one())
        run = _GatedStages()
        run.gate.set()
        c._run = run                       # the dead worker is replaced on the next submit
        assert await c.submit(_one()) == (0, 1)
        await c.aclose()

    asyncio.run(main())


def test_continuous_batcher_close_fails_running_and_queued_requests_at_once():
    async def main():
        run = _GatedStages()               # the gate stays shut: the first batch never finishes
        d = ContinuousBatcher(run, max_batch=1, concurrency=1)
        pending = [asyncio.ensure_future(d.submit(_one())) for _ in range(3)]
        await until(lambda: run.sizes == [1] and d._queue.qsize() == 2)
        await d.aclose()
        out = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 1.0)
        assert [type(e) for e in out] == [Unavailable] * 3
        assert "cancelled" in str(out[0]) and all("shutting down" in str(e) for e in out[1:])

    asyncio.run(main())
    with pytest.raises(ValueError, match="max_batch"):
        ContinuousBatcher(lambda m, r: None, max_batch=0)


def test_requests_from_frame_prints_ids_like_the_batch_path():
    df = pd.DataFrame({"user_id": [7, 7, 8], "item_id": [123, 5, 9], "ts": [1, 2, 3], "value": [1.0, np.nan, 2.0]})
    reqs = requests_from_frame(df)
    assert [r.user_id for r in reqs] == ["7", "8"]
    assert [e.item_id for e in reqs[0].events] == ["123", "5"]
    assert reqs[0].events[0].HasField("value") and not reqs[0].events[1].HasField("value")
    assert events_to_proto([{"item_id": 4.0, "ts": 10}])[0].item_id == "4"


# --------------------------------------------------------------------------- status codes
class BackPressureError(Exception):
    pass


class RayActorError(Exception):
    pass


@pytest.mark.parametrize("exc, code", [
    (InvalidArgument("x"), SC.INVALID_ARGUMENT), (ResourceExhausted("x"), SC.RESOURCE_EXHAUSTED),
    (Unauthenticated("x"), SC.UNAUTHENTICATED), (Unavailable("x"), SC.UNAVAILABLE),
    (EventsError("bad"), SC.INVALID_ARGUMENT), (BundleError("gone"), SC.UNAVAILABLE),
    (TimeoutError(), SC.DEADLINE_EXCEEDED), (asyncio.TimeoutError(), SC.DEADLINE_EXCEEDED),
    (BackPressureError("queue full"), SC.RESOURCE_EXHAUSTED), (RayActorError("died"), SC.UNAVAILABLE),
    (asyncio.CancelledError(), SC.CANCELLED), (ZeroDivisionError("secret detail"), SC.INTERNAL),
])
def test_status_for_maps_each_error_to_its_code_without_a_trace(exc, code):
    got, details = status_for(exc)
    assert got == code
    assert "Traceback" not in details
    if code == SC.INTERNAL:
        assert "secret detail" not in details and "reference" in details


def test_status_for_unwraps_ray_task_error_cause():
    class RayTaskError(Exception):
        def __init__(self, cause):
            self.cause = cause
    assert status_for(RayTaskError(Unavailable("no model")))[0] == SC.UNAVAILABLE
    # bug seen in test_replica_killed_mid_traffic: an upstream replica's death arrived as a
    # RayServeException raised `from` an ActorDiedError and became INTERNAL instead of UNAVAILABLE
    class ActorDiedError(Exception):
        pass
    try:
        try:
            raise ActorDiedError("killed")
        except ActorDiedError as inner:
            raise RuntimeError("upstream actor died") from inner
    except RuntimeError as exc:
        assert status_for(exc)[0] == SC.UNAVAILABLE


# --------------------------------------------------------------------------- auth
def test_authenticator_accepts_only_the_bearer_token():
    a = Authenticator(token_digest("s3cret"))
    a.check([("authorization", "Bearer s3cret")])
    a.check([("Authorization", b"bearer s3cret")])
    for md, msg in [([], "missing"), ([("authorization", "Bearer nope")], "invalid"),
                    ([("authorization", "Basic s3cret")], "invalid"), ([("authorization", "s3cret")], "invalid")]:
        with pytest.raises(Unauthenticated, match=msg):
            a.check(md)
    Authenticator(None).check([])  # auth off
    with pytest.raises(ValueError):
        Authenticator("not-a-digest")


def test_load_token_reads_the_file_then_the_environment(tmp_path):
    f = tmp_path / "tok"
    f.write_text("abc\n")
    assert load_token(f) == "abc"
    assert load_token(None, env={"SEQGUARD_TOKEN": "xyz"}) == "xyz"
    assert load_token(None, env={}) is None
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_token(tmp_path / "empty")


def test_model_store_keeps_the_previous_version_for_in_flight_work():
    class M:
        def __init__(self, d):
            self.model_version = d.split("/")[-1]

    s = ModelStore(M, keep=2)
    with pytest.raises(Unavailable):
        s.current
    s.load("x/v1")
    s.load("x/v2")
    assert s.current.model_version == "v2"
    assert s.get("v1", "x/v1").model_version == "v1"   # the previous bundle is kept for in-flight work
    s.load("x/v3")
    assert s.get("v2", "x/v2").model_version == "v2"
    with pytest.raises(Unavailable, match="no longer available"):
        s.get("v9", "x/v4")


# --------------------------------------------------------------------------- one stage sequencing
class _Scored:
    """Stands in for a ScoredBatch / RepairedBatch (what the metrics read)."""

    def __init__(self, n: int):
        self.score, self.anomalous = np.full(n, 0.999), np.ones(n, bool)
        self.anomaly_type, self.user_action = np.array(["bot"] * n, object), np.array(["quarantine"] * n, object)
        self.drift_counts, self.model_version = None, ""
        self.scored = self


def _recording_calls(seen: list):
    """StageCalls whose stages record what they were handed, as Serve handles would receive it."""
    from seqguard_ray.runtime.serve import StageCalls

    async def stage(name, upstream, out):
        seen.append((name, type(upstream).__name__))
        if asyncio.iscoroutine(upstream):
            await upstream
        return out(upstream)

    return StageCalls(encode=lambda b: stage("encode", b, lambda b: b),
                      detect=lambda e: stage("detect", e, lambda e: _Scored(2)),
                      repair=lambda s: stage("repair", s, lambda s: _Scored(2)))


def test_run_stages_hands_each_stage_the_previous_output_unresolved_and_counts_results():
    from seqguard_ray.runtime.serve import run_stages
    from seqguard_ray.runtime.serve.metrics import InMemoryMetrics, REPAIR_ACTIONS, USER_SCORE

    seen, m = [], InMemoryMetrics()
    batch = _one()
    asyncio.run(run_stages(_recording_calls(seen), batch, False, m))
    asyncio.run(run_stages(_recording_calls(seen), batch, True, m))
    # each stage gets its upstream's call as is (a DeploymentResponse with Serve), not its awaited value
    assert seen == [("detect", "coroutine"), ("encode", "SeqBatch"),
                    ("repair", "coroutine"), ("detect", "coroutine"), ("encode", "SeqBatch")]
    assert m.observed[USER_SCORE.name] == [0.999] * 4
    assert m.counters[(REPAIR_ACTIONS.name, (("action", "quarantine"),))] == 2  # only the repaired batch


def test_in_process_backend_runs_the_engines_stages(engine, bundle):
    """The in-process stage calls give what the stage functions give when chained by hand."""
    from seqguard_ray.runtime.serve import InProcessBackend, detect_stage, encode_stage, repair_stage

    batch = parse_score_request(req(5), Limits())
    want = repair_stage(engine.policy, detect_stage(engine, encode_stage(engine, batch)))

    async def main():
        backend = InProcessBackend(engine, model_dir=str(bundle), batching=False)
        try:
            return await backend.repair(batch)
        finally:
            await backend.aclose()

    got = asyncio.run(main())
    np.testing.assert_allclose(got.scored.score, want.scored.score)
    np.testing.assert_array_equal(got.keep, want.keep)
    assert list(got.user_action) == list(want.user_action)


def test_scoring_service_counts_every_answered_call_by_code():
    from seqguard_ray.runtime.serve.metrics import InMemoryMetrics, REQUESTS

    class NoModel:
        async def model_info(self):
            raise Unavailable("no model is loaded yet: retry shortly")

    m = InMemoryMetrics()
    svc = ScoringService(NoModel(), Authenticator(token_digest("t")), metrics=m)
    ok = [("authorization", "Bearer t")]
    asyncio.run(svc.call("ModelInfo", pb.ModelInfoRequest(), ok))
    asyncio.run(svc.call("ModelInfo", pb.ModelInfoRequest(), []))
    asyncio.run(svc.call("Score", pb.ScoreRequest(), ok))
    assert m.counters == {(REQUESTS.name, (("code", "UNAVAILABLE"), ("rpc", "ModelInfo"))): 1,
                          (REQUESTS.name, (("code", "UNAUTHENTICATED"), ("rpc", "ModelInfo"))): 1,
                          (REQUESTS.name, (("code", "INVALID_ARGUMENT"), ("rpc", "Score"))): 1}


# --------------------------------------------------------------------------- Serve app arguments (no Ray)
def test_app_args_reject_unknown_deployments_and_bad_limits():
    from seqguard_ray.runtime.serve.app import check_app_args

    assert check_app_args({"model_dir": "m"}).model_dir == "m"
    with pytest.raises(ValueError, match="unknown deployment name"):
        check_app_args({"model_dir": "m", "deployments": {"Encodr": {}}})
    with pytest.raises(ValueError, match="unknown limit"):
        check_app_args({"model_dir": "m", "limits": {"max_events": 3}})


def test_open_streams_stay_below_the_ingress_slots():
    """On Serve an open stream holds one of the ingress's max_ongoing_requests for its life: the
    default bound is half of them, and a bound that would take them all is refused."""
    from seqguard_ray.runtime.serve.app import INGRESS_MAX_ONGOING, check_app_args, ingress_kwargs

    args = check_app_args({"model_dir": "m", "insecure_no_auth": True})
    assert ingress_kwargs(args)["stream"]["max_open_streams"] == INGRESS_MAX_ONGOING // 2
    small = {"SeqGuardIngress": {"max_ongoing_requests": 8}}
    args = check_app_args({"model_dir": "m", "insecure_no_auth": True, "deployments": small,
                           "stream": {"window": 32}})
    assert ingress_kwargs(args)["stream"] == {"max_open_streams": 4, "window": 32}
    args = check_app_args({"model_dir": "m", "insecure_no_auth": True, "deployments": small,
                           "stream": {"max_open_streams": 7}})
    assert ingress_kwargs(args)["stream"]["max_open_streams"] == 7
    with pytest.raises(ValueError, match=r"max_open_streams \(8\) must be below .* max_ongoing_requests \(8\)"):
        check_app_args({"model_dir": "m", "deployments": small, "stream": {"max_open_streams": 8}})


def test_deployment_options_put_the_encoder_on_gpus_and_let_overrides_win():
    from seqguard_ray.runtime.serve.app import DEPLOYMENT_NAMES, AppArgs, deployment_options

    opts = deployment_options(AppArgs(model_dir="m", encoder_gpus=1,
                                      deployments={"DetectorEnsemble": {"num_replicas": 3}}))
    assert set(opts) == set(DEPLOYMENT_NAMES)
    assert opts["Encoder"]["ray_actor_options"]["num_gpus"] == 1 and "autoscaling_config" in opts["Encoder"]
    assert opts["DetectorEnsemble"]["num_replicas"] == 3 and "autoscaling_config" not in opts["DetectorEnsemble"]
    assert all(o["user_config"] == {"model_dir": os.path.abspath("m")} for o in opts.values())
    assert "ray_actor_options" not in deployment_options(AppArgs(model_dir="m", encoder_gpus=0))["Encoder"]


def test_ingress_needs_a_token_unless_auth_is_off(tmp_path, monkeypatch):
    from seqguard_ray.runtime.serve.app import AppArgs, ingress_kwargs

    monkeypatch.delenv("SEQGUARD_TOKEN", raising=False)
    with pytest.raises(ValueError, match="no auth token"):
        ingress_kwargs(AppArgs(model_dir="m"))
    (tmp_path / "tok").write_text("s3cret\n")
    assert ingress_kwargs(AppArgs(model_dir="m", token_file=str(tmp_path / "tok")))["token_sha256"] == token_digest("s3cret")
    assert ingress_kwargs(AppArgs(model_dir="m", token_sha256="0" * 64, insecure_no_auth=True))["token_sha256"] is None


# --------------------------------------------------------------------------- plain server, end to end
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def engine(bundle):
    from seqguard_ray.runtime.serve import load_engine
    return load_engine(str(bundle), torch_threads=1)


@pytest.fixture(scope="module")
def plain(engine, bundle):
    from seqguard_ray.runtime.serve import InProcessBackend

    backend = InProcessBackend(engine, model_dir=str(bundle))
    srv = PlainServer(ScoringService(backend, Authenticator(token_digest(TOKEN)), Limits(max_message_bytes=200_000)),
                      backend)
    yield srv
    srv.stop()


@pytest.fixture
def client(plain):
    with SeqGuardClient(f"127.0.0.1:{plain.port}", TOKEN, timeout_s=30, retries=0) as c:
        yield c


def test_batch_scores_over_grpc_equal_the_engines(client, engine):
    df = score_events()
    ref = engine.score(df)
    resp = client.score_frame(df)
    users = ref.users.set_index("user_id")
    assert [r.user_id for r in resp.responses] == list(df["user_id"].drop_duplicates())
    for r in resp.responses:
        u = users.loc[r.user_id]
        assert r.score == pytest.approx(u["score"], abs=1e-6)
        assert r.anomalous == u["anomalous"] and r.anomaly_type == u["anomaly_type"]
        ev = ref.events[ref.events["user_id"] == r.user_id].sort_values("row")
        np.testing.assert_allclose(r.event_scores, ev["event_score"], atol=1e-6)
        assert list(r.event_anomalous) == list(ev["anomalous"])
        assert r.model_version == engine.model_version and set(r.detector_scores) == set(DETECTORS)
    assert any(r.anomalous for r in resp.responses), "the test data should hold an anomalous user"


def test_score_one_and_repair_over_grpc_equal_the_engines(client, engine):
    df = score_events()
    ref = engine.score(df)
    flagged = ref.users.loc[ref.users["anomalous"], "user_id"]
    uid = flagged.iloc[0] if len(flagged) else ref.users["user_id"].iloc[0]
    one = df[df["user_id"] == uid].iloc[::-1]  # out of time order on purpose
    recs = one[["item_id", "ts", "action", "value"]].to_dict("records")
    s = client.score(uid, recs)
    ref1 = engine.score(one)
    assert s.score == pytest.approx(ref1.users["score"].iloc[0], abs=1e-6)
    np.testing.assert_allclose(s.event_scores, ref1.events.sort_values("row")["event_score"], atol=1e-6)
    r = client.repair(uid, recs)
    rep = engine.repair(ref1)
    assert len(r.events) == len(rep.repaired) and len(r.actions) == len(one) and len(r.kept) == len(one)
    assert [e.item_id for e in r.events] == [str(i) for i in rep.repaired["item_id"]]
    np.testing.assert_allclose(r.weights, rep.repaired["weight"], atol=1e-9)
    acted = rep.actions
    assert r.user_action == (acted["action"].iloc[0] if len(acted) else "pass")


def test_model_info_reports_the_bundle_and_the_limits(client, engine):
    info = client.model_info()
    assert info.model_version == engine.model_version and info.format_version == FORMAT_VERSION
    assert info.max_message_bytes == 200_000 and "injection" in info.anomaly_types


def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_bad_calls_get_status_codes_that_name_the_problem(plain, client):
    target = f"127.0.0.1:{plain.port}"
    code, details = _code(lambda: SeqGuardClient(target, None, retries=0).model_info())
    assert code == SC.UNAUTHENTICATED and "missing" in details
    assert _code(lambda: SeqGuardClient(target, "wrong", retries=0).model_info())[0] == SC.UNAUTHENTICATED
    code, details = _code(lambda: client.score("u", []))
    assert code == SC.INVALID_ARGUMENT and "events is empty" in details
    code, details = _code(lambda: client.score("u", [{"item_id": "", "ts": 1_700_000_000}]))
    assert code == SC.INVALID_ARGUMENT and "events[0].item_id" in details
    code, details = _code(lambda: client.score("u", [{"item_id": "a", "ts": 99_999_999_999}]))
    assert code == SC.INVALID_ARGUMENT and "events[0].ts" in details
    big = [{"item_id": f"item{i:040d}", "ts": 1_700_000_000 + i} for i in range(10_000)]
    code, details = _code(lambda: client.score("u", big))
    assert code == SC.RESOURCE_EXHAUSTED and ("over the limit" in details or "larger than max" in details)


def test_no_model_loaded_answers_unavailable_after_bounded_retries(bundle):
    from seqguard_ray.runtime.serve import InProcessBackend

    backend = InProcessBackend(None, model_dir=str(bundle))
    srv = PlainServer(ScoringService(backend, Authenticator(None)), backend)
    try:
        with SeqGuardClient(f"127.0.0.1:{srv.port}", retries=2, backoff_s=0.01) as c:
            code, details = _code(lambda: c.score("u", [{"item_id": "a", "ts": 1_700_000_000}]))
            assert code == SC.UNAVAILABLE and "no model" in details
            assert c.attempts == 3
    finally:
        srv.stop()


def test_a_call_over_the_server_timeout_answers_deadline_exceeded():
    class Hangs:
        async def model_info(self):
            await asyncio.Event().wait()

    srv = PlainServer(ScoringService(Hangs(), Authenticator(None), timeout_s=0.05))
    try:
        with SeqGuardClient(f"127.0.0.1:{srv.port}", retries=0) as c:
            assert _code(c.model_info)[0] == SC.DEADLINE_EXCEEDED
    finally:
        srv.stop()


def test_score_does_not_depend_on_batch_mates(engine):
    """Regression: value_extreme_share used the scored batch's value range, not the training one."""
    df = score_events()
    full = engine.score(df).users.set_index("user_id")["score"]
    for u, g in df.groupby("user_id"):
        assert engine.score(g).users["score"].iloc[0] == pytest.approx(full[u], abs=1e-9)


def test_encoder_stage_warns_once_about_a_log_unlike_the_training_one(engine, caplog, monkeypatch):
    """Requests without values for a model that learned from them are scored, and the server says
    why its scores may be off once, not per request."""
    from seqguard_ray.core import pipeline as engine_module
    from seqguard_ray.runtime.serve import encode_stage

    monkeypatch.setattr(engine_module, "_WARNED_ONCE", set())
    assert engine.metrics.get("value_share", 0) >= 0.5  # the tiny bundle learned from values
    with caplog.at_level("WARNING", logger="seqguard_ray.core.pipeline"):
        for _ in range(3):
            encode_stage(engine, parse_score_request(req(4), Limits()))
    assert caplog.text.count("learned from a 'value' column") == 1


def test_concurrent_clients_get_the_engines_scores(plain, engine):
    df = score_events()
    ref = engine.score(df).users.set_index("user_id")["score"]
    # every column the engine saw, value included: dropping it changes the score (value is a feature)
    groups = [(u, g[["item_id", "ts", "action", "value"]].to_dict("records")) for u, g in df.groupby("user_id")]

    def one(i):
        with SeqGuardClient(f"127.0.0.1:{plain.port}", TOKEN, retries=0) as c:
            u, recs = groups[i % len(groups)]
            return u, c.score(u, recs).score

    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(one, range(32)))
    for u, s in out:
        assert s == pytest.approx(ref[u], abs=1e-6)


def test_scores_over_grpc_follow_the_engine_with_and_without_values(plain, engine):
    """Regression: the concurrency test sent events without ``value`` and compared with scores of events with it.

    The server was right both times: over gRPC a sequence scores like the engine on the same columns, with
    value (carried as ``optional double``) or without it (unset = NaN), even when requests are merged.
    """
    df = score_events(n_users=3)
    with_v = engine.score(df).users.set_index("user_id")["score"]
    without_v = engine.score(df.drop(columns="value")).users.set_index("user_id")["score"]
    assert not np.allclose(with_v.to_numpy(), without_v.loc[with_v.index].to_numpy())  # value matters
    cases = []
    for u, g in df.groupby("user_id"):
        cases.append((u, g[["item_id", "ts", "action", "value"]].to_dict("records"), with_v[u]))
        cases.append((u, g[["item_id", "ts", "action"]].to_dict("records"), without_v[u]))

    def one(case):
        u, recs, want = case
        with SeqGuardClient(f"127.0.0.1:{plain.port}", TOKEN, retries=0) as c:
            return c.score(u, recs).score, want

    with ThreadPoolExecutor(6) as ex:
        for got, want in ex.map(one, cases * 2):
            assert got == pytest.approx(want, abs=1e-6)


def test_cli_client_score_repair_info_and_auth_failure(plain, tmp_path, capsys, monkeypatch):
    from seqguard_ray.cli.main import main

    df = score_events(n_users=2)
    f = tmp_path / "ev.csv"
    df.to_csv(f, index=False)
    monkeypatch.setenv("SEQGUARD_TOKEN", TOKEN)
    t = f"127.0.0.1:{plain.port}"
    assert main(["client", "info", "--target", t]) == 0
    out = capsys.readouterr().out
    assert '"model_version"' in out and '"campaigns_version"' in out
    assert main(["client", "score", "--target", t, "--events", str(f)]) == 0
    assert capsys.readouterr().out.count('"user_id"') == 2
    assert main(["client", "repair", "--target", t, "--events", str(f), "--user", str(df["user_id"].iloc[0])]) == 0
    assert '"user_action"' in capsys.readouterr().out
    monkeypatch.setenv("SEQGUARD_TOKEN", "wrong")
    assert main(["client", "info", "--target", t, "--retries", "0"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_serve_refuses_to_start_without_token(bundle, monkeypatch, capsys):
    from seqguard_ray.cli.main import main

    monkeypatch.delenv("SEQGUARD_TOKEN", raising=False)
    assert main(["serve", "--model", str(bundle), "--no-ray"]) == 2
    assert "no auth token" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["serve_local.yaml", "serve_gpu.yaml"])
def test_serve_configs_validate_against_serve_and_app_args(name):
    from pathlib import Path

    import yaml
    pytest.importorskip("ray.serve")
    from ray.serve.schema import ServeDeploySchema

    from deployments import SERVICER
    from seqguard_ray.runtime.serve.app import DEPLOYMENT_NAMES, AppArgs

    cfg = yaml.safe_load((Path(__file__).parent.parent / "deployments" / name).read_text())
    ServeDeploySchema.model_validate(cfg)
    assert cfg["grpc_options"]["grpc_servicer_functions"] == [SERVICER]
    app = cfg["applications"][0]
    AppArgs.model_validate(app["args"])
    assert {d["name"] for d in app["deployments"]} == set(DEPLOYMENT_NAMES)


# --------------------------------------------------------------------------- published campaign tables
@pytest.fixture(scope="module")
def campaign_bundle(bundle, tmp_path_factory):
    """A copy of the module's bundle with a campaign table published: members m1-m3 pushing t1, t2."""
    import shutil

    from seqguard_ray.io.campaign_table import publish

    tmp = tmp_path_factory.mktemp("campaigns")
    model = tmp / "model"
    shutil.copytree(bundle, model)
    meta = publish(campaign_out(tmp, "out_a", ["m1", "m2", "m3"], ["t1", "t2"]), model)
    return model, meta, tmp


@pytest.fixture(scope="module")
def campaign_server(campaign_bundle):
    from seqguard_ray.runtime.serve import InProcessBackend, load_engine

    model = campaign_bundle[0]
    backend = InProcessBackend(load_engine(str(model), torch_threads=1, campaigns_check_s=0.0), model_dir=str(model))
    srv = PlainServer(ScoringService(backend, Authenticator(token_digest(TOKEN)), Limits()), backend)
    yield srv
    srv.stop()


def _pushed_events(n_target=3):
    """A normal user's history from the demo log with ``n_target`` events on target t1 appended."""
    df = score_events(n_users=12)
    g = df[df["user_id"] == df["user_id"].iloc[-1]]
    recs = g[["item_id", "ts", "action", "value"]].to_dict("records")
    last = int(g["ts"].max())
    return recs + [{"item_id": "t1", "ts": last + 60 * (i + 1), "action": "view", "value": 5.0} for i in range(n_target)]


def test_a_published_campaign_reaches_members_and_names_targets_to_others(campaign_server, campaign_bundle, client):
    _, meta, _ = campaign_bundle
    recs = _pushed_events()
    on_target = [r["item_id"] == "t1" for r in recs]
    with SeqGuardClient(f"127.0.0.1:{campaign_server.port}", TOKEN, retries=0) as c:
        member = c.score("m1", recs)
        other = c.score("x1", recs)
        rep = c.repair("m1", recs)
        info = c.model_info()
    # a member: flagged as the batch engine flags members, its events on the targets marked for repair
    assert member.HasField("campaign_id") and member.campaign_id == 0
    assert member.anomalous and member.anomaly_type != "normal"
    assert any("member of campaign 0" in r and "t1, t2" in r for r in member.reasons)
    assert list(member.event_campaign) == on_target and list(member.targeted_campaigns) == [0]
    assert member.campaigns_version == meta["version"] and len(meta["version"]) == 12
    assert not any(k for k, t in zip(rep.kept, on_target) if t)  # repair undoes the push
    # a non-member on the same items: the evidence in its reasons, its verdict its own
    base = client.score("x1", recs)  # the same model without a table
    assert not other.HasField("campaign_id") and list(other.targeted_campaigns) == [0]
    assert other.score == pytest.approx(base.score, abs=1e-9) and other.anomalous == base.anomalous
    assert other.anomaly_type == base.anomaly_type and not any(other.event_campaign)
    assert any("3 event(s) on item t1, a target of campaign 0" in r and "not one of them" in r for r in other.reasons)
    assert list(other.reasons[:len(base.reasons)]) == list(base.reasons)
    # a bundle without a table: no campaign field is set
    assert not base.HasField("campaign_id") and base.campaigns_version == "" and len(base.event_campaign) == 0
    assert (info.campaigns_version, info.campaigns, info.campaign_members, info.campaign_targets) == \
        (meta["version"], 1, 3, 2)
    assert client.model_info().campaigns_version == ""


def test_publishing_a_new_table_while_serving_is_picked_up(campaign_server, campaign_bundle, capsys):
    from seqguard_ray.cli.main import main
    from seqguard_ray.io.campaign_table import publish

    model, meta, tmp = campaign_bundle
    recs = _pushed_events(2)
    target = f"127.0.0.1:{campaign_server.port}"
    try:
        new = publish(campaign_out(tmp, "out_b", ["x1", "x2", "x3"], ["t1"], cid=4, score=0.9), model)
        assert new["version"] != meta["version"]
        with SeqGuardClient(target, TOKEN, retries=0) as c:
            now_member, former = c.score("x1", recs), c.score("m1", recs)
            info = c.model_info()
        assert now_member.campaign_id == 4 and now_member.campaigns_version == new["version"]
        assert not former.HasField("campaign_id") and list(former.targeted_campaigns) == [4]
        assert (info.campaigns_version, info.campaign_members) == (new["version"], 3)
        assert publish(tmp / "out_b", model)["version"] == new["version"]  # the same table: the same version
    finally:  # back to the module's table, with the CLI
        assert main(["campaigns", "publish", "--from", str(tmp / "out_a"), "--model", str(model)]) == 0
    assert f'"version": "{meta["version"]}"' in capsys.readouterr().out
    with SeqGuardClient(target, TOKEN, retries=0) as c:
        assert c.score("m1", recs).campaign_id == 0


def test_bad_campaign_tables_are_refused_naming_the_problem(campaign_bundle, tmp_path, monkeypatch, capsys):
    import pickle

    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqguard_ray.cli.main import main
    from seqguard_ray.core.campaigns import published
    from seqguard_ray.core.campaigns.published import CampaignTableError
    from seqguard_ray.io.campaign_table import publish, read_current
    from seqguard_ray.io.outputs import campaigns_table

    model, meta, _ = campaign_bundle

    def refused(out, match):
        with pytest.raises(CampaignTableError, match=match):
            publish(out, model)

    refused(tmp_path / "nowhere", "campaigns.parquet does not exist")
    out = campaign_out(tmp_path, "pickled", ["a", "b", "c"], ["t9"])
    (out / "campaigns.parquet").write_bytes(pickle.dumps({"campaign_id": [0]}))
    refused(out, "is not a Parquet file")

    def edited(name, edit, table="campaigns.parquet"):
        out = campaign_out(tmp_path, name, ["a", "b", "c"], ["t9"])
        pq.write_table(edit(pq.read_table(out / table)), out / table)
        return out

    refused(edited("no_users", lambda t: t.drop_columns(["user_ids"])), r"missing column\(s\) \['user_ids'\]")
    refused(edited("bad_score", lambda t: t.set_column(t.schema.get_field_index("score"), "score",
                                                       pa.array([7.0]))), r"score must be in \[0, 1\]")
    refused(edited("orphan", lambda t: t.set_column(t.schema.get_field_index("campaign_id"), "campaign_id",
                                                    pa.array([3, None], pa.int64())), "items.parquet"),
            r"names campaign\(s\) \[3\]")
    two = campaign_out(tmp_path, "two", ["a", "b"], ["t9"])
    camps = pq.read_table(two / "campaigns.parquet").to_pandas()
    camps = pd.concat([camps, camps.assign(campaign_id=1, target_item_ids=[["t8"]])])
    pq.write_table(campaigns_table(camps), two / "campaigns.parquet")
    refused(two, "user a is in the user_ids of campaigns 0 and 1")
    monkeypatch.setattr(published, "MAX_CAMPAIGNS", 0)
    refused(campaign_out(tmp_path, "many", ["a"], ["t9"]), "over the limit of 0")
    monkeypatch.undo()
    assert read_current(model).version == meta["version"]  # nothing refused was published
    # the CLI: exit status 2 and the problem, no trace
    assert main(["campaigns", "publish", "--from", str(tmp_path / "pickled"), "--model", str(model)]) == 2
    assert "is not a Parquet file" in capsys.readouterr().err


def test_a_broken_table_fails_the_load_and_a_broken_swap_keeps_the_served_one(campaign_bundle, tmp_path, caplog):
    import json
    import shutil

    from seqguard_ray.io.campaign_table import CampaignWatch
    from seqguard_ray.runtime.serve import load_engine

    model = tmp_path / "model"
    shutil.copytree(campaign_bundle[0], model)
    version = campaign_bundle[1]["version"]
    watch = CampaignWatch(model, check_s=0.0)
    pointer = model / "campaigns" / "CURRENT.json"
    pointer.write_text(json.dumps({"version": "0123456789ab"}))
    with caplog.at_level("ERROR"):
        assert watch.current().version == version  # kept
    assert "cannot be served" in caplog.text
    with pytest.raises(BundleError, match="published campaign table cannot be served"):
        load_engine(str(model))
    pointer.write_text(json.dumps({"version": version}))
    (model / "campaigns" / version / "items.parquet").write_bytes(b"PAR1 tampered PAR1")
    with pytest.raises(BundleError, match="checksum"):
        load_engine(str(model))


def test_online_campaign_verdicts_equal_the_batch_engines(tiny_model, tiny_events, tmp_path):
    """A log with a planted lockstep group scored in batch, its table published: members and
    non-members scored online get the batch verdicts (the same apply_campaigns), non-members the
    evidence only."""
    from seqguard_ray.io.campaign_table import publish
    from seqguard_ray.io.outputs import write_outputs
    from seqguard_ray.runtime.serve import detect_stage, encode_stage, load_engine

    rng = np.random.default_rng(1)
    counts = tiny_events["item_id"].value_counts()
    targets, popular = counts[counts == 2].index[:2].tolist(), counts.index[:8].to_numpy()
    t0 = int(tiny_events["ts"].max()) - 86400
    rows = [(f"bot{k}", int(item), t0 + int(rng.integers(0, 3600)), "click", 1.0)
            for k in range(15) for item in targets + list(rng.choice(popular, 4, replace=False))]
    log = pd.concat([tiny_events, pd.DataFrame(rows, columns=list(tiny_events.columns))], ignore_index=True)
    model = tiny_model.save(tmp_path / "model")
    res = tiny_model.score(log)
    write_outputs(tiny_model, res, tmp_path / "out")
    publish(tmp_path / "out", model)
    users = res.users.set_index("user_id")
    touched = log.loc[log["item_id"].isin(targets), "user_id"].unique().tolist()
    batch = SeqBatch.concat([parse_score_request(r, Limits())
                             for r in requests_from_frame(log[log["user_id"].isin(touched + ["u1"])])])[0]
    eng = load_engine(str(model), torch_threads=1)
    sb = detect_stage(eng, encode_stage(eng, batch))
    assert sb.campaigns_version and (users.loc[touched, "campaign_id"].notna()).any()
    for r, uid in enumerate(batch.user_ids):
        u = users.loc[uid]
        assert sb.score[r] == pytest.approx(u["score"], abs=1e-6), uid
        assert (sb.anomalous[r], sb.anomaly_type[r]) == (u["anomalous"], u["anomaly_type"]), uid
        assert sb.campaign_id[r] == (-1 if pd.isna(u["campaign_id"]) else u["campaign_id"]), uid
        if sb.campaign_id[r] < 0 and sb.targeted[r]:
            assert any("a target of campaign" in x for x in sb.reasons[r])
