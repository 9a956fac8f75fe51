"""The evaluation group in Dagster (in-process) against a real SQLite MLflow registry: benchmark set,
evaluation logged to the version's run, blocking gate checks, promotion."""

from __future__ import annotations

import tempfile
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from transformers import AutoTokenizer

from components.config import load_config
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.clip_evaluator import ClipEvaluator, ClipEvaluatorConfig
from components.models.sd_base import SDBase, SDBaseConfig
from orchestration.assets.evaluation import evaluation_assets
from orchestration.resources import DvcResource, MlflowResource, TrainingResource
from training_jobs.evaluation import file_md5
from training_jobs.pyfunc_models import TextToImageModel
from training_jobs.registry import CHAMPION, TAG_DECISION, TAG_REASON, read_history
from training_jobs.sd_base_evaluation import SD_BASE
from training_jobs.tracking import TrackingConfig, register_model

PROJECT = Path(__file__).resolve().parents[2]
MODELS = PROJECT / "training_jobs" / "configs" / "models"
RUN_CONFIG = {"ops": {"sd_base_evaluation": {"config": {"steps": 2, "reference_images": 8}}}}


@pytest.fixture(scope="module")
def registered(tiny_data, tmp_path_factory):
    """A random-init tiny sd_base registered as genops-sd-base v1, and a tiny evaluator CLIP folder."""
    root = tmp_path_factory.mktemp("evaluation")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("genops-base-models", artifact_location=(root / "artifacts").as_uri())
    tokenizer = AutoTokenizer.from_pretrained(tiny_data / "data" / "tokenizer")
    vae = build_autoencoder(load_config(AutoencoderConfig, MODELS / "vae" / "tiny.yaml"))
    sd = SDBase.from_config(load_config(SDBaseConfig, MODELS / "sd_base" / "tiny.yaml"), tokenizer)
    sd.save_pretrained(root / "sd", vae=vae)
    run_id = client.create_run(exp).info.run_id
    version = register_model(TrackingConfig(tracking_uri=uri, registered_model="genops-sd-base",
                                            dataset_versions={"laion_short": "md5-of-laion"}, git_commit="abc"),
                             run_id, root / "sd", TextToImageModel(), {})
    ClipEvaluator.from_config(load_config(ClipEvaluatorConfig, MODELS / "clip_evaluator" / "tiny.yaml"),
                              tokenizer).save_pretrained(root / "clip")
    return uri, client, root, version, run_id


def _materialize(tiny_data, uri, root, policy_dir):
    instance = dg.DagsterInstance.ephemeral()
    for key, meta in (("sd_base", {"registered_model_uri": "models:/genops-sd-base/latest"}),
                      ("clip_evaluator", {"registered_model_uri": "", "model_dir": str(root / "clip")})):
        instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata=meta))
    resources = {"dvc": DvcResource(repo_root=str(tiny_data)), "mlflow": MlflowResource(tracking_uri=uri),
                 "training": TrainingResource(profile="tiny")}
    return dg.materialize(evaluation_assets(SD_BASE, policy_dir), instance=instance, resources=resources,
                          run_config=RUN_CONFIG, raise_on_error=False), instance


def _policy(folder: Path, floor: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "genops-sd-base.yaml").write_text(
        "model: genops-sd-base\nprimary_metric: clip_score\ndirection: higher\nmin_improvement: 0.0\n"
        f"gates:\n  - metric: faithfulness_object\n    min: {floor}\n")
    return folder


@pytest.mark.slow
def test_a_failing_gate_blocks_the_promotion_and_tags_the_reason(tiny_data, registered):
    """Runs first (file order): v1 is not yet a champion here."""
    uri, client, root, version, _ = registered
    result, _ = _materialize(tiny_data, uri, root, _policy(Path(tempfile.mkdtemp()), 2.0))  # a floor no model reaches
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("gate_faithfulness_object", False)]
    assert not result.asset_materializations_for_node("sd_base_promotion")  # blocked
    tags = client.get_model_version("genops-sd-base", version).tags
    assert tags[TAG_DECISION] == "rejected" and "faithfulness_object" in tags[TAG_REASON] and "< floor 2" in tags[TAG_REASON]
    assert read_history(client, "genops-sd-base")[-1]["action"] == "rejected"


@pytest.mark.slow
def test_evaluation_logs_to_the_version_run_and_a_passing_candidate_becomes_champion(tiny_data, registered):
    uri, client, root, version, run_id = registered
    result, _ = _materialize(tiny_data, uri, root, _policy(Path(tempfile.mkdtemp()), -1.0))
    assert result.success
    bench = result.asset_materializations_for_node("sd_base_benchmark")[0].metadata
    md5 = bench["md5"].value
    assert md5 == file_md5(Path(bench["path"].value)) and bench["items"].value == SD_BASE.benchmark_size["tiny"]
    # The benchmark's md5 is on the evaluation run and on the version (lineage of the numbers).
    run = client.get_run(run_id)
    assert run.data.tags["eval.benchmark_md5"] == md5
    assert client.get_model_version("genops-sd-base", version).tags["eval.benchmark_md5"] == md5
    assert {"eval/clip_score", "eval/fid_clip", "eval/faithfulness_object"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/comparison.md", "evaluation/comparison.html", "evaluation/grid.png",
            "evaluation/samples.json", "evaluation/samples"} <= artifacts
    # One table row per model and baseline present: the model, the floor, the ceiling.
    table = Path(client.download_artifacts(run_id, "evaluation/comparison.md", str(root / "dl")))
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == [
        f"SD (genops-sd-base v{version})", "*SD, empty prompt (floor)*", "*Ground-truth images (ceiling)*"]
    evaluation = result.asset_materializations_for_node("sd_base_evaluation")[0].metadata
    assert evaluation["clip_score"].value == pytest.approx(run.data.metrics["eval/clip_score"], rel=1e-6)
    promotion = result.asset_materializations_for_node("sd_base_promotion")[0].metadata
    assert promotion["decision"].value == "promoted"
    assert str(client.get_registered_model("genops-sd-base").aliases[CHAMPION]) == version
