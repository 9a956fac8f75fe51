"""`genops export sd_base`: ONNX graphs that match PyTorch, a checksummed bundle, refused when tampered with.

The model is a tiny random sd_base registered in a throwaway MLflow store, exported through the CLI
exactly as an operator would (`genops export sd_base --version 1 --out DIR`).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from orchestration.cli import app
from serving.bundle import BundleError, sha256_file, verify_bundle
from serving.export.onnx_graphs import ATOL, RTOL, cpu_session

pytestmark = pytest.mark.slow  # registers a model, exports three graphs and samples: ~40 s idle, more when shared

runner = CliRunner()


@pytest.fixture(scope="module")
def registry(tiny_model_dir, tmp_path_factory, monkeypatch_module):
    """A throwaway MLflow store holding the tiny model as genops-sd-base version 1 (no alias)."""
    from training_jobs.pyfunc_models import TextToImageModel
    from training_jobs.tracking import TrackingConfig, open_run, register_model

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = TrackingConfig(tracking_uri=uri, experiment="genops-base-models", registered_model="genops-sd-base",
                         dataset_versions={"laion_short": "0123456789abcdef"}, git_commit="cafe123", profile="tiny")
    run_id = open_run(cfg, "sd_base-tiny", {"recipe": "sd_base"}, "sd_base")
    version = register_model(cfg, run_id, tiny_model_dir, TextToImageModel(), {"val/loss": 0.5})
    assert version == "1"
    return uri, run_id


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def bundle(registry, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "sd_base-v1"
    result = runner.invoke(app, ["export", "sd_base", "--version", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "end to end" in result.output and "pass" in result.output
    return out


def test_missing_alias_says_to_pass_a_version_or_promote(registry, tmp_path):
    result = runner.invoke(app, ["export", "sd_base", "--out", str(tmp_path / "b")])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "no alias 'champion'" in message and "--version" in message and "promote" in message
    assert not (tmp_path / "b").exists()


def test_manifest_has_lineage_checksums_and_parity(bundle, registry):
    uri, run_id = registry
    manifest = verify_bundle(bundle)
    assert manifest["format_version"] == 1 and manifest["family"] == "sd_base"
    assert manifest["registry"] == {"model": "genops-sd-base", "version": 1, "alias": None,
                                    "uri": "models:/genops-sd-base/1"}
    assert manifest["source_run"] == run_id
    assert manifest["dataset_versions"] == {"laion_short": "0123456789abcdef"}
    assert manifest["git_commit"] == "cafe123" and manifest["metrics"] == {"val/loss": 0.5}
    assert manifest["onnx"]["opset"] == 17 and manifest["created_at"].endswith("Z")
    on_disk = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [p for p in on_disk if p != "manifest.json"]
    for rel, digest in manifest["files"].items():
        assert sha256_file(bundle / rel) == digest
    for required in ("onnx/text_encoder.onnx", "onnx/unet.onnx", "onnx/vae_decoder.onnx", "MODEL_CARD.md",
                     "pytorch/unet/diffusion_pytorch_model.safetensors", "pytorch/tokenizer/tokenizer.json",
                     "pytorch/scheduler/scheduler_config.json", "sampler.json"):
        assert required in manifest["files"]
    assert not any(p.endswith((".bin", ".pt", ".pkl")) for p in manifest["files"])
    assert "TritonAttnProcessor" in manifest["pytorch"]["attention_processor"]


def test_registry_version_is_tagged_with_the_export_and_its_parity(bundle, registry):
    import mlflow

    uri, _ = registry
    client = mlflow.MlflowClient(tracking_uri=uri)
    tags = client.get_model_version("genops-sd-base", "1").tags
    assert tags["export.parity_passed"] == "true"
    run = client.get_run(tags["export.bundle_run_id"])
    assert run.data.tags["registered_version"] == "1"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert "bundle/manifest.json" in logged and "bundle/onnx" in logged


def test_every_graph_matches_pytorch_on_two_shapes(bundle):
    parity = verify_bundle(bundle)["parity"]
    by_graph = {}
    for row in parity["graphs"]:
        by_graph.setdefault(row["graph"], []).append(row)
        assert row["passed"] and row["max_abs_err"] < ATOL, row
    assert set(by_graph) == {"text_encoder", "unet", "vae_decoder"}
    for rows in by_graph.values():  # two different input shapes per graph: the dynamic axes really vary
        assert len(rows) == 2 and rows[0]["output_shape"] != rows[1]["output_shape"]


def test_unet_graph_runs_at_a_third_shape_like_pytorch(bundle):
    """Batch 1 at twice the latent side (an allowed size), not one of the export's own parity shapes."""
    from components.models.sd_base import SDBase

    sd = SDBase.from_pretrained(bundle / "pytorch").eval()
    g = torch.Generator().manual_seed(7)
    latents, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([900])
    text = torch.randn(1, 12, 16, generator=g)
    with torch.no_grad():
        expected = sd.denoise(latents, t, text).numpy()
    got = cpu_session(bundle / "onnx" / "unet.onnx").run(
        None, {"sample": latents.numpy(), "timestep": t.numpy(), "encoder_hidden_states": text.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)


def test_onnx_and_torch_samplers_draw_the_same_image(bundle):
    """Same seed, 6 steps with guidance: every uint8 pixel within one level (the manifest's stated tolerance)."""
    from serving.sampler import load_sampler

    e2e = verify_bundle(bundle)["parity"]["end_to_end"]
    assert e2e["passed"] and e2e["max_abs_pixel_diff"] <= e2e["tolerance"] == pytest.approx(2 / 255)
    images = [np.asarray(load_sampler(bundle, b, "cpu").generate(["a green triangle"], seed=3, steps=6)[0], np.int16)
              for b in ("onnx", "torch")]
    assert np.abs(images[0] - images[1]).max() <= 1
    assert images[0].std() > 0  # a real image, not a constant


@pytest.mark.parametrize("change", ["modify", "remove", "add", "pickle"])
def test_a_tampered_bundle_is_refused_naming_the_file(bundle, tmp_path, change):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    target = {"modify": "onnx/unet.onnx", "remove": "pytorch/vae/diffusion_pytorch_model.safetensors",
              "add": "onnx/extra.onnx", "pickle": "pytorch/unet/diffusion_pytorch_model.bin"}[change]
    path = copy / target
    if change == "modify":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif change == "remove":
        path.unlink()
    else:
        path.write_bytes(b"\x80\x04K\x01.")  # a pickle of 1
    with pytest.raises(BundleError, match=str(path).replace(".", r"\.")):
        verify_bundle(copy)
    result = runner.invoke(app, ["generate", "--bundle", str(copy), "--prompt", "x", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and target.split("/")[-1] in result.output
    assert not (tmp_path / "x.png").exists()


def test_generate_writes_a_png_from_the_bundle(bundle, tmp_path):
    from PIL import Image

    out = tmp_path / "x.png"
    result = runner.invoke(app, ["generate", "--bundle", str(bundle), "--prompt", "a red circle", "--prompt",
                                 "a blue square", "--out", str(out), "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "onnx backend on cpu" in result.output
    assert Image.open(out).size == (32, 16)  # two 16 px images in a row
    assert json.loads((bundle / "sampler.json").read_text())["allowed_sides"] == [16, 32]


def test_a_request_draws_the_same_image_alone_or_batched(bundle):
    """The service batches requests with different prompts, negatives and seeds: each row must be what it
    would be alone (per-row noise and negatives). Bit for bit here; 1e-6 (~8 fp32 ulp at |x| <= 1) leaves room for a
    GEMM that blocks rows differently at another batch size."""
    from serving.sampler import load_sampler

    sampler = load_sampler(bundle, "onnx", "cpu")
    noise = torch.cat([sampler.initial_noise(1, 11), sampler.initial_noise(1, 12)])
    batched = sampler.pixels(["a red circle", "a blue square"], negative_prompts=["", "green"], noise=noise, steps=3)
    alone = [sampler.pixels([p], negative_prompts=[n], noise=noise[i:i + 1], steps=3)
             for i, (p, n) in enumerate([("a red circle", ""), ("a blue square", "green")])]
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-6, rtol=0)
