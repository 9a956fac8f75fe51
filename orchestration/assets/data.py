"""Data assets: each one reproduces its DVC stage(s), pushes the outputs, and records what came out.

The DVC md5 of a stage's output is the asset's Dagster data version and the `dataset_version`
metadata that training runs log, so a model can be traced back to the exact bytes it saw.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from orchestration.resources import DvcResource

GROUP = "data"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


@dg.asset(group_name=GROUP, kinds={"dvc"}, description="The synthetic world in the real public formats, with ground truth (DVC stage `generate`).")
def synthetic_world(context: dg.AssetExecutionContext, dvc: DvcResource) -> dg.MaterializeResult:
    pipeline = dvc.pipeline()
    ran = pipeline.reproduce("generate")
    pipeline.push("generate")
    version = pipeline.version("generate")
    manifest = _read_json(pipeline.root / "data" / "raw" / "world_manifest.json")
    context.log.info(f"synthetic world version {version} ({'regenerated' if ran else 'up to date'})")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "dataset_version": version,
            "path": str(pipeline.root / "data" / "raw"),
            "reproduced": bool(ran),
            "seed": manifest.get("seed"),
            "datasets": dg.MetadataValue.json(manifest.get("counts", {})),
            "injected_faults": len(manifest.get("injected_faults", [])),
        },
    )


def _table1_markdown(stats: dict[str, Any]) -> str:
    lines = ["| split | number | short side | avg words | avg nouns |", "|---|---|---|---|---|"]
    for split, row in {**stats.get("splits", {}), "all": stats.get("all", {})}.items():
        lines.append(
            f"| {split} | {row.get('count')} | {row.get('avg_short_side')} | {row.get('avg_words')} | {row.get('avg_nouns')} |"
        )
    return "\n".join(lines)


def prepared_dataset_asset(dataset: str) -> dg.AssetsDefinition:
    """The asset of one dataset: DVC stages `validate@<dataset>` then `prepare@<dataset>`."""
    checks = [
        dg.AssetCheckSpec("bad_fraction_within_limit", asset=f"prepared_{dataset}", blocking=True,
                          description="Quarantined fraction is at most validation.max_bad_fraction."),
        dg.AssetCheckSpec("splits_not_empty", asset=f"prepared_{dataset}", blocking=True,
                          description="Every split (or the prompt set) holds records."),
    ]

    @dg.asset(
        name=f"prepared_{dataset}",
        group_name=GROUP,
        deps=[synthetic_world],
        kinds={"dvc"},
        check_specs=checks,
        description=f"{dataset}: validated (bad records quarantined with a reason), split, sharded; DVC-versioned.",
    )
    def _asset(context: dg.AssetExecutionContext, dvc: DvcResource) -> dg.MaterializeResult:
        pipeline = dvc.pipeline()
        stages = (f"validate@{dataset}", f"prepare@{dataset}")
        ran = pipeline.reproduce(*stages)
        pipeline.push(*stages)
        version = pipeline.version(f"prepare@{dataset}")
        validated = pipeline.root / "data" / "validated" / dataset
        prepared = pipeline.root / "data" / "prepared" / dataset
        validation = _read_json(validated / "validation.json")
        stats = _read_json(prepared / "stats.json")
        manifest = _read_json(prepared / "manifest.json")
        counts = {s: v["count"] for s, v in manifest.get("splits", {}).items()}
        if "prompts" in manifest:
            counts = {"prompts": manifest["prompts"]["count"]}
        max_bad = validation.get("config", {}).get("max_bad_fraction", 0.0)
        bad_fraction = validation.get("bad_fraction", 1.0)
        empty = sorted(s for s, n in counts.items() if n == 0 and s != "holdout")
        context.log.info(f"{dataset}: version {version}, counts {counts}, quarantined {validation.get('quarantined')}")
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            metadata={
                "dataset_version": version,
                "validated_version": pipeline.version(f"validate@{dataset}"),
                "path": str(prepared),
                "reproduced": ran,
                "records_read": validation.get("read"),
                "records_kept": validation.get("kept"),
                "quarantined": validation.get("quarantined"),
                "quarantine_reasons": dg.MetadataValue.json(validation.get("reasons", {})),
                "quarantine_file": str(validated / "quarantine.jsonl"),
                "split_counts": dg.MetadataValue.json(counts),
                "statistics": dg.MetadataValue.md(_table1_markdown(stats)),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="bad_fraction_within_limit",
                    passed=bad_fraction <= max_bad,
                    metadata={"bad_fraction": bad_fraction, "max_bad_fraction": max_bad},
                ),
                dg.AssetCheckResult(
                    check_name="splits_not_empty",
                    passed=bool(counts) and not empty,
                    metadata={"split_counts": dg.MetadataValue.json(counts), "empty_splits": ", ".join(empty) or "none"},
                ),
            ],
        )

    return _asset


def tokenizer_asset(prepared: list[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    @dg.asset(
        name="tokenizer",
        group_name=GROUP,
        deps=prepared,
        kinds={"dvc"},
        description="Byte-level BPE trained on the prepared train splits, saved in Hugging Face format.",
    )
    def _asset(context: dg.AssetExecutionContext, dvc: DvcResource) -> dg.MaterializeResult:
        pipeline = dvc.pipeline()
        ran = pipeline.reproduce("tokenizer")
        pipeline.push("tokenizer")
        version = pipeline.version("tokenizer")
        path = pipeline.root / "data" / "tokenizer"
        vocab = len(json.loads((path / "tokenizer.json").read_text())["model"]["vocab"])
        return dg.MaterializeResult(
            data_version=dg.DataVersion(version),
            metadata={"dataset_version": version, "path": str(path), "vocab_size": vocab, "reproduced": bool(ran)},
        )

    return _asset


def dataset_names(params_path: Path) -> list[str]:
    """The datasets `params.yaml` declares, in file order."""
    params = yaml.safe_load(Path(params_path).read_text()) or {}
    names = list((params.get("datasets") or {}).keys())
    if not names:
        raise ValueError(f"{params_path} declares no `datasets`")
    return names


def build_data_assets(datasets: list[str]) -> list[dg.AssetsDefinition]:
    """All data assets for the given dataset names: world, one prepared asset each, tokenizer."""
    prepared = [prepared_dataset_asset(name) for name in datasets]
    return [synthetic_world, *prepared, tokenizer_asset(prepared)]
