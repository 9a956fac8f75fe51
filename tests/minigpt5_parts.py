"""Tiny random base models for MiniGPT-5 tests: llm_base, clip_base, sd_base (with its vae/) and the
evaluator CLIP, written as the folders their recipes export (no training: MiniGPT-5 only needs their shapes)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from components.config import load_config
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.clip_base import ClipBase, ClipBaseConfig
from components.models.clip_evaluator import ClipEvaluator, ClipEvaluatorConfig
from components.models.llm_base import LlmBase, LlmBaseConfig
from components.models.sd_base import SDBase, SDBaseConfig

MODELS = Path(__file__).parents[1] / "training_jobs" / "configs" / "models"


def build_base_folders(root: Path, tokenizer_dir: Path) -> dict[str, Path]:
    """{"llm", "clip", "sd", "evaluator"}: save_pretrained folders of tiny random base models."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    paths = {name: root / name for name in ("llm", "clip", "sd", "evaluator")}
    if all(p.is_dir() for p in paths.values()):
        return paths
    LlmBase.from_config(load_config(LlmBaseConfig, MODELS / "llm_base" / "tiny.yaml"), tokenizer).save_pretrained(paths["llm"])
    ClipBase.from_config(load_config(ClipBaseConfig, MODELS / "clip_base" / "tiny.yaml"), tokenizer).save_pretrained(paths["clip"])
    ClipEvaluator.from_config(load_config(ClipEvaluatorConfig, MODELS / "clip_evaluator" / "tiny.yaml"),
                              tokenizer).save_pretrained(paths["evaluator"])
    vae = build_autoencoder(load_config(AutoencoderConfig, MODELS / "vae" / "tiny.yaml"))
    SDBase.from_config(load_config(SDBaseConfig, MODELS / "sd_base" / "tiny.yaml"), tokenizer).save_pretrained(paths["sd"], vae=vae)
    return paths
