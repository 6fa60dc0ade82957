"""Several Ray nodes on one machine, and the CLI against a cluster from `ray start --head`.

Each test runs its Ray in a child process, so it never meets the session's local Ray.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
HERE = Path(__file__).parent


def test_train_and_score_spread_over_two_worker_nodes(tmp_path):
    r = subprocess.run([sys.executable, str(HERE / "ray_cluster_check.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(set(res["train_worker_nodes"])) == 2, res   # one DDP worker per node
    assert len(set(res["encode_nodes"])) == 2, res         # the encoder actors on two nodes
    assert res["events_in"] == res["n_local_events"]
    # float rounding in the encoder's batch padding can move a calibrated score by a few steps
    # of the calibrator's reference (~1/125 here)
    assert res["share_equal"] >= 0.95 and res["max_user_score_diff"] < 0.05
    # GPU placement with a logical GPU: the encoder actors on the GPU node (num_gpus from the cluster)
    assert res["gpu_encode_nodes"] == [res["gpu_node"]], res
    assert res["gpu_events_in"] == res["n_local_events"] and res["gpu_max_user_score_diff"] < 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, *, deadline_s: float) -> None:
    """Until something listens on ``port`` (the head's GCS); fails early if ``proc`` exits."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"nothing listens on port {port} after {deadline_s} s")


def test_cli_scores_against_ray_start_head_via_ray_address(tmp_path):
    from seqguard_ray.synth import generate
    from seqguard_ray.core.config import TrainConfig
    from seqguard_ray.core.pipeline import SeqGuard

    ev = generate(n_users=60, seed=0).events
    ev.to_parquet(tmp_path / "ev.parquet", index=False)
    SeqGuard(TrainConfig(epochs=1, hidden_size=32)).fit(ev).save(tmp_path / "model")
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    # --block keeps `ray start` in the foreground: stopping that one process stops only this
    # cluster (never `ray stop`, which would stop every Ray on the machine)
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--node-ip-address=127.0.0.1",
                             f"--temp-dir={tmp_path / 'ray'}" if len(str(tmp_path)) < 60 else "--temp-dir=/tmp/ray-sg-cli"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, head, deadline_s=120)
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        r = subprocess.run([str(Path(sys.executable).parent / "seqguard"), "-q", "score", "--events",
                            str(tmp_path / "ev.parquet"), "--model", str(tmp_path / "model"),
                            "--out", str(tmp_path / "out"), "--concurrency", "1"],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-4000:]
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["events_in"] == len(ev)
        assert (tmp_path / "out" / "events.parquet").is_dir()   # the Ray engine ran (part files)
    finally:
        head.send_signal(signal.SIGINT)  # `ray start --block` stops its cluster on SIGINT, not SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
