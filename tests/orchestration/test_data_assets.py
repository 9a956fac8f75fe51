"""The data assets materialize in-process with Dagster on a real DVC repo, and carry the DVC md5."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration.assets.data import dataset_names
from orchestration.definitions import build_definitions
from orchestration.dvc_pipeline import DvcPipeline
from orchestration.resources import local_resources

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def materialized(tiny_repo):
    defs = build_definitions(dataset_names(tiny_repo / "params.yaml"), resources=local_resources(tiny_repo))
    job = defs.resolve_job_def("data_job")
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(instance=instance)
    return defs, job, instance, result


def materializations(result) -> dict[str, dict]:
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        out[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    return out


def test_every_data_asset_materializes_with_its_dvc_version(tiny_repo, materialized):
    _, _, _, result = materialized
    assert result.success
    mats = materializations(result)
    names = dataset_names(tiny_repo / "params.yaml")
    assert set(mats) == {"synthetic_world", "tokenizer", *(f"prepared_{n}" for n in names)}
    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]
    for name in names:
        meta = mats[f"prepared_{name}"]
        assert meta["dataset_version"] == lock[f"prepare@{name}"]["outs"][0]["md5"]
        assert meta["dataset_version"].endswith(".dir")
    assert mats["synthetic_world"]["dataset_version"] == lock["generate"]["outs"][0]["md5"]
    assert mats["tokenizer"]["vocab_size"] > 256


def test_data_version_is_the_dvc_md5(tiny_repo, materialized):
    _, _, instance, _ = materialized
    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]
    record = instance.get_latest_materialization_event(dg.AssetKey("prepared_laion_short"))
    tags = record.asset_materialization.tags
    assert tags["dagster/data_version"] == lock["prepare@laion_short"]["outs"][0]["md5"]


def test_injected_faults_are_quarantined_with_reasons(tiny_repo, materialized):
    _, _, _, result = materialized
    mats = materializations(result)
    manifest = json.loads((tiny_repo / "data" / "raw" / "world_manifest.json").read_text())
    faults_by_dataset = {}
    for fault in manifest["injected_faults"]:
        faults_by_dataset.setdefault(fault["dataset"], []).append(fault)
    assert faults_by_dataset, "the tiny world injects faults"
    for dataset, faults in faults_by_dataset.items():
        quarantined = mats[f"prepared_{dataset}"]["quarantined"]
        assert quarantined >= len(faults), (dataset, faults)
        lines = (tiny_repo / "data" / "validated" / dataset / "quarantine.jsonl").read_text().splitlines()
        assert all(json.loads(line)["reason"] for line in lines)


def test_checks_pass_and_block(materialized):
    _, _, _, result = materialized
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations)
    assert {e.check_name for e in evaluations} == {"bad_fraction_within_limit", "splits_not_empty"}


def test_second_run_reproduces_nothing_and_everything_is_pushed(tiny_repo, materialized):
    _, job, instance, _ = materialized
    again = job.execute_in_process(instance=instance)
    assert again.success
    assert all(meta["reproduced"] in (False, []) for meta in materializations(again).values())
    pipeline = DvcPipeline(tiny_repo)
    assert pipeline.status() == {}
    assert pipeline.cloud_status() == {}
    dvc = str(Path(sys.executable).parent / "dvc")
    dvc_status = subprocess.run([dvc, "status"], cwd=tiny_repo, capture_output=True, text=True, check=True)
    assert "up to date" in dvc_status.stdout
