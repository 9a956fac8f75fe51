"""ParaDiffusion in Dagster and on the command line: the stage chain, the ablation job, the LoRA
parameter table of Llama-2-7B computed on the meta device, and `genops sample paradiffusion`."""

import dagster as dg
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from orchestration.assets.base_models import llm_base, vae
from orchestration.assets.paradiffusion import (
    paradiffusion_stage1,
    paradiffusion_stage2,
    paradiffusion_stage3,
)
from orchestration.cli import app
from orchestration.definitions import defs
from orchestration.resources import DvcResource, MlflowResource, RayResource, TrainingResource

runner = CliRunner()


def parents(asset: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get(dg.AssetKey(asset)).parent_keys}


def test_each_stage_depends_on_the_previous_one():
    assert {"vae", "llm_base", "prepared_laion_short"} <= parents("paradiffusion_stage1")
    assert "paradiffusion_stage1" in parents("paradiffusion_stage2")
    assert "paradiffusion_stage2" in parents("paradiffusion_stage3")
    assert "paradiffusion_stage1" in parents("paradiffusion_lora_ablation")


def test_the_stages_and_the_ablation_have_their_own_jobs_and_groups():
    graph = defs.resolve_asset_graph()
    assert {graph.get(dg.AssetKey(f"paradiffusion_stage{n}")).group_name for n in (1, 2, 3)} == {"paradiffusion"}
    assert graph.get(dg.AssetKey("paradiffusion_lora_ablation")).group_name == "ablations"
    nodes = {node.name for node in defs.resolve_job_def("paradiffusion_job").nodes}
    assert nodes == {"paradiffusion_stage1", "paradiffusion_stage2", "paradiffusion_stage3"}
    assert {node.name for node in defs.resolve_job_def("paradiffusion_lora_ablation_job").nodes} == {"paradiffusion_lora_ablation"}


def test_lora_table_prints_the_papers_llama2_7b_counts():
    result = runner.invoke(app, ["paradiffusion", "lora-table", "--profile", "paper"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.strip()[:1].isdigit() and "%" in line]
    # Table 6: 4.2M (0.06%), 8.4M (0.13%), 16.7M (0.25%), 33.6M (0.51%), 67.1M (1.01%)
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("8", "4,194,304", "0.06%"), ("16", "8,388,608", "0.13%"), ("32", "16,777,216", "0.25%"),
        ("64", "33,554,432", "0.51%"), ("128", "67,108,864", "1.01%")]


def test_lora_table_names_a_bad_flag():
    result = runner.invoke(app, ["paradiffusion", "lora-table", "--ranks", "8,x"])
    assert result.exit_code == 2 and "--ranks" in result.output


def test_sample_paradiffusion_draws_a_paragraph(tmp_path):
    from components.models.autoencoder import AutoencoderConfig, build_autoencoder
    from tests.paradiffusion_parts import build, make_tokenizer, paragraph

    model = build(make_tokenizer(), rank=2)
    torch.manual_seed(0)
    autoencoder = build_autoencoder(AutoencoderConfig(sample_size=16, block_out_channels=(8, 8, 8), norm_num_groups=4))
    model.save_pretrained(tmp_path / "model", vae=autoencoder)
    out = tmp_path / "x.png"
    result = runner.invoke(app, ["sample", "paradiffusion", "--prompt", paragraph(120), "--weights", str(tmp_path / "model"),
                                 "--out", str(out), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (16, 16)
    assert "text tokens read" in result.output


@pytest.mark.integration
@pytest.mark.slow
def test_the_three_stages_materialize_in_dagster(tiny_text_data, tmp_path):
    resources = {
        "dvc": DvcResource(repo_root=str(tiny_text_data)),
        "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        "ray": RayResource(),
        "training": TrainingResource(profile="tiny", storage_path=str(tmp_path / "ray")),
    }
    result = dg.materialize([vae, llm_base, paradiffusion_stage1, paradiffusion_stage2, paradiffusion_stage3],
                            resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    uris = [result.asset_materializations_for_node(f"paradiffusion_stage{n}")[0].metadata["registered_model_uri"].value
            for n in (1, 2, 3)]
    assert uris == [f"models:/genops-paradiffusion-stage{n}/1" for n in (1, 2, 3)]
