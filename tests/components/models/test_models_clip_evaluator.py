"""The evaluator CLIP: CLIP-style tokenization, the symmetric contrastive loss, embeddings, overfitting, save/load."""

import logging
import math
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from components.data.scene import render_scene, sample_scene
from components.models.autoencoder import images_to_pixels
from components.models.clip_evaluator import (
    ClipEvaluator,
    ClipEvaluatorConfig,
    CLIPTextTowerConfig,
    CLIPVisionTowerConfig,
    build_clip_model,
    clip_contrastive_loss,
    tokenize_captions,
)

TINY = ClipEvaluatorConfig(
    text=CLIPTextTowerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             max_position_embeddings=16),
    vision=CLIPVisionTowerConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2),
    projection_dim=16,
)


def scenes(n: int, seed: int = 0):
    rng = random.Random(seed)
    chosen = [sample_scene(rng, 1, 1) for _ in range(n)]
    captions = [f"{s.objects[0].phrase()} at the {s.objects[0].position} on {s.background}" for s in chosen]
    return images_to_pixels([render_scene(s, 32) for s in chosen]), captions


@pytest.fixture(scope="module")
def tokenizer():
    """A BPE tokenizer trained on scene captions, <eos> at id 2 as `tokenizers` tends to put it."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
                                  show_progress=False)
    bpe.train_from_iterator(scenes(200)[1], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def evaluator(tokenizer):
    torch.manual_seed(0)
    return ClipEvaluator.from_config(TINY, tokenizer).eval()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="patch_size"):
        CLIPVisionTowerConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="num_attention_heads"):
        CLIPTextTowerConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="logit_scale_init"):
        ClipEvaluatorConfig(logit_scale_init=6.0)


def test_tokenize_captions_is_clip_style(tokenizer, caplog):
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    input_ids, attention_mask = tokenize_captions(tokenizer, ["a red circle", ""], max_length=10)
    body = tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    assert input_ids[0].tolist() == [bos, *body, eos] + [pad] * (10 - len(body) - 2)
    assert input_ids[1].tolist() == [bos, eos] + [pad] * 8
    assert attention_mask.tolist() == [[1] * (len(body) + 2) + [0] * (8 - len(body)), [1, 1] + [0] * 8]
    with caplog.at_level(logging.WARNING):
        long_ids, _ = tokenize_captions(tokenizer, ["a red circle at the top left " * 5], max_length=8)
    assert "truncated 1 of 1" in caplog.text
    assert long_ids[0, 0] == bos and long_ids[0, -1] == eos

    no_eos = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>")
    with pytest.raises(ValueError, match="eos_token"):
        tokenize_captions(no_eos, ["a"], max_length=8)


def test_contrastive_loss_is_symmetric_and_matches_clip():
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    scale = torch.tensor(math.log(20.0))
    loss = clip_contrastive_loss(image, text, scale)
    # Logits are s * dot products of unit 8-vectors: two fp32 evaluations (another operand order, or s
    # rounded through exp(log s)) differ by <= (8 + 2) * 2^-24 * s each (Higham; sum |a_k b_k| <= 1); a
    # mean cross-entropy moves by at most twice its logits' error, plus its own log-sum-exp roundings.
    def tolerance(s: float) -> dict:
        return {"atol": 2 * 10 * 2.0**-24 * s, "rtol": 16 * 2.0**-24}

    torch.testing.assert_close(loss, clip_contrastive_loss(text, image, scale), **tolerance(20.0))
    torch.testing.assert_close(loss, image_text_contrastive_loss(20.0 * text @ image.t()), **tolerance(20.0))
    # the logit scale is clipped at 100 (CLIP Sec. 2.5)
    torch.testing.assert_close(clip_contrastive_loss(image, text, torch.tensor(math.log(1000.0))),
                               clip_contrastive_loss(image, text, torch.tensor(math.log(100.0))), **tolerance(100.0))
    # matching pairs give a lower loss than shuffled ones
    assert clip_contrastive_loss(image, image, scale) < clip_contrastive_loss(image, image.roll(1, 0), scale)


def test_embeddings_are_normalized(evaluator):
    pixels, captions = scenes(3)
    with torch.no_grad():
        images = evaluator.embed_images(pixels)
        small = evaluator.embed_images(torch.nn.functional.interpolate(pixels, size=16))
        texts = evaluator.embed_texts(captions)
    assert images.shape == small.shape == texts.shape == (3, TINY.projection_dim)
    # normalising and re-measuring P = 16 components in fp32: within (P + 4) * 2^-24 of 1 (Higham)
    unit = {"atol": (TINY.projection_dim + 4) * 2.0**-24, "rtol": 0}
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3), **unit)
    torch.testing.assert_close(small.norm(dim=-1), torch.ones(3), **unit)
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(3), **unit)


def test_text_features_pool_at_the_first_eos(evaluator, tokenizer):
    assert tokenizer.eos_token_id == 2  # the id transformers' CLIPTextModel mistakes for a legacy config
    input_ids, attention_mask = evaluator.tokenize(["a blue square", "a green circle at the top"])
    with torch.no_grad():
        ours = evaluator.text_features(input_ids, attention_mask)
        hidden = evaluator.model.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        eos = [row.index(tokenizer.eos_token_id) for row in input_ids.tolist()]
        expected = evaluator.model.text_projection(hidden[torch.arange(2), torch.tensor(eos)])
        transformers_pooled = evaluator.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    assert torch.equal(ours, expected)  # the same fp32 ops on the same hidden state: bit for bit
    # pooling at another token gives another embedding altogether, O(1) apart
    assert not torch.allclose(ours, transformers_pooled.pooler_output)


def test_overfits_one_batch(tokenizer):
    torch.manual_seed(0)
    model = ClipEvaluator.from_config(TINY, tokenizer)
    pixels, captions = scenes(8, seed=1)
    input_ids, attention_mask = model.tokenize(captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        terms = model(pixels, input_ids, attention_mask)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert set(terms) == {"loss", "logit_scale", "accuracy"}
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_vocabulary_must_cover_the_tokenizer(tokenizer):
    small = ClipEvaluatorConfig(text=CLIPTextTowerConfig(vocab_size=10, hidden_size=32, num_attention_heads=2))
    with pytest.raises(ValueError, match="text.vocab_size"):
        build_clip_model(small, tokenizer)
    with pytest.raises(ValueError, match="text.vocab_size"):
        build_clip_model(ClipEvaluatorConfig())
    with pytest.raises(ValueError, match="token embeddings"):
        ClipEvaluator(build_clip_model(small), tokenizer)


def test_save_load_round_trip(evaluator, tmp_path):
    path = evaluator.save_pretrained(tmp_path / "clip")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
    loaded = ClipEvaluator.from_pretrained(path).eval()
    assert loaded.cfg == TINY
    pixels, captions = scenes(2)
    with torch.no_grad():
        assert torch.equal(loaded.embed_images(pixels), evaluator.embed_images(pixels))
        assert torch.equal(loaded.embed_texts(captions), evaluator.embed_texts(captions))
        assert torch.equal(loaded.model.logit_scale, evaluator.model.logit_scale)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ClipEvaluator.from_pretrained(tmp_path / "missing")
