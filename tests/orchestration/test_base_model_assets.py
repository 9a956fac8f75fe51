"""Training assets in Dagster: a real (tiny) job per asset, lineage into MLflow, failures surfaced."""

import dagster as dg
import pytest
from mlflow import MlflowClient

from orchestration.assets.base_models import sd_base, vae
from orchestration.resources import DvcResource, MlflowResource, RayResource, TrainingResource

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def resources(tiny_data, tmp_path):
    return {
        "dvc": DvcResource(repo_root=str(tiny_data)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        "ray": RayResource(),
        "training": TrainingResource(profile="tiny", storage_path=str(tmp_path / "ray")),
    }


def test_vae_then_sd_base_materialize_with_lineage(resources, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize([vae], resources=resources, instance=instance)
    assert first.success
    vae_meta = first.asset_materializations_for_node("vae")[0].metadata
    assert vae_meta["registered_model_uri"].value == "models:/genops-vae/1"
    # the prepared datasets of this fixture are not DVC outputs: lineage says so instead of inventing a version
    assert vae_meta["dataset_versions"].value == {"laion_short": "unversioned"}

    second = dg.materialize([sd_base], resources=resources, instance=instance)
    assert second.success
    sd_meta = second.asset_materializations_for_node("sd_base")[0].metadata
    run = MlflowClient(resources["mlflow"].tracking_uri).get_run(sd_meta["mlflow_run_id"].value)
    assert run.data.params["data.vae"] == "models:/genops-vae/1"  # the upstream asset's registered version
    assert run.info.status == "FINISHED"


def test_a_failing_job_fails_the_asset_and_its_mlflow_run(resources):
    result = dg.materialize(
        [vae], resources=resources, raise_on_error=False,
        run_config={"ops": {"vae": {"config": {"overrides": ["data.datasets=[no_such_dataset]"]}}}},
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no shards" in failure.step_failure_data.error.message + str(failure.step_failure_data.error.cause)
    client = MlflowClient(resources["mlflow"].tracking_uri)
    experiment = client.get_experiment_by_name("genops-base-models")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "no shards" in runs[0].data.tags["error"]
