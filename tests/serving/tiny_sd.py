"""A tiny sd_base (text encoder, UNet, VAE, tokenizer) saved as a save_pretrained folder, for serving tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from components.data.scene import sample_scene
from components.diffusion import DiffusionConfig
from components.models.autoencoder import AutoencoderConfig, build_autoencoder, set_scaling_factor
from components.models.clip_evaluator import CLIPTextTowerConfig
from components.models.sd_base import SDBase, SDBaseConfig, SDUNetConfig

TINY = SDBaseConfig(
    text=CLIPTextTowerConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                             max_position_embeddings=12),
    unet=SDUNetConfig(sample_size=8, latent_channels=4, block_out_channels=(16, 32), cross_attention=(False, True),
                      attention_head_dim=(2, 2), norm_num_groups=8),
    diffusion=DiffusionConfig(prediction_type="v_prediction", num_inference_steps=4, guidance_scale=3.0),
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    rng = random.Random(0)
    texts = [f"{o.phrase()} at the {o.position}" for o in (sample_scene(rng, 1, 1).objects[0] for _ in range(200))]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


def save_tiny_sd(path: Path) -> Path:
    """A randomly initialised tiny sd_base with a 16 px VAE (2x downsampling -> 8x8x4 latents), saved."""
    torch.manual_seed(0)
    sd = SDBase.from_config(TINY, tiny_tokenizer()).eval()
    vae = build_autoencoder(AutoencoderConfig(sample_size=16, block_out_channels=(8, 8), norm_num_groups=4)).eval()
    set_scaling_factor(vae, 0.5)
    return sd.save_pretrained(path, vae=vae)
