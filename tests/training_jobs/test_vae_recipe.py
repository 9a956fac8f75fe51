"""The vae recipe trains through the launcher (tiny, Ray Train local mode) with its discriminator on
from the configured step, checkpoints the discriminator and its optimizer, resumes them, and logs
the round-trip faithfulness of the trained autoencoder."""

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from components.models.autoencoder import load_autoencoder
from training_jobs.launcher import launch

pytestmark = pytest.mark.integration


def _checkpoint(storage, run_name):
    checkpoints = sorted(p for p in (storage / run_name).glob("checkpoint_*") if p.is_dir())
    assert checkpoints, f"no checkpoint kept under {storage / run_name}"
    return checkpoints[-1]


def test_discriminator_trains_after_its_start_step_checkpoints_and_resumes(tiny_data, tmp_path, ray_session):
    # tiny profile: discriminator from step 2, log and checkpoint every 2 steps; one Ray worker, since
    # Ray Train's local mode (num_workers=0) keeps no checkpoint
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"data.prepared_root={tiny_data / 'data' / 'prepared'}", f"run.storage_path={tmp_path / 'ray'}",
                 "scaling.num_workers=1", "scaling.cpus_per_worker=1"]
    first = launch("vae", "tiny", [*overrides, "train.steps=2", "data.eval_images=0"], run_name="vae-gan",
                   tracking_uri=tracking, versions={})
    at_start = _checkpoint(tmp_path / "ray", "vae-gan")
    assert (at_start / "discriminator.safetensors").is_file()
    state = torch.load(at_start / "state.pt", weights_only=True)
    assert set(state["extra_optimizers"]) == {"discriminator_optimizer"}
    assert state["extra_optimizers"]["discriminator_optimizer"]["state"] == {}, "the discriminator stepped before its start"

    second = launch("vae", "tiny", [*overrides, "train.steps=4"], run_name="vae-gan", tracking_uri=tracking, versions={})
    client = mlflow.MlflowClient(tracking)
    assert [m.value for m in client.get_metric_history(second.run_id, "resumed_from_step")] == [2.0]
    # off before step 2 (the first run logged no discriminator term), on after
    assert client.get_metric_history(first.run_id, "train/discriminator") == []
    assert [m.step for m in client.get_metric_history(second.run_id, "train/discriminator")] == [4]
    assert client.get_metric_history(second.run_id, "train/adversarial_weight")[0].value > 0
    after = _checkpoint(tmp_path / "ray", "vae-gan")
    trained = load_file(after / "discriminator.safetensors")
    initial = load_file(at_start / "discriminator.safetensors")
    assert any(not torch.equal(trained[k], initial[k]) for k in trained), "the discriminator did not train after resuming"
    assert torch.load(after / "state.pt", weights_only=True)["extra_optimizers"]["discriminator_optimizer"]["state"]

    # round-trip faithfulness of the trained autoencoder on validation images with scene ground truth
    metrics = second.metrics
    assert metrics["eval/real_images_all_three"] >= 0.9  # the detector reads the real images
    for row in ("object", "attribute", "location", "all_three", "colour_placement"):
        assert 0 <= metrics[f"eval/roundtrip_{row}"] <= 1
    assert metrics["eval/roundtrip_objects"] > 0 and metrics["val/mse"] > 0
    vae = load_autoencoder(second.model_dir)
    # one Python float in the config JSON and the run's metrics: a float32 trip at most, under rel 1e-6
    assert vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert not any(k.startswith("discriminator") for k in vae.state_dict()), "the export holds only the autoencoder"
