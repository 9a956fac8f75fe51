"""`genops demo`'s closing summary: every value whole at 80 columns (and narrower), the model's eval rows
beside their ceilings, each asset's wall time and the total; and the Dagster glue that collects it."""

import re

import dagster as dg

from orchestration.cli.demo_summary import AssetSummary, render_summary
from orchestration.cli.stack import materialized_assets, write_summary

RUN_ID = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"

# Metadata as the demo's assets record it (orchestration/assets/*.py), with the real metric names.
PREPARED = {
    "dataset_version": "9f8e7d6c5b4a39281706f5e4d3c2b1a0.dir",
    "validated_version": "0a1b2c3d4e5f60718293a4b5c6d7e8f9.dir",
    "path": "/work/main/data/prepared/laion_short",
    "reproduced": True,
    "records_read": 2000,
    "records_kept": 1980,
    "quarantined": 20,
    "quarantine_reasons": {"corrupt_image": 6, "empty_caption": 5, "duplicate_image": 4, "missing_image": 3,
                           "small_image": 1, "unreadable": 1},
    "split_counts": {"train": 1583, "val": 199, "test": 99, "holdout": 99},
}
CLIP_EVALUATOR = {
    "mlflow_run_id": "5c4b3a29180f7e6d5c4b3a29180f7e6d",
    "registered_model_uri": "models:/genops-clip-evaluator/12",
    "model_dir": "/work/main/ray_results/clip_evaluator-demo-0f1e2d3c/checkpoint_000012/final",
    "ray_run_name": "clip_evaluator-demo-0f1e2d3c",
    "dataset_versions": {"laion_short": "9f8e7d6c5b4a39281706f5e4d3c2b1a0.dir"},
    "final_metrics": {"step": 1500, "val/retrieval_top1": 0.3984, "val/chance": 0.015625},
    "train_seconds": 324.2,
}
SD_BASE = {
    "mlflow_run_id": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
    "registered_model_uri": "models:/genops-sd-base/7",
    "model_dir": "/work/main/ray_results/sd_base-demo-0f1e2d3c/final",
    "final_metrics": {
        "step": 2500,
        "val/loss": 0.0102,
        "eval/object_precision": 0.2258,
        "eval/attribute_precision": 0.1234,
        "eval/location_precision": 0.0161,
        "eval/all_precision": 0.0323,
        "eval/colour_placement_precision": 0.0484,
        "eval/real_images_all_precision": 0.9839,
        "eval/vae_roundtrip_all_precision": 0.4516,
        "eval/vae_roundtrip_colour_placement_precision": 0.8548,
    },
    "train_seconds": 492.3,
}
ASSETS = [
    AssetSummary("prepared_laion_short", PREPARED, 21.4),
    AssetSummary("tokenizer", {"dataset_version": "77aa", "vocab_size": 4096}, 12.5),
    AssetSummary("clip_evaluator", CLIP_EVALUATOR, 331.7),
    AssetSummary("sd_base", SD_BASE, 500.9),
]


def lines_of(text: str) -> list[str]:
    return text.rstrip("\n").split("\n")


def test_every_value_is_whole_at_80_columns():
    text = render_summary(ASSETS, 80, run_id=RUN_ID, total_seconds=1116.4)
    lines = lines_of(text)
    assert max(len(line) for line in lines) <= 80
    assert "…" not in text and "..." not in text
    # identifiers on one line each, whole
    for value in ("models:/genops-clip-evaluator/12", "models:/genops-sd-base/7", CLIP_EVALUATOR["mlflow_run_id"],
                  SD_BASE["mlflow_run_id"], PREPARED["dataset_version"], RUN_ID):
        assert any(value in line for line in lines), value
    # one row per metric, label and value on the same line
    for label, value in (("val/retrieval_top1", "0.3984"), ("val/chance", "0.015625"), ("val/loss", "0.0102"),
                         ("step", "2500"), ("records kept", "1980"), ("quarantined", "20"), ("vocabulary", "4096")):
        assert any(re.fullmatch(rf"\s+{re.escape(label)}\s+{re.escape(value)}", line) for line in lines), label
    # every quarantine reason and split count, wrapped between items, never inside one
    for key, count in {**PREPARED["quarantine_reasons"], **PREPARED["split_counts"]}.items():
        assert re.search(rf"(^|\s){key}={count}(,|$)", text, re.MULTILINE), key


def test_eval_rows_sit_beside_their_ceilings():
    lines = lines_of(render_summary(ASSETS, 80))
    header = next(line for line in lines if "faithfulness" in line)
    assert header.split()[-5:] == ["model", "VAE", "round-trip", "real", "images"]
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines if line.startswith("    ")]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["all three"][-3:] == ["0.0323", "0.4516", "0.9839"]  # model, through the VAE, real images
    assert rows["colour placement"][-3:] == ["0.0484", "0.8548", "-"]
    assert rows["attribute"][-3:] == ["0.1234", "-", "-"]
    for measure in ("object", "location"):
        assert measure in rows


def test_each_asset_has_its_wall_time_and_the_total_is_given():
    text = render_summary(ASSETS, 80, run_id=RUN_ID, total_seconds=1116.4)
    for summary in ASSETS:
        (line,) = [line for line in lines_of(text) if line.startswith(summary.asset + " ")]
        assert line.endswith(f"wall {summary.seconds:.1f} s" + (f" ({summary.seconds / 60:.1f} min)"
                                                                 if summary.seconds >= 60 else ""))
    assert "training job      492.3 s (8.2 min)" in text  # the Ray job inside sd_base's step
    assert "asset steps together: 866.5 s (14.4 min)" in text
    assert "total wall time: 1116.4 s (18.6 min)" in text
    untimed = render_summary([AssetSummary("vae", {}, None), ASSETS[1]], 80)
    assert "wall time not recorded" in untimed and "(1 of 2 assets timed)" in untimed


def test_too_narrow_for_a_table_still_cuts_nothing():
    width = 40
    text = render_summary(ASSETS, width, run_id=RUN_ID, total_seconds=1116.4)
    lines = lines_of(text)
    # lines only run past the width for a single value that is itself longer than the space left
    assert all(len(line) <= width or len(line.split()[-1]) > width // 2 for line in lines)
    assert "models:/genops-clip-evaluator/12" in text and PREPARED["dataset_version"] in text
    # the faithfulness table does not fit: each eval metric gets its own row, under its own name
    for key, value in SD_BASE["final_metrics"].items():
        if key.startswith("eval/"):
            assert re.search(rf"{re.escape(key)}\s+{value}$", text, re.MULTILINE), key
    long_value = "models:/" + "a-very-long-registered-model-name-" * 3 + "/1"
    wide = render_summary([AssetSummary("x", {"registered_model_uri": long_value}, 1.0)], width)
    assert long_value in wide  # printed whole, past the width, not cut


def test_materialized_assets_and_summary_files_from_a_real_run(tmp_path):
    @dg.asset
    def numbers() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"records_kept": 3, "final_metrics": dg.MetadataValue.json({"val/loss": 0.5})})

    @dg.asset(deps=[numbers])
    def model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"registered_model_uri": "models:/genops-test/1", "train_seconds": 1.5})

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([numbers, model], instance=instance)
        assets = materialized_assets(result, instance)
    assert [a.asset for a in assets] == ["numbers", "model"]
    assert assets[0].metadata["final_metrics"] == {"val/loss": 0.5} and assets[0].metadata["records_kept"] == 3
    assert assets[1].metadata["registered_model_uri"] == "models:/genops-test/1"
    assert all(a.seconds is not None and a.seconds >= 0 for a in assets)  # every step's start and end were found

    text = render_summary(assets, 80, run_id=result.run_id, total_seconds=2.0)
    run_file, latest = write_summary(text, tmp_path / "outputs" / "demo", result.run_id)
    assert run_file == tmp_path / "outputs" / "demo" / f"summary-{result.run_id}.txt"
    assert latest == tmp_path / "outputs" / "demo" / "summary.txt"
    assert run_file.read_text() == latest.read_text() == text
    assert sorted(p.name for p in run_file.parent.iterdir()) == sorted([run_file.name, latest.name])  # no temp files
    assert "models:/genops-test/1" in text and "val/loss" in text
