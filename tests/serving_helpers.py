"""Shared helpers for the serving tests: tiny model bundles trained once per session, on disk."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd

TOKEN = "test-token-0123456789"


def tiny_bundle(tmp_path_factory, seed: int = 0) -> Path:
    """A hidden-32, 1-epoch bundle on seeded demo data; trained once per session and seed."""
    path = tmp_path_factory.getbasetemp() / f"serving_bundle_{seed}"
    if not (path / "manifest.json").is_file():
        from seqguard_ray import SeqGuard, TrainConfig
        from seqguard_ray.synth import generate

        SeqGuard(TrainConfig(epochs=1, hidden_size=32, seed=seed)).fit(generate(n_users=80, seed=seed).events).save(path)
    return path


def flag_everything_bundle(tmp_path_factory, seed: int = 1) -> Path:
    """The seed's tiny bundle with every stratum's threshold at 0: it flags every user it scores.
    (Thresholds are the detectors' manifest meta, not in the hashed files: the model version stays
    the seed bundle's, so keep the live bundle's seed different.)"""
    path = tmp_path_factory.getbasetemp() / f"flag_everything_bundle_{seed}"
    if not (path / "manifest.json").is_file():
        from seqguard_ray import SeqGuard

        sg = SeqGuard.load(tiny_bundle(tmp_path_factory, seed))
        for ud in sg.strata.detectors_:
            ud.threshold_ = 0.0
        sg.save(path)
    return path


def score_events(n_users: int = 12, seed: int = 7) -> pd.DataFrame:
    """Demo events (integer item ids, some attacked users) to score."""
    from seqguard_ray.synth import generate

    data = generate(n_users=40, seed=seed)
    ev = data.events
    attacked = set(data.user_type.index[data.user_type.isin(["bot", "replay", "click_farm", "takeover"])])
    order = ev["user_id"].drop_duplicates()
    users = [*order[order.isin(attacked)][: n_users // 3], *order[~order.isin(attacked)]][:n_users]
    return ev[ev["user_id"].isin(users)][["user_id", "item_id", "ts", "action", "value"]].reset_index(drop=True)


def campaign_out(tmp_path: Path, name: str, members, targets, *, cid=0, score=0.97):
    """tmp_path/name as `seqguard score` writes its campaign tables: one campaign of ``members`` on
    ``targets`` (ids as text), for `seqguard campaigns publish`."""
    import pyarrow.parquet as pq

    from seqguard_ray.io.outputs import campaigns_table, items_table

    out = tmp_path / name
    out.mkdir()
    camps = pd.DataFrame({"campaign_id": [cid], "user_ids": [members], "target_item_ids": [targets],
                          "first_ts": [1_600_000_000], "last_ts": [1_600_086_400], "n_events": [3 * len(members)],
                          "score": [score], "reasons": [f"{len(members)} accounts on {len(targets)} target item(s)"]})
    n = len(targets)
    items = pd.DataFrame({"item_id": [*targets, "plain-item"], "campaign_score": [0.99] * n + [0.1],
                          "suspicious": [True] * n + [False], "campaign_id": pd.array([cid] * n + [None], dtype="Int64"),
                          "reasons": [f"target of campaign {cid}: 30 of its 40 adopters within a day"] * n + [""]})
    pq.write_table(items_table(items), out / "items.parquet")
    pq.write_table(campaigns_table(camps), out / "campaigns.parquet")
    return out


class PlainServer:
    """A plain grpc.aio server (no Ray) on its own event-loop thread."""

    def __init__(self, service, backend=None, address: str = "127.0.0.1:0"):
        from seqguard_ray.runtime.serve.grpc_server import create_server

        self.backend = backend
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = asyncio.run_coroutine_threadsafe(create_server(address, service), self.loop).result(30)

    def stop(self) -> None:
        async def shut():
            await self.server.stop(0.5)
            if self.backend is not None:  # on this loop, where its batcher's workers run
                await self.backend.aclose()
            if hasattr(self.service, "aclose"):  # its stream state store's connections
                await self.service.aclose()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@contextlib.contextmanager
def redis_server(workdir: Path, password: str | None = None):
    """A real redis-server on 127.0.0.1, on a free port, no persistence; yields its URL (the
    password, if any, is not in it). Skips the test when redis-server is not installed."""
    import pytest

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(cmd + (["--requirepass", password] if password else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
