"""ScoreStream: the state stores (bounds, TTL, JSON, optimistic commits), and the plain grpc.aio
server end to end with a tiny bundle: answers equal Repair/Score of the same windows, replays,
delete, auth, bad messages, resume over Redis (fakeredis, and a real redis-server when installed),
and LOST when in-process state is gone."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest
import serving_helpers
from serving_helpers import TOKEN, PlainServer, score_events, tiny_bundle

from seqguard_ray.client import SeqGuardClient, StreamSession
from seqguard_ray.proto.seqguard.v1 import seqguard_pb2 as pb
from seqguard_ray.runtime.serve import (
    Authenticator,
    Limits,
    ScoringService,
    token_digest,
)
from seqguard_ray.runtime.serve.convert import events_to_proto, stream_action
from seqguard_ray.runtime.serve.sessions import (
    REDIS_PASSWORD_ENV,
    Conflict,
    MemoryStore,
    RedisStore,
    StreamConfig,
    StreamRecord,
    UserWindow,
    redis_client,
    state_sizes,
)

SC = grpc.StatusCode
W = 5  # the stream window in these tests: small, so windows slide


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------- config and values
def test_stream_config_names_the_bad_setting():
    with pytest.raises(ValueError, match="unknown stream setting"):
        StreamConfig.from_dict({"windw": 3})
    with pytest.raises(ValueError, match="window must be a positive integer"):
        StreamConfig(window=0)
    with pytest.raises(ValueError, match="ttl_s"):
        StreamConfig(ttl_s=float("inf"))
    with pytest.raises(ValueError, match=r"max_in_flight \(4\) must be >= max_batch \(8\)"):
        StreamConfig(max_batch=8, max_in_flight=4)
    with pytest.raises(ValueError, match=r"redis_url must start with .*'http://u:\*\*\*@h'"):
        StreamConfig(redis_url="http://u:secret@h")
    # the window: the config's, else the encoder's, never above the history cap
    assert StreamConfig().window_for(128, 10_000) == 128
    assert StreamConfig(window=300).window_for(128, 200) == 200
    assert StreamConfig(window=7).window_for(None, None) == 7


def test_user_window_keeps_the_last_w_events_and_round_trips_as_json():
    w = UserWindow()
    for i in range(8):
        w = w.appended(f"i{i}", 1_700_000_000 + i, "view" if i % 2 else "", None if i % 3 else 1.5, 3)
    assert w.item == ["i5", "i6", "i7"] and w.seen == 8 and len(w) == 3
    back = UserWindow.from_json(w.to_json())
    assert back == w and "pickle" not in w.to_json()
    rec = StreamRecord()
    for q in range(1, 6):
        rec.add(q, bytes([q]) * 3, keep=2)
    assert rec.last_seq == 5 and list(rec.answers) == [4, 5]
    assert StreamRecord.from_json(rec.to_json()) == rec


def test_state_sizes_are_small_and_linear_in_the_window():
    s128, s256 = state_sizes(128), state_sizes(256)
    assert s128["user_window"] < 8_000 and s256["user_window"] < 2 * s128["user_window"] + 100
    print("bytes per user at W=128:", s128["user_window"], "W=256:", s256["user_window"],
          "per stream record (64 answers):", s128["stream_record"])


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _commit(store, stream, users: dict[str, int]):
    """Append one event to each user (creating it), as a batch of ``stream`` would."""
    async def go():
        loaded = await store.load(stream, users)
        rec = loaded.stream or StreamRecord()
        new = {u: (loaded.users[u] or UserWindow()).appended("i", 1_700_000_000 + n, "", None, 3)
               for u, n in users.items()}
        rec.add(rec.last_seq + 1, b"a", 4)
        await store.commit(stream, loaded, rec, new)
    run(go())


def test_memory_store_is_bounded_by_users_lru_and_ttl():
    clock = Clock()
    store = MemoryStore(StreamConfig(max_users=3, max_streams=2, ttl_s=10), clock=clock)
    for u in ("a", "b", "c"):
        _commit(store, "s1", {u: 1})
    run(store.load("s1", ["a"]))           # a is used: b is now the least recently used
    _commit(store, "s2", {"d": 1})
    held = run(store.load("s1", ["a", "b", "c", "d"])).users
    assert [u for u, w in held.items() if w is not None] == ["a", "c", "d"] and len(store) == 3
    _commit(store, "s3", {"a": 2})         # a third stream record: the oldest (s1) goes... unless just used
    assert sum(run(store.load(s, [])).stream is not None for s in ("s1", "s2", "s3")) == 2
    clock.t = 10.5                          # past the TTL of everything
    assert all(w is None for w in run(store.load("s3", ["a", "c", "d"])).users.values())
    assert run(store.load("s3", [])).stream is None


@pytest.mark.parametrize("kind", ["memory", "fakeredis"])
def test_a_commit_over_changed_state_conflicts_and_writes_nothing(kind):
    async def go():
        if kind == "memory":
            store = MemoryStore(StreamConfig())
        else:
            import fakeredis

            store = await RedisStore.open(StreamConfig(), fakeredis.FakeAsyncRedis())
        first = await store.load("s", ["u"])
        second = await store.load("s", ["u"])
        await store.commit("s", first, StreamRecord(1), {"u": UserWindow().appended("i", 1_700_000_000, "", None, 3)})
        with pytest.raises(Conflict):
            await store.commit("s", second, StreamRecord(1), {"u": UserWindow().appended("j", 1_700_000_001, "", None, 3)})
        now = await store.load("s", ["u"])
        assert now.users["u"].item == ["i"] and now.stream.last_seq == 1 and now.users["u"].version == 1
        await store.commit("s", now, StreamRecord(2), {"u": None})  # delete
        assert (await store.load("s", ["u"])).users["u"] is None
        assert store.epoch.startswith("mem-" if kind == "memory" else "redis-")
        await store.close()
    run(go())


def test_redis_store_keys_expire_and_the_epoch_outlives_a_client():
    import fakeredis

    async def go():
        server = fakeredis.FakeServer()
        cfg = StreamConfig(ttl_s=60, redis_prefix="t:")
        a = await RedisStore.open(cfg, fakeredis.FakeAsyncRedis(server=server))
        loaded = await a.load("s", ["u"])
        await a.commit("s", loaded, StreamRecord(1), {"u": UserWindow().appended("i", 1_700_000_000, "", None, 3)})
        raw = fakeredis.FakeAsyncRedis(server=server)
        assert 0 < await raw.ttl("t:u:u") <= 60 and 0 < await raw.ttl("t:s:s") <= 60
        b = await RedisStore.open(cfg, fakeredis.FakeAsyncRedis(server=server))
        assert b.epoch == a.epoch and (await b.load("s", ["u"])).users["u"].item == ["i"]
        for s in (a, b):
            await s.close()
        await raw.aclose()
    run(go())


def test_redis_client_takes_the_password_from_the_environment_and_tls_files_only_with_rediss():
    c = redis_client(StreamConfig(redis_url="redis://127.0.0.1:1/0"), env={REDIS_PASSWORD_ENV: "pw"})
    assert c.connection_pool.connection_kwargs["password"] == "pw"
    with pytest.raises(ValueError, match="need a rediss://"):
        redis_client(StreamConfig(redis_url="redis://h:1", redis_ca_file="ca.pem"), env={})
    tls = redis_client(StreamConfig(redis_url="rediss://h:1", redis_ca_file="ca.pem"), env={})
    assert tls.connection_pool.connection_kwargs["ssl_ca_certs"] == "ca.pem"
    with pytest.raises(ValueError, match="no Redis URL"):
        redis_client(StreamConfig(), env={})


def test_app_args_and_cli_check_stream_settings(caplog):
    import argparse

    from seqguard_ray.cli import serve_commands
    from seqguard_ray.runtime.serve.app import AppArgs, check_app_args, ingress_kwargs

    with pytest.raises(ValueError, match="unknown stream setting"):
        check_app_args(AppArgs(model_dir="m", stream={"windw": 8}))
    with caplog.at_level("WARNING"):
        args = check_app_args(AppArgs(model_dir="m", insecure_no_auth=True, stream={"window": 8},
                                      deployments={"SeqGuardIngress": {"num_replicas": 2}}))
    assert "stream.redis_url" in caplog.text  # in-process state with several ingress replicas: said
    assert ingress_kwargs(args)["stream"] == {"max_open_streams": 32, "window": 8}  # half the ingress slots
    p = argparse.ArgumentParser()
    serve_commands.add_parser(p.add_subparsers())
    given = serve_commands._stream(p.parse_args(["serve", "--model", "m", "--state-redis", "rediss://h:6380/0",
                                                 "--state-redis-ca", "ca.pem", "--stream-window", "32"]))
    assert given == {"redis_url": "rediss://h:6380/0", "redis_ca_file": "ca.pem", "window": 32}
    with pytest.raises(ValueError, match="SEQGUARD_REDIS_PASSWORD"):
        serve_commands._stream(p.parse_args(["serve", "--model", "m", "--state-redis", "redis://:pw@h:6379"]))


def test_stream_action_words():
    assert stream_action(True, 1.0, "pass") == "keep"
    assert stream_action(True, 0.5, "downweight") == "down_weight"
    assert stream_action(False, 0.0, "drop_events") == "drop"
    assert stream_action(True, 1.0, "quarantine") == "block_user"


# --------------------------------------------------------------------------- plain server, end to end
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def engine(bundle):
    from seqguard_ray.runtime.serve import load_engine
    return load_engine(str(bundle), torch_threads=1)


class CountingBackend:
    """An InProcessBackend that counts the windows sent to its repair path (events scored)."""

    def __init__(self, inner):
        self.inner, self.windows = inner, 0

    async def repair(self, batch):
        self.windows += batch.n_seqs
        return await self.inner.repair(batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _server(engine, bundle, *, store=None, address="127.0.0.1:0", **stream):
    from seqguard_ray.runtime.serve import InProcessBackend

    backend = CountingBackend(InProcessBackend(engine, model_dir=str(bundle)))
    service = ScoringService(backend, Authenticator(token_digest(TOKEN)), Limits(max_message_bytes=200_000),
                             stream=StreamConfig(window=W, **stream), store=store)
    return PlainServer(service, backend.inner, address), backend


@pytest.fixture(scope="module")
def plain(engine, bundle):
    srv, backend = _server(engine, bundle)
    srv.counting = backend
    yield srv
    srv.stop()


def _client(port, token=TOKEN, **kw):
    kw.setdefault("timeout_s", 30)
    kw.setdefault("retries", 0)
    return SeqGuardClient(f"127.0.0.1:{port}", token, **kw)


def _feed(n_users=4):
    """Interleaved (user_id, event dict) pairs of demo users, each user's events in time order."""
    df = score_events(n_users=n_users)
    df = df.assign(k=df.groupby("user_id").cumcount()).sort_values(["k", "user_id"], kind="stable")
    return [(u, {"item_id": str(i), "ts": int(t), "action": a, "value": v})
            for u, i, t, a, v in df[["user_id", "item_id", "ts", "action", "value"]].itertuples(index=False)]


def test_stream_answers_equal_repair_of_the_same_windows(plain):
    feed = _feed()
    with _client(plain.port) as c:
        answers = list(c.stream().run(feed))
        assert [a.seq for a in answers] == list(range(1, len(feed) + 1))
        history: dict[str, list] = {}
        for (u, ev), a in zip(feed, answers):
            history.setdefault(u, []).append(ev)
            window = history[u][-W:]
            assert not a.error and a.user_id == u and a.window_events == len(window)
            assert a.state == (pb.STREAM_STATE_NEW if len(history[u]) == 1 else pb.STREAM_STATE_CONTINUED)
            rep = c.repair(u, window)
            s = rep.score
            assert a.user_score == pytest.approx(s.score, abs=1e-9) and a.anomalous == s.anomalous
            assert a.event_score == pytest.approx(s.event_scores[-1], abs=1e-9)
            assert a.anomaly_type == s.anomaly_type and list(a.reasons)[:len(s.reasons)] == list(s.reasons)
            assert a.action == stream_action(rep.kept[-1], rep.weights[-1] if rep.kept[-1] else 0.0, rep.user_action)
            assert a.model_version == s.model_version and a.threshold == s.threshold
    assert any(a.anomalous for a in answers), "the demo users should include a flagged one"


def test_a_resent_seq_is_replayed_not_rescored_and_delete_forgets_the_user(plain):
    feed = _feed(2)[:6]
    sid = "replay-1"
    with _client(plain.port) as c:
        first = list(c.stream(sid).run(feed))
        before = plain.counting.windows
        meta = (("authorization", f"Bearer {TOKEN}"),)
        again = [pb.StreamRequest(seq=q, user_id=feed[q - 1][0], stream_id=sid, resume=True,
                                  event=pb.Event(item_id="x", ts=1_700_000_000)) for q in (2, 3)]
        replayed = list(c._stub.ScoreStream(iter(again), metadata=meta))
        assert plain.counting.windows == before  # nothing scored
        assert [a.replayed for a in replayed] == [True, True]
        for a, b in zip(replayed, first[1:3]):
            a.replayed = False
            assert a == b
        u = feed[0][0]
        tail = list(c._stub.ScoreStream(iter([
            pb.StreamRequest(seq=7, user_id=u, stream_id=sid, delete_user=True),
            pb.StreamRequest(seq=8, user_id=u, event=pb.Event(item_id="1", ts=1_700_000_000)),
        ]), metadata=meta))
        assert tail[0].deleted and tail[0].seq == 7
        assert tail[1].state == pb.STREAM_STATE_NEW and tail[1].window_events == 1


def test_frames_carry_the_same_answers_as_one_message_each_and_are_bounded(plain):
    """ScoreStreamFrames: requests in frames, answers in frames, the same answers as ScoreStream
    for the same windows (other user ids, so the two runs' states are apart); a frame over the
    server's max_stream_frame (ModelInfo), or an empty one, is refused naming the limit."""
    feed = _feed(2)[:12]
    meta = (("authorization", f"Bearer {TOKEN}"),)

    def msgs(prefix, sid):
        return [pb.StreamRequest(seq=i + 1, user_id=prefix + u, stream_id=sid, event=events_to_proto([ev])[0])
                for i, (u, ev) in enumerate(feed)]

    with _client(plain.port) as c:
        most = c.model_info().max_stream_frame
        assert most == StreamConfig().max_in_flight
        single = list(c._stub.ScoreStream(iter(msgs("a-", "single-1")), metadata=meta))
        framed_in = msgs("b-", "framed-1")
        frames = [pb.StreamFrame(requests=framed_in[i:i + 5]) for i in range(0, len(framed_in), 5)]  # 5, 5, 2
        out = list(c._stub.ScoreStreamFrames(iter(frames), metadata=meta))
        answers = [a for f in out for a in f.answers]
        assert all(len(f.answers) >= 1 for f in out) and len(out) <= len(answers)
        assert [a.seq for a in answers] == [a.seq for a in single] == list(range(1, len(feed) + 1))
        for a, b in zip(answers, single):
            assert a.user_id == "b-" + b.user_id[2:] and not a.error
            a.user_id = b.user_id
            assert a == b
        session = c.stream()
        assert [a.seq for a in session.run(feed[:3])] == [1, 2, 3] and session.frame == min(StreamSession.FRAME, most)
        for bad in ([], framed_in[:1] * (most + 1)):
            with pytest.raises(grpc.RpcError) as e:
                list(c._stub.ScoreStreamFrames(iter([pb.StreamFrame(requests=bad)]), metadata=meta))
            assert e.value.code() == SC.INVALID_ARGUMENT
            assert f"holds {len(bad)} requests" in e.value.details() and "max_stream_frame" in e.value.details()
    with pytest.raises(ValueError, match="frame must be a positive integer"):
        StreamSession(None, frame=0)


@pytest.mark.parametrize("frame", [None, 1], ids=["frames", "one-per-message"])
def test_an_error_of_the_source_is_raised_after_the_answers_before_it(plain, frame):
    feed = _feed(2)[:5]

    def source():
        yield from feed
        raise KeyError("the consumer lost its partition")

    got = []
    with _client(plain.port) as c, pytest.raises(KeyError, match="lost its partition"):
        for a in c.stream(frame=frame).run(source()):
            got.append(a.seq)
    assert got == [1, 2, 3, 4, 5]
    with _client(plain.port) as c, pytest.raises(ValueError, match="has no item_id"):
        list(c.stream(frame=frame).run([feed[0], ("u", {"ts": 1_700_000_000})]))


def test_streams_need_the_token_and_bad_messages_name_the_field(plain):
    with _client(plain.port, None) as c:
        with pytest.raises(grpc.RpcError) as e:
            list(c.stream().run(_feed(1)[:1]))
        assert e.value.code() == SC.UNAUTHENTICATED
    meta = (("authorization", f"Bearer {TOKEN}"),)
    msgs = [pb.StreamRequest(seq=1, user_id="u", stream_id="bad-1", event=pb.Event(item_id="", ts=1_700_000_000)),
            pb.StreamRequest(seq=2, user_id="", event=pb.Event(item_id="a", ts=1_700_000_000)),
            pb.StreamRequest(seq=3, user_id="u"),
            pb.StreamRequest(seq=4, user_id="u", event=pb.Event(item_id="a", ts=1_700_000_000)),
            pb.StreamRequest(seq=5, user_id="u", event=pb.Event(item_id="a", ts=1_700_000_000_000))]
    with _client(plain.port) as c:
        out = list(c._stub.ScoreStream(iter(msgs), metadata=meta))
        assert [a.seq for a in out] == [1, 2, 3, 4, 5]
        assert out[0].error == "event.item_id is empty" and "user_id is empty" in out[1].error
        assert "event is missing" in out[2].error and not out[3].error and out[3].window_events == 1
        assert "event.ts" in out[4].error and "window" in out[4].error  # ms after an event in seconds
        for bad, text in ((pb.StreamRequest(seq=1, user_id="u", event=pb.Event(item_id="a", ts=1_700_000_000)),
                           "stream_id is empty"),
                          (pb.StreamRequest(user_id="u", stream_id="x"), "seq is 0")):
            with pytest.raises(grpc.RpcError) as e:
                list(c._stub.ScoreStream(iter([bad]), metadata=meta))
            assert e.value.code() == SC.INVALID_ARGUMENT and text in e.value.details()


def _stop_after(k, srv_box, start_next):
    """A feed wrapper that, after ``k`` items, stops the current server and starts the next one."""
    def gen(feed):
        for i, item in enumerate(feed):
            if i == k:
                srv_box[0].stop()
                srv_box[0] = start_next()
            yield item
    return gen


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resume_across_servers(engine, bundle, make_store, frame=None):
    """Stream a feed, kill the server after 9 messages and start another on the same port over
    ``make_store()``; returns (answers, session, windows scored by both servers, the feed).
    ``frame``: the session's (None: frames of up to the first server's max_in_flight, 2)."""
    feed = _feed(3)[:18]
    port = _free_port()
    first, b1 = _server(engine, bundle, store=make_store(), address=f"127.0.0.1:{port}", max_batch=2,
                        max_in_flight=2)
    counts = [b1]

    def start_next():
        srv, b = _server(engine, bundle, store=make_store(), address=f"127.0.0.1:{port}")
        counts.append(b)
        return srv

    box = [first]
    try:
        with _client(port, retries=10, backoff_s=0.05) as c:
            session = c.stream("resume-1", max_unacked=2, frame=frame)
            answers = list(session.run(_stop_after(9, box, start_next)(feed)))
    finally:
        box[0].stop()
    return answers, session, sum(b.windows for b in counts), feed


def _uninterrupted(engine, bundle, feed):
    srv, _ = _server(engine, bundle)
    try:
        with _client(srv.port) as c:
            return list(c.stream().run(feed))
    finally:
        srv.stop()


@pytest.mark.parametrize("frame", [None, 1], ids=["frames", "one-per-message"])
def test_resume_over_redis_after_the_server_dies_scores_every_event_once(engine, bundle, frame):
    import fakeredis

    server = fakeredis.FakeServer()

    def make_store():
        return run(RedisStore.open(StreamConfig(window=W), fakeredis.FakeAsyncRedis(server=server)))

    answers, session, scored, feed = _resume_across_servers(engine, bundle, make_store, frame)
    ref = _uninterrupted(engine, bundle, feed)
    assert session.reconnects >= 1 and not session.state_reset
    assert session.frame == (2 if frame is None else 1)  # ScoreStreamFrames up to the server's max_stream_frame
    assert [a.seq for a in answers] == list(range(1, len(feed) + 1))
    assert scored == len(feed)  # no event scored twice (nor lost)
    for a, r in zip(answers, ref):
        assert a.user_score == pytest.approx(r.user_score, abs=1e-9) and a.event_score == pytest.approx(r.event_score, abs=1e-9)
        assert a.window_events == r.window_events and a.action == r.action and a.state == r.state


def test_resume_without_redis_on_a_fresh_server_says_lost(engine, bundle):
    answers, session, _, _ = _resume_across_servers(engine, bundle, lambda: None)
    assert session.reconnects >= 1 and session.state_reset  # the new server's memory is another epoch
    after = [a for a in answers if a.state_epoch != answers[0].state_epoch]
    assert after and all(a.state == pb.STREAM_STATE_LOST for a in after)
    assert all(a.state != pb.STREAM_STATE_LOST for a in answers if a.state_epoch == answers[0].state_epoch)
    # the restarted server did not carry on silently: each user's window starts again from its event
    firsts = {}
    for a in after:
        firsts.setdefault(a.user_id, a)
    assert all(a.window_events == 1 for a in firsts.values())


# --------------------------------------------------------------------------- a real redis-server
@pytest.fixture
def redis_server(tmp_path):
    """A redis-server on 127.0.0.1 with a password (requirepass), on a free port."""
    password = "test-redis-pw"
    with serving_helpers.redis_server(tmp_path, password) as url:
        yield url, password


def test_resume_over_a_real_redis_server_with_auth(engine, bundle, redis_server, monkeypatch):
    url, password = redis_server
    cfg = StreamConfig(window=W, redis_url=url)
    with pytest.raises(Exception, match="(?i)auth"):  # no password: refused
        run(RedisStore.open(cfg, redis_client(cfg, env={})))
    monkeypatch.setenv(REDIS_PASSWORD_ENV, password)

    feed = _feed(3)[:18]  # each server opens its own store from the config, the password from the environment
    port = _free_port()
    srv_kw = {"redis_url": url}
    first, b1 = _server(engine, bundle, address=f"127.0.0.1:{port}", max_batch=2, max_in_flight=2, **srv_kw)
    counts = [b1]

    def start_next():
        srv, b = _server(engine, bundle, address=f"127.0.0.1:{port}", **srv_kw)
        counts.append(b)
        return srv

    box = [first]
    try:
        with _client(port, retries=10, backoff_s=0.05) as c:
            session = c.stream("real-redis-1", max_unacked=2)
            answers = list(session.run(_stop_after(9, box, start_next)(feed)))
    finally:
        box[0].stop()
    ref = _uninterrupted(engine, bundle, feed)
    assert session.reconnects >= 1 and not session.state_reset
    assert [a.seq for a in answers] == list(range(1, len(feed) + 1)) and sum(b.windows for b in counts) == len(feed)
    for a, r in zip(answers, ref):
        assert a.user_score == pytest.approx(r.user_score, abs=1e-9) and a.action == r.action and a.state == r.state


# --------------------------------------------------------------------------- backpressure (no Ray)
class GatedBackend:
    """An InProcessBackend whose repair path waits until ``opened`` is set (answers pile up)."""

    def __init__(self, inner):
        self.inner, self.opened = inner, asyncio.Event()

    async def repair(self, batch):
        await self.opened.wait()
        return await self.inner.repair(batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def _until(cond, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_stream_backpressure_bounds_pending_events_and_refuses_a_new_stream_with_resource_exhausted(engine, bundle):
    """A stream reads at most ``max_in_flight`` messages ahead of its answers; all of a server's
    streams together hold at most ``max_pending_events``; over that a new stream is refused with
    RESOURCE_EXHAUSTED (as Serve sheds a unary call over its queue), and the open ones go on."""
    from seqguard_ray.runtime.serve import InProcessBackend

    feed = _feed(2)[:12]
    meta = (("authorization", f"Bearer {TOKEN}"),)

    async def go():
        backend = GatedBackend(InProcessBackend(engine, model_dir=str(bundle)))
        service = ScoringService(backend, Authenticator(token_digest(TOKEN)), Limits(),
                                 stream=StreamConfig(window=W, max_batch=2, max_in_flight=4, max_pending_events=6))
        pulled: dict[str, int] = {}

        def pending():
            return service._gate.pending if service._gate is not None else 0

        async def requests(sid, n):
            for q, (u, ev) in enumerate(feed[:n], 1):
                pulled[sid] = q
                yield pb.StreamRequest(seq=q, user_id=f"{sid}:{u}", stream_id=sid,  # users of its own
                                       event=pb.Event(item_id=ev["item_id"], ts=ev["ts"], action=ev["action"],
                                                      value=ev["value"]))

        async def consume(sid, n):
            return [r async for r in service.score_stream(requests(sid, n), meta)]

        a = asyncio.create_task(consume("bp-a", len(feed)))
        await _until(lambda: pending() == 4)      # a's own bound: 4 read ahead of its answers
        b = asyncio.create_task(consume("bp-b", len(feed)))
        await _until(lambda: pending() == 6)      # the server's bound: b got the last 2
        await asyncio.sleep(0.1)
        assert pending() == 6 and pulled["bp-a"] <= 4 + 1 and pulled["bp-b"] <= 2 + 1, pulled
        refused = await consume("bp-c", 3)                     # a third stream while the server is full
        assert len(refused) == 1 and refused[0].code == SC.RESOURCE_EXHAUSTED
        assert refused[0].details.startswith("server overloaded") and "retry with backoff" in refused[0].details
        assert "bp-c" not in pulled                            # refused before anything was read
        backend.opened.set()
        for replies in await asyncio.gather(a, b):            # the open streams were only held back
            assert [(r.code, r.details) for r in replies] == [(SC.OK, "")] * len(feed)
            assert [r.message.seq for r in replies] == list(range(1, len(feed) + 1))
        assert service._gate.pending == 0 and service._gate.open == 0
        later = await consume("bp-d", 3)                       # room again: served
        assert [r.code for r in later] == [SC.OK] * 3
        await backend.inner.aclose()

    run(go())
