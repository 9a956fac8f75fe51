"""The Dagster code location: `dagster dev -m orchestration.definitions` (or `genops ui`).

Asset groups are loaded here; resources come from `orchestration.resources` (GENOPS_ENV picks
local or production). Selections are AssetSelection objects, never strings: with DVC installed,
Dagster's string selection parser fails on an antlr version clash (`TypeError: ord()`).
"""

from __future__ import annotations

import dagster as dg

from orchestration.assets.base_models import base_model_assets
from orchestration.assets.data import build_data_assets, dataset_names
from orchestration.assets.evaluation import evaluation_group_assets
from orchestration.assets.minigpt5 import minigpt5_ablation_assets, minigpt5_assets
from orchestration.assets.paradiffusion import paradiffusion_ablation_assets, paradiffusion_assets
from orchestration.assets.vlad import vlad_ablation_assets, vlad_assets
from orchestration.automation import automation_definitions
from orchestration.resources import project_root, resources_for


def build_definitions(datasets: list[str], resources: dict | None = None) -> dg.Definitions:
    data_assets = build_data_assets(datasets)
    data_job = dg.define_asset_job(
        "data_job",
        selection=dg.AssetSelection.groups("data"),
        description="Generate, validate, prepare and tokenize every dataset (the DVC data pipeline).",
    )
    base_models_job = dg.define_asset_job(
        "base_models_job",
        selection=dg.AssetSelection.groups("base_models"),
        description="Train the shared VAE, the evaluator CLIP, the SD-style base model, the LLM and the base CLIP.",
    )
    paradiffusion_job = dg.define_asset_job(
        "paradiffusion_job", selection=dg.AssetSelection.groups("paradiffusion"),
        description="ParaDiffusion's three stages: short captions, paragraphs with LoRA, quality tuning.")
    paradiffusion_lora_ablation_job = dg.define_asset_job(
        "paradiffusion_lora_ablation_job", selection=dg.AssetSelection.assets(*paradiffusion_ablation_assets),
        description="Table 6: the LoRA rank/alpha ablation of ParaDiffusion stage 2 (nested MLflow runs).")
    minigpt5_job = dg.define_asset_job(
        "minigpt5_job", selection=dg.AssetSelection.groups("minigpt5"),
        description="MiniGPT-5's two stages: voken alignment on CC3M pairs, then LoRA fine-tuning on stories.")
    minigpt5_ablation_job = dg.define_asset_job(
        "minigpt5_ablation_job", selection=dg.AssetSelection.assets(*minigpt5_ablation_assets),
        description="Table 5: MiniGPT-5 stage 1 full / w/o CFG / w/o L_CAP / w/o L_LDM (nested MLflow runs).")
    evaluation_job = dg.define_asset_job(
        "evaluation_job", selection=dg.AssetSelection.groups("evaluation"),
        description="Benchmark sets, evaluation of every registered model, gate checks and registry promotion.")
    vlad_job = dg.define_asset_job(
        "vlad_job", selection=dg.AssetSelection.groups("vlad"),
        description="VLAD: aligned LVLM, CCM, text layout generator and layout-guided diffusion.")
    vlad_ablation_job = dg.define_asset_job(
        "vlad_ablation_job", selection=dg.AssetSelection.assets(*vlad_ablation_assets),
        description="VLAD Table II: full / w/o CCM / w/o hierarchical guidance (nested MLflow runs).")
    return dg.Definitions(
        assets=[*data_assets, *base_model_assets, *vlad_assets, *vlad_ablation_assets,
                *paradiffusion_assets, *paradiffusion_ablation_assets,
                *minigpt5_assets, *minigpt5_ablation_assets, *evaluation_group_assets],
        jobs=[data_job, base_models_job, vlad_job, vlad_ablation_job,
              paradiffusion_job, paradiffusion_lora_ablation_job,
              minigpt5_job, minigpt5_ablation_job, evaluation_job],
        resources=resources if resources is not None else resources_for(),
        **automation_definitions(),
    )


defs = build_definitions(dataset_names(project_root() / "params.yaml"))
