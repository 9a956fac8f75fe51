"""`genops minigpt5 params` / `generate`, and MiniGPT-5's Dagster assets and jobs."""

import json

import dagster as dg
import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from tests.minigpt5_parts import build_base_folders


def test_params_lists_the_paper_groups_of_each_stage():
    runner = CliRunner()
    one = runner.invoke(app, ["minigpt5", "params", "--profile", "paper", "--stage", "1"])
    assert one.exit_code == 0, one.output
    assert "(1, 8, 4096) -> (1, 77, 1024)" in one.output
    # voken rows: 8 x 4096 each; MLP 4096*1024+1024 + 1024*1024+1024; q 77*1024
    assert "voken_input" in one.output and "32,768" in one.output
    assert "5,244,928" in one.output and "78,848" in one.output and "117,575,680" in one.output
    two = runner.invoke(app, ["minigpt5", "params", "--profile", "paper", "--stage", "2"])
    assert two.exit_code == 0, two.output
    # LoRA r 8 on q_proj and v_proj of 32 layers: 32 * 2 * 8 * (4096 + 4096)
    assert "4,194,304" in two.output and "mapper.mlp " not in two.output and "6.6M" in two.output
    bad = runner.invoke(app, ["minigpt5", "params", "--stage", "3"])
    assert bad.exit_code == 2 and "--stage" in bad.output


@pytest.mark.slow
def test_generate_writes_the_story_and_an_html_strip(tiny_text_data, tmp_path):
    import torch

    from components.models.minigpt5 import MiniGPT5, MiniGPT5Config

    parts = build_base_folders(tmp_path / "parts", tiny_text_data / "data" / "tokenizer")
    cfg = MiniGPT5Config()
    cfg.visual.num_queries, cfg.mapper.dim_feedforward = 4, 64
    cfg.sampling.num_inference_steps, cfg.sampling.max_new_tokens = 2, 4
    torch.manual_seed(0)
    MiniGPT5.from_parts(cfg, parts["llm"], parts["clip"], parts["sd"]).save_pretrained(tmp_path / "model")
    story = tiny_text_data / "data" / "raw" / "vist" / "train_cleaned.json"
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["minigpt5", "generate", "--story", str(story), "--steps", "2", "--out", str(out),
                                      "--weights", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "story.json").read_text())
    generated = [s for s in written["steps"] if s["source"] == "generated"]
    assert len(generated) == 2 and all(s["image"] and (out / s["image"]).is_file() for s in generated)
    page = (out / "index.html").read_text()
    assert page.count("<img") == sum(1 for s in written["steps"] if s["image"])
    missing = CliRunner().invoke(app, ["minigpt5", "generate", "--story", str(tmp_path / "nope.json"), "--out", str(out)])
    assert missing.exit_code == 2 and "--story" in missing.output


def test_assets_jobs_and_groups():
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("minigpt5_stage1")).group_name == "minigpt5"
    assert graph.get(dg.AssetKey("minigpt5_table5_ablation")).group_name == "ablations"
    deps = {k.to_user_string() for k in graph.get(dg.AssetKey("minigpt5_stage1")).parent_keys}
    assert {"sd_base", "llm_base", "clip_base", "vae"} <= deps
    assert dg.AssetKey("minigpt5_stage1") in graph.get(dg.AssetKey("minigpt5_stage2")).parent_keys
    assert defs.get_job_def("minigpt5_job") and defs.get_job_def("minigpt5_ablation_job")
