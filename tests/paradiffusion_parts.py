"""Tiny ParaDiffusion parts shared by the model, stage and CLI tests: a BPE tokenizer, a 2-layer Llama, a model."""

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from components.data.scene import sample_scene
from components.diffusion import DiffusionConfig
from components.models.paradiffusion import LoraSettings, ParaDiffusion, ParaDiffusionConfig
from components.models.sd_base import SDUNetConfig

HIDDEN = 16


def config(rank: int = 0, padding: str = "longest", max_tokens: int = 512) -> ParaDiffusionConfig:
    return ParaDiffusionConfig(
        max_tokens=max_tokens, padding=padding, lora=LoraSettings(rank=rank, alpha=8),
        unet=SDUNetConfig(sample_size=4, latent_channels=4, block_out_channels=(16, 32), cross_attention=(True, True),
                          attention_head_dim=(2, 2), norm_num_groups=8),
        diffusion=DiffusionConfig(num_inference_steps=3, guidance_scale=3.0, snr_gamma=None),
    )


def paragraph(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out = []
    while len(out) < words:
        scene = sample_scene(rng, 1, 3)
        out += " ".join(f"There is {o.phrase()} at the {o.position}." for o in scene.objects).split()
    return " ".join(out[:words])


def make_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], show_progress=False)
    bpe.train_from_iterator([paragraph(60, s) for s in range(50)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def llm(tokenizer) -> LlamaModel:
    torch.manual_seed(0)
    return LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
                                  eos_token_id=2))


def build(tokenizer, **kwargs) -> ParaDiffusion:
    model = ParaDiffusion.from_llm(config(**kwargs), llm(tokenizer), tokenizer)
    torch.manual_seed(1)
    for p in model.unet.parameters():  # diffusers zero-initialises conv_out: make the UNet's output depend on the text
        p.data.add_(0.02 * torch.randn_like(p))
    return model
