"""llm_base and clip_base in Dagster: wired to exactly the data they read, in the base-models job, materializing."""

import dagster as dg
import pytest

from orchestration.assets.base_models import LLM_CORPORA, clip_base, llm_base
from orchestration.definitions import defs
from orchestration.resources import DvcResource, MlflowResource, RayResource, TrainingResource
from training_jobs.launcher import resolve_config
from training_jobs.recipes.llm_base import DataSection


@pytest.mark.parametrize("asset", ["llm_base", "clip_base"])
@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_backbones_depend_on_exactly_the_data_they_read(asset, profile):
    parents = {k.to_user_string() for k in defs.resolve_asset_graph().get(dg.AssetKey(asset)).parent_keys}
    datasets = resolve_config(asset, profile).data.datasets
    assert parents == {f"prepared_{name}" for name in datasets} | {"tokenizer"}


def test_llm_base_asset_reads_the_recipes_corpora():
    assert list(LLM_CORPORA) == DataSection().datasets


def test_backbones_train_in_the_base_models_job():
    nodes = {node.name for node in defs.resolve_job_def("base_models_job").nodes}
    assert {"vae", "clip_evaluator", "sd_base", "llm_base", "clip_base"} <= nodes


@pytest.mark.integration
@pytest.mark.slow
def test_llm_base_and_clip_base_materialize_with_lineage(tiny_text_data, tmp_path):
    resources = {
        "dvc": DvcResource(repo_root=str(tiny_text_data)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        "ray": RayResource(),
        "training": TrainingResource(profile="tiny", storage_path=str(tmp_path / "ray")),
    }
    result = dg.materialize([llm_base, clip_base], resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    llm = result.asset_materializations_for_node("llm_base")[0].metadata
    clip = result.asset_materializations_for_node("clip_base")[0].metadata
    assert llm["registered_model_uri"].value == "models:/genops-llm-base/1"
    assert clip["registered_model_uri"].value == "models:/genops-clip-base/1"
    # the fixture's prepared datasets are not DVC outputs: lineage names every corpus and says so
    assert llm["dataset_versions"].value == {name: "unversioned" for name in LLM_CORPORA}
    assert "val/perplexity" in llm["final_metrics"].value and "val/retrieval_top1" in clip["final_metrics"].value
