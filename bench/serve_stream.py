"""ScoreStream figures for bench/serve.py: per-event latency and events/s on streams at several
history lengths against re-scoring the whole history per event (unary Score), on the plain
in-process server, and the memory the per-user state takes (MemoryStore, Redis), measured.

    python bench/serve.py --skip plain1,plain,serve,serve-opt     # the streaming part alone

A user's "history length" L: the user has sent L-1 events on a stream before the measured one
(primed through the stream itself, so every one of them was scored). A stream scores an event
against the user's last W events (W = the bundle's encoder window unless --stream-window), so
its cost should not grow with L; re-scoring sends the user's whole L-event history in one Score.
Stream events/s are measured twice: with the client's frames (ScoreStreamFrames: what the
source has ready goes in one gRPC message, the default) and with one event per message
(ScoreStream, ``frame=1``); latency is one event at a time on ScoreStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np

TOKEN = "bench-token"
LENGTHS = (10, 100, 1000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def plain_server(model: str, max_batch: int, window: int | None):
    """`seqguard serve --no-ray` in a subprocess on 127.0.0.1 (in-process stream state); yields its target."""
    from seqguard_ray.client import SeqGuardClient

    port = _free_port()
    env = {**os.environ, "SEQGUARD_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "seqguard_ray.cli.main", "-q", "serve", "--no-ray", "--model", model,
           "--host", "127.0.0.1", "--grpc-port", str(port), "--max-batch", str(max_batch)]
    p = subprocess.Popen(cmd + (["--stream-window", str(window)] if window else []), env=env, stdout=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                SeqGuardClient(target, TOKEN, retries=0, timeout_s=5).model_info()
                break
            except Exception:
                if time.time() - t0 > 120:
                    raise
                time.sleep(0.5)
        yield target
    finally:
        p.terminate()
        p.wait(30)


WORLD = 0  # the demo generator's seed the bench bundle learned from: its catalogue, tastes and prices


def histories(n_users: int, length: int) -> list[tuple[str, list[dict]]]:
    """``n_users`` users of ``length`` events each: the first ``length`` events of generated users
    with at least that many, from the demo generator's world the bench bundle learned from (seed
    :data:`WORLD`: the same catalogue, tastes and prices; other users; the default attack mix), so
    that about as many are flagged as in that bundle's own traffic. (Slices of another world's log,
    which this bench used before, had nearly every user flagged: each event then paid for the
    explanation.) Items, actions, values and timestamps as generated."""
    from seqguard_ray.synth import generate

    n = max(64, 2 * n_users)
    while True:
        ev = generate(n_users=n, seed=WORLD, events_per_user=1.3 * length + 20).events
        cols = [c for c in ("item_id", "ts", "action", "value") if c in ev]
        out = []
        for u, g in ev.groupby("user_id", sort=False):
            if len(g) >= length:
                recs = g[cols].head(length).to_dict("records")
                out.append((f"L{length}-{u}", [{"item_id": str(r["item_id"]), "ts": int(r["ts"]),
                                                "action": str(r["action"]),
                                                **({"value": float(r["value"])} if np.isfinite(r.get("value", np.nan))
                                                   else {})} for r in recs]))
            if len(out) == n_users:
                return out
        n *= 2


def _stream_latency(target: str, users, start: int, n: int) -> tuple[list[float], float]:
    """Seconds from sending one event on an open stream to its answer, ``n`` times, one at a time;
    and the share of those answers whose user was flagged (they pay for the explanation)."""
    from seqguard_ray.client import SeqGuardClient
    from seqguard_ray.proto.seqguard.v1 import seqguard_pb2 as pb
    from seqguard_ray.runtime.serve.convert import events_to_proto

    c = SeqGuardClient(target, TOKEN, retries=0)
    q: queue.Queue = queue.Queue()
    answers = c._stub.ScoreStream(iter(q.get, None), metadata=c._metadata)
    sid, lat, flagged = f"lat-{start}-{time.time_ns()}", [], 0
    for i in range(n):
        u, evs = users[i % len(users)]
        m = pb.StreamRequest(seq=i + 1, user_id=u, stream_id=sid, event=events_to_proto([evs[start + i // len(users)]])[0])
        t = time.perf_counter()
        q.put(m)
        a = next(answers)
        lat.append(time.perf_counter() - t)
        assert not a.error, a.error
        flagged += a.anomalous
    q.put(None)
    c.close()
    return lat, flagged / n


def _rescore_latency(target: str, users, start: int, n: int) -> list[float]:
    """Seconds of one Score of a user's whole history up to and including the new event."""
    from seqguard_ray.client import SeqGuardClient

    c = SeqGuardClient(target, TOKEN, retries=3, timeout_s=60)
    lat = []
    for i in range(n):
        u, evs = users[i % len(users)]
        t = time.perf_counter()
        c.score(u, evs[: start + i // len(users) + 1])
        lat.append(time.perf_counter() - t)
    return lat


def _throughput(fn, n_threads: int, seconds: float) -> float:
    """Events/s of ``fn(k, stop)`` (returns events done) over ``n_threads`` threads for ``seconds``."""
    done = [0] * n_threads
    stop = threading.Event()

    def run(k):
        done[k] = fn(k, stop)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def one_length(target: str, length: int, *, prime_events: int, n_seq: int, clients: int, seconds: float) -> dict:
    """Prime users to ``length``-1 events through a stream (about ``prime_events`` in all, at least
    one user per client, so the measured events move each history little past ``length``), then
    measure both paths on the next events."""
    from seqguard_ray.client import SeqGuardClient

    n_users = max(clients, prime_events // max(1, length - 1))
    users = histories(n_users, length + 2 + max(50, 20_000 // n_users))
    t0 = time.perf_counter()
    with SeqGuardClient(target, TOKEN, retries=3, timeout_s=60) as c:
        for _ in c.stream(f"prime-{length}").run((u, evs[i]) for i in range(length - 1) for u, evs in users):
            pass
    prime_s = time.perf_counter() - t0
    s_lat, flagged = _stream_latency(target, users, length - 1, n_seq)
    r_lat = _rescore_latency(target, users, length - 1, n_seq)
    pos = [length - 1 + n_seq // n_users + 1] * n_users  # next unsent event of each user
    per = n_users // clients                              # each stream its own users (no shared state)

    def stream_worker(k, stop, frame=None):
        def gen():
            i = 0
            while not stop.is_set():
                j = k * per + i % per
                u, evs = users[j]
                yield u, evs[min(pos[j], len(evs) - 1)]
                pos[j] += 1
                i += 1
        with SeqGuardClient(target, TOKEN, retries=3, timeout_s=60) as c:
            return sum(1 for _ in c.stream(f"tp-{length}-{k}-{frame}", frame=frame).run(gen()))

    def rescore_worker(k, stop):
        n = 0
        with SeqGuardClient(target, TOKEN, retries=3, timeout_s=60) as c:
            while not stop.is_set():
                u, evs = users[(k + n * clients) % n_users]
                c.score(u, evs[:length])
                n += 1
        return n

    s_eps = _throughput(stream_worker, clients, seconds)  # frames (the client's default)
    s1_eps = _throughput(lambda k, stop: stream_worker(k, stop, frame=1), clients, seconds)  # one event a message
    r_eps = _throughput(rescore_worker, clients, seconds)
    grown = float(np.mean(pos)) - (length - 1)
    return {"length": length, "users": n_users, "flagged": flagged, "prime_eps": n_users * (length - 1) / prime_s, "grown": grown,
            "stream_p50": _ms(s_lat, 0.5), "stream_p99": _ms(s_lat, 0.99), "stream_eps": s_eps, "stream1_eps": s1_eps,
            "rescore_p50": _ms(r_lat, 0.5), "rescore_p99": _ms(r_lat, 0.99), "rescore_eps": r_eps}


def _ms(seconds: list[float], q: float) -> float:
    return 1000 * float(np.quantile(seconds, q))


def lengths(target: str, a) -> list[dict]:
    """Every history length of ``a.stream_lengths`` against one server."""
    return [one_length(target, n, prime_events=a.stream_prime_events, n_seq=a.sequential,
                       clients=a.stream_clients, seconds=a.stream_seconds) for n in a.stream_lengths]


def stream_figures(model: str, a) -> list[dict]:
    """Every history length on one plain server (its own subprocess)."""
    with plain_server(model, a.max_batch, a.stream_window) as target:
        return lengths(target, a)


def print_stream_figures(rows: list[dict], clients: int, server: str) -> None:
    print(f"\nScoreStream vs re-scoring the whole history ({server}, {clients} streams / clients):")
    print(f"{'history':>8s} {'stream p50':>10s} {'p99 ms':>7s} {'ev/s':>7s} {'rescore p50':>11s} {'p99 ms':>7s} "
          f"{'ev/s':>7s} {'ev/s x':>7s} {'p50 x':>6s} {'1/msg ev/s':>10s} {'x':>5s} {'users':>6s} {'+events':>7s} "
          f"{'prime ev/s':>10s} {'flagged':>7s}")
    for r in rows:
        print(f"{r['length']:8d} {r['stream_p50']:10.1f} {r['stream_p99']:7.1f} {r['stream_eps']:7.1f} "
              f"{r['rescore_p50']:11.1f} {r['rescore_p99']:7.1f} {r['rescore_eps']:7.1f} "
              f"{r['stream_eps'] / r['rescore_eps']:7.1f} {r['rescore_p50'] / r['stream_p50']:6.1f} "
              f"{r['stream1_eps']:10.1f} {r['stream1_eps'] / r['rescore_eps']:5.1f} {r['users']:6d} "
              f"{r['grown']:7.1f} {r['prime_eps']:10.1f} {100 * r['flagged']:6.0f}%")
    by = {r["length"]: r for r in rows}
    if 1000 in by:
        print(f"at 1,000 events: stream events/s {by[1000]['stream_eps'] / by[1000]['rescore_eps']:.1f}x re-scoring "
              f"(target >= 10x); {by[1000]['stream1_eps'] / by[1000]['rescore_eps']:.1f}x with one event per message")
    if 10 in by and 1000 in by:
        print(f"stream per-event p50 at 1,000 / at 10: {by[1000]['stream_p50'] / by[10]['stream_p50']:.2f}x "
              "(target <= 1.5x)")


# ---------------------------------------------------------------- memory of the per-user state
def _window(rng, w: int):
    """A full user window as the server holds it: new str objects per event (as parsed from
    protobuf), ts in seconds, actions, no value."""
    from seqguard_ray.runtime.serve.sessions import UserWindow

    items = [str(int(x)) for x in rng.integers(0, 50_000, w)]
    ts = [int(t) for t in 1_700_000_000 + np.cumsum(rng.integers(5, 600, w))]
    # new str objects per event, as protobuf parsing gives them (not one shared literal)
    actions = ["".join(("vi", "ew")) if x else "".join(("cl", "ick")) for x in rng.random(w) < 0.8]  # noqa: FLY002
    return UserWindow(items, ts, actions, [None] * w, seen=w, version=0)


def memory_store_bytes(n_users: int, w: int) -> float:
    """Bytes per user held by a MemoryStore of ``n_users`` full ``w``-event windows: traced
    allocations (tracemalloc) left once the windows are stored and the originals dropped."""
    from seqguard_ray.runtime.serve.sessions import (
        Loaded,
        MemoryStore,
        StreamConfig,
        StreamRecord,
    )

    rng = np.random.default_rng(0)
    store = MemoryStore(StreamConfig(max_users=n_users))

    async def fill(wins):
        for k, win in enumerate(wins):
            held = store._streams.get("s")
            await store.commit("s", Loaded(None if held is None else held[1], {}), StreamRecord(k),
                               {f"user-{k:07d}": win})

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    asyncio.run(fill([_window(rng, w) for _ in range(n_users)]))  # the windows as a server receives them
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(store) == n_users
    return (after - before) / n_users


def redis_bytes(n_users: int, w: int) -> float | None:
    """Bytes per user of ``used_memory`` in a fresh redis-server holding ``n_users`` windows as
    RedisStore writes them (key, JSON value, TTL); None without redis-server."""
    import redis

    from seqguard_ray.runtime.serve.sessions import StreamConfig

    exe = shutil.which("redis-server")
    if exe is None:
        return None
    port = _free_port()
    p = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                         stdout=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        before = r.info("memory")["used_memory"]
        rng, prefix, ttl = np.random.default_rng(0), StreamConfig().redis_prefix, int(StreamConfig().ttl_s)
        for start in range(0, n_users, 1000):
            pipe = r.pipeline(transaction=False)
            for k in range(start, min(n_users, start + 1000)):
                win = _window(rng, w)
                win.version = 1
                pipe.set(f"{prefix}u:user-{k:07d}", win.to_json(), ex=ttl)
            pipe.execute()
        used = r.info("memory")["used_memory"] - before
        r.close()
        return used / n_users
    finally:
        p.terminate()
        p.wait(10)


def state_memory(model: str, a) -> dict:
    from seqguard_ray.core.bundle import read_manifest

    w = a.stream_window or read_manifest(model)["train_config"]["max_len"]
    n = a.state_users
    json_b = len(_window(np.random.default_rng(0), w).to_json())
    out = {"window": w, "users": n, "json_bytes": json_b, "memory": memory_store_bytes(n, w),
           "redis": redis_bytes(n, w)}
    return out


def print_state_memory(m: dict) -> None:
    per = 100_000
    print(f"\nper-user stream state, full windows of W={m['window']} events (measured on {m['users']} users):")
    print(f"  JSON value: {m['json_bytes']} bytes")
    print(f"  MemoryStore (tracemalloc): {m['memory']:.0f} bytes/user -> {m['memory'] * per / 2**20:.0f} MiB per 100k users")
    if m["redis"] is None:
        print("  Redis: redis-server not installed, not measured")
    else:
        print(f"  Redis used_memory: {m['redis']:.0f} bytes/user -> {m['redis'] * per / 2**20:.0f} MiB per 100k users")


def add_arguments(p) -> None:
    p.add_argument("--stream-lengths", type=lambda s: [int(x) for x in s.split(",")], default=list(LENGTHS),
                   help="history lengths of the streaming figures (default 10,100,1000)")
    p.add_argument("--stream-prime-events", type=int, default=2000,
                   help="events streamed to prime the users of one history length (more users at short lengths)")
    p.add_argument("--stream-clients", type=int, default=2, help="concurrent streams (and Score clients)")
    p.add_argument("--stream-seconds", type=float, default=6.0, help="throughput window per path and length")
    p.add_argument("--stream-window", type=int, default=None, help="ScoreStream window (default: the bundle's)")
    p.add_argument("--state-users", type=int, default=10_000, help="users whose state is measured (scaled to 100k)")
