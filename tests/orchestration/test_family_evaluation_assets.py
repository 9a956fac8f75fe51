"""A model family's evaluation group in Dagster (in-process) against a real SQLite MLflow registry, on the
tiny profile: ParaDiffusion stage 1's benchmark (held-out paraimage_big paragraphs), evaluation logged
to the version's run, gate checks and promotion to @champion; and a text-only base model (llm_base)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import mlflow
import pytest
from transformers import AutoTokenizer

from components.config import load_config
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.clip_evaluator import ClipEvaluator, ClipEvaluatorConfig
from components.models.llm_base import LlmBase, LlmBaseConfig
from orchestration.assets.evaluation import evaluation_assets
from orchestration.resources import DvcResource, MlflowResource, TrainingResource
from tests.paradiffusion_parts import build, make_tokenizer
from training_jobs.base_model_evaluation import LLM_BASE
from training_jobs.evaluation import file_md5
from training_jobs.paradiffusion_evaluation import STAGES
from training_jobs.paradiffusion_training import ParaDiffusionModel
from training_jobs.pyfunc_models import TextGenerationModel
from training_jobs.registry import CHAMPION, TAG_DECISION
from training_jobs.tracking import TrackingConfig, register_model

PROJECT = Path(__file__).resolve().parents[2]
MODELS = PROJECT / "training_jobs" / "configs" / "models"


@pytest.fixture(scope="module")
def registry(tiny_text_data, tmp_path_factory):
    """A SQLite registry with a random-init tiny ParaDiffusion as genops-paradiffusion-stage1 v1, a tiny
    llm_base as genops-llm-base v1, and a tiny evaluator CLIP folder."""
    root = tmp_path_factory.mktemp("family_evaluation")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("genops-test", artifact_location=(root / "artifacts").as_uri())
    tokenizer = AutoTokenizer.from_pretrained(tiny_text_data / "data" / "tokenizer")
    vae = build_autoencoder(AutoencoderConfig(sample_size=16, block_out_channels=(8, 8, 8), norm_num_groups=4))
    build(make_tokenizer()).save_pretrained(root / "stage1", vae=vae)
    LlmBase.from_config(load_config(LlmBaseConfig, MODELS / "llm_base" / "tiny.yaml"), tokenizer).save_pretrained(root / "llm")
    runs = {}
    for name, folder, wrapper in (("genops-paradiffusion-stage1", root / "stage1", ParaDiffusionModel()),
                                  ("genops-llm-base", root / "llm", TextGenerationModel())):
        runs[name] = client.create_run(exp).info.run_id
        register_model(TrackingConfig(tracking_uri=uri, registered_model=name, dataset_versions={}, git_commit="abc"),
                       runs[name], folder, wrapper, {})
    ClipEvaluator.from_config(load_config(ClipEvaluatorConfig, MODELS / "clip_evaluator" / "tiny.yaml"),
                              tokenizer).save_pretrained(root / "clip")
    return uri, client, root, runs


def _materialize(data_root: Path, uri: str, root: Path, spec, policy_dir: Path) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization(
        spec.training_asset, metadata={"registered_model_uri": f"models:/{spec.registered_model}/latest"}))
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "clip_evaluator", metadata={"registered_model_uri": "", "model_dir": str(root / "clip")}))
    resources = {"dvc": DvcResource(repo_root=str(data_root)), "mlflow": MlflowResource(tracking_uri=uri),
                 "training": TrainingResource(profile="tiny")}
    return dg.materialize(evaluation_assets(spec, policy_dir), instance=instance, resources=resources,
                          raise_on_error=False)


def _policy(folder: Path, model: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{model}.yaml").write_text(f"model: {model}\n{body}")
    return folder


def _table_rows(client, run_id: str, root: Path) -> list[str]:
    table = Path(client.download_artifacts(run_id, "evaluation/comparison.md", str(root / f"dl-{run_id}")))
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    return [r.split("|")[1].strip() for r in rows]


@pytest.mark.slow
def test_paradiffusion_stage1_is_evaluated_on_paragraphs_and_becomes_champion(tiny_text_data, registry, tmp_path):
    uri, client, root, runs = registry
    spec = STAGES[1]
    # A floor below any value: the tiny random model is promoted on its evaluation alone.
    policy = _policy(tmp_path / "policies", spec.registered_model, "primary_metric: faithfulness_object\n"
                     "direction: higher\ngates:\n  - metric: clip_score_over_floor\n    min: -10.0\n")
    result = _materialize(tiny_text_data, uri, root, spec, policy)
    assert result.success
    assert [(c.check_name, c.passed) for c in result.get_asset_check_evaluations()] == [
        ("gate_clip_score_over_floor", True)]
    bench = result.asset_materializations_for_node("paradiffusion_stage1_benchmark")[0].metadata
    assert bench["source_dataset"].value == "paraimage_big" and bench["source_split"].value == "test"
    assert bench["items"].value == spec.benchmark_size["tiny"]
    run = client.get_run(runs[spec.registered_model])
    assert run.data.tags["eval.benchmark_md5"] == bench["md5"].value == file_md5(Path(bench["path"].value))
    assert run.data.tags["eval.steps"] == str(spec.sampler_steps["tiny"])  # the profile's few sampler steps
    assert {"eval/faithfulness_object", "eval/faithfulness_all", "eval/clip_score", "eval/clip_score_over_floor",
            "eval/clip_i"} <= set(run.data.metrics)
    assert _table_rows(client, run.info.run_id, root) == [
        "ParaDiffusion stage 1 (genops-paradiffusion-stage1 v1)", "*Same stage, empty prompt (floor)*",
        "*Ground-truth images (ceiling)*"]
    promotion = result.asset_materializations_for_node("paradiffusion_stage1_promotion")[0].metadata
    assert promotion["decision"].value == "promoted"
    assert str(client.get_registered_model(spec.registered_model).aliases[CHAMPION]) == "1"
    assert client.get_model_version(spec.registered_model, "1").tags[TAG_DECISION] == "promoted"


@pytest.mark.slow
def test_llm_base_is_scored_by_held_out_perplexity_and_a_failed_gate_blocks_it(tiny_text_data, registry, tmp_path):
    uri, client, root, runs = registry
    # A random-init LLM is no better than a unigram model: the shipped policy's gate (<= 0.5) blocks it.
    result = _materialize(tiny_text_data, uri, root, LLM_BASE, PROJECT / "mlflow" / "policies")
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["gate_perplexity_over_unigram"] is False
    assert not result.asset_materializations_for_node("llm_base_promotion")
    run = client.get_run(runs["genops-llm-base"])
    assert run.data.metrics["eval/perplexity"] > 1.0 and 0.0 <= run.data.metrics["eval/next_token_accuracy"] <= 1.0
    tags = client.get_model_version("genops-llm-base", "1").tags
    assert tags[TAG_DECISION] == "rejected" and "perplexity_over_unigram" in tags["genops.promotion.reason"]
    assert _table_rows(client, run.info.run_id, root) == ["llm_base (genops-llm-base v1)",
                                                         "*Unigram model of the same tokens (floor)*"]
