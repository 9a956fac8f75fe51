"""Only what changed re-runs: code versions + data versions decide what `genops demo` materializes, and a
training keyed on what it is gets a run name that a retry resumes."""

import dagster as dg
import pytest
from mlflow import MlflowClient

from orchestration.assets.base_models import sd_base, vae
from orchestration.freshness import due_with_downstream, materialize_due, recipe_code_version
from orchestration.resources import DvcResource, MlflowResource, RayResource, TrainingResource
from training_jobs.launcher import resolve_config
from training_jobs.run_identity import training_key

# vae reads these prepared datasets; sd_base reads laion_short and the tokenizer.
INPUTS = ("prepared_laion_short", "prepared_paraimage_big", "prepared_paraimage_small", "prepared_cc3m", "tokenizer")


def input_asset(name: str, versions: dict[str, str]) -> dg.AssetsDefinition:
    """A stand-in for a DVC data asset: its data version is whatever `versions[name]` says (the md5)."""

    @dg.asset(name=name, group_name="inputs", code_version="1")
    def _asset() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(versions[name]))

    return _asset


def with_code_version(asset: dg.AssetsDefinition, code_version: str) -> dg.AssetsDefinition:
    return asset.map_asset_specs(lambda spec: spec.replace_attributes(code_version=code_version))


def test_code_version_follows_the_recipe_config_and_model_code():
    assert recipe_code_version("vae", "tiny") == recipe_code_version("vae", "tiny")
    assert recipe_code_version("vae", "tiny") != recipe_code_version("vae", "demo")  # another YAML
    assert recipe_code_version("vae", "tiny") != recipe_code_version("sd_base", "tiny")


def test_training_key_ignores_where_it_runs_but_not_what_it_trains():
    cfg = resolve_config("vae", "tiny")
    key = training_key(cfg, {"laion_short": "a.dir"})
    cfg.run.name, cfg.tracking.run_id, cfg.tracking.git_commit = "other-name", "abc", "deadbeef"
    assert training_key(cfg, {"laion_short": "a.dir"}) == key
    assert training_key(cfg, {"laion_short": "b.dir"}) != key
    assert training_key(resolve_config("vae", "tiny", ["train.steps=5"]), {"laion_short": "a.dir"}) != key


@pytest.mark.integration
@pytest.mark.slow
def test_a_second_run_of_an_unchanged_graph_launches_no_training(tiny_data, tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ray"
    resources = {
        "dvc": DvcResource(repo_root=str(tiny_data)),
        "mlflow": MlflowResource(tracking_uri=tracking),
        "ray": RayResource(),
        "training": TrainingResource(profile="tiny", storage_path=str(storage)),
    }
    versions = {name: "v1" for name in INPUTS}
    inputs = [input_asset(name, versions) for name in INPUTS]
    instance = dg.DagsterInstance.ephemeral()
    client = MlflowClient(tracking)

    def plan(*assets):
        defs = dg.Definitions(assets=[*inputs, *assets], resources=resources)
        return materialize_due(defs, instance, pipeline=None, say=lambda line: None)

    def training_runs() -> list[str]:
        experiment = client.get_experiment_by_name("genops-base-models")
        return sorted(r.data.tags["genops.run_name"] for r in client.search_runs([experiment.experiment_id]))

    [first] = plan(vae, sd_base)
    assert first.success
    assert {e.asset_key.to_user_string() for e in first.get_asset_materialization_events()} == {*INPUTS, "vae", "sd_base"}
    runs = training_runs()
    assert len(runs) == 2
    ray_dirs = sorted(p.name for p in storage.iterdir())

    assert plan(vae, sd_base) == []  # nothing changed: no Dagster run, so no Ray job, no MLflow run
    assert training_runs() == runs
    assert sorted(p.name for p in storage.iterdir()) == ray_dirs

    # sd_base's recipe changed: sd_base alone re-runs, nothing upstream of it
    [second] = plan(vae, with_code_version(sd_base, "changed"))
    assert second.success
    assert {e.asset_key.to_user_string() for e in second.get_asset_materialization_events()} == {"sd_base"}
    rerun = second.asset_materializations_for_node("sd_base")[0].metadata["ray_run_name"].value
    # same config and data as the finished training, asked for again: a fresh run with the next suffix
    assert rerun.endswith("-r2") and rerun.removesuffix("-r2") in runs
    assert plan(vae, with_code_version(sd_base, "changed")) == []

    # a new version of one dataset vae reads (materialized, as new_data_sensor's run would): vae and sd_base
    # below it are due, the other inputs are not
    versions["prepared_cc3m"] = "v2"
    cc3m = next(a for a in inputs if a.key.to_user_string() == "prepared_cc3m")
    assert dg.materialize([cc3m], instance=instance).success
    defs = dg.Definitions(assets=[*inputs, vae, with_code_version(sd_base, "changed")], resources=resources)
    graph = defs.resolve_asset_graph()
    due = due_with_downstream(instance, graph, graph.get_all_asset_keys())
    assert {k.to_user_string() for k in due} == {"vae", "sd_base"}
    assert "prepared_cc3m" in due[dg.AssetKey("vae")]
    assert due[dg.AssetKey("sd_base")] == "downstream of vae"
