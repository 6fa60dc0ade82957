"""The typed training config (file, presets, flags), gradient accumulation and mixed precision (issue 31)."""

import copy
import json

import numpy as np
import pytest
import torch

from seqguard_ray.cli.main import main
from seqguard_ray.core.config import (
    PRESETS,
    TrainConfig,
    read_config_file,
    resolve_config,
)
from seqguard_ray.core.encoder import (
    SeqGuardConfig,
    SeqGuardEncoder,
    iter_window_batches,
    train_encoder,
)
from seqguard_ray.core.training import autocast_dtype, cpu_has_bf16


def test_small_is_todays_encoder_and_presets_set_the_sizes():
    small = TrainConfig()
    assert (small.preset, small.hidden_size, small.num_layers, small.num_heads, small.intermediate_size, small.lr) == \
        ("small", 64, 2, 2, 128, 2e-3)
    base, large = TrainConfig(preset="base"), TrainConfig(preset="large")
    assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size) == (4, 256, 4, 1024)
    assert (large.num_layers, large.hidden_size, large.num_heads, large.intermediate_size) == (8, 512, 8, 2048)
    assert base.lr < small.lr and large.lr < base.lr
    # a size given beside a preset wins; the feed-forward keeps the preset's ratio
    assert TrainConfig(preset="base", hidden_size=128).intermediate_size == 512
    for name, p in PRESETS.items():
        assert p["hidden_size"] % p["num_heads"] == 0, name


def test_the_resolved_config_round_trips_through_a_dict():
    c = TrainConfig(preset="base", grad_accum=4)
    from dataclasses import asdict
    assert TrainConfig.from_dict(asdict(c)) == c


@pytest.mark.parametrize("d, named", [
    ({"hiden_size": 32}, "hiden_size"),
    ({"hidden_size": "big"}, "hidden_size must be int or null"),
    ({"grad_accum": 1.5}, "grad_accum must be int"),
    ({"campaigns": "yes"}, "campaigns must be bool"),
    ({"epochs": True}, "epochs must be int or null"),
    ({"grad_accum": 0}, "grad_accum=0"),
    ({"preset": "huge"}, "preset='huge'"),
    ({"mixed_precision": "fp8"}, "mixed_precision='fp8'"),
    ({"hidden_size": 30, "num_heads": 4}, "num_heads=4"),
])
def test_config_errors_name_the_field(d, named):
    with pytest.raises(ValueError, match="known: \\[" if named == "hiden_size" else None) as e:
        TrainConfig.from_dict(d)
    assert named in str(e.value)


def test_a_config_file_with_an_unknown_key_or_bad_type_is_an_error_naming_file_and_key(tmp_path):
    f = tmp_path / "train.yaml"
    f.write_text("preset: base\nbatchsize: 32\n")
    with pytest.raises(ValueError) as e:
        resolve_config(f)
    assert str(f) in str(e.value) and "'batchsize'" in str(e.value) and "batch_size" in str(e.value)
    f.write_text("lr: fast\n")
    with pytest.raises(ValueError, match="lr must be float"):
        resolve_config(f)
    f.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        resolve_config(f)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_config(tmp_path / "nope.yaml")


def test_flags_override_the_file_which_overrides_the_preset(tmp_path):
    f = tmp_path / "train.yaml"
    f.write_text("preset: base\nnum_layers: 3\nlr: 1e-4\nbatch_size: 16\ngrad_accum: 2\n")
    assert read_config_file(f)["lr"] == 1e-4  # YAML reads 1e-4 as text; a float field takes it as a number
    c = resolve_config(f, {"batch_size": 8, "seed": None})
    assert (c.preset, c.hidden_size, c.num_layers, c.lr, c.batch_size, c.grad_accum, c.seed) == \
        ("base", 256, 3, 1e-4, 8, 2, 0)
    j = tmp_path / "train.json"
    j.write_text(json.dumps({"preset": "large"}))
    assert resolve_config(j, {"preset": "small"}).hidden_size == 64
    # a pretrained encoder's sizes apply only where neither the file nor a flag sets a preset or size
    below = {"preset": "base", "hidden_size": 256}
    assert resolve_config(None, {}, below=below).hidden_size == 256
    assert resolve_config(None, {"preset": "small"}, below=below).hidden_size == 64


def test_train_cli_takes_a_config_file_and_records_the_resolved_config(tmp_path, tiny_events, capsys):
    ev = tmp_path / "events.parquet"
    tiny_events.to_parquet(ev)
    f = tmp_path / "train.yaml"
    f.write_text("hidden_size: 16\nnum_layers: 1\nmax_len: 32\ncontext: 4\nepochs: 3\nbatch_size: 8\n")
    assert main(["-q", "train", "--events", str(ev), "--model", str(tmp_path / "m"), "--config", str(f),
                 "--epochs", "1", "--grad-accum", "2"]) == 0
    tc = json.loads((tmp_path / "m" / "manifest.json").read_text())["train_config"]
    assert (tc["epochs"], tc["grad_accum"], tc["hidden_size"], tc["num_heads"], tc["intermediate_size"],
            tc["preset"], tc["batch_size"], tc["init_from"]) == (1, 2, 16, 2, 32, "small", 8, None)
    enc = json.loads((tmp_path / "m" / "manifest.json").read_text())["encoder_config"]
    assert (enc["hidden_size"], enc["intermediate_size"]) == (16, 32)
    f.write_text("hidden_size: 16\nnum_layer: 1\n")
    assert main(["train", "--events", str(ev), "--model", str(tmp_path / "m2"), "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "num_layer" in err and "num_layers" in err and str(f) in err


def toy_batches(n_windows=8, T=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"items": torch.as_tensor(rng.integers(3, 20, (n_windows, T))),
            "actions": torch.as_tensor(rng.integers(3, 5, (n_windows, T))),
            "gaps": torch.as_tensor(rng.integers(2, 10, (n_windows, T)))}


def test_grad_accum_k_batches_of_b_give_the_update_of_one_batch_of_k_times_b():
    torch.manual_seed(0)
    m0 = SeqGuardEncoder(SeqGuardConfig(n_items=20, n_actions=5, hidden_size=32, num_layers=1, num_heads=2,
                                        intermediate_size=64, max_len=16, dropout=0.0))
    big = toy_batches()
    after = []
    for k in (1, 4):
        m = copy.deepcopy(m0)
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        parts = [{n: v[i * (8 // k):(i + 1) * (8 // k)] for n, v in big.items()} for i in range(k)]
        hist = train_encoder(m, lambda epoch, parts=parts: iter(parts), epochs=1, optimizer=opt, grad_accum=k, seed=3)
        assert hist[0]["steps"] == 1
        after.append({n: p.detach().clone() for n, p in m.named_parameters()})
    moved = 0
    for n, p0 in m0.named_parameters():
        d1, d4 = after[0][n] - p0.detach(), after[1][n] - p0.detach()
        torch.testing.assert_close(d4, d1, rtol=1e-4, atol=1e-6, msg=n)
        moved += bool(d1.abs().sum() > 0)
    assert moved > 5


def test_grad_accum_counts_optimiser_steps_and_the_schedule_in_steps():
    m = SeqGuardEncoder(SeqGuardConfig(n_items=20, n_actions=5, hidden_size=16, num_layers=1, num_heads=2,
                                       intermediate_size=32, max_len=16))
    tok = {k: v.reshape(-1).numpy() for k, v in toy_batches(40).items()}
    starts, lengths = np.arange(0, 640, 16), np.full(40, 16)
    hist = train_encoder(m, lambda e: iter_window_batches(tok, starts, lengths, max_len=16, batch_size=4, shuffle=True,
                                                          seed=e), epochs=1, steps_per_epoch=10, grad_accum=3)
    assert hist[0]["steps"] == 4  # 10 batches -> 3 + 3 + 3 + 1


def test_mixed_precision_only_on_cuda():
    assert autocast_dtype(torch.device("cpu"), "bf16") is None
    assert autocast_dtype(torch.device("cpu"), "fp16") is None
    if torch.cuda.is_available():
        assert autocast_dtype(torch.device("cuda"), "fp16") == torch.float16
        assert autocast_dtype(torch.device("cuda"), "off") is None


def test_item_nats_in_chunks_equals_the_cross_entropy_of_the_full_logits():
    """The scoring pass computes the item head's cross-entropy a chunk of rows at a time; across
    chunk boundaries (and a last short chunk) it must equal F.cross_entropy of the whole logits."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = SeqGuardEncoder(SeqGuardConfig(n_items=50, n_actions=6, hidden_size=16, num_layers=1, max_len=16)).eval()
    h, target = torch.randn(23, 16), torch.randint(3, 50, (23,))
    with torch.no_grad():
        full = F.cross_entropy(m.item_proj(h) @ m.item_emb.weight.T + m.item_bias, target, reduction="none")
        for chunk in (1, 5, 23, 100):
            assert torch.allclose(m.item_nats(h, target, chunk=chunk), full, atol=1e-5), chunk


def test_score_precision_bf16_on_cpu_only_where_the_cpu_has_it(monkeypatch, caplog):
    from seqguard_ray.core import training

    cpu = torch.device("cpu")
    assert training.scoring_dtype(cpu, "bf16", "fp32") is None  # the default: fp32 on CPU whatever mixed_precision
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    assert training.scoring_dtype(cpu, "off", "bf16") == torch.bfloat16
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        assert training.scoring_dtype(cpu, "off", "bf16") is None
    assert "no bf16 instructions" in caplog.text
    with pytest.raises(ValueError, match="score_precision"):
        TrainConfig(score_precision="int8")


@pytest.mark.skipif(not cpu_has_bf16(),
                    reason="this CPU has no bf16 instructions")
def test_score_cli_bf16_scores_within_a_hair_of_fp32(tmp_path):
    """`seqguard score --score-precision bf16` (the bundle trained in fp32): scores move by float
    rounding only, and the flagged users are the same up to threshold ties."""
    import pandas as pd

    from seqguard_ray.synth import generate

    ev = tmp_path / "events.parquet"
    generate(n_users=200, seed=3).events.to_parquet(ev)
    assert main(["-q", "train", "--events", str(ev), "--model", str(tmp_path / "m"), "--epochs", "1"]) == 0
    outs = {}
    for prec in ("fp32", "bf16"):
        assert main(["-q", "score", "--events", str(ev), "--model", str(tmp_path / "m"), "--out",
                     str(tmp_path / prec), "--engine", "local", "--score-precision", prec]) == 0
        outs[prec] = pd.read_parquet(tmp_path / prec / "users.parquet").set_index("user_id")
    a, b = outs["fp32"], outs["bf16"].reindex(outs["fp32"].index)
    assert not np.array_equal(a["score"].to_numpy(), b["score"].to_numpy())  # bf16 really ran
    assert np.corrcoef(a["score"], b["score"])[0, 1] > 0.999
    assert (a["anomalous"] != b["anomalous"]).mean() <= 0.01


def test_score_cli_compiled_scores_equal_eager(tmp_path, monkeypatch):
    """`seqguard score --score-compile on` (the bundle trained without): the same outputs as eager
    up to float rounding (flags within 1%, as bf16's test); a non-boolean score_compile is refused."""
    import pandas as pd

    from seqguard_ray.core import encoder
    from seqguard_ray.synth import generate

    ev = tmp_path / "events.parquet"
    generate(n_users=120, seed=4).events.to_parquet(ev)
    assert main(["-q", "train", "--events", str(ev), "--model", str(tmp_path / "m"), "--epochs", "1"]) == 0
    calls = []
    real = encoder.compiled_hidden_states
    monkeypatch.setattr(encoder, "compiled_hidden_states", lambda m: calls.append(m) or real(m))
    outs = {}
    for flag in ("off", "on"):
        assert main(["-q", "score", "--events", str(ev), "--model", str(tmp_path / "m"), "--out",
                     str(tmp_path / flag), "--engine", "local", "--score-compile", flag]) == 0
        outs[flag] = [pd.read_parquet(tmp_path / flag / f"{t}.parquet") for t in ("events", "users")]
    assert calls  # the compiled pass really ran
    for on, off in zip(outs["on"], outs["off"]):  # calibrated scores: steep steps can move a rounding-size change
        assert np.corrcoef(on.filter(like="score").iloc[:, 0], off.filter(like="score").iloc[:, 0])[0, 1] > 0.999
        assert (on["anomalous"] != off["anomalous"]).mean() <= 0.01
    with pytest.raises(ValueError, match="score_compile"):
        TrainConfig(score_compile="yes")
