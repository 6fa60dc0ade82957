"""Ray start-up and what the cluster offers: connect or start a local Ray, count its CPUs and GPUs,
size the actor pools."""

from __future__ import annotations

import os

# CPUs asked by every Ray Data map *task* (not the actor pools): a whole CPU. With fractions Ray
# runs several tasks a core at once; on a small node that means more worker processes than cores,
# each started and importing torch for its first task and killed again once idle, and those
# start-ups cost more than the work (the vocabulary's per-block counts over 1M events: 22.6 s at
# 0.25 CPU a task, 3.8 s at 1; docs/scaling.md, "Pitfalls found").
TASK_CPUS = 1.0


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a lean local Ray. Returns True if started here.

    An already initialised Ray (a test fixture, a notebook) is reused as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        start_local_ray(num_cpus)
    return True


def start_local_ray(num_cpus: int | None = None) -> None:
    """A fresh local Ray (address="local": never a stray one that happens to run here), no dashboard,
    single-threaded OpenMP in every worker.

    OMP_NUM_THREADS reaches the workers through the environment the raylet inherits, not a job
    runtime_env, which would send every worker start through the runtime-env agent and discard
    the workers Ray prestarts.
    """
    import ray

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old


def shared_threads(asked: int | None, sharers: int) -> int:
    """Torch threads of one of ``sharers`` processes on a node (a pool's actors, a node's Train
    workers): as asked, else the node's cores shared by them. Ray sets OMP_NUM_THREADS from a
    process's CPU label (0.5 -> 1 thread), which would leave a 16-core node's two workers one core each."""
    return max(1, int(asked or (os.cpu_count() or 1) // max(1, sharers)))


def cluster_gpus() -> float:
    import ray
    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    import ray
    return float(ray.cluster_resources().get("CPU", 1.0))


def node_id() -> str:
    """The Ray node this process runs on."""
    import ray
    return ray.get_runtime_context().get_node_id()


def default_pool_size(n_buckets: int) -> int:
    """Encoder actors when ``--concurrency`` is not given, never more than there are buckets.

    One per GPU. On CPUs, one single-threaded actor per core of a single node (they beat fewer
    multi-threaded ones); across nodes one per 2 CPUs, which leaves the shuffle room.
    """
    import ray

    gpus = int(cluster_gpus())
    if gpus:
        size = gpus
    else:
        nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
        size = int(cluster_cpus()) // (1 if nodes <= 1 else 2)
    return max(1, min(size, n_buckets))


def encoder_resources(concurrency: int) -> dict:
    """num_gpus per encoder actor when the cluster has GPUs (shared fractionally), else up to 1 CPU."""
    gpus = cluster_gpus()
    if gpus > 0:
        return {"num_gpus": min(1.0, gpus / concurrency), "num_cpus": 1}
    # CPU counts are scheduling labels: leave at least one CPU for the shuffle and the read tasks,
    # or on a small cluster the shuffle waits forever behind the pools' reserved CPUs
    return {"num_cpus": min(1.0, max(0.25, round((cluster_cpus() - 1.0) * 0.6 / concurrency, 2)))}
