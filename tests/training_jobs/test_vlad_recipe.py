"""The VLAD recipe through the real launcher (Ray Train local mode, MLflow on SQLite) for a few steps."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from components.config import load_config
from components.models.autoencoder import (
    AutoencoderConfig,
    build_autoencoder,
    load_autoencoder,
    save_autoencoder,
)
from components.models.clip_base import ClipBase, ClipBaseConfig
from components.models.vlad import VLAD, WEIGHTS_FILE
from training_jobs.launcher import CONFIG_ROOT, launch, resolve_config
from training_jobs.vlad_evaluation import slug

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vlad_inputs(tiny_text_data, tiny_mario_data, tmp_path_factory):
    """tiny data (with mario_laion prepared), an untrained tiny clip_base and VAE saved as folders."""
    data = tiny_text_data / "data"
    root = tmp_path_factory.mktemp("vlad_inputs")
    torch.manual_seed(0)
    clip_cfg = load_config(ClipBaseConfig, CONFIG_ROOT / "models" / "clip_base" / "tiny.yaml")
    ClipBase.from_config(clip_cfg, AutoTokenizer.from_pretrained(data / "tokenizer")).save_pretrained(root / "clip_base")
    vae_cfg = load_config(AutoencoderConfig, CONFIG_ROOT / "models" / "vae" / "tiny.yaml")
    save_autoencoder(build_autoencoder(vae_cfg), root / "vae")
    return data / "prepared", root


def test_every_vlad_yaml_loads():
    for profile in ("tiny", "demo", "paper"):
        cfg = resolve_config("vlad", profile)
        assert cfg.tracking.registered_model == "genops-vlad"
        assert cfg.data.datasets[0] == "mario_laion"


@pytest.mark.parametrize("switch", [[], ["model.ccm.enabled=false", "model.layout.enabled=false"]])
def test_launcher_trains_vlad_and_exports(vlad_inputs, tmp_path, switch):
    prepared, root = vlad_inputs
    result = launch("vlad", "tiny", [f"data.prepared_root={prepared}", f"data.lvlm={root / 'clip_base'}",
                                     f"data.vae={root / 'vae'}", f"run.storage_path={tmp_path / 'ray'}", *switch],
                    tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", versions={}, progress=lambda _: None)
    assert result.registered_model == "genops-vlad" and result.registered_version == "1"
    for key in ("val/align", "val/diffusion", "val/layout", "val/loss"):
        assert torch.isfinite(torch.tensor(result.metrics[key])), key
    keys = load_file(result.model_dir / WEIGHTS_FILE).keys()
    assert any("lora_A" in k for k in keys)
    assert any(k.startswith("ccm.") for k in keys) == (not switch)
    assert any(k.startswith("tlg.") for k in keys) == (not switch)
    model = VLAD.from_pretrained(result.model_dir).eval()
    vae = load_autoencoder(result.model_dir / "vae")
    images, layout = model.generate(["a sign that reads 'OPEN'"], vae, num_inference_steps=2,
                                    generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    assert (layout is None) == bool(switch)
    if layout is not None:
        assert layout.shape == (1, 3, 8, 8)
        from PIL import Image
        from typer.testing import CliRunner

        from orchestration.cli import app

        out = tmp_path / "x.png"
        cli = CliRunner().invoke(app, ["sample", "vlad", "--prompt", "a storefront sign that says 'OPEN'",
                                       "--weights", str(result.model_dir), "--steps", "2", "--out", str(out)])
        assert cli.exit_code == 0, cli.output
        assert "words ['OPEN']" in cli.output
        assert Image.open(out).size == (32, 32)
        assert Image.open(tmp_path / "x.layout.png").size == (32, 32)
        _table1_is_logged_to_mlflow(result, prepared, tmp_path)


def _table1_is_logged_to_mlflow(result, prepared, tmp_path):
    """`python -m training_jobs.vlad_evaluation` scores the registered model on the mario_eval prompts and logs
    Table I (markdown, JSON, one metric per cell, the row's registry version as a tag) to an MLflow run."""
    import json

    import mlflow

    from components.models.clip_evaluator import ClipEvaluator, ClipEvaluatorConfig
    from training_jobs.vlad_evaluation import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evaluator = tmp_path / "clip_evaluator"
    ClipEvaluator.from_config(load_config(ClipEvaluatorConfig, CONFIG_ROOT / "models" / "clip_evaluator" / "tiny.yaml"),
                              AutoTokenizer.from_pretrained(prepared.parent / "tokenizer")).save_pretrained(evaluator)
    out = tmp_path / "table1.md"
    main(["--row", "VLAD=vlad:models:/genops-vlad/1", "--prompts", "2", "--steps", "2", "--evaluator", str(evaluator),
          "--prepared-root", str(prepared), "--tracking-uri", uri, "--out", str(out), "--experiment", "table1"])
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("table1").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["genops.kind"] == "comparison"
    assert run.data.tags["genops.row.vlad_version"] == "1"
    assert run.data.tags["genops.row.vlad_run_id"] == result.run_id
    assert "genops.dataset.mario_eval" in run.data.tags
    local = Path(client.download_artifacts(run.info.run_id, "vlad_table1.json", str(tmp_path / "artifacts")))
    cells = json.loads(local.read_text())
    assert set(cells) == {"VLAD", "ground truth (ceiling)", "ground truth at 32 px"}
    for row, metrics in cells.items():
        for key, value in metrics.items():
            assert run.data.metrics[f"{slug(row)}/{key}"] == pytest.approx(value)
    assert "| VLAD |" in out.read_text()
    assert out.read_text() == Path(client.download_artifacts(run.info.run_id, "vlad_table1.md",
                                                            str(tmp_path / "artifacts"))).read_text()
