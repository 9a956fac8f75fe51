"""`genops metrics ...` through typer's CliRunner, on datasets written by the synthetic world in
their real formats (CC3M TSV, MARIO-Eval with groundtruth.jsonl) and on small image folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from components.data.synthetic.world import DATASET_FORMATS, WorldConfig, generate_world
from components.metrics.fid import FeatureStatistics
from orchestration.cli.metrics import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    counts = {name: 0 for name in DATASET_FORMATS} | {"cc3m": 16, "mario_eval": 4}
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(**counts, fault_fraction=0.0), out)
    return out


def flat(output: str) -> str:
    """Command output without the whitespace and box borders rich wraps error panels in."""
    return "".join(output.replace("│", " ").split())


def invoke_json(args: list[str]) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_faithfulness_on_the_worlds_ground_truth(world):
    metrics = invoke_json(["faithfulness", str(world / "cc3m")])
    assert metrics["images"] == 16 and metrics["objects"] >= 16
    assert metrics["object_precision"] >= 0.95 and metrics["attribute_precision"] >= 0.95
    assert metrics["location_precision"] >= 0.95


def test_faithfulness_from_parsed_cc3m_captions_and_table_output(world):
    (tsv,) = (world / "cc3m").glob("*.tsv")
    metrics = invoke_json(["faithfulness", str(world / "cc3m"), "--prompts", str(tsv)])
    assert metrics["located_objects"] == metrics["objects"]  # every caption places every object
    assert metrics["all_precision"] >= 0.95
    table = runner.invoke(app, ["faithfulness", str(world / "cc3m"), "--prompts", str(tsv)])
    assert table.exit_code == 0 and "location precision" in table.stdout


def test_ocr_on_mario_eval_reference_images(world):
    folder = world / "mario_eval"
    metrics = invoke_json(["ocr", str(folder), "--prompts", str(folder / "groundtruth.jsonl")])
    assert metrics["count"] == 4 and metrics["f_measure"] >= 0.9
    assert "CPUExecutionProvider" in metrics["providers"]


def test_bad_prompts_file_names_the_line(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "prompts.jsonl").write_text(
        '{"image": "a.png", "prompt": "x"}\n{"image": "b.png", "prompt": "y"}\n'
    )
    result = runner.invoke(app, ["ocr", str(tmp_path), "--prompts", str(tmp_path / "prompts.jsonl")])
    assert result.exit_code == 1
    assert "prompts.jsonl:2" in flat(result.output) and "b.png" in flat(result.output)


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    """Two folders of 8 images at the same relative paths, and prompts for the first."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    lines = []
    for name in ("gen", "ref"):
        for i in range(8):
            path = root / name / "sub" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (
                rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                if name == "gen"
                else np.full((40, 40, 3), 30 * i, np.uint8)
            )
            Image.fromarray(pixels).save(path)
            if name == "gen":
                lines.append(json.dumps({"image": f"sub/{i}.png", "prompt": f"a red circle number {i}"}))
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_clip_score_with_reference_images(image_sets, tiny_clip_dir):
    root = image_sets
    args = [
        "clip-score",
        str(root / "gen"),
        "--prompts",
        str(root / "prompts.jsonl"),
        "--clip-model",
        str(tiny_clip_dir),
    ]
    metrics = invoke_json([*args, "--reference-dir", str(root / "gen")])
    assert metrics["count"] == 8 and metrics["model"] == "clip:tiny-clip"
    assert 0.0 <= metrics["clip_score"] <= 1.0
    # each image against itself: the cosine of an fp32 embedding (32 dims) with itself is within
    # (32 + 3) * 2^-24 = 2e-6 of 1 (Higham's dot-product bound), and re-batching only moves it second order
    assert metrics["clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert invoke_json([*args, "--no-prefix"])["prefix"] == ""


def test_fid_with_the_clip_extractor_saved_stats_and_cache(image_sets, tiny_clip_dir, tmp_path):
    root = image_sets
    clip = ["--extractor", "clip", "--clip-model", str(tiny_clip_dir), "--batch-size", "3"]
    stats = tmp_path / "gen.npz"
    first = invoke_json(["fid", str(root / "gen"), str(root / "ref"), *clip, "--save-stats", str(stats)])
    assert first["metric"] == "fid[clip:tiny-clip]" and first["value"] > 0
    assert first["count_generated"] == 8 and stats.is_file()
    same = invoke_json(["fid", str(stats), str(root / "gen"), *clip])
    # Identical statistics of 8 images in d dims: the d - 7 null eigenvalues come out of float64 eigh as
    # +-d * 2^-52 * |S|, and their square roots count twice in the distance.
    covariance = FeatureStatistics.load(stats).covariance
    d = covariance.shape[0]
    assert abs(same["value"]) <= 2 * (d - 7) * np.sqrt(d * 2.0**-52) * np.trace(covariance)
    cache = ["--cache-dir", str(tmp_path / "cache"), "--dataset-version", "md5:0"]
    cold = invoke_json(["fid", str(root / "gen"), str(root / "ref"), *clip, *cache])
    warm = runner.invoke(app, ["fid", str(root / "gen"), str(root / "ref"), *clip, *cache, "--json"])
    assert "cached statistics for md5:0" in warm.output
    # the cached float64 statistics are the cold run's bit for bit: the same distance, as printed
    assert json.loads(warm.stdout)["value"] == cold["value"]


def test_fid_needs_inception_weights_and_refuses_is_without_inception(image_sets, tiny_clip_dir):
    root = image_sets
    result = runner.invoke(app, ["fid", str(root / "gen"), str(root / "ref")])
    assert result.exit_code == 2 and "--inception-weights" in flat(result.output)
    result = runner.invoke(
        app,
        [
            "fid",
            str(root / "gen"),
            str(root / "ref"),
            "--extractor",
            "clip",
            "--clip-model",
            str(tiny_clip_dir),
            "--inception-score",
        ],
    )
    assert result.exit_code == 2 and "needs--extractorinception" in flat(result.output)


def test_narration_with_mm_relevance(image_sets, tiny_clip_dir):
    root = image_sets
    turns = [
        {"dialogue": "d1", "prediction": "the cat sat on the mat", "reference": "the cat sat on the mat",
         "predicted_image": "gen/sub/0.png", "reference_image": "gen/sub/0.png"},
        {"dialogue": "d1", "prediction": "", "reference": "police killed the gunman"},
        {"dialogue": "d2", "prediction": "police kill the gunman", "reference": "police killed the gunman"},
    ]  # fmt: skip
    path = root / "turns.jsonl"
    path.write_text("\n".join(json.dumps(t) for t in turns) + "\n")
    metrics = invoke_json(["narration", str(path), "--no-sbert", "--clip-model", str(tiny_clip_dir)])
    assert metrics["turns_scored"] == 3 and metrics["dialogues"] == 2
    # means of exact LCS ratios in float64 (1e-16) under approx's default rel 1e-6
    assert metrics["rouge_l"] == pytest.approx(((1.0 + 0.0) / 2 + 0.75) / 2)
    assert metrics["sbert"] is None and 0.0 < metrics["mm_relevance"] <= 1.0
