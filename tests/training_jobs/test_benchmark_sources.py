"""Benchmark sets and model folders as the demo writes them (both broke the first demo-profile
evaluation run, on 2026-12-03, while the tiny tests passed): VLAD's benchmark comes from mario_eval's
prompts.jsonl (a prompt-only dataset has no split shards), and a clip_base folder is a genops CLIP folder."""

from __future__ import annotations

from pathlib import Path

from components.config import load_config
from components.data.formats import read_corpus
from components.data.pipeline_config import DataConfig
from components.data.prepare import prepare_dataset, validate_corpus
from components.data.synthetic.world import DATASET_FORMATS, WorldConfig, generate_world
from components.metrics.loading import load_clip_image_processor
from components.models.clip_base import GENOPS_CONFIG_FILE
from components.models.clip_evaluator import CLIP_PIXEL_MEAN
from training_jobs.evaluation import build_benchmark, read_benchmark
from training_jobs.vlad_evaluation import VLAD_EVALUATION

ROOT = Path(__file__).parents[2]


def test_vlad_benchmark_is_built_from_mario_evals_prompts_file(tmp_path):
    cfg = load_config(DataConfig, ROOT / "training_jobs" / "configs" / "data" / "tiny.yaml")
    generate_world(WorldConfig(**({name: 0 for name in DATASET_FORMATS} | {"mario_eval": 6}), fault_fraction=0.0),
                   tmp_path / "raw")
    spec = cfg.spec("mario_eval")
    validate_corpus(read_corpus(spec.format, tmp_path / "raw" / "mario_eval"), tmp_path / "validated" / "mario_eval",
                    dataset="mario_eval", fmt=spec.format, source=tmp_path / "raw" / "mario_eval",
                    cfg=cfg.validation_for("mario_eval"))
    prepare_dataset(tmp_path / "validated" / "mario_eval", tmp_path / "prepared" / "mario_eval", dataset="mario_eval",
                    split_cfg=cfg.split_for("mario_eval"), shard_cfg=cfg.shards)
    assert (tmp_path / "prepared" / "mario_eval" / "prompts.jsonl").is_file()

    path, md5, count = build_benchmark(VLAD_EVALUATION, tmp_path / "prepared", tmp_path / "vlad.jsonl", "tiny")
    rows = read_benchmark(path)
    assert count == len(rows) == VLAD_EVALUATION.benchmark_size["tiny"]
    assert len(md5) == 32
    assert all("'" in row.prompt or '"' in row.prompt for row in rows)  # MARIO-Eval prompts quote their words
    assert all(row.image is not None for row in rows)  # the ground-truth render: the OCR ceiling row


def test_a_clip_base_folder_gets_clips_preprocessing(tmp_path):
    (tmp_path / GENOPS_CONFIG_FILE).write_text("{}")
    processor = load_clip_image_processor(tmp_path, 32)
    assert tuple(processor.image_mean) == CLIP_PIXEL_MEAN
    assert processor.crop_size == {"height": 32, "width": 32}
