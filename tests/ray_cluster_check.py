"""Run by tests/test_ray_cluster.py in its own process (it cannot share the session's Ray).

A head and two worker nodes on this machine (ray.cluster_utils.Cluster, fractional CPUs): trains on
Ray with two SPREAD workers, scores with two SPREAD encoder actors, then adds a node with a logical
GPU and scores again (the encoder actors must ask for it and land there), checks placement and
results, and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def main(work: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from seqguard_ray.io.outputs import read_output
    from seqguard_ray.runtime.ray.batch import BatchOptions, score
    from seqguard_ray.runtime.ray.train import RayTrainOptions, fit
    from seqguard_ray.synth import generate
    from seqguard_ray.core.config import TrainConfig
    from seqguard_ray.core.pipeline import SeqGuard

    w = Path(work)
    w.mkdir(parents=True, exist_ok=True)
    generate(n_users=120, seed=0).events.to_parquet(w / "train.parquet", index=False, row_group_size=3000)
    generate(n_users=120, seed=1).events.to_parquet(w / "test.parquet", index=False, row_group_size=3000)
    t0 = time.perf_counter()
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by every node's workers
    # CPU counts are scheduling labels: 7 in all leave room for the actor pools *and* the hash
    # shuffle (with 5, the shuffle waited forever behind the pools' reserved CPUs)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    # one "encoder" slot per worker node: two encoder actors can only sit on two different nodes
    workers = [cluster.add_node(num_cpus=3, resources={"encoder": 1}) for _ in range(2)]
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        worker_ids = {n.node_id for n in workers}
        t_start = time.perf_counter() - t0
        t = time.perf_counter()
        sg = fit(w / "train.parquet", w / "model", TrainConfig(epochs=1, hidden_size=32),
                 options=RayTrainOptions(num_workers=2, spread=True, events_per_bucket=3000))
        t_train = time.perf_counter() - t
        t = time.perf_counter()
        summary = score(w / "model", w / "test.parquet", w / "out",
                        options=BatchOptions(concurrency=2, spread=True, events_per_bucket=1500,
                                             actor_resources={"encoder": 1}))
        t_score = time.perf_counter() - t
        # a node with one logical GPU (no CUDA here: torch falls back to CPU): the encoder actors
        # ask for num_gpus and so land on it; the detectors run on CPU actors (no fused stage)
        gpu = cluster.add_node(num_cpus=2, num_gpus=1)
        cluster.wait_for_nodes()
        gpu_summary = score(w / "model", w / "test.parquet", w / "out_gpu", options=BatchOptions(events_per_bucket=1500))
    finally:
        ray.shutdown()
        cluster.shutdown()
    local = SeqGuard.load(w / "model").score(w / "test.parquet")
    users = read_output(w / "out", "users").set_index("user_id").loc[local.users["user_id"]]
    du = np.abs(users["score"].to_numpy() - local.users["score"].to_numpy())
    gpu_users = read_output(w / "out_gpu", "users").set_index("user_id").loc[local.users["user_id"]]
    print(json.dumps({
        "train_worker_nodes": sg.metrics["worker_nodes"], "encode_nodes": summary["encode_nodes"],
        "worker_node_ids": sorted(worker_ids), "events_in": summary["events_in"], "n_local_events": len(local.events),
        "max_user_score_diff": float(du.max()), "share_equal": float((du < 1e-6).mean()),
        "gpu_node": gpu.node_id, "gpu_encode_nodes": gpu_summary["encode_nodes"],
        "gpu_events_in": gpu_summary["events_in"],
        "gpu_max_user_score_diff": float(np.abs(gpu_users["score"].to_numpy() - local.users["score"].to_numpy()).max()),
        "cluster_start_s": round(t_start, 1), "train_s": round(t_train, 1), "score_s": round(t_score, 1),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
