"""The launcher with real Ray Train, real MLflow (SQLite) and the real recipes at tiny size."""

import base64
import io

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from training_jobs.launcher import GPUUnavailableError, TrainingFailed, launch, resolve_config


@pytest.fixture
def tracking(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def data_overrides(tiny_data, tmp_path) -> list[str]:
    return [f"data.prepared_root={tiny_data / 'data' / 'prepared'}", f"run.storage_path={tmp_path / 'ray'}"]


def test_every_shipped_recipe_config_loads():
    for recipe in ("vae", "clip_evaluator", "sd_base"):
        for profile in ("tiny", "demo", "paper"):
            cfg = resolve_config(recipe, profile)
            assert cfg.train.steps >= 1
    with pytest.raises(ValueError, match="unknown key"):
        resolve_config("vae", "tiny", ["train.stepz=3"])
    with pytest.raises(ValueError, match="--profile"):
        resolve_config("vae", "huge")


@pytest.mark.integration
@pytest.mark.slow
def test_two_worker_job_checkpoints_resumes_and_registers(tiny_data, tmp_path, tracking, ray_session):
    overrides = [*data_overrides(tiny_data, tmp_path), "scaling.num_workers=2", "train.checkpoint_every=2"]
    first = launch("vae", "tiny", [*overrides, "train.steps=2"], run_name="vae-resume", tracking_uri=tracking,
                   versions={"laion_short": "md5-of-laion"})
    checkpoints = sorted((tmp_path / "ray" / "vae-resume").glob("checkpoint_*"))
    assert checkpoints, "a 2-worker job writes checkpoints into its run folder"
    second = launch("vae", "tiny", [*overrides, "train.steps=4"], run_name="vae-resume", tracking_uri=tracking,
                    versions={"laion_short": "md5-of-laion"})
    client = MlflowClient(tracking)
    resumed = client.get_metric_history(second.run_id, "resumed_from_step")
    assert [m.value for m in resumed] == [2.0], "the relaunch continued from step 2 instead of starting over"
    assert [m.step for m in client.get_metric_history(second.run_id, "train/loss")] == [4]
    assert first.registered_version == "1" and second.registered_version == "2"
    assert (second.model_dir / "config.json").is_file()


@pytest.mark.integration
def test_mlflow_run_holds_params_metrics_images_and_a_tagged_version(tiny_data, tmp_path, tracking):
    result = launch("vae", "tiny", data_overrides(tiny_data, tmp_path), tracking_uri=tracking,
                    versions={"laion_short": "md5-of-laion"})
    client = MlflowClient(tracking)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "4" and run.data.params["model.latent_channels"] == "4"
    assert run.data.tags["dataset_version.laion_short"] == "md5-of-laion"
    assert run.data.tags["git_commit"] and run.data.tags["profile"] == "tiny"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss")] == [2, 4]
    assert client.get_metric_history(result.run_id, "train/lr")
    samples = [a.path for a in client.list_artifacts(result.run_id, "samples")]
    assert any(p.endswith(".png") for p in samples)
    assert {a.path for a in client.list_artifacts(result.run_id, "weights")} >= {"weights/config.json"}
    version = client.get_model_version("genops-vae", result.registered_version)
    assert version.tags["source_run_id"] == result.run_id
    assert version.tags["dataset_version.laion_short"] == "md5-of-laion"
    assert float(version.tags["metric.scaling_factor"]) > 0
    mlflow.set_tracking_uri(tracking)
    model = mlflow.pyfunc.load_model(f"models:/genops-vae/{result.registered_version}")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    out = model.predict(pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]}))
    assert len(out["latent"][0]) == 4  # (C, h, w) latent of one image


@pytest.mark.integration
def test_failing_recipe_marks_the_run_failed(tiny_data, tmp_path, tracking):
    with pytest.raises(TrainingFailed, match="no shards"):
        launch("vae", "tiny", [*data_overrides(tiny_data, tmp_path), "data.datasets=[no_such_dataset]"],
               tracking_uri=tracking, versions={})
    runs = MlflowClient(tracking).search_runs([MlflowClient(tracking).get_experiment_by_name("genops-base-models").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "no shards" in runs[0].data.tags["error"]


@pytest.mark.integration
def test_asking_for_gpus_on_a_cpu_cluster_fails_fast(tiny_data, tmp_path, tracking, ray_session):
    with pytest.raises(GPUUnavailableError, match="scaling.use_gpu=false"):
        launch("vae", "tiny", [*data_overrides(tiny_data, tmp_path), "scaling.num_workers=1", "scaling.use_gpu=true"],
               tracking_uri=tracking, versions={})


def test_relative_data_paths_are_anchored_at_the_project_root(tmp_path):
    from training_jobs.launcher import _anchor_data_paths

    (tmp_path / "data" / "tokenizer").mkdir(parents=True)
    cfg = resolve_config("sd_base", "tiny", ["data.vae=models:/genops-vae/latest"])
    _anchor_data_paths(cfg, tmp_path)
    assert cfg.data.tokenizer == str(tmp_path / "data" / "tokenizer")  # Ray workers have another cwd
    assert cfg.data.vae == "models:/genops-vae/latest"
    assert cfg.data.prepared_root == "data/prepared"  # does not exist under this root: left alone


def test_object_store_storage_path_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match=r"run\.storage_path='s3://bucket/ray'.*GENOPS_RAY_STORAGE"):
        resolve_config("vae", "tiny", ["run.storage_path=s3://bucket/ray"])
    assert resolve_config("vae", "tiny", ["run.storage_path=/mnt/shared/ray"]).run.storage_path == "/mnt/shared/ray"
