"""Failure tests on a multi-node cluster simulated on this machine (issue 5); run by
tests/test_failures.py in its own process (it cannot share the session's local Ray).

    python tests/failure_check.py WORKDIR [--report]

Prints one JSON line last (what the test asserts on); ``--report`` also prints a readable report
of the client counts (sent / succeeded / retried / failed) for docs/operations.md.

The cluster (``ray.cluster_utils.Cluster``; CPU counts are scheduling labels on 2 real cores):

    head    CPU 0                                  Serve controller, gRPC proxy (HeadOnly), driver
    gpu     CPU 1, GPU 1, seqguard.io/pool=gpu     the Encoder (torch falls back to CPU: no real GPU)
    cpu-a   CPU 2  , seqguard.io/pool=cpu          the other stages, as deployments/serve_gpu.yaml
    cpu-b   CPU 2  , seqguard.io/pool=cpu          places them (label_selector)

Steps, in order, on the one cluster:

1. placement   the app deployed with serve_gpu.yaml's placement options; Encoder replicas on the
               GPU node, every other replica on a CPU worker (GCS actor table node ids)
2. node kill   under steady load (client threads, SeqGuardClient with bounded retries), the CPU
               worker holding the ingress is killed (SIGKILL of its raylet and workers)
3. replica kill  under load, ``ray.kill`` of the Encoder replica
4. overload    10x the ingress's max_ongoing + max_queued at once: RESOURCE_EXHAUSTED, no replica
               dies, the replicas' RSS stays bounded, normal service afterwards
5. batch       the app is deleted, a replacement CPU worker joins (the autoscaler's job on a real
               cluster), and ``runtime.ray.batch.score`` runs; the CPU worker running its detector actor
               is killed once the first output part is written; output compared to the engine
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

APP = "seqguard"
POOL = "seqguard.io/pool"
INGRESS_ONGOING, INGRESS_QUEUED = 8, 4          # ingress capacity 12: the overload step sends 10x
RETRY = {"timeout_s": 20, "retries": 12, "backoff_s": 0.3, "max_backoff_s": 4.0}
t_start = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ state
def replicas() -> list[dict]:
    """ALIVE Serve replicas of the app: deployment, node id, pid, actor name (GCS actor table)."""
    import ray

    out = []
    for a in ray._private.state.actors().values():
        name = a.get("Name") or ""
        if a["State"] == "ALIVE" and name.startswith(f"SERVE_REPLICA::{APP}#"):
            out.append({"deployment": name.split("#")[1], "node": a["Address"]["NodeID"], "pid": a["Pid"],
                        "name": name})
    return out


def serve_pids() -> list[int]:
    import ray

    return [a["Pid"] for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and (a.get("Name") or "").startswith("SERVE_")]


def data_actors(stage: str) -> list[dict]:
    """ALIVE Ray Data pool actors running ``stage`` (class names like 'MapWorker(MapBatches(DetectStage))')."""
    import ray

    return [{"node": a["Address"]["NodeID"], "pid": a["Pid"]} for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and f"({stage})" in a["ActorClassName"]]


def app_healthy() -> bool:
    from ray import serve

    st = serve.status().applications.get(APP)
    return (st is not None and str(st.status).endswith("RUNNING")
            and all(str(d.status).endswith("HEALTHY") for d in st.deployments.values()))


def wait_for(cond, timeout_s: float, what: str, every: float = 0.5) -> float:
    t = time.perf_counter()
    while not cond():
        if time.perf_counter() - t > timeout_s:
            raise TimeoutError(f"not {what} after {timeout_s:.0f}s")
        time.sleep(every)
    return time.perf_counter() - t


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ------------------------------------------------------------------------------------------ load
class RetryLog(logging.Handler):
    """Counts the status codes the client retried on (from its own log lines)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.codes: Counter = Counter()

    def emit(self, record):
        if "retry" in record.msg and len(record.args) > 1:
            self.codes[record.args[1]] += 1


class Load:
    """Client threads scoring users in a loop (one SeqGuardClient each, bounded retries).

    Counts logical requests: sent, succeeded (right user, score equal to the engine's), failed
    (an error after the client's retries), and the retries the clients made on the way.
    """

    def __init__(self, target: str, token: str, groups: list, ref: dict, n_threads: int = 3):
        self.target, self.token, self.groups, self.ref = target, token, groups, ref
        self.n_threads = n_threads
        self.sent = self.succeeded = self.wrong = 0
        self.failed: list[str] = []
        self.clients: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        from seqguard_ray.client import SeqGuardClient

        for k in range(self.n_threads):
            c = SeqGuardClient(self.target, self.token, **RETRY)
            self.clients.append(c)
            t = threading.Thread(target=self._run, args=(k, c), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self, k: int, c) -> None:
        import grpc

        i = 0
        while not self._stop.is_set():
            u, recs = self.groups[(i + k) % len(self.groups)]
            with self._lock:
                self.sent += 1
            try:
                r = c.score(u, recs)
                ok = r.user_id == u and abs(r.score - self.ref[u]) < 1e-6
                with self._lock:
                    self.succeeded += ok
                    self.wrong += not ok
            except grpc.RpcError as exc:
                with self._lock:
                    self.failed.append(f"{exc.code().name}: {exc.details()}")
            i += 1
            time.sleep(0.05)

    def done_count(self) -> int:
        with self._lock:
            return self.succeeded

    def stop(self) -> dict:
        self._stop.set()
        for t in self._threads:
            t.join(120)
        for c in self.clients:
            c.close()
        return {"sent": self.sent, "succeeded": self.succeeded, "wrong": self.wrong,
                "retried": sum(c.retried for c in self.clients), "failed": len(self.failed),
                "failed_examples": self.failed[:3]}


def restored(expected: Counter, gone: set) -> bool:
    """Serve has replaced what was lost: the app RUNNING and HEALTHY, as many replicas per deployment
    as before, none of them on a dead node or a killed actor (``gone``: node ids and actor names)."""
    reps = replicas()
    return (Counter(r["deployment"] for r in reps) == expected
            and not any(r["node"] in gone or r["name"] in gone for r in reps) and app_healthy())


def under_load(target, token, groups, ref, fault, codes: RetryLog) -> dict:
    """Steady load; ``fault()`` once 10 answers came back; wait until Serve has replaced what was lost and
    15 more answers came back; the load's counts."""
    codes.codes.clear()
    expected = Counter(r["deployment"] for r in replicas())
    load = Load(target, token, groups, ref).start()
    wait_for(lambda: load.done_count() >= 10, 60, "answering before the fault")
    n0 = load.done_count()
    t = time.perf_counter()
    info = fault()
    gone = set(info.pop("gone"))
    wait_for(lambda: restored(expected, gone), 150, "restored")
    recovered_s = time.perf_counter() - t
    n1 = load.done_count()
    wait_for(lambda: load.done_count() >= n1 + 15, 90, "answering after recovery")
    res = load.stop()
    res.update(info, recovered_s=round(recovered_s, 1),
               answered_before_fault=n0, retried_on=dict(codes.codes))
    return res


# ------------------------------------------------------------------------------------------ steps
def deploy_app(model_dir: Path, token: str) -> str:
    import yaml
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from seqguard_ray.runtime.serve import token_digest
    from seqguard_ray.runtime.serve.app import SERVICER, AppArgs, deploy

    gpu_profile = yaml.safe_load((ROOT / "deployments" / "serve_gpu.yaml").read_text())
    placement = {d["name"]: {k: v for k, v in d.get("ray_actor_options", {}).items()
                             if k in ("label_selector", "resources")}
                 for d in gpu_profile["applications"][0]["deployments"]}
    small = {"num_cpus": 0.1}
    deployments = {
        "SeqGuardIngress": {"num_replicas": 1, "max_ongoing_requests": INGRESS_ONGOING,
                            "max_queued_requests": INGRESS_QUEUED},
        "Encoder": {"num_replicas": 1},
        "DetectorEnsemble": {"num_replicas": 2},
        "RepairPolicy": {"num_replicas": 1},
    }
    for name, d in deployments.items():
        d["ray_actor_options"] = {**small, **placement[name]}
        d["health_check_period_s"] = 2
    port = _free_port()
    # HeadOnly: every simulated node shares this machine's IP, so one proxy per node would clash on the port
    serve.start(proxy_location="HeadOnly", http_options=HTTPOptions(host="127.0.0.1", port=_free_port()),
                grpc_options=gRPCOptions(port=port, grpc_servicer_functions=[SERVICER], request_timeout_s=20))
    # encoder_gpus left unset: the builder sees the cluster's GPU and gives the Encoder num_gpus 1
    deploy(AppArgs(model_dir=str(model_dir), token_sha256=token_digest(token), timeout_s=20, max_batch_size=8,
                   deployments=deployments), name=APP, timeout_s=240)
    return f"127.0.0.1:{port}"


def overload(target: str, token: str, groups: list) -> dict:
    import grpc

    from seqguard_ray.client import SeqGuardClient, _request
    from seqguard_ray.proto.seqguard.v1 import seqguard_pb2_grpc as pb_grpc

    before = {r["name"]: r["pid"] for r in replicas()}
    pids = serve_pids()  # replicas, the gRPC proxy (it holds the queued calls) and the controller
    rss0 = {p: rss_mb(p) for p in pids}
    peak = dict(rss0)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for p in pids:
                peak[p] = max(peak[p], rss_mb(p))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    n = 10 * (INGRESS_ONGOING + INGRESS_QUEUED)
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.SeqGuardStub(channel)
    md = (("authorization", f"Bearer {token}"),)
    t = time.perf_counter()
    futs = [stub.Score.future(_request(*groups[i % len(groups)]), timeout=60, metadata=md) for i in range(n)]
    codes = Counter()
    for f in futs:
        try:
            f.result()
            codes["OK"] += 1
        except grpc.RpcError as exc:
            codes[exc.code().name] += 1
    burst_s = time.perf_counter() - t
    channel.close()
    stop.set()
    sampler.join()
    after = {r["name"]: r["pid"] for r in replicas()}

    def answers() -> bool:  # the proxy's view of the queue lags the burst's end
        try:
            stub.Score(_request(*groups[0]), timeout=20, metadata=md)
            return True
        except grpc.RpcError:
            return False

    channel = grpc.insecure_channel(target)
    stub = pb_grpc.SeqGuardStub(channel)
    wait_for(answers, 60, "answering after the burst")
    channel.close()
    with SeqGuardClient(target, token, timeout_s=20, retries=5) as c:
        normal = [c.score(*groups[i % len(groups)]).user_id == groups[i % len(groups)][0] for i in range(10)]
        retried_after = c.retried
    return {"burst": n, "codes": dict(codes), "burst_s": round(burst_s, 1),
            "replicas_unchanged": before == after, "serve_processes": len(pids),
            "rss_before_mb": round(sum(rss0.values())),
            "rss_peak_mb": round(sum(peak.values())), "max_process_rss_mb": round(max(peak.values())),
            "normal_after": sum(normal), "retried_after": retried_after}


def batch_with_node_kill(cluster, work: Path, model_dir: Path, victims: list) -> dict:
    from seqguard_ray.runtime.ray.batch import BatchOptions, score

    out = work / "batch_out"
    parts = out / "users.parquet"
    kill: dict = {}

    from seqguard_ray.core.bundle import read_manifest

    campaigns = bool(read_manifest(model_dir).get("campaigns"))  # the bundle has a campaign stage

    def killer():
        try:
            t = time.perf_counter()
            while time.perf_counter() - t < 240:
                done = list(parts.glob("part-*.parquet")) if parts.is_dir() else []
                det = data_actors("DetectStage")
                nodes = {n.node_id: n for n in victims}
                hit = [a for a in det if a["node"] in nodes]
                # a detector actor at work on a victim node: with a campaign stage (the default)
                # no part is written before the global pass, so its being up is the mid-run signal
                if hit and (done or campaigns):
                    kill.update(node=hit[0]["node"], parts_at_kill=len(done), t=round(time.perf_counter() - t, 1))
                    cluster.remove_node(nodes[hit[0]["node"]], allow_graceful=False)
                    log(f"batch: killed node {hit[0]['node'][:8]} with {len(done)} part(s) written")
                    return
                time.sleep(0.1)
        except Exception as exc:  # noqa: BLE001 - reported in the result
            kill["error"] = repr(exc)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    t = time.perf_counter()
    summary = score(model_dir, work / "batch.parquet", out, options=BatchOptions(concurrency=1, events_per_bucket=800))
    score_s = time.perf_counter() - t
    th.join(5)
    return {"summary": summary, "kill": kill, "score_s": round(score_s, 1),
            "total_parts": len(list(parts.glob("part-*.parquet")))}


def compare_batch(work: Path, model_dir: Path, summary: dict) -> dict:
    from seqguard_ray.core.pipeline import SeqGuard
    from seqguard_ray.io.outputs import read_output

    sg = SeqGuard.load(model_dir)
    local = sg.score(work / "batch.parquet")
    out = work / "batch_out"
    users = read_output(out, "users")
    ev = read_output(out, "events")
    step = 1.0 / (len(sg.user_detectors.combined_.reference_) + 1) + 1e-9
    res = {"users_out": len(users), "users_local": len(local.users), "events_out": len(ev),
           "events_local": len(local.events), "events_in": summary["events_in"],
           "unique_users": bool(users["user_id"].is_unique), "unique_rows": bool(ev["row"].is_unique),
           "rows_equal": bool(len(ev) == len(local.events)
                              and (ev["row"].to_numpy() == local.events["row"].to_numpy()).all())}
    if res["users_out"] == res["users_local"] and res["unique_users"]:
        u = users.set_index("user_id").loc[local.users["user_id"]]
        du = np.abs(u["score"].to_numpy() - local.users["score"].to_numpy())
        res.update(max_user_score_diff=float(du.max()), share_equal=float((du < 1e-6).mean()), step=step)
    if res["rows_equal"]:
        de = np.abs(ev["event_score"].to_numpy() - local.events["event_score"].to_numpy())
        res.update(max_event_score_diff=float(de.max()), share_events_equal=float((de < 1e-6).mean()))
    return res


# ------------------------------------------------------------------------------------------ main
def main(work: str, report: bool = False) -> dict:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from serving_helpers import TOKEN, score_events

    from seqguard_ray.synth import generate
    from seqguard_ray.core.config import TrainConfig
    from seqguard_ray.core.pipeline import SeqGuard

    w = Path(work)
    w.mkdir(parents=True, exist_ok=True)
    model_dir = w / "model"
    if not (model_dir / "manifest.json").is_file():
        SeqGuard(TrainConfig(epochs=1, hidden_size=32, seed=0)).fit(generate(n_users=80, seed=0).events).save(model_dir)
    generate(n_users=120, seed=1).events.to_parquet(w / "batch.parquet", index=False, row_group_size=2000)
    log("bundle trained")
    sg = SeqGuard.load(model_dir)
    df = score_events(n_users=6).drop(columns="value")  # values make scores batch-dependent (test_serving)
    ref = sg.score(df).users.set_index("user_id")["score"].to_dict()
    groups = [(u, g[["item_id", "ts", "action"]].to_dict("records")) for u, g in df.groupby("user_id")]
    del sg
    retry_log = RetryLog()
    logging.getLogger("seqguard_ray.client").addHandler(retry_log)
    logging.getLogger("seqguard_ray.client").setLevel(logging.INFO)
    logging.getLogger("seqguard_ray.client").propagate = False

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by every node's workers
    result: dict = {}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        # a killed node is declared dead in ~3 s instead of ~15-30 s
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    gpu = cluster.add_node(num_cpus=1, num_gpus=1, resources={"encoder": 1}, labels={POOL: "gpu"})
    cpus = [cluster.add_node(num_cpus=2, labels={POOL: "cpu"}) for _ in range(2)]
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        log("cluster up")
        target = deploy_app(model_dir, TOKEN)
        log("app deployed")

        # 1. placement
        reps = replicas()
        cpu_ids = {n.node_id for n in cpus}
        result["placement"] = {
            "gpu_node": gpu.node_id, "cpu_nodes": sorted(cpu_ids), "head_node": cluster.head_node.node_id,
            "replicas": sorted((r["deployment"], r["node"]) for r in reps),
            "encoder_on_gpu_node": all(r["node"] == gpu.node_id for r in reps if r["deployment"] == "Encoder"),
            "others_on_cpu_nodes": all(r["node"] in cpu_ids for r in reps if r["deployment"] != "Encoder"),
            "n_encoder": sum(r["deployment"] == "Encoder" for r in reps),
            "n_others": sum(r["deployment"] != "Encoder" for r in reps),
        }
        log(f"placement {result['placement']['encoder_on_gpu_node']} {result['placement']['others_on_cpu_nodes']}")

        # 2. a worker node dies under load: the CPU worker with the ingress (else the busiest one)
        def kill_node():
            reps = replicas()
            on = Counter(r["node"] for r in reps if r["node"] in cpu_ids)
            ing = [r["node"] for r in reps if r["deployment"] == "SeqGuardIngress" and r["node"] in cpu_ids]
            victim_id = ing[0] if ing else on.most_common(1)[0][0]
            victim = next(n for n in cpus if n.node_id == victim_id)
            lost = sorted(r["deployment"] for r in reps if r["node"] == victim_id)
            cluster.remove_node(victim, allow_graceful=False)
            cpus.remove(victim)
            cpu_ids.discard(victim_id)
            log(f"node {victim_id[:8]} killed, replicas lost: {lost}")
            return {"replicas_lost": lost, "gone": [victim_id]}

        result["node_kill"] = under_load(target, TOKEN, groups, ref, kill_node, retry_log)
        reps = replicas()
        result["node_kill"]["replicas_after"] = sorted(r["deployment"] for r in reps)
        result["node_kill"]["placement_kept"] = (
            all(r["node"] == gpu.node_id for r in reps if r["deployment"] == "Encoder")
            and all(r["node"] in cpu_ids for r in reps if r["deployment"] != "Encoder"))
        log(f"node kill: {result['node_kill']}")

        # 3. a replica dies under load
        def kill_replica():
            enc = next(r for r in replicas() if r["deployment"] == "Encoder")
            ray.kill(ray.get_actor(enc["name"], namespace="serve"), no_restart=True)
            log(f"replica {enc['name']} killed")
            return {"replica_killed": "Encoder", "gone": [enc["name"]]}

        result["replica_kill"] = under_load(target, TOKEN, groups, ref, kill_replica, retry_log)
        result["replica_kill"]["encoder_on_gpu_node"] = all(
            r["node"] == gpu.node_id for r in replicas() if r["deployment"] == "Encoder")
        log(f"replica kill: {result['replica_kill']}")

        # 4. 10x overload
        result["overload"] = overload(target, TOKEN, groups)
        log(f"overload: {result['overload']}")

        # 5. batch job, its worker node killed mid-run
        serve.delete(APP)
        serve.shutdown()
        cpus.append(cluster.add_node(num_cpus=2, labels={POOL: "cpu"}))  # the replacement node
        cluster.wait_for_nodes()
        b = batch_with_node_kill(cluster, w, model_dir, list(cpus))
        result["batch"] = {"kill": b["kill"], "score_s": b["score_s"], "total_parts": b["total_parts"],
                           "detect_nodes": b["summary"]["detect_nodes"], "encode_nodes": b["summary"]["encode_nodes"],
                           "blocks": b["summary"]["blocks"]}
        log(f"batch: {result['batch']}")
    finally:
        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001
            pass
        ray.shutdown()
        cluster.shutdown()
    result["batch"].update(compare_batch(w, model_dir, b["summary"]))
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    if report:
        print_report(result)
    print(json.dumps(result, default=str))
    return result


def print_report(r: dict) -> None:
    print("seqguard failure tests (simulated cluster: head + GPU node + 2 CPU workers on one machine)")
    print(f"{'fault':<56}{'sent':>6}{'ok':>6}{'retried':>9}{'failed':>8}  recovered  retried on")
    for key, label in (("node_kill", f"worker node killed ({', '.join(r['node_kill']['replicas_lost'])})"),
                       ("replica_kill", "Encoder replica killed (ray.kill)")):
        x = r[key]
        print(f"{label:<56}{x['sent']:>6}{x['succeeded']:>6}{x['retried']:>9}{x['failed']:>8}  "
              f"{x['recovered_s']:>7.1f} s  {x['retried_on']}")
    o = r["overload"]
    print(f"10x overload: {o['burst']} concurrent calls -> {o['codes']}; replicas unchanged: "
          f"{o['replicas_unchanged']}; RSS of {o['serve_processes']} Serve processes {o['rss_before_mb']} -> peak "
          f"{o['rss_peak_mb']} MB; "
          f"afterwards {o['normal_after']}/10 answered")
    b = r["batch"]
    print(f"batch: node killed after {b['kill'].get('parts_at_kill')} of {b['total_parts']} parts; "
          f"{b['events_out']}/{b['events_local']} events, {b['users_out']}/{b['users_local']} users, "
          f"{b.get('share_equal', 0):.1%} user scores equal to the engine's; {b['score_s']} s")
    print(f"total {r['total_s']} s")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--report"]
    main(args[0] if args else "/tmp/seqguard-failures", report="--report" in sys.argv)
