"""Online scoring speed: the Ray Serve app against a plain grpc.aio server, same bundle, same run.

    python bench/serve.py --model model            # or without --model: trains a tiny bundle first
    python bench/serve.py --autoscale              # also: a load ramp, printing Encoder replica counts
    python bench/serve.py --shadow 1.0 --skip serve,serve-opt   # also: plain batching with a rollout candidate
    python bench/serve.py --skip plain1,plain,serve,serve-opt   # only ScoreStream's figures and state memory

Prints sequential p50/p99 latency of Score (one user's sequence) and throughput at --clients
concurrent clients, for: plain server without batching, plain server with batching (both in a
subprocess: `seqguard serve --no-ray`), and the Serve app (ingress + 3 stage deployments);
then the ratios. Then ScoreStream (bench/serve_stream.py): per-event p50/p99 and events/s on
streams at history lengths 10, 100, 1000 against re-scoring the whole history per event, on the
plain server and through the Serve app (``--skip stream`` / ``serve-stream``), and the
measured memory of the per-user state (in process, in Redis) per 100k users. Numbers on a shared
2-core machine are noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import serve_stream  # bench/ is on sys.path when this file runs as a script

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload(n_users: int = 64):
    """Users of the bench bundle's world (serve_stream.WORLD; other users than it learned from)."""
    from seqguard_ray.synth import generate

    ev = generate(n_users=n_users, seed=serve_stream.WORLD).events
    return [(str(u), g[["item_id", "ts", "action", "value"]].to_dict("records")) for u, g in ev.groupby("user_id")]


def wait_ready(target: str, timeout: float = 120) -> None:
    from seqguard_ray.client import SeqGuardClient

    t0 = time.time()
    while True:
        try:
            SeqGuardClient(target, TOKEN, retries=0, timeout_s=5).model_info()
            return
        except Exception:
            if time.time() - t0 > timeout:
                raise
            time.sleep(0.5)


def measure(target: str, work, *, n_seq: int, clients: int, seconds: float) -> dict:
    from seqguard_ray.client import SeqGuardClient

    c = SeqGuardClient(target, TOKEN, retries=3, timeout_s=60)
    for u, recs in work[:5]:
        c.score(u, recs)  # warm-up
    lat = []
    for i in range(n_seq):
        u, recs = work[i % len(work)]
        t = time.perf_counter()
        c.score(u, recs)
        lat.append(time.perf_counter() - t)
    done, errors = [0] * clients, [0] * clients
    stop = threading.Event()

    def run(k):
        cc = SeqGuardClient(target, TOKEN, retries=3, timeout_s=60)
        i = k
        while not stop.is_set():
            u, recs = work[i % len(work)]
            try:
                cc.score(u, recs)
                done[k] += 1
            except Exception:
                errors[k] += 1
            i += clients

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"p50_ms": 1000 * float(np.median(lat)), "p99_ms": 1000 * float(np.quantile(lat, 0.99)),
            "rps": sum(done) / wall, "errors": sum(errors)}


def bundle(path: str, seed: int) -> str:
    """A tiny bundle at ``path`` (trained once, on serve_stream.WORLD's log; ``seed`` the training's)."""
    from seqguard_ray.core.bundle import BundleError, read_manifest
    try:
        read_manifest(path)
    except BundleError:  # missing, or written by another seqguard version
        from seqguard_ray import SeqGuard, TrainConfig
        from seqguard_ray.synth import generate
        ev = generate(n_users=150, seed=serve_stream.WORLD).events
        SeqGuard(TrainConfig(epochs=1, hidden_size=32, seed=seed)).fit(ev).save(path)
    return path


def plain(model: str, max_batch: int, work, a, shadow: float | None = None) -> dict:
    port = free_port()
    env = {**os.environ, "SEQGUARD_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "seqguard_ray.cli.main", "-q", "serve", "--no-ray", "--model", model,
                          "--host", "127.0.0.1", "--grpc-port", str(port), "--max-batch", str(max_batch)], env=env,
                         stdout=subprocess.DEVNULL)
    try:
        t0 = time.time()
        wait_ready(f"127.0.0.1:{port}")
        start = time.time() - t0
        if shadow is not None:  # a rollout candidate (the same log, another training seed) scores `shadow` of the users too
            from seqguard_ray.client import SeqGuardClient
            cand = bundle("/tmp/seqguard_bench_candidate_w0", 1)
            SeqGuardClient(f"127.0.0.1:{port}", TOKEN, timeout_s=120).rollout("start", candidate_dir=cand, share=shadow)
        out = {**measure(f"127.0.0.1:{port}", work, n_seq=a.sequential, clients=a.clients, seconds=a.seconds),
               "start_s": start}
        if shadow is not None:
            print_shadow(f"shadow {shadow}", SeqGuardClient(f"127.0.0.1:{port}", TOKEN).rollout("status"))
        return out
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:  # seen once with a candidate on a loaded machine: do not lose the figures
            p.kill()
            p.wait(30)


def replica_counts(app: str = "seqguard") -> dict:
    from ray import serve

    st = serve.status().applications[app].deployments
    return {name: sum(n for s, n in d.replica_states.items() if str(s).endswith("RUNNING")) for name, d in st.items()}


def serve_app(model: str, work, a, *, optimized: bool = False) -> dict:
    """The Serve app on a fresh local Ray; ``optimized`` sets RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for
    every Ray process (user code and handle routing on the replica's own event loop)."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from seqguard_ray.runtime.ray.cluster import start_local_ray
    from seqguard_ray.runtime.serve import token_digest
    from seqguard_ray.runtime.serve.app import SERVICER, AppArgs, deploy

    t0 = time.time()
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1" if optimized else "0"  # inherited by Ray's processes
    start_local_ray(num_cpus=4)
    port = free_port()
    try:
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=free_port()),
                    grpc_options=gRPCOptions(port=port, grpc_servicer_functions=[SERVICER], request_timeout_s=60))
        deployments = {}
        if a.autoscale:
            deployments["Encoder"] = {"autoscaling_config": {
                "min_replicas": 1, "initial_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
                "upscale_delay_s": 2, "downscale_delay_s": 10, "metrics_interval_s": 1, "look_back_period_s": 3}}
        deploy(AppArgs(model_dir=model, token_sha256=token_digest(TOKEN), max_batch_size=a.max_batch,
                       max_concurrent_batches=a.concurrent_batches, deployments=deployments,
                       stream={"window": a.stream_window} if a.stream_window else {}))
        target = f"127.0.0.1:{port}"
        wait_ready(target)
        start = time.time() - t0
        out = {**measure(target, work, n_seq=a.sequential, clients=a.clients, seconds=a.seconds), "start_s": start}
        if not optimized and "serve-stream" not in a.skip:  # ScoreStream through the app (in-process state)
            out["stream_rows"] = serve_stream.lengths(target, a)
        if not optimized and a.shadow is not None:
            out["shadow"] = serve_shadow(target, work, a)
        if a.autoscale and (optimized or "serve-opt" in a.skip):  # the ramp runs once, in the last Serve app
            ramp(target, work, a)
        return out
    finally:
        serve.shutdown()
        ray.shutdown()


def print_shadow(label: str, st) -> None:
    """One line of a RolloutStatus: users shadowed and shed, candidate errors, each bundle's latency."""
    print(f"{label}: {st.shadowed_users} users shadowed, {st.skipped_users} skipped while busy, "
          f"{st.candidate_errors} errors; live {st.live_latency_ms:.1f} ms, candidate "
          f"{st.candidate_latency_ms:.1f} ms per shadowed batch", flush=True)


def serve_shadow(target: str, work, a) -> dict:
    """The same unary workload once more on the running app with a rollout candidate shadowing
    ``a.shadow`` of the users (the ingress puts it into the app's config; promotion is not tried)."""
    from seqguard_ray.client import SeqGuardClient

    c = SeqGuardClient(target, TOKEN, timeout_s=120)
    cand = bundle("/tmp/seqguard_bench_candidate_w0", 1)
    c.rollout("start", candidate_dir=cand, share=a.shadow)
    t0 = time.time()
    while not c.rollout("status").candidate_version:  # every replica reconfigured with the candidate
        if time.time() - t0 > 120:
            raise RuntimeError("the Serve app never picked the rollout candidate up")
        time.sleep(1)
    out = {**measure(target, work, n_seq=a.sequential, clients=a.clients, seconds=a.seconds), "start_s": 0.0}
    print_shadow(f"Serve shadow {a.shadow}", c.rollout("status"))
    c.rollout("abort")
    return out


def ramp(target: str, work, a) -> None:
    """Clients 1 -> clients -> 0; print replica counts every 2 s."""
    from seqguard_ray.client import SeqGuardClient

    stop_flags = []

    def run(k, stop):
        c = SeqGuardClient(target, TOKEN, retries=5, timeout_s=60)
        i = k
        while not stop.is_set():
            try:
                c.score(*work[i % len(work)])
            except Exception:
                pass
            i += 7

    print("\nautoscaling ramp (Encoder target_ongoing_requests=1, max 3 replicas):")
    t0 = time.time()
    schedule = [(0, 1), (10, a.clients), (50, 0), (90, None)]
    for (start, n), (nxt, _) in zip(schedule[:-1], schedule[1:]):
        for f in stop_flags:
            f.set()
        stop_flags = []
        for k in range(n):
            ev = threading.Event()
            stop_flags.append(ev)
            threading.Thread(target=run, args=(k, ev), daemon=True).start()
        while time.time() - t0 < nxt:
            print(f"  t={time.time() - t0:5.1f}s clients={n:2d} replicas={replica_counts()}", flush=True)
            time.sleep(2)
    for f in stop_flags:
        f.set()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="bundle dir (default: train a tiny one into /tmp)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="throughput window per server")
    p.add_argument("--sequential", type=int, default=50, help="sequential requests for p50/p99")
    p.add_argument("--max-batch", type=int, default=64, help="most requests merged per call (both servers)")
    p.add_argument("--concurrent-batches", type=int, default=2, help="Serve ingress max_concurrent_batches")
    p.add_argument("--autoscale", action="store_true", help="also run a load ramp and print Encoder replicas")
    p.add_argument("--skip", default="",
                   help="comma list of: plain1,plain,serve,serve-opt,stream,serve-stream,state")
    p.add_argument("--shadow", type=float, default=None, metavar="SHARE",
                   help="also run the batching plain server and the Serve app with a rollout candidate shadowing "
                        "SHARE of the users")
    serve_stream.add_arguments(p)
    a = p.parse_args()
    model = str(Path(a.model or bundle("/tmp/seqguard_bench_bundle", 0)).resolve())
    work = workload()
    skip = set(filter(None, a.skip.split(",")))
    res = {}
    if "plain1" not in skip:
        res["plain (no batching)"] = plain(model, 1, work, a)
    if "plain" not in skip:
        res["plain (batching)"] = plain(model, a.max_batch, work, a)
    if a.shadow is not None:
        res[f"plain, shadow {a.shadow:g}"] = plain(model, a.max_batch, work, a, shadow=a.shadow)
    stream_rows = serve_stream.stream_figures(model, a) if "stream" not in skip else []
    state = serve_stream.state_memory(model, a) if "state" not in skip else None
    if "serve" not in skip:
        res["Ray Serve app"] = serve_app(model, work, a)
        if "shadow" in res["Ray Serve app"]:
            res[f"Serve, shadow {a.shadow:g}"] = res["Ray Serve app"].pop("shadow")
    if "serve-opt" not in skip:
        res["Serve, optimized"] = serve_app(model, work, a, optimized=True)
    print(f"\n{'server':22s} {'start s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {f'rps@{a.clients}':>9s} {'errors':>6s}")
    for k, r in res.items():
        print(f"{k:22s} {r['start_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['rps']:9.1f} {r['errors']:6d}")
    for server, base in (("plain", "plain (batching)"), ("Serve", "Ray Serve app")):
        s, b = res.get(f"{server}, shadow {a.shadow:g}") if a.shadow is not None else None, res.get(base)
        if s and b:
            print(f"shadow {a.shadow:g} vs none ({base}): throughput {100 * s['rps'] / b['rps']:.0f}%, "
                  f"p50 {s['p50_ms'] / b['p50_ms']:.2f}x, p99 {s['p99_ms'] / b['p99_ms']:.2f}x")
    for name, base in itertools.product(("Ray Serve app", "Serve, optimized"), ("plain (no batching)", "plain (batching)")):
        s, b = res.get(name), res.get(base)
        if s and b:
            print(f"{name} vs {base}: throughput {100 * s['rps'] / b['rps']:.0f}% (target >= 35%), "
                  f"p50 {s['p50_ms'] / b['p50_ms']:.2f}x (target <= 3x)")
    if stream_rows:
        serve_stream.print_stream_figures(stream_rows, a.stream_clients, "plain server")
    if res.get("Ray Serve app", {}).get("stream_rows"):
        serve_stream.print_stream_figures(res["Ray Serve app"]["stream_rows"], a.stream_clients, "Ray Serve app")
    if state is not None:
        serve_stream.print_state_memory(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
