"""Every shipped model config loads into its dataclass; profiles fit together; paper sizes are the papers' models."""

from pathlib import Path

import pytest
import torch

from components.config import ConfigError, load_config
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.clip_base import ClipBaseConfig
from components.models.clip_evaluator import ClipEvaluatorConfig, build_clip_model
from components.models.llm_base import LlmBase, LlmBaseConfig
from components.models.minigpt5 import MiniGPT5Config
from components.models.paradiffusion import LoraSettings, ParaDiffusionConfig
from components.models.sd_base import SDBase, SDBaseConfig
from components.models.vlad import VLADConfig
from training_jobs.launcher import RECIPES, resolve_config

CONFIGS = Path(__file__).resolve().parents[3] / "training_jobs" / "configs" / "models"
SCHEMAS = {"vae": AutoencoderConfig, "clip_evaluator": ClipEvaluatorConfig, "sd_base": SDBaseConfig,
           "llm_base": LlmBaseConfig, "clip_base": ClipBaseConfig,
           "paradiffusion": ParaDiffusionConfig, "paradiffusion_lora": LoraSettings,
           "minigpt5": MiniGPT5Config, "vlad": VLADConfig}
PROFILES = ("tiny", "demo", "paper")
# named model variants of a profile, configs/models/<model>/<profile>-<variant>.yaml
VARIANTS = {"llm_base": ("paper-vicuna-7b",)}


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_every_model_config_folder_has_a_schema():
    assert sorted(p.name for p in CONFIGS.iterdir() if p.is_dir()) == sorted(SCHEMAS)


@pytest.mark.parametrize("model", sorted(SCHEMAS))
def test_every_shipped_yaml_loads(model):
    shipped = sorted(p.stem for p in (CONFIGS / model).glob("*.yaml"))
    assert shipped == sorted(PROFILES + VARIANTS.get(model, ()))
    for name in shipped:
        cfg = load_config(SCHEMAS[model], CONFIGS / model / f"{name}.yaml")
        assert isinstance(cfg, SCHEMAS[model])


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("profile", PROFILES)
def test_every_recipe_config_resolves(recipe, profile):
    """The recipe YAML merged with its model YAML loads into the recipe's Config (unknown keys would fail)."""
    cfg = resolve_config(recipe, profile)
    assert cfg.train.steps >= 1


def test_a_model_variant_is_chosen_by_name_and_a_wrong_name_lists_the_variants():
    vicuna = resolve_config("llm_base", "paper", model_variant="vicuna-7b").model
    llama2 = resolve_config("llm_base", "paper").model
    assert (vicuna.max_position_embeddings, vicuna.rms_norm_eps) == (2048, 1e-6)  # LLaMA-1's context and epsilon
    assert (llama2.max_position_embeddings, llama2.rms_norm_eps) == (4096, 1e-5)
    with pytest.raises(ValueError, match="variants of llm_base at --profile paper: vicuna-7b"):
        resolve_config("llm_base", "paper", model_variant="vicuna-13b")
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_config("llm_base", "paper", ["model.hidden_sizes=8"], model_variant="vicuna-7b")


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


@pytest.mark.parametrize("name", ["paper", "paper-vicuna-7b"])
def test_paper_llms_are_the_7b_models_on_the_meta_device(name):
    cfg = load_config(LlmBaseConfig, CONFIGS / "llm_base" / f"{name}.yaml")
    with torch.device("meta"):
        llm = LlmBase.from_config(cfg)
    model = llm.model
    assert type(model).__name__ == "LlamaForCausalLM" and next(model.parameters()).is_meta
    assert model.config.vocab_size == 32_000
    # meta-llama/Llama-2-7b-hf and lmsys/vicuna-7b (LLaMA-1-7B shapes): 6.74B parameters
    assert parameters(model) == 6_738_415_616


def test_paper_clip_base_is_clip_vit_l14_on_the_meta_device():
    with torch.device("meta"):
        clip = build_clip_model(load_config(ClipBaseConfig, CONFIGS / "clip_base" / "paper.yaml"))
    assert parameters(clip) == 427_616_513  # openai/clip-vit-large-patch14
