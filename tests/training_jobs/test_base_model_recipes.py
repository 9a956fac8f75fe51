"""sd_base and clip_evaluator train for real (tiny, Ray Train local mode) and export loadable models."""

import pytest
import torch

from components.models.autoencoder import load_autoencoder
from components.models.clip_evaluator import ClipEvaluator
from components.models.sd_base import SDBase
from training_jobs.launcher import launch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vae_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    return root, f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained_vae(tiny_data, vae_store):
    root, uri = vae_store
    return launch("vae", "tiny", [f"data.prepared_root={tiny_data / 'data' / 'prepared'}", f"run.storage_path={root / 'ray'}"],
                  tracking_uri=uri, versions={})


def test_vae_exports_a_measured_scaling_factor(trained_vae):
    vae = load_autoencoder(trained_vae.model_dir)
    # One Python float written to the config JSON and to the run's metrics: approx's rel 1e-6 allows a
    # float32 round trip on the way (2^-24 = 6e-8), not a factor measured on other data (percents apart).
    assert vae.config.scaling_factor == pytest.approx(trained_vae.metrics["scaling_factor"])
    assert vae.config.scaling_factor != 1.0


def test_registry_evaluate_scores_a_command_line_version_and_applies_its_policy(tiny_data, trained_vae, vae_store,
                                                                               tmp_path, monkeypatch):
    """`genops registry evaluate` does the evaluation asset's work without Dagster, so a version trained with
    `genops train` can be judged by `genops registry promote` (--promote does both)."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from orchestration.cli import app
    from training_jobs.evaluation import file_md5

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "prepared").symlink_to(tiny_data / "data" / "prepared")
    monkeypatch.setenv("GENOPS_ROOT", str(project))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", vae_store[1])
    out = CliRunner().invoke(app, ["registry", "evaluate", "genops-vae", trained_vae.registered_version,
                                   "--profile", "tiny", "--promote"])
    assert out.exit_code == 0, out.output
    benchmark = project / "data" / "benchmarks" / "vae.jsonl"
    assert len(benchmark.read_text().splitlines()) == 4  # the tiny profile's benchmark size
    version = MlflowClient(vae_store[1]).get_model_version("genops-vae", trained_vae.registered_version)
    assert version.tags["eval.benchmark_md5"] == file_md5(benchmark) and "eval.roundtrip_psnr" in version.tags
    assert "Round-trip" in out.output and f"genops-vae v{trained_vae.registered_version}: " in out.output
    assert "champion now" in out.output  # --promote applied genops-vae.yaml (promoted or refused, with the reason)
    unknown = CliRunner().invoke(app, ["registry", "evaluate", "genops-nope", "--profile", "tiny"])
    assert unknown.exit_code == 1 and "genops-vae" in unknown.output  # names the models that have an evaluation


def test_sd_base_trains_in_the_vae_latent_space_and_samples(tiny_data, trained_vae, tmp_path):
    result = launch(
        "sd_base", "tiny",
        [f"data.prepared_root={tiny_data / 'data' / 'prepared'}", f"data.tokenizer={tiny_data / 'data' / 'tokenizer'}",
         f"data.vae={trained_vae.model_dir}", f"run.storage_path={tmp_path / 'ray'}",
         "data.cache_latents=false"],  # the streaming path (the Dagster asset test covers the cached one)
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", versions={},
    )
    assert result.metrics["val/loss"] > 0 and result.registered_version == "1"
    # samples were checked against the validation captions' scene ground truth
    assert 0 <= result.metrics["eval/attribute_precision"] <= 1
    assert result.metrics["eval/real_images_all_precision"] >= 0.9  # the detector reads real images
    assert 0 <= result.metrics["eval/colour_placement_precision"] <= 1
    # and against the VAE's reconstructions of the same images: the ceiling of a latent model
    assert 0 <= result.metrics["eval/vae_roundtrip_colour_placement_precision"] <= 1
    sd = SDBase.from_pretrained(result.model_dir).eval()
    vae = load_autoencoder(result.model_dir / "vae")
    # the VAE's own factor carried along (a float32 round trip at most, under approx's rel 1e-6)
    assert vae.config.scaling_factor == pytest.approx(trained_vae.metrics["scaling_factor"])
    images = sd.generate(["a small red circle at the top left"], vae, num_inference_steps=2,
                         generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 32, 32) and images.abs().max() <= 1


def test_sd_base_refuses_a_vae_of_another_latent_shape(tiny_data, trained_vae, tmp_path):
    with pytest.raises(Exception, match="does not fit the VAE"):
        launch("sd_base", "tiny",
               [f"data.prepared_root={tiny_data / 'data' / 'prepared'}", f"data.tokenizer={tiny_data / 'data' / 'tokenizer'}",
                f"data.vae={trained_vae.model_dir}", "model.unet.sample_size=16", f"run.storage_path={tmp_path}"],
               tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", versions={})


def test_clip_evaluator_trains_on_the_holdout_split_and_embeds(tiny_data, tmp_path):
    result = launch(
        "clip_evaluator", "tiny",
        [f"data.prepared_root={tiny_data / 'data' / 'prepared'}", f"data.tokenizer={tiny_data / 'data' / 'tokenizer'}",
         f"run.storage_path={tmp_path / 'ray'}"],
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", versions={},
    )
    assert 0 <= result.metrics["val/retrieval_top1"] <= 1
    clip = ClipEvaluator.from_pretrained(result.model_dir).eval()
    with torch.no_grad():
        text = clip.embed_texts(["a red circle", "a blue square"])
    # Unit vectors re-measured in fp32 over projection_dim = 32 components: the normalisation and the
    # norm are each within (32 + 2) * 2^-24 = 2e-6 (Higham's dot-product bound), under atol 1e-5.
    assert text.shape[0] == 2 and torch.allclose(text.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)
