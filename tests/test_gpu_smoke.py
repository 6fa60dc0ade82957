"""bench/gpu_smoke.sh: torch-only, a clear exit where no GPU exists, and the script itself runs (on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_smoke_exits_with_a_clear_message_without_a_gpu():
    if torch.cuda.is_available():
        return
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_smoke.sh")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr


def test_gpu_smoke_runs_its_cpu_half_and_imports_nothing_of_seqguard(tmp_path):
    src = (ROOT / "bench" / "gpu_smoke.py").read_text()
    assert "seqguard_ray" not in src.replace("seqguard_ray/core", "") and "import ray" not in src
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_smoke.py"), "--cpu-only", "--preset", "small",
                        "--cpu-steps", "2", "--score-batches", "2", "--batch", "4", "--score-batch", "8",
                        "--max-len", "16", "--items", "200", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())["results"]
    assert res[0]["device"] == "cpu" and res[0]["train_steps"] == 2 and res[0]["score_windows_per_s"] > 0
