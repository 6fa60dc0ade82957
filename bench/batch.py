"""Ray Data batch scoring and Ray Train training against the in-process engine, same data, same run.

    python bench/batch.py                      # 1M events: throughput; RSS at 1M and 4M; training
    python bench/batch.py --events 1000000,4000000 --train-events 0   # throughput at 1M and at 4M
    python bench/batch.py --events 200000 --rss-events 200000,800000 --train-events 100000   # quicker
    python bench/batch.py --events "" --rss-events "" --train-events 200000   # training only

Prints events/s and the ratio Ray / in-process, and the peak memory of all processes of each run
(the sum of PSS over the process tree: driver, raylet, GCS, workers; shared object-store pages are
counted once). Each measurement runs in its own child process with its own Ray.
On a shared 2-core machine the figures are noisy: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

MODEL = dict(epochs=1, hidden_size=32, num_layers=1, num_heads=2, max_len=64, context=8)


GEN = {"events_per_user": 80, "n_items": 20_000, "rows_per_file": 500_000, "row_group": 100_000}


def event_chunks(n: int, seed: int = 0, *, events_per_user: int = 80, n_items: int = 20_000,
                 rows_per_file: int = 500_000, **_):
    """A random log of ``n`` events, one frame of at most ``rows_per_file`` rows at a time: Zipf items,
    per-user increasing times, 4 actions, a value column. Each frame holds its own range of users
    (the clock runs on across frames), its rows shuffled."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    first_user, clock = 0, 0.0
    for a in range(0, n, rows_per_file):
        m = min(rows_per_file, n - a)
        n_users = max(5, m // events_per_user)
        user = first_user + np.sort(rng.integers(0, n_users, m))
        first_user += n_users
        item = np.minimum(rng.zipf(1.3, m), n_items)
        t = clock + np.cumsum(rng.exponential(60, m))
        clock = float(t[-1])
        ts = 1_700_000_000 + user * 7 + t.astype(np.int64)
        df = pd.DataFrame({"user_id": np.char.add("u", user.astype(str)), "item_id": item, "ts": ts,
                           "action": rng.choice(["view", "click", "cart", "purchase"], m, p=[.6, .3, .07, .03]),
                           "value": rng.gamma(2.0, 10.0, m).round(2)})
        yield df.sample(frac=1.0, random_state=int(rng.integers(2**31)))


def make_events(n: int, seed: int = 0):
    """:func:`event_chunks` as one frame (small logs)."""
    import pandas as pd

    return pd.concat(event_chunks(n, seed, **GEN), ignore_index=True)


def write_events(n: int, path: Path, seed: int = 1) -> Path:
    """The log of :func:`event_chunks` as a Parquet directory, one file per frame (so memory stays
    at one frame, ~50 MB, at any ``n``). Cached: kept while ``<path>.json`` records the same
    generator settings; written under a temporary name first, so a killed run leaves no half log."""
    spec = {"events": n, "seed": seed, **GEN, "layout": "users contiguous per file, rows shuffled within"}
    marker = path.with_name(path.name + ".json")
    if path.is_dir() and marker.exists() and json.loads(marker.read_text()) == spec:
        return path
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    for i, df in enumerate(event_chunks(n, seed, **GEN)):
        df.to_parquet(tmp / f"part-{i:04d}.parquet", index=False, row_group_size=GEN["row_group"])
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    marker.write_text(json.dumps(spec))
    print(f"generated {n:,} events in {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return path


def _tree_pss_kb(root: int) -> int:
    """Sum of PSS (kB) over ``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


class PeakMemory:
    def __init__(self, every: float = 0.5):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_pss_kb(os.getpid()))
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _tree_pss_kb(os.getpid()))


# ------------------------------------------------------------------ child-process measurements


def run_score(engine: str, model: str, events: str, out: str) -> dict:
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        if engine == "local":
            from seqguard_ray.io.outputs import write_outputs
            from seqguard_ray.core.pipeline import SeqGuard
            sg = SeqGuard.load(model)
            summary = write_outputs(sg, sg.score(events), out)
            t_ray = 0.0
        else:
            import ray

            from seqguard_ray.runtime.ray.batch import BatchOptions, score
            from seqguard_ray.runtime.ray.cluster import ensure_ray
            t = time.perf_counter()
            ensure_ray()
            t_ray = time.perf_counter() - t
            # the defaults a user gets (on one node: one single-threaded actor per core)
            summary = score(model, events, out, options=BatchOptions())
            t = time.perf_counter()
            ray.shutdown()
            t_stop = time.perf_counter() - t
        wall = time.perf_counter() - t0
    n = summary["events_in"]
    return {"engine": engine, "events": n, "wall_s": round(wall, 1), "ray_init_s": round(t_ray, 1),
            **({"ray_shutdown_s": round(t_stop, 1)} if engine != "local" else {}),
            "events_per_s": round(n / wall), "peak_pss_mb": round(mem.peak / 1024)}


def run_train(engine: str, events: str, model: str, workers: int) -> dict:
    from seqguard_ray.core.config import TrainConfig
    from seqguard_ray.core.pipeline import SeqGuard
    from seqguard_ray.core.readers import read_events
    from seqguard_ray.core.tokens import Vocab

    cfg = TrainConfig(**MODEL)
    sg = SeqGuard(cfg)
    lg = read_events(events)
    sg.vocab = Vocab(min_count=cfg.min_item_count).fit(lg.item, lg.action)
    sg.encoder.init_model(sg.vocab.n_items, sg.vocab.n_actions)
    if engine == "local":
        seqs = sg.tokenize(lg)
        t0 = time.perf_counter()
        hist = sg.train_encoder_local(seqs)
        wall = time.perf_counter() - t0
        return {"engine": "plain loop", "events": lg.n_events, "epoch_wall_s": round(wall, 1),
                "events_per_s_epoch": round(lg.n_events / wall), "windows_per_s": round(hist[-1]["windows_per_s"])}
    import ray

    from seqguard_ray.runtime.ray.batch import read_validated
    from seqguard_ray.runtime.ray.cluster import ensure_ray
    from seqguard_ray.runtime.ray.train import RayTrainOptions, train_encoder_ray, windows_dataset
    ensure_ray()
    ds, _, nb = read_validated(events)
    win, n_win = windows_dataset(ds, sg, nb)
    t0 = time.perf_counter()
    _, info = train_encoder_ray(sg, win, n_win, model, RayTrainOptions(num_workers=workers))
    wall = time.perf_counter() - t0
    ray.shutdown()
    return {"engine": f"Ray Train x{workers}", "events": lg.n_events, "fit_wall_s": round(wall, 1),
            "events_per_s_incl_startup": round(lg.n_events / wall)}


def child(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", default="1000000", help="throughput comparison size(s), comma-separated")
    p.add_argument("--rss-events", default="1000000,4000000", help="sizes for the Ray peak-memory comparison")
    p.add_argument("--train-events", type=int, default=200_000, help="training throughput size (0 = skip)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", default="bench_work")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, *rest = json.loads(a.child)
        print(json.dumps(run_score(*rest) if kind == "score" else run_train(*rest)))
        return
    from seqguard_ray.core.bundle import BundleError, read_manifest
    from seqguard_ray.core.config import TrainConfig
    from seqguard_ray.core.pipeline import SeqGuard

    w = Path(a.work)
    w.mkdir(exist_ok=True)
    tp_sizes = [int(n) for n in a.events.split(",") if n]
    sizes = sorted({*tp_sizes, *[int(s) for s in a.rss_events.split(",") if s]})
    for n in sizes:
        write_events(n, w / f"ev{n}")
    try:
        read_manifest(w / "model")
    except BundleError as exc:  # none yet, or one an older seqguard wrote
        print(f"training the bench model: {exc}")
        SeqGuard(TrainConfig(**MODEL)).fit(make_events(50_000, seed=0)).save(w / "model")
    print(f"model: {MODEL}; cpus: {os.cpu_count()}")
    res = {}
    for n in tp_sizes:
        res[f"local{n}"] = child(["score", "local", str(w / "model"), str(w / f"ev{n}"), str(w / "out_local")])
        print(f"in-process {n:,}", res[f"local{n}"], flush=True)
    for n in sizes:
        res[f"ray{n}"] = child(["score", "ray", str(w / "model"), str(w / f"ev{n}"), str(w / f"out_ray{n}")])
        print(f"ray {n:,}", res[f"ray{n}"], flush=True)
    print()
    for n in tp_sizes:
        r, l = res[f"ray{n}"], res[f"local{n}"]
        print(f"scoring {n:,} events: Ray Data {r['events_per_s']:,} ev/s vs in-process {l['events_per_s']:,} ev/s"
              f" = {r['events_per_s'] / l['events_per_s']:.2f}x (target >= 0.8x)")
    if sizes:
        lo, hi = sizes[0], sizes[-1]
        print(f"peak PSS, Ray: {res[f'ray{lo}']['peak_pss_mb']} MB at {lo:,} vs {res[f'ray{hi}']['peak_pss_mb']} MB at {hi:,}"
              f" ({hi / lo:.0f}x input, {res[f'ray{hi}']['peak_pss_mb'] / res[f'ray{lo}']['peak_pss_mb']:.2f}x memory);"
              + "".join(f" in-process {res[f'local{n}']['peak_pss_mb']} MB at {n:,};" for n in tp_sizes))
    if a.train_events:
        ev = w / f"train{a.train_events}.parquet"
        if not ev.exists():
            make_events(a.train_events, seed=2).to_parquet(ev, index=False, row_group_size=50_000)
        tl = child(["train", "local", str(ev), str(w / "tmodel"), a.workers])
        tr = child(["train", "ray", str(ev), str(w / "tmodel"), a.workers])
        print("train", tl, "\ntrain", tr)
        print(f"training 1 epoch of {a.train_events:,} events: Ray Train {tr['events_per_s_incl_startup']:,} ev/s"
              f" (incl. start-up) vs plain loop {tl['events_per_s_epoch']:,} ev/s"
              f" = {tr['events_per_s_incl_startup'] / tl['events_per_s_epoch']:.2f}x")


if __name__ == "__main__":
    main()
