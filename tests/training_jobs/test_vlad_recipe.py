"""The VLAD recipe through the real launcher (Ray Train local mode, MLflow on SQLite) for a few steps."""


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
