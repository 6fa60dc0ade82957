"""Freeze a reference: a fixed demo log, a small bundle trained on it, and what scoring gives.

Run once (``python tests/golden/make_golden.py``) at the commit whose answers the regression test
(tests/test_golden.py) guards; the files it writes are committed. Re-run it only on purpose, in a
commit of its own that says why the answers change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 7
USERS = 150
# torch's intra-op threads change float reductions (scores move by ~1e-6 between 1 and 2 threads);
# the freeze and the retrain test pin the same count, whatever other code in the process set
TORCH_THREADS = 2


def config():
    from seqguard_ray import TrainConfig

    return TrainConfig(epochs=2, seed=SEED, hidden_size=32, num_layers=1, num_heads=2, max_len=64, context=8)


def main() -> None:
    from seqguard_ray import SeqGuard
    from seqguard_ray.io.outputs import write_outputs
    from seqguard_ray.synth import AttackMix, generate, write_events

    data = generate(n_users=USERS, seed=SEED, mix=AttackMix.all(0.03))
    write_events(data.events, HERE / "events.parquet")
    import torch

    torch.set_num_threads(TORCH_THREADS)
    cfg = config()
    shutil.rmtree(HERE / "model", ignore_errors=True)
    SeqGuard(cfg).fit(HERE / "events.parquet").save(HERE / "model")
    sg = SeqGuard.load(HERE / "model")
    out = HERE / "expected"
    shutil.rmtree(out, ignore_errors=True)
    write_outputs(sg, sg.score(HERE / "events.parquet"), out)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    (HERE / "FROZEN_AT.json").write_text(json.dumps({"commit": commit, "seed": SEED, "users": USERS}, indent=1) + "\n")


if __name__ == "__main__":
    main()
