"""The Dagster code location: `dagster dev -m orchestration.definitions` (or `genops ui`).

Asset groups are loaded here; resources come from `orchestration.resources` (GENOPS_ENV picks
local or production). Selections are AssetSelection objects, never strings: with DVC installed,
Dagster's string selection parser fails on an antlr version clash (`TypeError: ord()`).
"""

from __future__ import annotations

import dagster as dg

from orchestration.assets.base_models import base_model_assets
from orchestration.assets.data import build_data_assets, dataset_names
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
    return dg.Definitions(
        assets=[*data_assets, *base_model_assets],
        jobs=[data_job, base_models_job],
        resources=resources if resources is not None else resources_for(),
    )


defs = build_definitions(dataset_names(project_root() / "params.yaml"))
