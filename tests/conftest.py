"""Shared fixtures. Ray is started at most once per test session (it costs seconds on 2 cores)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def s3_env():
    """The environment of a test S3 store on 127.0.0.1 (tests/test_storage.py starts the server on
    this port): fake credentials and ``AWS_ENDPOINT_URL``, as a user would export them. Set before
    Ray starts, because Ray's workers inherit the environment the raylet started with. No test
    can reach a real cloud store through it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        yield port


@pytest.fixture(scope="session")
def ray_local(s3_env):
    """One local Ray for the whole session: no dashboard, fractional CPUs, stopped at the end
    (started with :func:`s3_env`'s environment, which its workers keep)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # address='local': never join another Ray that happens to run on this machine
        from seqguard_ray.runtime.ray.cluster import start_local_ray
        start_local_ray(num_cpus=4)
    yield ray
    try:
        from ray import serve
        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


def make_events(n_users: int = 60, seed: int = 0):
    """A small random log: heavy-tailed items, lognormal gaps, two actions, values."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = rng.integers(6, 60, n_users)
    user = np.repeat([f"u{i}" for i in range(n_users)], n)
    start = np.repeat(1_600_000_000 + rng.integers(0, 10**6, n_users), n)
    gaps = rng.lognormal(4, 2, n.sum())
    ts = start + np.concatenate([np.cumsum(g) for g in np.split(gaps, np.cumsum(n)[:-1])]).astype(np.int64)
    return pd.DataFrame({
        "user_id": user, "item_id": (rng.zipf(1.4, n.sum()) % 300).astype(np.int64), "ts": ts,
        "action": rng.choice(["view", "click"], n.sum(), p=[0.8, 0.2]), "value": rng.random(n.sum()),
    })


@pytest.fixture(scope="session")
def tiny_events():
    return make_events()


@pytest.fixture(scope="session")
def tiny_model(tiny_events):
    """A fitted SeqGuard with a tiny encoder (hidden 32, 1 layer, 1 epoch): seconds to train."""
    from seqguard_ray import SeqGuard, TrainConfig

    return SeqGuard(TrainConfig(epochs=1, hidden_size=32, num_layers=1, max_len=32, context=4)).fit(tiny_events)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tmp_path_factory):
    return tiny_model.save(tmp_path_factory.mktemp("bundle") / "model")
