"""gRPC reflection on the plain server, and the reflection client (seqguard_ray.reflect, `seqguard
client reflect`) that calls it with messages built from reflected descriptors (no generated code)."""

from __future__ import annotations

import json

import grpc
import pytest
from serving_helpers import TOKEN, PlainServer, score_events, tiny_bundle

from seqguard_ray.client import SeqGuardClient
from seqguard_ray.reflect import SERVICE, ReflectionClient
from seqguard_ray.runtime.serve import (
    Authenticator,
    InProcessBackend,
    Limits,
    ScoringService,
    token_digest,
)

REFLECTION = "grpc.reflection.v1alpha.ServerReflection"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory, 0)


@pytest.fixture(scope="module")
def engine(bundle):
    from seqguard_ray.runtime.serve import load_engine
    return load_engine(str(bundle), torch_threads=1)


@pytest.fixture(scope="module")
def server(engine, bundle):
    backend = InProcessBackend(engine, model_dir=str(bundle))
    srv = PlainServer(ScoringService(backend, Authenticator(token_digest(TOKEN)), Limits()), backend)
    yield f"127.0.0.1:{srv.port}"
    srv.stop()


def test_reflection_lists_the_service_and_its_methods(server):
    with ReflectionClient(server) as rc:  # reflection itself needs no token
        assert set(rc.services()) == {SERVICE, REFLECTION}
        methods = {m.name: m for m in rc.methods()}
    assert set(methods) == {"Score", "ScoreBatch", "Repair", "ModelInfo", "ScoreStream", "ScoreStreamFrames", "Rollout"}
    assert methods["Score"].signature() == "Score(seqguard.v1.ScoreRequest) returns (seqguard.v1.ScoreResponse)"
    assert methods["ScoreStream"].client_streaming and methods["ScoreStream"].server_streaming
    assert methods["ScoreStream"].signature().startswith("ScoreStream(stream seqguard.v1.StreamRequest) returns (stream ")


def test_calls_built_from_reflected_descriptors_equal_the_generated_clients(server):
    df = score_events(n_users=2)
    uid = df["user_id"].iloc[0]
    events = [{"item_id": str(i), "ts": int(t), "action": a}
              for i, t, a in df[df["user_id"] == uid][["item_id", "ts", "action"]].itertuples(index=False)]
    with ReflectionClient(server, TOKEN) as rc, SeqGuardClient(server, TOKEN, retries=0) as c:
        info = rc.call(SERVICE, "ModelInfo", {})
        assert info["model_version"] == c.model_info().model_version and info["max_sequences_per_batch"] > 0
        scored = rc.call(SERVICE, "Score", {"user_id": uid, "events": events}, as_dict=False)
        assert type(scored).__module__ != "seqguard_ray.proto.seqguard.v1.seqguard_pb2"  # built from reflection
        ref = c.score(uid, events)
        assert scored.score == pytest.approx(ref.score, abs=1e-9) and list(scored.event_scores) == pytest.approx(
            list(ref.event_scores), abs=1e-9) and scored.anomaly_type == ref.anomaly_type
        with pytest.raises(ValueError, match="has no method 'Scor'"):
            rc.call(SERVICE, "Scor", {})
        with pytest.raises(ValueError, match="Score request: .*user_idd"):
            rc.call(SERVICE, "Score", {"user_idd": "u"})
        with pytest.raises(ValueError, match="streaming rpc"):
            rc.call(SERVICE, "ScoreStream", {})
    with ReflectionClient(server) as rc, pytest.raises(grpc.RpcError) as e:  # methods still need the token
        rc.call(SERVICE, "ModelInfo", {})
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_cli_client_reflect_lists_and_calls(server, capsys, monkeypatch):
    from seqguard_ray.cli.main import main

    monkeypatch.setenv("SEQGUARD_TOKEN", TOKEN)
    assert main(["client", "reflect", "--target", server, "--call", "ModelInfo"]) == 0
    out = capsys.readouterr().out
    listing, _, info = out.partition("\n}\n")
    methods = json.loads(listing + "\n}")
    assert "ScoreStream(stream seqguard.v1.StreamRequest) returns (stream seqguard.v1.StreamAnswer)" in methods[SERVICE]
    assert json.loads(info)["model_version"]
    monkeypatch.delenv("SEQGUARD_TOKEN")
    assert main(["client", "reflect", "--target", server, "--call", "ModelInfo"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_reflection_can_be_turned_off(engine, bundle):
    import asyncio

    from seqguard_ray.runtime.serve.grpc_server import create_server

    async def go():
        svc = ScoringService(InProcessBackend(engine, model_dir=str(bundle), batching=False),
                             Authenticator(token_digest(TOKEN)), Limits())
        server, port = await create_server("127.0.0.1:0", svc, reflection=False)
        try:
            def services():
                with ReflectionClient(f"127.0.0.1:{port}") as rc:
                    return rc.services()
            with pytest.raises(grpc.RpcError) as e:
                await asyncio.to_thread(services)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await server.stop(0.5)
            svc.backend.close()

    asyncio.run(go())
