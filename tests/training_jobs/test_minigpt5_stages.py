"""Both MiniGPT-5 stages run through the real launcher (tiny, Ray Train local mode), register, and stage 2
starts from stage 1's registered weights. The recipes only train: their measurements are the evaluation
scorers' (`score_stage1`, `score_stage2`), and the Table 5 ablation scores its arms itself."""

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from components.models.minigpt5 import HEADS_FILE, MiniGPT5
from tests.minigpt5_parts import build_base_folders
from training_jobs.launcher import launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def stages(tiny_text_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("minigpt5")
    parts = build_base_folders(root / "parts", tiny_text_data / "data" / "tokenizer")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    common = [f"data.prepared_root={tiny_text_data / 'data' / 'prepared'}", f"run.storage_path={root / 'ray'}"]
    stage1 = launch("minigpt5_stage1", "tiny",
                    [*common, f"data.llm={parts['llm']}", f"data.visual_encoder={parts['clip']}",
                     f"data.generator={parts['sd']}"], tracking_uri=uri, versions={})
    stage2 = launch("minigpt5_stage2", "tiny", [*common, "data.init=models:/genops-minigpt5-stage1/latest"],
                    tracking_uri=uri, versions={})
    return stage1, stage2, uri, parts


def test_stage1_registers_and_its_evaluation_measures_held_out_pairs(stages, tiny_text_data):
    from training_jobs.evaluation import split_samples
    from training_jobs.minigpt5_evaluation import score_stage1

    stage1, _, _, parts = stages
    assert (stage1.registered_model, stage1.registered_version) == ("genops-minigpt5-stage1", "1")
    assert not [k for k in stage1.metrics if k.startswith("eval/")]  # the recipe trains, the evaluation scores
    rows = split_samples(tiny_text_data / "data" / "prepared", "cc3m", "test", 2)
    outcome = score_stage1(stage1.model_dir, rows, {"clip_evaluator": parts["evaluator"], "steps": 2})
    m = outcome.metrics
    assert -1 <= m["clip_i"] <= 1 and -1 <= m["clip_t"] <= 1 and m["fid_clip"] >= 0
    assert len(outcome.samples) == 2 and {r.name for r in outcome.baselines} >= {"Zero vokens (floor)"}
    # the paper's trainable groups plus the pooler, logged as counts
    model = MiniGPT5.from_pretrained(stage1.model_dir)
    assert model.stage == 1


def test_stage2_starts_from_stage1_weights_and_trains_only_its_set(stages, tiny_text_data):
    from training_jobs.minigpt5_evaluation import score_stage2, story_rows

    stage1, stage2, uri, parts = stages
    assert (stage2.registered_model, stage2.registered_version) == ("genops-minigpt5-stage2", "1")
    client = MlflowClient(uri)
    # the stage-1 run trained the pooler; stage 2 kept stage 1's pooler, MLP and q bit for bit
    heads1 = load_file(stage1.model_dir / HEADS_FILE)
    heads2 = load_file(stage2.model_dir / HEADS_FILE)
    for key in heads1:
        if key.startswith(("pooler.", "mapper.mlp.")) or key == "mapper.q":
            assert torch.equal(heads1[key], heads2[key]), key
    assert any(not torch.equal(heads1[k], heads2[k]) for k in heads1 if k.startswith("mapper.enc_dec."))
    one = MiniGPT5.from_pretrained(stage1.model_dir)
    two = MiniGPT5.from_pretrained(stage2.model_dir)
    ids = one.voken_ids
    e1 = one.causal_lm.get_input_embeddings().weight
    e2 = two.causal_lm.get_input_embeddings().weight
    others = torch.ones(e1.shape[0], dtype=torch.bool)
    others[ids] = False
    assert torch.equal(e1[others], e2[others]) and not torch.equal(e1[ids], e2[ids])
    # LoRA merged into q_proj changed it; k_proj (not a target) is untouched
    l1 = one.causal_lm.model.layers[0].self_attn
    l2 = two.causal_lm.model.layers[0].self_attn
    assert not torch.equal(l1.q_proj.weight, l2.q_proj.weight) and torch.equal(l1.k_proj.weight, l2.k_proj.weight)
    run = client.get_run(stage2.run_id)
    assert run.data.metrics["params/lora"] > 0 and "params/mapper.mlp" not in run.data.metrics
    assert not [k for k in run.data.metrics if k.startswith("eval/")]
    # Tables 1, 2 and 6 come from the evaluation scorer: every context of the study, the baselines, narration
    rows = story_rows(tiny_text_data / "data" / "prepared", "vist", "test", 2)
    outcome = score_stage2(stage2.model_dir, rows, {"clip_evaluator": parts["evaluator"], "steps": 2,
                                                    "max_context": 2, "sbert": False})
    for context in ("none", "text", "image", "both"):
        assert -1 <= outcome.metrics[f"context_{context}_clip_i"] <= 1
    assert "two_stage_baseline_clip_i" in outcome.metrics and "narration_rouge_l" in outcome.metrics
    assert outcome.facts["narration_sbert"] == "off" and len(outcome.samples) == 2


def test_table5_arms_are_nested_runs_with_a_comparison_table(stages, tiny_text_data, tmp_path):
    from training_jobs.minigpt5_ablation import run_table5_ablation

    _, _, uri, parts = stages
    prepared = tiny_text_data / "data" / "prepared"
    overrides = [f"data.prepared_root={prepared}", f"run.storage_path={tmp_path / 'ray'}", f"data.llm={parts['llm']}",
                 f"data.visual_encoder={parts['clip']}", f"data.generator={parts['sd']}", "train.steps=2"]
    summary = run_table5_ablation("tiny", overrides, uri, str(parts["evaluator"]), prepared, arms=["full", "no_cfg"],
                                  eval_pairs=2, say=lambda _: None)
    client = MlflowClient(uri)
    children = client.search_runs([client.get_experiment_by_name("genops-minigpt5").experiment_id],
                                  f"tags.mlflow.parentRunId = '{summary.parent_run_id}'")
    assert len(children) == 2
    no_cfg = next(r for r in children if r.info.run_id == summary.rows[1]["run_id"])
    assert no_cfg.data.params["model.cfg_dropout"] == "0.0"
    # each arm was scored after training and its scores are on its own run and in the table's row
    for child, row in zip(sorted(children, key=lambda r: r.info.start_time), summary.rows):
        assert child.data.metrics["eval/pairs"] == 2 and -1 <= child.data.metrics["eval/clip_t"] <= 1
        assert row["eval/clip_t"] == child.data.metrics["eval/clip_t"]
    table = client.download_artifacts(summary.parent_run_id, "table5.md")
    text = open(table).read()
    assert "| full |" in text and "| no_cfg |" in text and "clip_i" in text
