"""The evaluation group in the code location: each registered family's benchmark, evaluation, blocking
gate checks (one per policy gate) and promotion, wired after its training asset; and every model the
main graph registers has one, so `genops demo` ends with each evaluated and a champion for each."""

import ast
import re
from pathlib import Path

import dagster as dg

from orchestration.definitions import defs
from orchestration.freshness import main_graph
from training_jobs.evaluation import EVALUATIONS
from training_jobs.launcher import recipe_module
from training_jobs.registry import load_policy, policy_path

PROJECT = Path(__file__).resolve().parents[2]


def test_every_evaluation_spec_has_its_assets_checks_and_policy():
    graph = defs.resolve_asset_graph()
    assert "sd_base" in EVALUATIONS
    for family, spec in EVALUATIONS.items():
        evaluation = graph.get(dg.AssetKey(f"{family}_evaluation"))
        parents = {k.to_user_string() for k in evaluation.parent_keys}
        judge = {"clip_evaluator"} if spec.uses_clip_evaluator else set()
        assert parents == {spec.training_asset, f"{family}_benchmark"} | judge
        promotion = graph.get(dg.AssetKey(f"{family}_promotion"))
        assert {k.to_user_string() for k in promotion.parent_keys} == {f"{family}_evaluation"}
        assert evaluation.group_name == promotion.group_name == "evaluation"
        policy = load_policy(policy_path(spec.registered_model))
        assert policy.model == spec.registered_model
        checks = {key.name: graph.get_check_spec(key) for key in graph.get_check_keys_for_assets({evaluation.key})}
        assert set(checks) == {f"gate_{g.metric}" for g in policy.gates}
        assert all(c.blocking for c in checks.values())
    assert defs.resolve_job_def("evaluation_job").name == "evaluation_job"


def _registered_models_of_the_main_graph() -> dict[str, str]:
    """{training asset: registered model} for every asset of the main graph that runs a recipe registering one.

    Read from the assets' source (which recipe each launches) and the recipes' own configs, so a new
    model asset joins this list without the test being edited."""
    graph = defs.resolve_asset_graph()
    main = {key.to_user_string() for key in main_graph(graph)}
    launched = {}
    for path in sorted((PROJECT / "orchestration" / "assets").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in main:
                recipes = re.findall(r'_launch\(context, "(\w+)"', ast.get_source_segment(path.read_text(), node))
                if recipes:
                    launched[node.name] = recipes[0]
    models = {asset: recipe_module(recipe).Config().tracking.registered_model for asset, recipe in launched.items()}
    return {asset: model for asset, model in models.items() if model}


def test_every_registered_model_of_the_main_graph_is_evaluated_and_promoted_in_the_demo():
    models = _registered_models_of_the_main_graph()
    assert set(models.values()) == {
        "genops-vae", "genops-clip-base", "genops-clip-evaluator", "genops-llm-base", "genops-sd-base",
        "genops-paradiffusion-stage1", "genops-paradiffusion-stage2", "genops-paradiffusion-stage3",
        "genops-minigpt5-stage1", "genops-minigpt5-stage2", "genops-vlad"}
    by_model = {spec.registered_model: spec for spec in EVALUATIONS.values()}
    graph = defs.resolve_asset_graph()
    main = main_graph(graph)
    for asset, model in models.items():
        assert model in by_model, f"{model} (asset {asset}) has no EvaluationSpec"
        spec = by_model[model]
        assert spec.training_asset == asset
        assert policy_path(model).is_file(), f"{model} has no mlflow/policies/{model}.yaml"
        # `genops demo` materializes the main graph (everything but the ablations): the promotion is in it,
        # downstream of the training asset, so a retrained model is evaluated and promoted in the same run.
        promotion = dg.AssetKey(f"{spec.family}_promotion")
        assert promotion in main
        assert promotion in dg.AssetSelection.assets(asset).downstream().resolve(graph)
        for profile in ("tiny", "demo", "paper"):
            assert spec.benchmark_size[profile] > 0
