"""Every shipped model config loads into its dataclass; profiles fit together; paper sizes are the papers' models."""

from pathlib import Path

import pytest
import torch

from components.config import load_config
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.clip_evaluator import ClipEvaluatorConfig, build_clip_model
from components.models.sd_base import SDBase, SDBaseConfig

CONFIGS = Path(__file__).resolve().parents[3] / "training_jobs" / "configs" / "models"
SCHEMAS = {"vae": AutoencoderConfig, "clip_evaluator": ClipEvaluatorConfig, "sd_base": SDBaseConfig}
PROFILES = ("tiny", "demo", "paper")


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("model", sorted(SCHEMAS))
def test_every_shipped_yaml_loads(model):
    shipped = sorted(p.stem for p in (CONFIGS / model).glob("*.yaml"))
    assert shipped == sorted(PROFILES)
    for profile in PROFILES:
        cfg = load_config(SCHEMAS[model], CONFIGS / model / f"{profile}.yaml")
        assert isinstance(cfg, SCHEMAS[model])


@pytest.mark.parametrize("profile", PROFILES)
def test_sd_base_denoises_the_vae_latents_of_its_profile(profile):
    vae = load_config(AutoencoderConfig, CONFIGS / "vae" / f"{profile}.yaml")
    sd = load_config(SDBaseConfig, CONFIGS / "sd_base" / f"{profile}.yaml")
    assert (sd.unet.latent_channels, sd.unet.sample_size) == (vae.latent_channels, vae.latent_size)


def test_demo_profile_shapes():
    vae = load_config(AutoencoderConfig, CONFIGS / "vae" / "demo.yaml")
    sd = load_config(SDBaseConfig, CONFIGS / "sd_base" / "demo.yaml")
    assert (vae.sample_size, vae.latent_size, vae.latent_channels) == (64, 16, 4)
    assert sd.diffusion.beta_schedule == "squaredcos_cap_v2"


def test_paper_profiles_are_the_papers_models_on_the_meta_device():
    with torch.device("meta"):
        sd = SDBase.from_config(load_config(SDBaseConfig, CONFIGS / "sd_base" / "paper.yaml"))
        clip = build_clip_model(load_config(ClipEvaluatorConfig, CONFIGS / "clip_evaluator" / "paper.yaml"))
        vae = build_autoencoder(load_config(AutoencoderConfig, CONFIGS / "vae" / "paper.yaml"))
    assert next(sd.unet.parameters()).is_meta and next(clip.parameters()).is_meta
    # the published checkpoints' parameter counts: stabilityai/stable-diffusion-2-1 unet and text_encoder
    # (OpenCLIP ViT-H/14 text tower, 23 layers), openai/clip-vit-base-patch16, and the SD autoencoder
    assert parameters(sd.unet) == 865_910_724
    assert parameters(sd.text_encoder) == 340_387_840
    assert parameters(clip) == 149_620_737
    assert parameters(vae) == 83_653_863
