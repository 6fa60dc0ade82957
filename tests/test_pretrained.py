"""Pretrain the encoder alone, then fine-tune from it on another log (issue 31)."""

import json

import numpy as np
import pytest
import torch

from seqguard_ray.cli.main import main
from seqguard_ray.core.config import TrainConfig
from seqguard_ray.core.itemtext import ItemTextModel, item_texts, nearest_rows
from seqguard_ray.core.pipeline import SeqGuard
from seqguard_ray.core.pretrained import (
    CheckpointError,
    adapt_model,
    load_pretrained,
    pretrain,
)
from seqguard_ray.core.tokens import N_SPECIAL, UNK, Vocab
from seqguard_ray.synth import generate

TINY = dict(hidden_size=16, num_layers=1, num_heads=2, max_len=32, context=4, epochs=1, batch_size=16)


class CategoryEmbedder:
    """A stand-in item-text model: one unit vector per category word (the generator's titles end in it)."""

    name = "fake-category"

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), 32), np.float32)
        for i, t in enumerate(texts):
            out[i, hash(t.split()[-1]) % 32] = 1.0
        return out


@pytest.fixture(scope="module")
def logs():
    big = generate(n_users=40, n_items=150, events_per_user=30, seed=0).events
    target = generate(n_users=30, n_items=220, events_per_user=30, seed=1).events  # items >= 150 are new
    return big, target


@pytest.fixture(scope="module")
def encoder_dir(logs, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "enc"
    pretrain(logs[0], out, TrainConfig(**TINY), embedder=CategoryEmbedder())
    return out


def test_pretrain_writes_weights_vocab_config_and_text_safely(encoder_dir, logs):
    assert sorted(p.name for p in encoder_dir.iterdir()) == ["encoder.json", "encoder.safetensors", "items.npz"]
    m = json.loads((encoder_dir / "encoder.json").read_text())
    assert m["format"] == "seqguard-encoder" and m["train_config"]["hidden_size"] == 16
    assert m["item_text"] == "fake-category" and m["metrics"]["items_with_text"] == len(m["vocab"]["items"])
    pre = load_pretrained(encoder_dir)
    assert pre.model.config.hidden_size == 16 and pre.text.shape == (len(pre.vocab.items_), 32)
    with np.load(encoder_dir / "items.npz", allow_pickle=False) as z:  # no object arrays
        assert set(z.files) == {"item_counts", "text_ids", "text"}


def test_init_from_fine_tunes_on_a_log_with_new_items_and_scores_it(encoder_dir, logs, tmp_path):
    _, target = logs
    sg = SeqGuard(TrainConfig(**TINY, init_from=str(encoder_dir), item_text=False)).fit(target)
    info = sg.metrics["init_from"]
    assert info["items_new"] > 0 and info["items_kept"] > 0 and info["items_new_unknown"] == info["items_new"]
    res = sg.score(target)
    assert len(res.users) == target.user_id.nunique() and res.users["score"].between(0, 1).all()
    sg.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["train_config"]["init_from"] == str(encoder_dir)
    assert manifest["metrics"]["init_from"]["encoder_id"] == load_pretrained(encoder_dir).encoder_id
    assert SeqGuard.load(tmp_path / "m").score(target).users["score"].notna().all()


def test_adapted_weights_are_the_pretrained_ones_by_item_name(encoder_dir, logs):
    pre = load_pretrained(encoder_dir)
    _, target = logs
    vocab = Vocab(min_count=2).fit(target.item_id.to_numpy(), target.action.to_numpy())
    model, info = adapt_model(pre, vocab)
    old_w, new_w = pre.model.item_emb.weight.detach(), model.item_emb.weight.detach()
    old_ids = pre.vocab.item_ids(np.asarray(vocab.items_))
    kept = old_ids != UNK
    torch.testing.assert_close(new_w[N_SPECIAL:][torch.as_tensor(kept)], old_w[torch.as_tensor(old_ids[kept])])
    # new items without text start as the pretrained unknown bucket
    assert torch.equal(new_w[N_SPECIAL:][torch.as_tensor(~kept)][0], old_w[UNK])
    torch.testing.assert_close(model.bert.encoder.layer[0].output.dense.weight, pre.model.bert.encoder.layer[0].output.dense.weight)
    assert info["items_new"] == int((~kept).sum())


def test_new_items_are_placed_by_their_text_near_pretrained_items_of_their_category(encoder_dir, logs):
    pre = load_pretrained(encoder_dir)
    _, target = logs
    texts = item_texts(target, target.item_id.astype(str).to_numpy())
    assert texts["160"].endswith(target.loc[target.item_id == 160, "category"].iloc[0]) if "160" in texts else texts
    vocab = Vocab(min_count=2).fit(target.item_id.to_numpy(), target.action.to_numpy())
    model, info = adapt_model(pre, vocab, texts=texts, embedder=CategoryEmbedder())
    assert info["items_new_by_text"] == info["items_new"] > 0 and info["text_model"] == "fake-category"
    cats = set(logs[0].category)
    new = [i for i, s in enumerate(vocab.items_)
           if pre.vocab.item_ids(np.array([s]))[0] == UNK and texts[s].split()[-1] in cats][0]
    # its row: the similarity-weighted mean of the pretrained items nearest its text (the checkpoint's
    # text embeddings), here items of its own category (cosine 1)
    q = CategoryEmbedder().encode([texts[vocab.items_[new]]])
    w = pre.model.item_emb.weight.detach().numpy()
    rows = np.concatenate([w[pre.text_ids], pre.model.item_bias.detach().numpy()[pre.text_ids, None]], axis=1)
    init, best = nearest_rows(q, pre.text, rows)
    assert best[0] == 1.0
    torch.testing.assert_close(model.item_emb.weight.detach()[new + N_SPECIAL], torch.as_tensor(init[0, :-1]))
    assert not torch.equal(model.item_emb.weight.detach()[new + N_SPECIAL], pre.model.item_emb.weight.detach()[UNK])


def test_nearest_rows_weights_the_most_similar_known_items():
    ref = np.eye(3, dtype=np.float32)
    rows = np.array([[1.0], [2.0], [3.0]], np.float32)
    init, best = nearest_rows(np.array([[0, 1, 0]], np.float32), ref, rows, k=2)
    assert np.isclose(init[0, 0], 2.0, atol=1e-3) and best[0] == 1.0


def test_checkpoint_mismatch_and_bad_checkpoints_get_clear_errors(encoder_dir, logs, tmp_path, tiny_bundle):
    _, target = logs
    with pytest.raises(CheckpointError, match="hidden_size=16.*asks for hidden_size=256.*--preset small"):
        SeqGuard(TrainConfig(preset="base", max_len=32, context=4, epochs=1, init_from=str(encoder_dir))).fit(target)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="model bundle, not a pretrained encoder"):
        load_pretrained(tiny_bundle)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in encoder_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "items.npz").unlink()
    with pytest.raises(CheckpointError, match="missing items.npz"):
        load_pretrained(broken)
    (broken / "items.npz").write_bytes(b"not npz")
    with pytest.raises(CheckpointError, match="checksum"):
        load_pretrained(broken)
    (broken / "encoder.json").write_text("{\"format\": \"other\"}")
    with pytest.raises(CheckpointError, match="not a seqguard-encoder manifest"):
        load_pretrained(broken)


def test_pretrain_and_train_init_from_on_the_command_line(logs, tmp_path, capsys):
    big, target = logs
    big.to_parquet(tmp_path / "big.parquet")
    target.to_parquet(tmp_path / "target.parquet")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("hidden_size: 16\nnum_layers: 1\nmax_len: 32\ncontext: 4\nepochs: 1\nitem_text: false\n")
    enc = tmp_path / "enc"
    assert main(["-q", "pretrain", "--events", str(tmp_path / "big.parquet"), "--out", str(enc), "--config", str(cfg)]) == 0
    # no preset or size given: the encoder's are taken
    assert main(["-q", "train", "--events", str(tmp_path / "target.parquet"), "--model", str(tmp_path / "m"),
                 "--init-from", str(enc), "--epochs", "1", "--engine", "local"]) == 0
    tc = json.loads((tmp_path / "m" / "manifest.json").read_text())["train_config"]
    assert (tc["hidden_size"], tc["num_layers"], tc["max_len"], tc["context"], tc["init_from"]) == (16, 1, 32, 4, str(enc))
    assert main(["train", "--events", str(tmp_path / "target.parquet"), "--model", str(tmp_path / "m2"),
                 "--init-from", str(enc), "--preset", "base"]) == 2
    assert "--preset small" in capsys.readouterr().err


@pytest.mark.skipif(not ItemTextModel.available(), reason="the item-text model ([text] extra) is not installed")
def test_the_minilm_item_text_model_embeds_titles_offline():
    e = ItemTextModel().encode(["GoldenEye Action Adventure Thriller", "Twelve Monkeys Sci-Fi Thriller",
                                "Toy Story Animation Children Comedy"])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2]


@pytest.mark.skipif(not ItemTextModel.available(), reason="the item-text model ([text] extra) is not installed")
def test_init_from_places_new_items_with_minilm_where_the_log_has_text(encoder_dir, logs):
    from seqguard_ray.core.pretrained import init_encoder
    from seqguard_ray.core.schema import from_frame

    _, target = logs
    lg = from_frame(target)
    cfg = TrainConfig(**TINY, init_from=str(encoder_dir))
    vocab = Vocab(min_count=2).fit(lg.item, lg.action)
    from seqguard_ray.core.encoder import Encoder
    info = init_encoder(Encoder(**cfg.encoder_params()), vocab, cfg, lg)
    assert info["text_model"] == "all-MiniLM-L6-v2" and info["items_new_by_text"] == info["items_new"] > 0


@pytest.mark.ray
def test_pretrain_and_init_from_on_ray_train(logs, tmp_path, ray_local):
    """`seqguard pretrain --engine ray` writes an encoder that `seqguard train --engine ray
    --init-from` adapts and fine-tunes on Ray Train, as the in-process commands do."""
    from seqguard_ray.core.pipeline import SeqGuard

    big, target = logs
    big.to_parquet(tmp_path / "big.parquet")
    target.to_parquet(tmp_path / "target.parquet")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("hidden_size: 16\nnum_layers: 1\nmax_len: 32\ncontext: 4\nepochs: 2\nitem_text: false\n")
    enc = tmp_path / "enc"
    assert main(["-q", "pretrain", "--engine", "ray", "--workers", "1", "--events", str(tmp_path / "big.parquet"),
                 "--out", str(enc), "--config", str(cfg)]) == 0
    pre = load_pretrained(enc)
    m = json.loads((enc / "encoder.json").read_text())["metrics"]
    assert m["engine"] == "ray" and m["epochs"] == 2 and m["train_events"] == len(big)
    assert pre.vocab.items_ == Vocab().fit(big["item_id"].to_numpy(), big["action"].to_numpy()).items_
    assert main(["-q", "train", "--engine", "ray", "--workers", "1", "--events", str(tmp_path / "target.parquet"),
                 "--model", str(tmp_path / "m"), "--init-from", str(enc), "--epochs", "1"]) == 0
    sg = SeqGuard.load(tmp_path / "m")
    info = sg.metrics["init_from"]
    assert sg.metrics["engine"] == "ray" and info["encoder_id"] == pre.encoder_id
    assert info["items_kept"] > 0 and info["items_new"] > 0 and info["items_new_unknown"] == info["items_new"]
    assert sg.model.config.hidden_size == 16 and sg.config.init_from == str(enc)
