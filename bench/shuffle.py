"""The driver's memory in the group-by-user step, per Ray Data shuffle strategy (issue 30).

    python bench/shuffle.py --events bench_work/ev16000000      # the 16M log bench/batch.py --growth writes
    python bench/shuffle.py --events LOG --strategies shuffle_v2,sort_shuffle_pull_based

Each strategy runs in its own child process with its own local Ray (2 CPUs): the scoring path's
read (runtime.ray.batch.read_validated), then groupby("_bucket").map_groups counting each bucket,
as runtime.ray.batch.group_users does. Prints the driver's peak RSS and the wall time; checks that
every event lands in one bucket group. batch.USER_SHUFFLE is the strategy the product uses.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRATEGIES = "sort_shuffle_pull_based,sort_shuffle_push_based,shuffle_v2"


def probe(strategy: str, events: str, events_per_bucket: int) -> None:
    import pyarrow as pa
    import ray

    from seqguard_ray.runtime.ray.batch import read_validated

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    ds, units, n_buckets = read_validated(events, events_per_bucket=events_per_bucket)
    ds.context.shuffle_strategy = strategy
    counted = ds.groupby("_bucket", num_partitions=n_buckets).map_groups(
        lambda t: pa.table({"bucket": [t.column("_bucket")[0].as_py()], "n": [t.num_rows]}),
        batch_format="pyarrow", num_cpus=0.25).take_all()
    wall = time.perf_counter() - t0
    hwm = int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]) // 1024
    buckets = [r["bucket"] for r in counted]
    assert len(buckets) == len(set(buckets)), "a bucket was split across groups"
    print(f"{strategy:26s} {len(units):>6,} {n_buckets:>8,} {sum(r['n'] for r in counted):>12,} {wall:>7.0f} {hwm:>10,}",
          flush=True)
    ray.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", required=True, help="a Parquet log (file or directory)")
    p.add_argument("--strategies", default=STRATEGIES, help="comma-separated Ray Data ShuffleStrategy values")
    p.add_argument("--events-per-bucket", type=int, default=20_000)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        probe(a.child, a.events, a.events_per_bucket)
        return 0
    print(f"{'strategy':26s} {'units':>6} {'buckets':>8} {'events':>12} {'wall s':>7} {'driver MB':>10}")
    for s in filter(None, a.strategies.split(",")):
        subprocess.run([sys.executable, __file__, "--events", a.events, "--events-per-bucket", str(a.events_per_bucket),
                        "--child", s], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
