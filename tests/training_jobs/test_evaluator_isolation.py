"""The evaluator CLIP is metrics-only: no recipe, model or training asset but the metrics resolves it.

`clip_evaluator` trains on the holdout split so that CLIP score, CLIP-I/T and CLIP-feature FID are not
judged by a model that shares weights with what they judge. A model built on its weights (say, VLAD's
LVLM initialised from it instead of from `clip_base`) would quietly grade itself. A model can reach
the evaluator three ways, and each is closed here: by its registry name (code or config), by loading
its class's weights, or through the Dagster asset graph.
"""

import re
from pathlib import Path

import dagster as dg
import pytest

from components.config import flatten
from orchestration.definitions import defs
from training_jobs.launcher import PROFILES, RECIPES, recipe_module, resolve_config

PROJECT = Path(__file__).resolve().parents[2]
REGISTRY_NAME = "genops-clip-evaluator"
SCANNED = ("components", "training_jobs", "orchestration", "serving")
SUFFIXES = {".py", ".yaml", ".yml", ".json", ".toml"}
# The places that may name or load the evaluator: the recipe that trains and registers it, its
# pyfunc wrapper, the metrics library, the metrics command line, and the evaluation assets with their
# scorers (the metrics' wiring in Dagster). Everything else is a recipe, a model or a training asset.
ALLOWED = (
    "training_jobs/recipes/clip_evaluator.py",
    "training_jobs/configs/clip_evaluator/",
    "training_jobs/configs/models/clip_evaluator/",
    "training_jobs/pyfunc_models.py",
    "components/models/clip_evaluator.py",
    "components/metrics/",
    "orchestration/cli/metrics.py",
    "orchestration/assets/evaluation",
    "training_jobs/evaluation.py",
    "training_jobs/sd_base_evaluation.py",
    "training_jobs/vlad_evaluation.py",
    "training_jobs/minigpt5_evaluation.py",
    "training_jobs/base_model_evaluation.py",  # the evaluator's own evaluation: its retrieval, by its own embeddings
)
# Outside the evaluation group, only comparison assets may depend on the evaluator asset: the ablations
# train their arms without it (their recipes' configs never name it, checked below) and then score the
# trained arms with the scorers above, the evaluator handed out by `evaluator_model` in the evaluation wiring.
COMPARISON_GROUPS = {"evaluation", "ablations"}
# How code would reach the evaluator: its registry name, or loading evaluator weights by class.
REACHES_THE_EVALUATOR = re.compile(rf"{re.escape(REGISTRY_NAME)}|ClipEvaluator(Model)?\.from_pretrained|"
                                   r"_upstream_model\([^)]*['\"]clip_evaluator['\"]", re.IGNORECASE)


def sources_reaching_the_evaluator() -> dict[str, list[str]]:
    hits: dict[str, list[str]] = {}
    for top in SCANNED:
        for path in sorted((PROJECT / top).rglob("*")):
            if path.suffix not in SUFFIXES or "__pycache__" in path.parts:
                continue
            found = REACHES_THE_EVALUATOR.findall(path.read_text(encoding="utf-8", errors="replace"))
            if found:
                hits[path.relative_to(PROJECT).as_posix()] = found
    return hits


def test_the_name_scanned_for_is_the_one_the_evaluator_registers_under():
    assert recipe_module("clip_evaluator").Config().tracking.registered_model == REGISTRY_NAME


def test_only_the_metrics_and_the_evaluators_own_files_name_or_load_it():
    hits = sources_reaching_the_evaluator()
    # the scan does see the evaluator where it must be: the recipe registering it, its pyfunc wrapper
    assert "training_jobs/recipes/clip_evaluator.py" in hits and "training_jobs/pyfunc_models.py" in hits
    offenders = {path: found for path, found in hits.items() if not path.startswith(ALLOWED)}
    assert offenders == {}, f"only the metrics may resolve the evaluator CLIP; found in {offenders}"


@pytest.mark.parametrize("profile", PROFILES)
def test_no_recipe_config_points_at_the_evaluator(profile):
    for recipe in RECIPES:
        for key, value in flatten(resolve_config(recipe, profile)).items():
            if REGISTRY_NAME in str(value).lower():
                assert (recipe, key) == ("clip_evaluator", "tracking.registered_model"), f"{recipe} {profile}: {key}={value}"


def test_no_training_asset_depends_on_the_evaluator():
    graph = defs.resolve_asset_graph()
    children = graph.get(dg.AssetKey("clip_evaluator")).child_keys
    groups = {key.to_user_string(): graph.get(key).group_name for key in children}
    assert {name: group for name, group in groups.items() if group not in COMPARISON_GROUPS} == {}
    # what does read it: the evaluation assets and the ablations' comparison tables, not the families' stages
    assert "minigpt5_stage1_evaluation" in groups and "vlad_ablation" in groups
    for stage in ("minigpt5_stage1", "minigpt5_stage2", "vlad", "paradiffusion_stage1"):
        assert stage not in groups
    # the model families' backbone is clip_base, which does not come from the evaluator either
    assert dg.AssetKey("clip_evaluator") not in graph.get(dg.AssetKey("clip_base")).parent_keys
