"""sd_base from existing weights (`data.init`) and the `sd_base_finetune` recipe on mario_laion (VLAD Table I's
"Fine-tuned SD"): the init's weights are the ones trained, a wrong init is refused naming data.init, and the
fine-tune runs through the real launcher (Ray Train local mode, MLflow on SQLite) and registers with its lineage."""

import mlflow
import pytest
import torch
from transformers import AutoTokenizer

from components.config import load_config
from components.models.autoencoder import (
    AutoencoderConfig,
    build_autoencoder,
    load_autoencoder,
    save_autoencoder,
)
from components.models.sd_base import SDBase, SDBaseConfig
from training_jobs.launcher import CONFIG_ROOT, TrainingFailed, launch, resolve_config
from training_jobs.recipes import sd_base, sd_base_finetune
from training_jobs.tracking import TrackingConfig, finish_run, open_run, register_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def init_inputs(tiny_mario_data, tmp_path_factory):
    """tiny data with mario_laion prepared, and a tiny sd_base export (with its VAE) whose weights are not
    what the recipe's own seeded random init would give."""
    data = tiny_mario_data / "data"
    root = tmp_path_factory.mktemp("sd_init")
    torch.manual_seed(1234)  # the recipe seeds train.seed=0: its random init is another model
    vae = build_autoencoder(load_config(AutoencoderConfig, CONFIG_ROOT / "models" / "vae" / "tiny.yaml"))
    save_autoencoder(vae, root / "vae")
    model_cfg = load_config(SDBaseConfig, CONFIG_ROOT / "models" / "sd_base" / "tiny.yaml")
    SDBase.from_config(model_cfg, AutoTokenizer.from_pretrained(data / "tokenizer")).save_pretrained(root / "sd_base", vae=vae)
    return data, root


def weights(sd: SDBase) -> dict[str, torch.Tensor]:
    return {**{f"text_encoder.{k}": v for k, v in sd.text_encoder.state_dict().items()},
            **{f"unet.{k}": v for k, v in sd.unet.state_dict().items()}}


def test_sd_base_trains_the_weights_data_init_names(init_inputs, tmp_path):
    """At a learning rate of 1e-12 the exported weights are the ones the first step started from: the init's."""
    data, root = init_inputs
    result = launch("sd_base", "tiny", [f"data.prepared_root={data / 'prepared'}", f"data.tokenizer={data / 'tokenizer'}",
                                        f"data.init={root / 'sd_base'}", "data.vae=", "train.lr=1e-12", "train.steps=2",
                                        f"run.storage_path={tmp_path / 'ray'}"],
                    tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", versions={}, progress=lambda _: None)
    started, init = weights(SDBase.from_pretrained(result.model_dir)), weights(SDBase.from_pretrained(root / "sd_base"))
    assert started.keys() == init.keys()
    # Adam moves a weight by about lr per step (2e-12 in all) and the EMA mixes it with itself (a float32
    # rounding, ~1e-8 at these magnitudes); random init would be 1e-2 away.
    far = {k: float((started[k] - init[k]).abs().max()) for k in init if not torch.allclose(started[k], init[k], rtol=0, atol=1e-6)}
    assert not far, f"{len(far)} of {len(init)} exported tensors are not data.init's, e.g. {min(far.items())} (max abs difference)"
    tags = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.run_id).data
    assert tags.params["data.init"] == str(root / "sd_base") and tags.tags["genops.init_model"] == str(root / "sd_base")


def recipe_config(init_inputs, *overrides: str) -> sd_base.Config:
    data, root = init_inputs
    return resolve_config("sd_base", "tiny", [f"data.tokenizer={data / 'tokenizer'}", f"data.init={root / 'sd_base'}",
                                              *overrides])


def test_a_wrong_data_init_is_refused_naming_it(init_inputs, tmp_path):
    data, root = init_inputs
    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    with pytest.raises(ValueError, match=r"data\.init=.*/vae could not be loaded as an sd_base export: .*genops_sd_base\.json"):
        sd_base.load_init(recipe_config(init_inputs, f"data.init={root / 'vae'}"), tokenizer)
    with pytest.raises(ValueError, match=r"data\.init=.*missing could not be loaded as an sd_base export"):
        sd_base.load_init(recipe_config(init_inputs, f"data.init={root / 'missing'}"), tokenizer)
    with pytest.raises(ValueError, match=r"data\.init=.* another sd_base architecture .*unet\.block_out_channels: \[16, 32\] vs \[32, 64\]"):
        sd_base.load_init(recipe_config(init_inputs, "model.unet.block_out_channels=[16,32]"), tokenizer)
    with pytest.raises(ValueError, match=r"data\.init=.* another sd_base architecture .*diffusion\.prediction_type"):
        sd_base.load_init(recipe_config(init_inputs, "model.diffusion.prediction_type=v_prediction"), tokenizer)
    other = AutoTokenizer.from_pretrained(data / "tokenizer")
    other.add_tokens(["zzzunseen"])
    other.save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(ValueError, match=r"data\.init=.* another tokenizer than data\.tokenizer"):
        sd_base.load_init(recipe_config(init_inputs, f"data.tokenizer={tmp_path / 'tokenizer'}"), other)
    # the right init loads, and in its own VAE's latent space only
    model, path = sd_base.load_init(recipe_config(init_inputs), tokenizer)
    assert path == root / "sd_base" and model.cfg.unet.block_out_channels == (32, 64)
    torch.manual_seed(99)
    save_autoencoder(build_autoencoder(load_config(AutoencoderConfig, CONFIG_ROOT / "models" / "vae" / "tiny.yaml")),
                     tmp_path / "other_vae")
    with pytest.raises(ValueError, match=r"data\.vae=.*other_vae is not the VAE data\.init=.* was trained with"):
        sd_base.load_vae(recipe_config(init_inputs, f"data.vae={tmp_path / 'other_vae'}"), path)
    assert sd_base.load_vae(recipe_config(init_inputs, f"data.vae={root / 'vae'}"), path) is not None


def test_every_sd_base_finetune_yaml_loads_and_keeps_sd_base_fields():
    assert [f.name for f in sd_base_finetune.Config.__dataclass_fields__.values()] == \
        [f.name for f in sd_base.Config.__dataclass_fields__.values()]
    for profile in ("tiny", "demo", "paper"):
        cfg = resolve_config("sd_base_finetune", profile)
        base = resolve_config("sd_base", profile)
        assert cfg.tracking.registered_model == "genops-sd-base-mario" and cfg.data.datasets == ["mario_laion"]
        assert cfg.data.init == "models:/genops-sd-base@champion" and cfg.data.vae == ""
        assert cfg.model == base.model and cfg.train.lr <= base.train.lr / 10
    with pytest.raises(ValueError, match="sd_base_finetune needs data.init"):
        resolve_config("sd_base_finetune", "demo", ["data.init=null"])


@pytest.mark.slow
def test_sd_base_finetune_continues_the_champion_on_mario_laion_and_registers(init_inputs, tmp_path):
    data, root = init_inputs
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = TrackingConfig(tracking_uri=uri, experiment="genops-base-models", registered_model="genops-sd-base")
    base_run = open_run(tracking, "sd-base-tiny", {}, "sd_base")
    tracking.run_id = base_run
    assert register_model(tracking, base_run, root / "sd_base", sd_base.pyfunc_model(), {}) == "1"
    finish_run(tracking, base_run)
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.set_registered_model_alias("genops-sd-base", "champion", "1")

    result = launch("sd_base_finetune", "tiny", [f"data.prepared_root={data / 'prepared'}", f"data.tokenizer={data / 'tokenizer'}",
                                                 f"run.storage_path={tmp_path / 'ray'}"],
                    tracking_uri=uri, versions={}, progress=lambda _: None)
    assert result.registered_model == "genops-sd-base-mario" and result.registered_version == "1"
    assert torch.isfinite(torch.tensor(result.metrics["val/loss"]))
    run = client.get_run(result.run_id).data
    assert run.params["data.init"] == "models:/genops-sd-base@champion" and run.params["data.datasets"] == "['mario_laion']"
    assert (run.tags["genops.init_model_name"], run.tags["genops.init_model_version"]) == ("genops-sd-base", "1")
    assert run.tags["genops.init_model_run_id"] == base_run and run.tags["genops.recipe"] == "sd_base_finetune"
    # the base model's registry is untouched: the fine-tune is not a version of genops-sd-base
    assert [str(v.version) for v in client.search_model_versions("name = 'genops-sd-base'")] == ["1"]
    tuned = SDBase.from_pretrained(result.model_dir).eval()
    base = weights(SDBase.from_pretrained(root / "sd_base"))
    assert any(not torch.equal(v, base[k]) for k, v in weights(tuned).items())  # it trained
    assert (result.model_dir / "vae").is_dir()  # in the init's own VAE (data.vae empty), saved beside it
    images = tuned.generate(["a sign that reads 'OPEN'"], load_autoencoder(result.model_dir / "vae"),
                            num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()

    # a registry URI that names nothing fails the job before it trains, naming data.init
    with pytest.raises(TrainingFailed, match=r"data\.init=models:/genops-sd-base@retired could not be loaded .*retired"):
        launch("sd_base_finetune", "tiny", [f"data.prepared_root={data / 'prepared'}", f"data.tokenizer={data / 'tokenizer'}",
                                            "data.init=models:/genops-sd-base@retired", f"run.storage_path={tmp_path / 'ray'}"],
               tracking_uri=uri, versions={}, progress=lambda _: None)
