"""The SD-style base model: config checks, the training loss, CFG sampling, the VAE round trip, save/load."""

import dataclasses
import json
import math
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from components.config import from_dict
from components.data.scene import sample_scene
from components.diffusion import DiffusionConfig
from components.models.autoencoder import AutoencoderConfig, build_autoencoder, load_autoencoder
from components.models.clip_evaluator import CLIPTextTowerConfig
from components.models.sd_base import SDBase, SDBaseConfig, SDUNetConfig

TINY = SDBaseConfig(
    text=CLIPTextTowerConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                             max_position_embeddings=12),
    unet=SDUNetConfig(sample_size=8, latent_channels=4, block_out_channels=(16, 32), cross_attention=(False, True),
                      attention_head_dim=(2, 2), norm_num_groups=8),
    diffusion=DiffusionConfig(num_inference_steps=3, guidance_scale=3.0),
)
PROMPTS = ["a red circle at the top left", "a blue square at the bottom"]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{o.phrase()} at the {o.position}" for o in (sample_scene(rng, 1, 1).objects[0] for _ in range(n))]


@pytest.fixture(scope="module")
def tokenizer():
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
                                  show_progress=False)
    bpe.train_from_iterator(captions(200), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def sd(tokenizer):
    torch.manual_seed(0)
    return SDBase.from_config(TINY, tokenizer).eval()


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_autoencoder(AutoencoderConfig(sample_size=16, block_out_channels=(8, 8), norm_num_groups=4)).eval()


@pytest.mark.parametrize(
    "values, field",
    [
        ({"cross_attention": (True,)}, "unet.cross_attention"),
        ({"attention_head_dim": (3, 2)}, "unet.attention_head_dim"),
        ({"sample_size": 7}, "unet.sample_size"),
        ({"block_out_channels": (12, 32)}, "unet.norm_num_groups"),
    ],
)
def test_unet_config_errors_name_the_field(values, field):
    base = {"block_out_channels": (16, 32), "cross_attention": (True, True), "attention_head_dim": (2, 2),
            "norm_num_groups": 8}
    with pytest.raises(ValueError, match=field):
        SDUNetConfig(**{**base, **values})


def test_model_follows_the_config(sd, tokenizer):
    assert sd.latent_shape == (4, 8, 8)
    assert sd.unet.config.cross_attention_dim == TINY.text.hidden_size
    assert sd.unet.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D")
    assert sd.unet.config.up_block_types == ("CrossAttnUpBlock2D", "UpBlock2D")
    assert sd.text_encoder.config.vocab_size == len(tokenizer)
    assert sd.text_encoder.config.eos_token_id == tokenizer.eos_token_id
    assert sd.noise_scheduler.config.beta_schedule == "squaredcos_cap_v2"


def test_loss_is_finite_and_decreases_when_overfitting(tokenizer):
    torch.manual_seed(0)
    model = SDBase.from_config(TINY, tokenizer)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    input_ids, attention_mask = model.tokenize(captions(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        # the same noise and timesteps every step: one fixed regression problem to overfit
        terms = model(latents, input_ids, attention_mask, generator=torch.Generator().manual_seed(1))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["mse"].item())
    assert set(terms) == {"loss", "mse"}
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is not None for p in model.text_encoder.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="latents must be"):
        model(torch.randn(1, 4, 16, 16), input_ids[:1], attention_mask[:1])


def test_frozen_text_encoder_runs_without_autograd(tokenizer):
    model = SDBase.from_config(dataclasses.replace(TINY, freeze_text_encoder=True), tokenizer)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in SDBase.from_config(TINY, tokenizer).text_encoder.parameters())
    input_ids, attention_mask = model.tokenize(PROMPTS)
    assert not model.encode_text(input_ids, attention_mask).requires_grad
    model(torch.randn(2, 4, 8, 8), input_ids, attention_mask)["loss"].backward()
    assert all(p.grad is not None for p in model.unet.parameters())


@pytest.mark.parametrize("sampler", ["dpmsolver++", "ddim"])
def test_sampling_is_seeded_and_guided(sd, sampler):
    def run(seed, **kwargs):
        return sd.sample_latents(PROMPTS, sampler=sampler, generator=torch.Generator().manual_seed(seed), **kwargs)

    latents = run(0)
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()
    assert torch.equal(latents, run(0))
    # another seed, guidance or negative prompt moves latents by O(1), far outside allclose's rtol 1e-5
    assert not torch.allclose(latents, run(1))
    assert not torch.allclose(latents, run(0, guidance_scale=1.0))
    assert not torch.allclose(latents, run(0, negative_prompt="a green triangle"))


def test_guidance_scale_one_is_the_conditional_path(sd):
    """With scale 1, sampling equals running the scheduler on the conditional prediction alone."""
    from components.diffusion import make_sampling_scheduler

    generator = torch.Generator().manual_seed(0)
    latents = sd.sample_latents(PROMPTS, guidance_scale=1.0, generator=generator)
    scheduler = make_sampling_scheduler(sd.noise_scheduler, TINY.diffusion.sampler)
    scheduler.set_timesteps(TINY.diffusion.num_inference_steps)
    with torch.no_grad():
        cond = sd.encode_prompts(PROMPTS)
        x = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            x = scheduler.step(sd.unet(x, t, encoder_hidden_states=cond).sample, t, x).prev_sample
    # scale 1 skips the unconditional batch: the very same UNet calls and scheduler steps, bit for bit
    assert torch.equal(latents, x)


def test_generate_decodes_through_the_vae(sd, vae):
    images = sd.generate(PROMPTS, vae, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    wrong = build_autoencoder(AutoencoderConfig(sample_size=32, block_out_channels=(8, 8), norm_num_groups=4))
    with pytest.raises(ValueError, match="unet.sample_size"):
        sd.generate(PROMPTS, wrong)


def test_save_load_round_trip(sd, vae, tmp_path):
    path = sd.save_pretrained(tmp_path / "sd_base", vae=vae)
    index = json.loads((path / "model_index.json").read_text())
    assert {"text_encoder", "unet", "scheduler", "tokenizer", "vae"} <= set(index)
    for folder in ("text_encoder", "unet", "scheduler", "tokenizer", "vae"):
        assert (path / folder).is_dir(), folder
    loaded = SDBase.from_pretrained(path).eval()
    assert loaded.cfg == TINY
    assert torch.equal(loaded.tokenize(PROMPTS)[0], sd.tokenize(PROMPTS)[0])
    seeded = dict(generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.sample_latents(PROMPTS, **seeded),
                       sd.sample_latents(PROMPTS, generator=torch.Generator().manual_seed(0)))
    input_ids, attention_mask = sd.tokenize(PROMPTS)
    latents = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(latents, input_ids, attention_mask, generator=torch.Generator().manual_seed(2))["loss"],
                           sd(latents, input_ids, attention_mask, generator=torch.Generator().manual_seed(2))["loss"])
    loaded_vae = load_autoencoder(path / "vae")
    assert torch.equal(loaded.generate(PROMPTS, loaded_vae, generator=torch.Generator().manual_seed(0)),
                       sd.generate(PROMPTS, vae, generator=torch.Generator().manual_seed(0)))


def test_load_refuses_an_inconsistent_folder(sd, tmp_path):
    path = sd.save_pretrained(tmp_path / "sd_base")
    assert not (path / "vae").exists()
    scheduler_config = path / "scheduler" / "scheduler_config.json"
    values = json.loads(scheduler_config.read_text())
    values["prediction_type"] = "v_prediction"
    scheduler_config.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="prediction_type"):
        SDBase.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="genops_sd_base.json"):
        SDBase.from_pretrained(tmp_path / "missing")


def test_config_round_trips_through_a_dict():
    from components.config import to_dict

    assert from_dict(SDBaseConfig, to_dict(TINY)) == TINY


POSITIONED = SDBaseConfig(
    text=TINY.text,
    unet=SDUNetConfig(sample_size=8, latent_channels=4, block_out_channels=(16, 32), cross_attention=(True, True),
                      attention_head_dim=(2, 2), norm_num_groups=8, position_embedding=True),
    diffusion=TINY.diffusion,
)


def test_position_embedding_reaches_every_transformer_and_round_trips(tokenizer, tmp_path):
    from components.models.sd_base import PositionedProjection, sincos_position_embedding, transformer_sides

    torch.manual_seed(0)
    sd = SDBase.from_config(POSITIONED, tokenizer).eval()
    sides = {name: side for name, _, side in transformer_sides(sd.unet)}
    assert sides == {"down_blocks.0.attentions.0": 8, "down_blocks.1.attentions.0": 4, "mid_block.attentions.0": 4,
                     "up_blocks.0.attentions.0": 4, "up_blocks.0.attentions.1": 4, "up_blocks.1.attentions.0": 8,
                     "up_blocks.1.attentions.1": 8}
    for _, transformer, side in transformer_sides(sd.unet):
        assert isinstance(transformer.proj_in, PositionedProjection)
        assert transformer.proj_in.position.shape == (side * side, transformer.proj_in.out_features)
    # the embedding tells grid cells apart: no two rows of the sin-cos init are equal
    table = sincos_position_embedding(4, 16)
    assert torch.cdist(table, table).add(torch.eye(16) * 9).min() > 0.1
    # it changes what the UNet computes (zeroing it gives a different prediction)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    cond = sd.encode_prompts(PROMPTS[:1])
    with torch.no_grad():
        before = sd.denoise(x, t, cond)
        saved = {n: p.clone() for n, p in sd.unet.named_parameters() if n.endswith("proj_in.position")}
        for name, p in sd.unet.named_parameters():
            if name.endswith("proj_in.position"):
                p.zero_()
        assert not torch.allclose(before, sd.denoise(x, t, cond))  # O(0.1) apart, not rounding
        sd.unet.load_state_dict(saved, strict=False)
    loaded = SDBase.from_pretrained(sd.save_pretrained(tmp_path / "positioned")).eval()
    assert loaded.cfg == POSITIONED
    with torch.no_grad():
        assert torch.equal(loaded.denoise(x, t, cond), before)  # safetensors keep every bit of the weights
    with pytest.raises(ValueError, match="unet.use_linear_projection"):
        SDUNetConfig(position_embedding=True, use_linear_projection=False)


def test_text_time_embedding_carries_the_prompt_into_every_resnet_and_round_trips(tokenizer, tmp_path):
    """unet.text_time_embedding: an attention-pooled text vector joins the timestep embedding.

    With cross-attention only in the mid block's neighbour level, a prompt still changes the output of the
    first (attention-free) level through it; the pooling learns, and the saved folder reloads it bit for bit.
    """
    cfg = dataclasses.replace(TINY, unet=dataclasses.replace(TINY.unet, text_time_embedding=True, text_time_heads=2))
    torch.manual_seed(0)
    sd = SDBase.from_config(cfg, tokenizer)
    assert sd.unet.config.addition_embed_type == "text"
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    first_level = {}
    sd.unet.down_blocks[0].register_forward_hook(lambda m, i, o: first_level.__setitem__("out", o[0]))
    with torch.no_grad():
        sd.denoise(x, t, sd.encode_prompts(PROMPTS[:1]))
        red = first_level["out"].clone()
        sd.denoise(x, t, sd.encode_prompts(PROMPTS[1:]))
    # the attention-free 8x8 level sees the prompt only through the pooled vector: O(0.01) apart, not rounding
    assert (red - first_level["out"]).abs().max() > 1e-4
    ids, mask = sd.tokenize(PROMPTS)
    sd(torch.randn(2, 4, 8, 8), ids, mask)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sd.unet.add_embedding.parameters())
    loaded = SDBase.from_pretrained(sd.save_pretrained(tmp_path / "sd"))
    cond = sd.encode_prompts(PROMPTS[:1])
    with torch.no_grad():
        assert torch.equal(loaded.denoise(x, t, cond), sd.denoise(x, t, cond))


def test_text_time_heads_must_divide_the_text_width(tokenizer):
    cfg = dataclasses.replace(TINY, unet=dataclasses.replace(TINY.unet, text_time_embedding=True, text_time_heads=3))
    with pytest.raises(ValueError, match="unet.text_time_heads=3 must divide text.hidden_size=16"):
        SDBase.from_config(cfg, tokenizer)
