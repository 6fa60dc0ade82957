import numpy as np
import pytest
import torch

from seqguard_ray.core.encoder import (
    SeqGuardConfig,
    SeqGuardEncoder,
    compiled_hidden_states,
    iter_window_batches,
    surprisal,
    train_encoder,
)


def tiny():
    return SeqGuardEncoder(SeqGuardConfig(n_items=20, n_actions=5, hidden_size=32, num_layers=1, num_heads=2,
                                          intermediate_size=64, max_len=16))


def toy_tokens(n=400, seed=0):
    rng = np.random.default_rng(seed)
    items = 3 + (np.arange(n) % 5)  # a periodic sequence: easy to learn
    return {"items": items, "actions": np.full(n, 3), "gaps": 2 + rng.integers(0, 3, n)}, np.arange(0, n, 16), np.full(n // 16, 16)


def test_surprisal_shapes_and_a_model_rebuilt_from_its_config():
    m = tiny()
    tok, starts, lengths = toy_tokens()
    batch = next(iter_window_batches(tok, starts, lengths, max_len=16, batch_size=4, shuffle=False))
    batch.pop("window")
    s, e = surprisal(m, **batch)
    assert s.shape == (4, 16, 3) and e.shape == (4, 32)
    assert (s >= 0).all()
    again = SeqGuardEncoder(SeqGuardConfig.from_dict(m.config.to_dict()))
    assert again.config.hidden_size == 32


def test_training_lowers_surprisal_of_learnable_sequences():
    torch.manual_seed(0)
    m = tiny()
    tok, starts, lengths = toy_tokens()

    def batches(epoch):
        return iter_window_batches(tok, starts, lengths, max_len=16, batch_size=8, shuffle=True, seed=epoch)

    def mean_item_surprisal():
        b = next(iter_window_batches(tok, starts, lengths, max_len=16, batch_size=25, shuffle=False))
        b.pop("window")
        return float(surprisal(m, **b)[0][..., 0].mean())

    before = mean_item_surprisal()
    hist = train_encoder(m, batches, epochs=15, lr=3e-3, steps_per_epoch=4)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert mean_item_surprisal() < 0.6 * before  # uniform over 20 items -> mostly the 5 in use


def test_resumed_training_continues_the_lr_schedule():
    """A run resumed at epoch 5 of 10 starts mid-cosine (half the peak lr), not at warm-up's start."""
    m = tiny()
    lrs = []
    for start in (0, 5):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        train_encoder(m, lambda epoch: iter(()), epochs=10, steps_per_epoch=10, optimizer=opt, start_epoch=start)
        lrs.append(opt.param_groups[0]["lr"])
    assert np.isclose(lrs[0], 1e-3 * 1 / 5) and np.isclose(lrs[1], 1e-3 * 0.5), lrs


@pytest.mark.parametrize("stack_rows", [1, 64])
def test_surprisal_on_selected_positions_equals_full_logits(stack_rows, monkeypatch):
    """surprisal() computes the item head only where events are masked, one masking pass per
    forward call (stack_rows 1) or several stacked in one call (64); the result must equal
    -log_softmax of the full (B, T, V) logits at every real event."""
    from seqguard_ray.core import encoder as model_mod
    from seqguard_ray.core.tokens import MASK, PAD

    monkeypatch.setattr(model_mod, "_STACK_ROWS", stack_rows)
    torch.manual_seed(1)
    m = tiny().eval()
    tok, starts, lengths = toy_tokens(n=100, seed=3)
    lengths = lengths.copy()
    lengths[-1] = 9  # a shorter window: padding must stay zero
    b = next(iter_window_batches(tok, starts, lengths, max_len=16, batch_size=6, shuffle=False))
    b.pop("window")
    s, _ = surprisal(m, **b)
    items, actions, gaps = b["items"], b["actions"], b["gaps"]
    real = gaps != PAD
    k = m.config.n_mask_groups
    pos = torch.arange(items.shape[1]).expand_as(items)
    expected = torch.zeros_like(s)
    with torch.no_grad():
        for r in range(k):
            masked = (pos % k == r) & real
            o = m(items.masked_fill(masked, MASK), actions.masked_fill(masked, MASK), gaps.masked_fill(masked, MASK))
            for j, (name, target) in enumerate((("item", items), ("action", actions), ("gap", gaps))):
                lp = torch.log_softmax(o[name], -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
                expected[..., j] = torch.where(masked, -lp, expected[..., j])
    assert torch.allclose(s, expected, atol=1e-5)
    assert (s[~real] == 0).all() and (s[real] > 0).all()


def _windows(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    real = torch.arange(T)[None, :] < lengths[:, None]
    ids = lambda lo, hi: torch.where(real, torch.randint(lo, hi, (B, T), generator=g), 0)
    return {"items": ids(3, 20), "actions": ids(3, 5), "gaps": ids(2, 6)}


def test_compiled_scoring_equals_eager_with_a_bounded_number_of_graphs():
    """score_compile: one compiled pass per model, equal to eager within float rounding, at batch
    sizes and window lengths it was not compiled for (symbolic shapes: no recompile per shape; only
    length 1, which torch specialises, adds a graph)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    m = tiny().eval()
    fn = compiled_hidden_states(m)
    assert compiled_hidden_states(m) is fn
    for i, (B, T) in enumerate([(8, 12), (3, 16), (1, 5), (40, 2), (17, 9), (5, 1), (2, 14)]):
        w = _windows(B, T, i)
        (a, ea), (b, eb) = surprisal(m, **w), surprisal(m, **w, hidden_states=fn)
        assert torch.allclose(a, b, atol=1e-4) and torch.allclose(ea, eb, atol=1e-4), (B, T)
    assert 1 <= counters["stats"]["unique_graphs"] <= 2


def test_a_failed_compile_scores_eager_with_a_warning(monkeypatch, caplog):
    def broken(*_, **__):
        def fn(*args):
            raise RuntimeError("no C++ compiler found")
        return fn

    monkeypatch.setattr(torch, "compile", broken)
    m = tiny().eval()
    w = _windows(6, 10, 0)
    with caplog.at_level("WARNING"):
        got = surprisal(m, **w, hidden_states=compiled_hidden_states(m))[0]
    assert "torch.compile failed (RuntimeError: no C++ compiler found); scoring eager" in caplog.text
    assert torch.equal(got, surprisal(m, **w)[0])
    assert compiled_hidden_states(m) == m.hidden_states  # eager from then on, no second attempt


def test_warm_up_compiles_before_the_first_request_only_with_score_compile():
    from seqguard_ray.core import encoder as enc_mod

    for flag in (False, True):
        enc = enc_mod.Encoder(max_len=16, context=2, score_compile=flag)
        enc.model_ = tiny().eval()
        enc.warm_up()
        assert (enc.model_ in enc_mod._COMPILED) is flag
    assert enc_mod._COMPILED[enc.model_].warm and enc_mod._COMPILED[enc.model_].ok
