"""Placement diagnosis tools: the linear probe, the label conditioning and the attention layout, on
tiny models and features where the answer is known."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from components.diffusion import DiffusionConfig
from components.models.clip_evaluator import CLIPTextTowerConfig
from components.models.probes import (
    SceneLabelEncoder,
    attention_layout,
    linear_probe_accuracy,
    one_object_captions,
    text_probe,
    token_state_features,
)
from components.models.sd_base import SDBase, SDBaseConfig, SDUNetConfig, build_unet


def test_probe_reads_a_label_written_in_the_features_and_not_one_that_is_absent():
    rng = np.random.default_rng(0)
    labels = [["a", "b", "c"][i % 3] for i in range(300)]
    written = np.eye(3)[[ord(x) - ord("a") for x in labels]] + 0.3 * rng.normal(size=(300, 3))
    assert linear_probe_accuracy(np.hstack([written, rng.normal(size=(300, 20))]), labels) > 0.95
    assert linear_probe_accuracy(rng.normal(size=(300, 20)), labels) < 0.6  # chance is 1/3
    with pytest.raises(ValueError, match="labels"):
        linear_probe_accuracy(written, labels[:-1])


@pytest.fixture(scope="module")
def sd():
    data = one_object_captions(400, seed=1)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.decoder = decoders.BPEDecoder()
    bpe.train_from_iterator(data.captions, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"], show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>")
    cfg = SDBaseConfig(
        text=CLIPTextTowerConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 max_position_embeddings=24),
        unet=SDUNetConfig(sample_size=8, block_out_channels=(16, 32), cross_attention=(False, True),
                          attention_head_dim=(2, 2)),
        diffusion=DiffusionConfig(num_inference_steps=3),
    )
    torch.manual_seed(0)
    return SDBase.from_config(cfg, tokenizer).eval()


def test_text_probe_on_a_random_encoder(sd):
    """A random-init encoder keeps its tokens apart, so every token state together names the position; mean
    pooling mixes 'top left' with 'bottom right'. Colour is one word: either way reads it."""
    data = one_object_captions(600, seed=0)
    assert token_state_features(sd, data.captions[:3], "all").shape == (3, 24 * 16)
    assert token_state_features(sd, data.captions[:3], "mean").shape == (3, 16)
    scores = text_probe(sd, data)
    assert scores["all/position"] > 0.75 and scores["all/colour"] > 0.85, scores  # chance: 1/9 and 1/8
    assert scores["mean/position"] < scores["all/position"] - 0.2, scores
    with pytest.raises(ValueError, match="pooling"):
        token_state_features(sd, data.captions[:3], "max")


def test_one_object_captions_state_their_labels():
    data = one_object_captions(50, seed=3)
    assert len(data.captions) == len(data.colours) == len(data.positions) == 50
    assert all(c in text and p in text for text, c, p in zip(data.captions, data.colours, data.positions))
    assert one_object_captions(50, seed=3) == data


def test_scene_label_encoder_gives_two_tokens_and_a_null_label():
    encoder = SceneLabelEncoder(8)
    colour_ids, position_ids = encoder.ids(["red", None], ["top left", None])
    assert colour_ids.tolist() == [0, len(encoder.colours)] and position_ids.tolist() == [0, len(encoder.positions)]
    tokens = encoder(colour_ids, position_ids)
    assert tokens.shape == (2, 2, 8)
    assert not torch.equal(tokens[0], tokens[1])


def test_attention_layout_names_levels_without_attention():
    unet = build_unet(SDUNetConfig(sample_size=16, block_out_channels=(32, 48, 64), cross_attention=(False, True, True),
                                   attention_head_dim=(1, 2, 2)), cross_attention_dim=16)
    layout = {level.block: level for level in attention_layout(unet)}
    assert layout["down_blocks.0 (no attention)"].side == 16 and not layout["down_blocks.0 (no attention)"].cross_attention
    assert layout["down_blocks.1.attentions.0"].side == 8 and layout["down_blocks.1.attentions.0"].cross_attention
    assert layout["mid_block.attentions.0"].side == 4
    assert layout["mid_block.attentions.0"].tokens_per_cell == pytest.approx(16 / 9)  # a float64 ratio of counts
    assert not any(level.side == 16 and level.cross_attention for level in layout.values())
