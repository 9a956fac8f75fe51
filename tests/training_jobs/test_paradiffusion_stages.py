"""The three ParaDiffusion stages train for real (tiny, Ray Train local mode through the launcher),
each starting from the previous stage's registered model, and the LoRA ablation nests its grid."""

from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from components.models.paradiffusion import LORA_FOLDER, ParaDiffusion
from training_jobs.launcher import TrainingFailed, launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stages(tiny_text_data, tmp_path_factory):
    """vae + llm_base (tiny), then stage 1 -> 2 -> 3 in one registry, each stage's data.init a registry URI."""
    root = tmp_path_factory.mktemp("paradiffusion")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    prepared = f"data.prepared_root={tiny_text_data / 'data' / 'prepared'}"
    storage = f"run.storage_path={root / 'ray'}"
    vae = launch("vae", "tiny", [prepared, storage], tracking_uri=uri, versions={})
    llm = launch("llm_base", "tiny", [prepared, storage, f"data.tokenizer={tiny_text_data / 'data' / 'tokenizer'}"],
                 tracking_uri=uri, versions={})
    s1 = launch("paradiffusion_stage1", "tiny", [prepared, storage, f"data.vae={vae.model_dir}",
                                                  f"data.llm={llm.model_dir}"], tracking_uri=uri, versions={})
    # each stage's default data.init is the previous stage's champion: promote as the promotion asset would
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.set_registered_model_alias("genops-paradiffusion-stage1", "champion", s1.registered_version)
    s2 = launch("paradiffusion_stage2", "tiny", [prepared, storage], tracking_uri=uri, versions={})
    client.set_registered_model_alias("genops-paradiffusion-stage2", "champion", s2.registered_version)
    s3 = launch("paradiffusion_stage3", "tiny", [prepared, storage], tracking_uri=uri, versions={})
    return {"uri": uri, "vae": vae, "llm": llm, 1: s1, 2: s2, 3: s3, "prepared": prepared, "storage": storage}


def test_a_missing_champion_is_named_and_user_commands_fall_back_to_latest(stages):
    from training_jobs.model_inputs import default_reference, resolve_model_path

    with pytest.raises(FileNotFoundError, match="genops-paradiffusion-stage3.*alias 'champion'.*stage3/latest"):
        resolve_model_path("models:/genops-paradiffusion-stage3@champion", stages["uri"])
    said = []
    assert default_reference("genops-paradiffusion-stage3", stages["uri"], said.append) == (
        "models:/genops-paradiffusion-stage3/latest")
    assert default_reference("genops-paradiffusion-stage1", stages["uri"], said.append) == (
        "models:/genops-paradiffusion-stage1@champion")
    assert "no champion" in said[0] and "version 1" in said[1]


def test_each_stage_starts_from_the_previous_registered_model(stages):
    client = mlflow.MlflowClient(tracking_uri=stages["uri"])
    for stage in (1, 2, 3):
        assert stages[stage].registered_model == f"genops-paradiffusion-stage{stage}"
        assert stages[stage].registered_version == "1"
    for stage in (2, 3):
        tags = client.get_run(stages[stage].run_id).data.tags
        assert tags["genops.init_model"] == f"models:/genops-paradiffusion-stage{stage - 1}@champion"
        assert tags["genops.init_model_run_id"] == stages[stage - 1].run_id
        assert tags["genops.init_model_version"] == "1"
    artifacts = [a.path for a in client.list_artifacts(stages[3].run_id, "samples")]
    assert "samples/grid_step000002.png" in artifacts and "samples/prompts.txt" in artifacts


def test_stage1_trains_no_adapter_and_stage2_trains_one(stages):
    one = ParaDiffusion.from_pretrained(stages[1].model_dir)
    assert not one.has_lora and not (stages[1].model_dir / LORA_FOLDER).exists()
    assert stages[1].metrics["lora/trainable_parameters"] == 0
    # stage 1 leaves the LLM exactly as llm_base exported it (frozen, bit for bit)
    llm = load_file(stages["llm"].model_dir / "model.safetensors")
    encoder = load_file(stages[1].model_dir / "text_encoder" / "model.safetensors")
    assert set(encoder) == {k.removeprefix("model.") for k in llm if k.startswith("model.")}
    assert all(torch.equal(v, llm[f"model.{k}"]) for k, v in encoder.items())
    two = ParaDiffusion.from_pretrained(stages[2].model_dir)
    assert two.has_lora and stages[2].metrics["lora/trainable_parameters"] > 0
    lora_b = {k: v for k, v in two.text_encoder.state_dict().items() if "lora_B" in k}
    # PEFT initialises B to zeros: a non-zero B means the adapter was trained
    assert lora_b and all(v.abs().max() > 0 for v in lora_b.values())
    # the base weights under the adapter stay frozen in stage 2 too
    base = load_file(stages[2].model_dir / "text_encoder" / "model.safetensors")
    assert all(torch.equal(v, encoder[k]) for k, v in base.items())
    three = ParaDiffusion.from_pretrained(stages[3].model_dir)
    changed = [k for k, v in three.text_encoder.state_dict().items() if "lora_" in k
               and not torch.equal(v, two.text_encoder.state_dict()[k])]
    assert changed  # stage 3 keeps training the adapter


def test_merged_adapter_samples_like_the_unmerged_one(stages):
    model = ParaDiffusion.from_pretrained(stages[2].model_dir).eval()
    ids, mask = model.tokenize(["a red circle at the top left and a blue square at the bottom right"])
    with torch.no_grad():
        before = model.encode_text(ids, mask)
        model.merge_lora()
        after = model.encode_text(ids, mask)
    assert not model.has_lora
    # fp32 sums of 32-wide dot products, W + BA folded once: differences at a few ulps of values ~1
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_stage2_refuses_an_init_adapter_of_another_rank(stages):
    with pytest.raises(Exception, match="match model"):
        launch("paradiffusion_stage3", "tiny", [stages["prepared"], stages["storage"], "model.rank=8"],
               tracking_uri=stages["uri"], versions={})


def test_lora_ablation_nests_one_child_per_grid_point(stages, tmp_path):
    from peft import get_peft_model

    from components.models.paradiffusion import LoraSettings, load_llm
    from training_jobs.paradiffusion_ablation import GridPoint, run_lora_ablation

    grid = [GridPoint(0, 32), GridPoint(2, 32), GridPoint(4, 8)]
    summary = run_lora_ablation("tiny", grid, [stages["prepared"], stages["storage"], "train.steps=2"],
                                tracking_uri=stages["uri"], output_dir=tmp_path, say=lambda _: None)
    client = mlflow.MlflowClient(tracking_uri=stages["uri"])
    children = client.search_runs([client.get_run(summary.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'")
    assert len(children) == len(grid)
    by_name = {c.data.tags["genops.grid_point"]: c for c in children}
    assert set(by_name) == {p.name for p in grid}
    for point in grid:
        logged = by_name[point.name].data.metrics["lora/trainable_parameters"]
        if point.rank == 0:
            assert logged == 0
            continue
        llm, _ = load_llm(stages["llm"].model_dir)
        expected, _ = get_peft_model(llm, LoraSettings(rank=point.rank, alpha=point.alpha).peft_config()).get_nb_trainable_parameters()
        assert logged == expected
    parent = [a.path for a in client.list_artifacts(summary.parent_run_id, "ablation")]
    assert {"ablation/lora_table.md", "ablation/lora_table.csv", "ablation/metric_vs_rank.png"} <= set(parent)
    assert client.get_run(summary.parent_run_id).data.tags["genops.best_config"] in by_name


def test_stage1_trains_on_aspect_buckets_with_non_square_images(stages, tmp_path, capfd):
    """data.aspect_buckets on a prepared dataset of wide, tall and square images: the stage trains on 40x24, 24x40
    and 32x32 images (the tiny VAE's 32 px area; 16 px while at low resolution) instead of squashing them."""
    import io
    import json

    from PIL import Image

    from components.data.shards import write_shard

    root = tmp_path / "prepared"
    (root / "wide" / "train").mkdir(parents=True)
    (root / "paraimage_big").symlink_to(Path(stages["prepared"].split("=", 1)[1]) / "paraimage_big")
    samples = []
    for i, size in enumerate([(64, 36)] * 4 + [(36, 64)] * 4 + [(40, 40)] * 4):
        buffer = io.BytesIO()
        Image.new("RGB", size, ((40 * i) % 255, 90, 160)).save(buffer, format="PNG")
        meta = {"id": f"w{i}", "caption": "a red circle at the top left"}
        samples.append({f"w{i}.json": json.dumps(meta).encode(), f"w{i}.png": buffer.getvalue()})
    write_shard(root / "wide" / "train" / "shard-000000.tar", samples)
    result = launch("paradiffusion_stage1", "tiny", [
        f"data.prepared_root={root}", stages["storage"].replace("ray", "ray-buckets"), "data.datasets=[wide]",
        "data.aspect_buckets=true", "data.bucket_step=8", f"data.vae={stages['vae'].model_dir}",
        f"data.llm={stages['llm'].model_dir}", "tracking.registered_model=null"],
        tracking_uri=stages["uri"], versions={})
    assert torch.isfinite(torch.tensor(result.metrics["val/loss"]))
    out = capfd.readouterr().out
    assert "[buckets] training on 16x16 (12)" in out  # the low-resolution steps: one bucket at 16 px
    assert "[buckets] training on 24x40 (4), 32x32 (4), 40x24 (4)" in out
    with pytest.raises(TrainingFailed, match="data.bucket_step=12 must be a multiple of 8"):
        launch("paradiffusion_stage1", "tiny", [
            f"data.prepared_root={root}", stages["storage"].replace("ray", "ray-buckets2"), "data.datasets=[wide]",
            "data.aspect_buckets=true", "data.bucket_step=12", f"data.vae={stages['vae'].model_dir}",
            f"data.llm={stages['llm'].model_dir}", "tracking.registered_model=null"],
            tracking_uri=stages["uri"], versions={})
