"""llm_base and clip_base train for real (tiny, Ray Train local mode), register, and load for their users."""

import json
import math

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from components.models.clip_base import ClipBase
from components.models.llm_base import LlmBase
from orchestration.cli import app
from training_jobs.launcher import launch

pytestmark = pytest.mark.integration

TEXT_CORPORA = ["laion_short", "cc3m", "paraimage_big", "paraimage_small", "vist", "mmdialog"]


@pytest.fixture(scope="module")
def trained_llm(tiny_text_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_base")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    result = launch(
        "llm_base", "tiny",
        [f"data.prepared_root={tiny_text_data / 'data' / 'prepared'}",
         f"data.tokenizer={tiny_text_data / 'data' / 'tokenizer'}", f"run.storage_path={root / 'ray'}"],
        tracking_uri=tracking_uri, versions={},
    )
    return result, tracking_uri


def test_llm_base_learns_every_text_corpus_and_registers(trained_llm):
    result, tracking_uri = trained_llm
    assert (result.registered_model, result.registered_version) == ("genops-llm-base", "1")
    metrics = result.metrics
    llm = LlmBase.from_pretrained(result.model_dir)
    vocab = len(llm.tokenizer)
    # held-out perplexity on the val split, per corpus and overall. A random initialisation scores a
    # uniform guess (its logits are near zero: perplexity = vocabulary size); 4 steps already beat it
    # (here 339 of 410 tokens, accuracy 0.10: the frequent tokens are learnt first)
    assert {f"val/perplexity/{name}" for name in TEXT_CORPORA} <= set(metrics)
    assert 1.0 < metrics["val/perplexity"] < 0.9 * vocab
    # perplexity = exp(loss) in float64, logged and read back: ~1e-16 apart, under approx's rel 1e-6
    assert metrics["val/loss"] == pytest.approx(math.log(metrics["val/perplexity"]))
    assert 10 / vocab < metrics["val/next_token_accuracy"] <= 1.0
    assert metrics["val/unigram_perplexity"] > 1.0 and metrics["val/tokens"] > 0
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert json.loads(run.data.params["data.datasets"].replace("'", '"')) == TEXT_CORPORA
    assert run.data.metrics["train/loss"] > 0  # the loop logged its loss terms
    logged = [a.path for a in MlflowClient(tracking_uri).list_artifacts(result.run_id, "samples")]
    assert any(path.endswith("continuations_step000004.txt") for path in logged)
    assert type(llm.model).__name__ == "LlamaForCausalLM"
    assert all(isinstance(text, str) for text in llm.generate(["a red circle"], max_new_tokens=4))


def test_genops_sample_continues_text_from_the_registered_model(trained_llm, monkeypatch):
    _, tracking_uri = trained_llm
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    result = CliRunner().invoke(app, ["sample", "llm_base", "--prompt", "a red circle", "--prompt", "the image shows",
                                      "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if " >>> " in line]  # download progress goes to stderr
    assert [line.split(" >>> ")[0] for line in lines] == ["a red circle", "the image shows"]
    assert "continued 2 prompt(s)" in result.output and "genops-llm-base-v1" in result.output


def test_clip_base_trains_on_the_train_split_and_registers_as_its_own_model(tiny_data, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = launch(
        "clip_base", "tiny",
        [f"data.prepared_root={tiny_data / 'data' / 'prepared'}", f"data.tokenizer={tiny_data / 'data' / 'tokenizer'}",
         f"run.storage_path={tmp_path / 'ray'}"],
        tracking_uri=tracking_uri, versions={},
    )
    assert (result.registered_model, result.registered_version) == ("genops-clip-base", "1")
    # chance is 1 / batch, a float64 division (approx's default rel 1e-6 is far above its rounding)
    assert 0 <= result.metrics["val/retrieval_top1"] <= 1 and result.metrics["val/chance"] == pytest.approx(1 / 8)
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.data.params["data.train_split"] == "train"
    # the folder says which CLIP it holds; a folder of the evaluator would carry genops_clip_evaluator.json
    assert (result.model_dir / "genops_clip_base.json").is_file()
    assert not (result.model_dir / "genops_clip_evaluator.json").exists()
    clip = ClipBase.from_pretrained(result.model_dir).eval()
    assert clip.cfg is not None and clip.cfg.vision.image_size == 32
    with torch.no_grad():
        text = clip.embed_texts(["a red circle", "a blue square"])
        image = clip.embed_images(torch.zeros(1, 3, 32, 32))
    # unit vectors re-measured in fp32 over <= 64 components: within (64 + 4) * 2^-24 = 4e-6 of 1 (Higham)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5) and image.shape == (1, text.shape[1])
