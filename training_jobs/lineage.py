"""Dataset versions for lineage: the md5 DVC recorded in dvc.lock for each prepared dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

log = logging.getLogger(__name__)


def lock_outputs(root: Path, stage: str) -> list[dict]:
    """The `outs` entries dvc.lock records for a stage (`name` or `name@item`)."""
    lock_path = Path(root) / "dvc.lock"
    if not lock_path.is_file():
        raise FileNotFoundError(f"{lock_path} is missing: stage {stage} has never been reproduced (dvc repro)")
    entry = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {}).get(stage)
    if entry is None:
        raise KeyError(f"stage {stage} is not in {lock_path}; reproduce it first")
    return list(entry.get("outs", []))


def dataset_versions(root: Path, datasets: list[str]) -> dict[str, str]:
    """{dataset: md5 of data/prepared/<dataset>} for the datasets a job reads.

    A dataset DVC has not versioned (a corpus ingested by hand, a test folder) is reported as
    'unversioned' and said out loud, so lineage never silently claims a version it does not have.
    """
    versions = {}
    for name in datasets:
        try:
            versions[name] = lock_outputs(root, f"prepare@{name}")[0]["md5"]
        except (FileNotFoundError, KeyError, IndexError) as exc:
            log.warning("dataset %s has no DVC version (%s): logging it as 'unversioned'", name, exc)
            versions[name] = "unversioned"
    return versions
