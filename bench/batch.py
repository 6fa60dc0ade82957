"""Ray Data batch scoring and Ray Train training against the in-process engine, same data, same run.

    python bench/batch.py                      # 1M events: throughput; RSS at 1M and 4M; training
    python bench/batch.py --events 1000000,4000000 --train-events 0   # throughput at 1M and at 4M
    python bench/batch.py --events 200000 --rss-events 200000,800000 --train-events 100000   # quicker
    python bench/batch.py --events "" --rss-events "" --train-events 200000   # training only

Prints events/s and the ratio Ray / in-process, and the peak memory of all processes of each run
(the sum of PSS over the process tree: driver, raylet, GCS, workers; shared object-store pages are
counted once). Each measurement runs in its own child process with its own Ray.
On a shared 2-core machine the figures are noisy: compare ratios, not absolute numbers.

Growth (issue 30): how cost and memory grow with the log, both engines in one run:

    python bench/batch.py --growth 1000000,4000000,16000000 --local-max 4000000 --plot docs/img/growth.svg --plan
    python bench/batch.py --growth 20000,80000 --local-max 80000 --work /tmp/bw   # a check in ~5 minutes
    python bench/batch.py --plot docs/img/growth.svg --plan    # again from WORK/growth.json, no rerun
    python bench/batch.py --growth 16000000 --phases score --append   # one more size, scoring only

At each size: Ray training (``runtime.ray.train.fit``, what `seqguard train --engine ray` runs, with
--workers Ray Train workers), Ray scoring (``runtime.ray.batch.score``, the defaults), and up to
--local-max the in-process engine's ``SeqGuard.fit`` + save and score + write. Every run trains
the fixed MODEL: 1 epoch over every window, so the encoder's work grows with the log (about 25
windows per 1k events) as every other step does; the table says per run how many windows and
how long the encoder and the detector fit took. Scoring uses one bundle (MODEL on 50k events) at
every size. Per run: wall s, events/s, wall and CPU microseconds per event (CPU of every process
in the tree), the driver's peak RSS and the peak PSS of the rest of the tree (Ray's processes),
then the ratios of the targets. The logs are written one 500k-event file at a time (each file
its own users, rows shuffled within), kept in WORK for reruns; results go to --json after each
run, so --plot and --plan can redraw and recompute without rerunning. --plan prints the cluster
plan (--plan-events on --plan-nodes x --plan-cores, --plan-mem-gb a node) with each formula and
its numbers: time from the measured CPU per event, memory a node, what moves over the network.
"""

from __future__ import annotations

import argparse
import json
import logging
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


def _tree(root: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(pid, start time) -> (PSS kB, CPU ticks: utime + stime) of ``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    stat: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()  # f[k - 3] is stat field k
                stat[int(d)] = f
                children.setdefault(int(f[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, stack = {}, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                       if line.startswith("Pss:"))
            f = stat[pid]
            out[(pid, int(f[19]))] = (pss, int(f[11]) + int(f[12]))
        except (OSError, KeyError, StopIteration):
            pass
    return out


class TreeSampler:
    """Samples this process's tree (driver = this process; workers = its descendants: raylet, GCS,
    Ray workers) every ``every`` s. ``stats()``: peak PSS of the tree and of the workers, the
    driver's peak RSS (the kernel's VmHWM, exact), and the CPU seconds of every process seen (its
    last sample; a process's CPU after its last sample is missed, the sampler's own is left out).
    PSS counts shared pages (the object store) once across the tree."""

    def __init__(self, every: float = 0.5):
        self.every, self._stop = every, threading.Event()
        self.peak_kb = self.workers_peak_kb = 0
        self._cpu: dict[tuple[int, int], int] = {}
        self._cpu0 = {k: cpu for k, (_, cpu) in _tree(os.getpid()).items()}  # spent before: not counted
        self._own_cpu = 0.0
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        me = os.getpid()
        procs = _tree(me)
        total = sum(pss for pss, _ in procs.values())
        driver = sum(pss for (pid, _), (pss, _) in procs.items() if pid == me)
        self.peak_kb = max(self.peak_kb, total)
        self.workers_peak_kb = max(self.workers_peak_kb, total - driver)
        self._cpu.update({k: cpu for k, (_, cpu) in procs.items()})

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)
        self._own_cpu = time.thread_time()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()

    def stats(self) -> dict:
        hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
        ticks = sum(cpu - self._cpu0.get(k, 0) for k, cpu in self._cpu.items())
        cpu = ticks / os.sysconf("SC_CLK_TCK") - self._own_cpu
        return {"cpu_s": round(cpu, 2), "driver_peak_rss_mb": round(hwm / 1024),
                "workers_peak_pss_mb": round(self.workers_peak_kb / 1024), "peak_pss_mb": round(self.peak_kb / 1024)}


# ------------------------------------------------------------------ child-process measurements


class _PhaseTimes(logging.Handler):
    """Keeps the Ray batch path's log of its phases (per-user phase, block visits, campaign pass,
    merge + write, s)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.phases: tuple = ()
        lg = logging.getLogger("seqguard_ray.runtime.ray.batch")
        lg.setLevel(logging.INFO)
        lg.addHandler(self)

    def emit(self, record):
        if record.getMessage().startswith("Ray scoring: per-user phase"):
            self.phases = tuple(float(x) for x in record.args)


def _timed_detector_fit() -> dict:
    """Times SeqGuard.fit_detectors (the detector fit) in this process: the in-process engine's (Ray
    fits in a task: its ``phases_s["detectors"]``)."""
    from seqguard_ray.core.pipeline import SeqGuard

    spent = {"s": 0.0}
    inner = SeqGuard.fit_detectors

    def fit_detectors(self, *args, **kw):
        t = time.perf_counter()
        inner(self, *args, **kw)
        spent["s"] += time.perf_counter() - t

    SeqGuard.fit_detectors = fit_detectors
    return spent


def _du(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _ray_start() -> float:
    from seqguard_ray.runtime.ray.cluster import ensure_ray

    t = time.perf_counter()
    ensure_ray()
    return time.perf_counter() - t


def _ray_stop() -> float:
    import ray

    t = time.perf_counter()
    ray.shutdown()
    return time.perf_counter() - t


def _result(engine: str, phase: str, n: int, wall: float, mem: TreeSampler, **extra) -> dict:
    return {"engine": engine, "phase": phase, "events": n, "wall_s": round(wall, 2), "events_per_s": round(n / wall),
            **mem.stats(), **{k: round(v, 2) if isinstance(v, float) else v for k, v in extra.items()}}


def run_score(engine: str, model: str, events: str, out: str) -> dict:
    """Score ``events`` with the bundle ``model``, writing ``out``: in this process, or on a local Ray
    with the defaults a user gets (on one node: one single-threaded actor per core). ``serial_s``:
    the campaign pass, the part gathered on one task; ``visits_s`` the blocks' visits before it,
    in parallel tasks (Ray only)."""
    times = _PhaseTimes()
    with TreeSampler() as mem:
        t0 = time.perf_counter()
        if engine == "local":
            from seqguard_ray.io.outputs import write_outputs
            from seqguard_ray.core.pipeline import SeqGuard
            sg = SeqGuard.load(model)
            summary = write_outputs(sg, sg.score(events), out)
            extra = {}
        else:
            from seqguard_ray.runtime.ray.batch import BatchOptions, score
            t_init = _ray_start()
            summary = score(model, events, out, options=BatchOptions())
            extra = {"ray_init_s": t_init, "ray_shutdown_s": _ray_stop(),
                     "serial_s": times.phases[2] if times.phases else 0.0,
                     "visits_s": times.phases[1] if times.phases else 0.0}
        wall = time.perf_counter() - t0
    return _result(engine, "score", summary["events_in"], wall, mem, **extra, out_bytes=_du(out))


def run_fit(engine: str, events: str, model: str, workers: int) -> dict:
    """Train a bundle on ``events`` with the fixed MODEL config and save it to ``model``: the in-process
    ``SeqGuard.fit``, or ``runtime.ray.train.fit`` on a local Ray (what `seqguard train --engine ray`
    runs). The encoder trains 1 epoch over every window (``windows``, ``encoder_s``); ``serial_s`` is
    the detector fit (on the driver in process, in one task on Ray)."""
    from seqguard_ray.core.config import TrainConfig
    from seqguard_ray.core.pipeline import SeqGuard

    spent = _timed_detector_fit()
    cfg = TrainConfig(**MODEL)
    with TreeSampler() as mem:
        t0 = time.perf_counter()
        if engine == "local":
            sg = SeqGuard(cfg).fit(events)
            sg.save(model)
            h = sg.encoder.history_
            extra = {"windows": round(sum(e["windows_per_s"] * e["seconds"] for e in h)),
                     "encoder_s": sum(e["seconds"] for e in h)}
        else:
            from seqguard_ray.runtime.ray.train import RayTrainOptions, fit
            t_init = _ray_start()
            sg = fit(events, model, cfg, options=RayTrainOptions(num_workers=workers))
            extra = {"windows": sg.metrics["windows"], "encoder_s": float(sg.metrics["ray_train_s"]),
                     "phases_s": sg.metrics["phases_s"],
                     "ray_init_s": t_init, "ray_shutdown_s": _ray_stop(), "train_workers": workers}
        wall = time.perf_counter() - t0
    params = sum(p.numel() for p in sg.model.parameters())
    serial = extra["phases_s"]["detectors"] if engine != "local" else spent["s"]
    return _result(engine, "train", sg.metrics["train_events"], wall, mem, epochs=sg.metrics["epochs"], **extra,
                   serial_s=serial, params=params, batch_size=cfg.batch_size, max_len=cfg.max_len,
                   fit_events=sg.metrics.get("fit_events", sg.metrics["train_events"]))


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


# ------------------------------------------------------------------ growth: sizes, table, picture, plan


def event_bytes(events: Path, n: int) -> dict:
    """Bytes per event of the log: on disk (Parquet), as the validated Arrow rows the shuffle by user
    moves (``read_unit`` of the first row group), and of what the campaign pass gathers: the blocks'
    visits as Ray serializes them (``visit_part`` of the first file's users, whole histories)."""
    import pickle
    from dataclasses import asdict

    import pyarrow as pa

    from seqguard_ray.core.campaigns import visit_part
    from seqguard_ray.core.config import TrainConfig
    from seqguard_ray.io.read_plan import plan_reads, read_unit
    from seqguard_ray.runtime.ray.campaigns import block_log

    units = plan_reads(events)
    cap = TrainConfig().max_events_per_user
    tables = [read_unit(asdict(u), n_buckets=64, on_bad_rows="error", max_events=cap)
              for u in units if u.path == units[0].path]
    t, first = tables[0], pa.concat_tables(tables)
    lg = block_log(first.drop_columns(["_bucket"]), "bench")
    part = visit_part(lg, np.zeros(lg.n_users))
    return {"parquet": round(_du(events) / n, 1), "shuffle": round(t.nbytes / t.num_rows, 1),
            "campaign_pass": round(len(pickle.dumps(part, protocol=5)) / lg.n_events, 1),
            "visits_per_event": round(len(part.v_row) / lg.n_events, 3)}


def growth(a, w: Path, model: Path, out: Path) -> dict:
    """Ray training and scoring at each size of --growth, the in-process engine's up to --local-max,
    each in its own child process; the results written to ``out`` after every run."""
    sizes = sorted(int(n) for n in a.growth.split(",") if n)
    phases = [p for p in ("train", "score") if p in a.phases.split(",")]
    res = {"model": MODEL, "generator": GEN, "cpus": os.cpu_count(), "workers": a.workers, "local_max": a.local_max,
           "date": time.strftime("%Y-%m-%d %H:%M"), "bytes_per_event": {}, "runs": []}
    if a.append and out.exists():  # add to an earlier run's results (e.g. a larger size, scoring only)
        res = {**json.loads(out.read_text()), "date_appended": res["date"]}
    for n in sizes:
        ev = write_events(n, w / f"ev{n}")
        res["bytes_per_event"][str(n)] = event_bytes(ev, n)
        for engine in ("ray", "local") if n <= a.local_max else ("ray",):
            for phase in phases:
                dest = w / f"growth_{phase}_{engine}{n}"
                args = (["fit", engine, str(ev), str(dest), a.workers] if phase == "train"
                        else ["score", engine, str(model), str(ev), str(dest)])
                try:
                    r = child(args)
                except RuntimeError as exc:  # e.g. out of memory: recorded, the other runs go on
                    r = {"engine": engine, "phase": phase, "events": n, "error": str(exc)[-2000:]}
                if phase == "score":
                    shutil.rmtree(dest, ignore_errors=True)  # the outputs: GBs at 16M events
                res["runs"].append(r)
                out.write_text(json.dumps(res, indent=1))
                print(_row(r), flush=True)
    return res


ENGINES = {"ray": "Ray", "local": "in-process"}
HEADER = (f"{'events':>11} {'engine':<10} {'phase':<5} {'wall s':>8} {'events/s':>9} {'us/ev':>7} {'CPU us/ev':>9}"
          f" {'driver MB':>9} {'workers MB':>10}  what ran")


def _row(r: dict) -> str:
    head = f"{r['events']:>11,} {ENGINES[r['engine']]:<10} {r['phase']:<5}"
    if "error" in r:
        return f"{head} failed: {r['error'].strip().splitlines()[-1][:120]}"
    if r["phase"] == "train":
        what = (f"1 epoch over {r['windows']:,} windows ({1000 * r['windows'] / r['events']:.1f} per 1k events), "
                f"encoder {r['encoder_s']:.0f} s, detector fit {r['serial_s']:.0f} s")
    else:
        what = f"campaign pass {r['serial_s']:.1f} s" if "serial_s" in r else "load, score, write"
        if "visits_s" in r:
            what = f"block visits {r['visits_s']:.1f} s, {what}"
    if "ray_init_s" in r:
        what += f", Ray start {r['ray_init_s']:.0f} s + stop {r['ray_shutdown_s']:.0f} s"
    if "phases_s" in r:
        what += "; " + ", ".join(f"{k} {v:.0f}" for k, v in r["phases_s"].items())
    return (f"{head} {r['wall_s']:>8.1f} {r['events_per_s']:>9,} {1e6 * r['wall_s'] / r['events']:>7.1f}"
            f" {1e6 * r['cpu_s'] / r['events']:>9.1f} {r['driver_peak_rss_mb']:>9,} {r['workers_peak_pss_mb']:>10,}  {what}")


def _series(res: dict) -> dict[tuple[str, str], list[dict]]:
    """(engine, phase) -> its successful runs by size."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(res["runs"], key=lambda r: r["events"]):
        if "error" not in r:
            out.setdefault((r["engine"], r["phase"]), []).append(r)
    return out


def report(res: dict) -> None:
    """The table and the ratios the targets ask for."""
    print(f"\nmodel {res['model']}; {res['cpus']} CPUs; Ray Train workers {res['workers']}; {res['date']}")
    print("us/ev: wall microseconds per event; CPU us/ev: CPU of every process of the run (driver, Ray)"
          " per event; driver MB: the driver's peak RSS; workers MB: peak PSS of the rest of its process tree")
    print(HEADER)
    for (engine, phase), rs in sorted(_series(res).items(), key=lambda kv: (kv[0][1], kv[0][0] != "ray")):
        for r in rs:
            print(_row(r))
    for r in res["runs"]:
        if "error" in r:
            print(_row(r))
    print()
    for (engine, phase), rs in _series(res).items():
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        us = [1e6 * r["wall_s"] / r["events"] for r in (lo, hi)]
        marginal = 1e6 * (hi["wall_s"] - lo["wall_s"]) / (hi["events"] - lo["events"])
        print(f"{ENGINES[engine]} {phase}, {lo['events']:,} -> {hi['events']:,} events ({hi['events'] / lo['events']:.0f}x):"
              f" us/event {us[0]:.1f} -> {us[1]:.1f} = {us[1] / us[0]:.2f}x,"
              f" driver peak {lo['driver_peak_rss_mb']:,} -> {hi['driver_peak_rss_mb']:,} MB"
              f" = {hi['driver_peak_rss_mb'] / lo['driver_peak_rss_mb']:.2f}x (targets <= 1.2x);"
              f" marginal {marginal:.1f} us/event")
    series = _series(res)
    for phase in ("train", "score"):
        ray = {r["events"]: r for r in series.get(("ray", phase), [])}
        local = {r["events"]: r for r in series.get(("local", phase), [])}
        both = sorted(set(ray) & set(local))
        if both:
            n = both[-1]
            print(f"{phase} at {n:,} events: Ray {ray[n]['events_per_s']:,} events/s vs in-process"
                  f" {local[n]['events_per_s']:,} = {ray[n]['events_per_s'] / local[n]['events_per_s']:.2f}x"
                  f" (target >= 1.0x at 4M)")


def plot(res: dict, path: Path) -> None:
    """Log-log: wall us/event and peak memory (driver RSS; Ray's workers PSS dashed) against events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text as text: a small SVG
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for (engine, phase), rs in sorted(_series(res).items()):
        x = [r["events"] for r in rs]
        label = f"{ENGINES[engine]} {phase}"
        line, = ax_t.plot(x, [1e6 * r["wall_s"] / r["events"] for r in rs], marker="o", label=label)
        ax_m.plot(x, [r["driver_peak_rss_mb"] for r in rs], marker="o", color=line.get_color(), label=f"{label}: driver")
        if engine == "ray":
            ax_m.plot(x, [r["workers_peak_pss_mb"] for r in rs], marker="s", ls="--", color=line.get_color(),
                      label=f"{label}: workers")
    ax_t.set(xscale="log", yscale="log", xlabel="events", ylabel="wall µs per event", title="per-event cost")
    ax_m.set(xscale="log", yscale="log", xlabel="events", ylabel="MB", title="peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"bench/batch.py --growth, {res['cpus']} CPUs, {res['date']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    print(f"wrote {path}")


def _gb(b: float) -> str:
    return f"{b / 1e9:,.1f} GB"


def plan(res: dict, *, events: float, nodes: int, cores: int, mem_gb: float) -> None:
    """The cluster plan from the measured Ray runs, each formula printed with its numbers: wall time
    T = T0 + E*c/(N*C*u) + E*s per phase, memory per node and what moves over the network."""
    E, N, C, here = events, nodes, cores, res["cpus"]
    series = _series(res)
    b = res["bytes_per_event"][min(res["bytes_per_event"], key=int)]
    print(f"\nplan: E = {E:,.0f} events, N = {N} nodes x C = {C} cores, {mem_gb:g} GB a node;"
          f" from the Ray runs of {res['date']} on {here} CPUs")
    print("T = T0 + E*c/(N*C*u) + E*s;  T0: fixed (intercept of wall over the sizes), c: parallel CPU-s per event"
          " (marginal), u: share of the cores the parallel part kept busy here, s: serial s per event (marginal)")
    for phase, serial in (("train", "the detector fit, one task"), ("score", "the campaign pass, one task")):
        rs = series.get(("ray", phase), [])
        if not rs:
            print(f"{phase}: no Ray run in the results")
            continue
        lo, hi = rs[0], rs[-1]
        if phase == "train":
            _plan_train(rs, E=E, N=N, C=C, here=here, mem_gb=mem_gb, b=b)
            continue
        par = [r["cpu_s"] - r["serial_s"] for r in (lo, hi)]
        if hi is lo:
            dn, T0 = hi["events"], hi["ray_init_s"] + hi["ray_shutdown_s"]
            c, s = par[1] / dn, hi["serial_s"] / dn
            dd, dw = hi["driver_peak_rss_mb"] * 2**20 / dn, hi["workers_peak_pss_mb"] * 2**20 / dn
        else:
            dn = hi["events"] - lo["events"]
            T0 = max(0.0, lo["wall_s"] - lo["events"] * (hi["wall_s"] - lo["wall_s"]) / dn)
            c, s = (par[1] - par[0]) / dn, (hi["serial_s"] - lo["serial_s"]) / dn
            if c <= 0 or s < 0:  # fixed costs and noise outweigh the growth between these sizes
                print(f"{phase}: a negative marginal cost (c {1e6 * c:.1f}, s {1e6 * s:.2f} us/event) is taken as the"
                      f" average at {hi['events']:,} events: measure sizes further apart, or larger")
                c = c if c > 0 else par[1] / hi["events"]
                s = s if s >= 0 else hi["serial_s"] / hi["events"]
            dd = (hi["driver_peak_rss_mb"] - lo["driver_peak_rss_mb"]) * 2**20 / dn
            dw = (hi["workers_peak_pss_mb"] - lo["workers_peak_pss_mb"]) * 2**20 / dn
        busy, u = _busy_share(hi, par[1], here)
        t_par, t_ser = E * c / (N * C * u), E * s
        print(f"\n{phase} ({lo['events']:,} -> {hi['events']:,} events measured):")
        print(f"  T0 = {T0:.0f} s; c = {1e6 * c:.1f} CPU-us/event; u = {par[1]:.0f} CPU-s / ({busy:.0f} s x {here})"
              f" = {u:.2f}; s = {1e6 * s:.2f} us/event ({serial})")
        print(f"  T = {T0:.0f} + {E:.0e}*{c:.2e}/({N}*{C}*{u:.2f}) + {E:.0e}*{s:.2e} = {T0:.0f} + {t_par:,.0f} + {t_ser:,.0f}"
              f" s = {(T0 + t_par + t_ser) / 3600:.2f} h")
        driver = lo["driver_peak_rss_mb"] * 2**20 + dd * (E - lo["events"])
        per_core = lo["workers_peak_pss_mb"] * 2**20 / here
        print(f"  driver: {lo['driver_peak_rss_mb']:,} MB + {dd:.0f} B/event x (E - {lo['events']:,}) = {_gb(driver)}"
              f" ({'fits' if driver <= mem_gb * 1e9 else 'does NOT fit'} {mem_gb:g} GB)")
        node_lo, node_hi = C * per_core + E * max(dw, 0) / N, C * per_core + E * max(dw, 0)
        print(f"  workers a node: C x {per_core / 2**20:.0f} MB (the smallest run's workers / {here} cores)"
              f" + E x {dw:.0f} B/event growth: / N if it is partitioned = {_gb(node_lo)},"
              f" all on one node if gathered = {_gb(node_hi)} ({'fits' if node_hi <= mem_gb * 1e9 else 'does NOT fit'};"
              f" measured on one node, the two are not told apart)")
        cross = (N - 1) / N
        print(f"  network: read E x {b['parquet']} B (Parquet) = {_gb(E * b['parquet'])} from storage;"
              f" shuffle by user E x {b['shuffle']} B x (N-1)/N = {_gb(E * b['shuffle'] * cross)}")
        ob = hi["out_bytes"] / hi["events"]
        print(f"    the blocks' visits to the campaign pass: E x {b['campaign_pass']} B x (N-1)/N"
              f" = {_gb(E * b['campaign_pass'] * cross)}"
              f" to one node; outputs E x {ob:.1f} B = {_gb(E * ob)} to storage")


def _busy_share(r: dict, par_cpu_s: float, here: int) -> tuple[float, float]:
    """(seconds of run ``r`` its parallel part ran: the wall less the serial part and Ray's start
    and stop; u, the share of the ``here`` cores that part kept busy with ``par_cpu_s`` CPU-s)."""
    busy = r["wall_s"] - r["serial_s"] - r["ray_init_s"] - r["ray_shutdown_s"]
    return busy, min(1.0, par_cpu_s / (busy * here))


def _fit_budget() -> int:
    """The default fit sample budget (``TrainConfig.fit_sample_events``), which every bench run uses."""
    from seqguard_ray.core.config import TrainConfig

    return TrainConfig().fit_sample_events


def _fit_events(r: dict) -> int:
    """Events the detectors were fitted on in run ``r``: the fit sample (runs before it was recorded:
    the budget, or the whole log when smaller)."""
    return int(r.get("fit_events") or min(r["events"], _fit_budget()))


def _plan_train(rs: list[dict], *, E: float, N: int, C: int, here: int, mem_gb: float, b: dict) -> None:
    """Training's plan. Only the encoder's epoch grows with the log (parallel, DDP); the detector fit
    (one Ray task) grows with the fit sample, which stops at its budget (core/sample.py), so the
    fit's time is taken from the runs, per fitted event, up to the budget. The driver holds the
    vocabulary and the model: its measured peak at the largest size."""
    lo, hi = rs[0], rs[-1]
    f_lo, f_hi, f_E = _fit_events(lo), _fit_events(hi), min(E, _fit_budget())
    par = [r["cpu_s"] - r["serial_s"] for r in (lo, hi)]
    dn = max(1, hi["events"] - lo["events"])
    c = (par[1] - par[0]) / dn if hi is not lo and par[1] > par[0] else par[1] / hi["events"]
    s_fit = hi["serial_s"] / f_hi  # s per fitted event
    T0 = hi["ray_init_s"] + hi["ray_shutdown_s"]
    _, u = _busy_share(hi, par[1], here)
    t_par, t_fit = E * c / (N * C * u), s_fit * f_E
    print(f"\ntrain ({lo['events']:,} -> {hi['events']:,} events measured; detectors fitted on {f_lo:,} -> {f_hi:,}):")
    print(f"  c = {1e6 * c:.1f} CPU-us/event (encoder epoch, read, shuffle, windows: marginal); u = {u:.2f};"
          f" detector fit {hi['serial_s']:.0f} s on {f_hi:,} events = {1e6 * s_fit:.1f} us per fitted event")
    print(f"  T = {T0:.0f} + {E:.0e}*{c:.2e}/({N}*{C}*{u:.2f}) + fit of min(E, budget) = {f_E:,.0f} events"
          f" = {T0:.0f} + {t_par:,.0f} + {t_fit:,.0f} s = {(T0 + t_par + t_fit) / 3600:.2f} h"
          f" (the epoch assumes DDP scales to N*C single-threaded workers)")
    print(f"  driver: the vocabulary and the model, measured {lo['driver_peak_rss_mb']:,} MB at {lo['events']:,} events"
          f" -> {hi['driver_peak_rss_mb']:,} MB at {hi['events']:,} (+ the vocabulary's item counts, ~100 B an item);"
          f" the fit task: the fit sample's encodings ({f_E:,.0f} events), in the workers' measured"
          f" {hi['workers_peak_pss_mb']:,} MB at {hi['events']:,}")
    wpe, T, P = hi["windows"] / hi["events"], hi["max_len"], hi["params"]
    W, cross = E * wpe, (N - 1) / N
    steps = W / (hi["batch_size"] * N * C)
    print(f"  network: read E x {b['parquet']} B = {_gb(E * b['parquet'])}; shuffle by user E x {b['shuffle']} B x (N-1)/N"
          f" = {_gb(E * b['shuffle'] * cross)}; windows to the Train workers E x {wpe:.4f} x (12 x {T} + 4) B x (N-1)/N"
          f" = {_gb(W * (12 * T + 4) * cross)}; object store a node: E x ({b['shuffle']} + {wpe * (12 * T + 4):.0f}) B / N"
          f" = {_gb(E * (b['shuffle'] + wpe * (12 * T + 4)) / N)}")
    print(f"  DDP all-reduce, N*C workers: {steps:,.0f} steps (W / (batch {hi['batch_size']} x N x C)) x 2 x {P:,}"
          f" params x 4 B = {_gb(steps * 8 * P)} a worker; the fit sample's encodings to the fit task: bounded as above")


def bench_model(w: Path) -> Path:
    """The bundle every scoring run uses (MODEL trained on 50k events): the same model at every size."""
    from seqguard_ray.core.bundle import BundleError, read_manifest
    from seqguard_ray.core.config import TrainConfig
    from seqguard_ray.core.pipeline import SeqGuard

    try:
        read_manifest(w / "model")
    except BundleError as exc:  # none yet, or one an older seqguard wrote
        print(f"training the bench model: {exc}")
        SeqGuard(TrainConfig(**MODEL)).fit(make_events(50_000, seed=0)).save(w / "model")
    return w / "model"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", default="1000000", help="throughput comparison size(s), comma-separated")
    p.add_argument("--rss-events", default="1000000,4000000", help="sizes for the Ray peak-memory comparison")
    p.add_argument("--train-events", type=int, default=200_000, help="training throughput size (0 = skip)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--work", default="bench_work", help="logs, models and results (logs are kept for reruns)")
    g = p.add_argument_group("growth")
    g.add_argument("--growth", default=None, help="sizes, comma-separated: Ray training and scoring at each")
    g.add_argument("--local-max", type=int, default=4_000_000, help="the in-process engine runs up to this size")
    g.add_argument("--json", default=None, help="the growth results (default WORK/growth.json)")
    g.add_argument("--phases", default="train,score", help="which to run at each size: train, score or both")
    g.add_argument("--append", action="store_true", help="add these runs to the results already in --json")
    g.add_argument("--plot", default=None, help="draw the log-log picture of the results to this .svg/.png")
    g.add_argument("--plan", action="store_true", help="print the cluster plan from the results")
    g.add_argument("--plan-events", type=float, default=1e9)
    g.add_argument("--plan-nodes", type=int, default=32)
    g.add_argument("--plan-cores", type=int, default=16, help="cores a node")
    g.add_argument("--plan-mem-gb", type=float, default=64, help="memory a node")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, *rest = json.loads(a.child)
        print(json.dumps({"score": run_score, "fit": run_fit, "train": run_train}[kind](*rest)))
        return
    w = Path(a.work)
    w.mkdir(exist_ok=True)
    out = Path(a.json or w / "growth.json")
    if a.growth or a.plot or a.plan:
        res = growth(a, w, bench_model(w), out) if a.growth else json.loads(out.read_text())
        report(res)
        if a.plot:
            plot(res, Path(a.plot))
        if a.plan:
            plan(res, events=a.plan_events, nodes=a.plan_nodes, cores=a.plan_cores, mem_gb=a.plan_mem_gb)
        return
    tp_sizes = [int(n) for n in a.events.split(",") if n]
    sizes = sorted({*tp_sizes, *[int(s) for s in a.rss_events.split(",") if s]})
    for n in sizes:
        write_events(n, w / f"ev{n}")
    bench_model(w)
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
