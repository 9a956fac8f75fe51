"""The Ray run name of a training job, keyed on what the training is, not on who asked for it.

    <recipe>-<profile>-<key>[-r<n>]

`key` hashes the resolved config (every value, overrides included: upstream model URIs, steps, seeds)
and the DVC versions of the datasets it reads. The launcher resumes a job launched again under the
same name from its latest checkpoint, so a Dagster run retried after a crash (a new Dagster run id)
continues the training it interrupted instead of starting over. Once a training with that key has
FINISHED in MLflow, asking for it again is a deliberate re-run (e.g. `genops demo --force`): it gets
the next `-r<n>` suffix and starts fresh, and a retry of that re-run resumes it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from components.config import to_dict

# Fields that say where or under which run a job goes, not what it trains.
IDENTITY_EXCLUDED = {("run", "name"), ("tracking", "run_id"), ("tracking", "parent_run_id"), ("tracking", "git_commit")}


def training_key(cfg: Any, versions: dict[str, str]) -> str:
    """sha256 (first 12 hex) of the resolved config and the dataset versions."""
    values = to_dict(cfg)
    for section, name in IDENTITY_EXCLUDED:
        if isinstance(values.get(section), dict):
            values[section].pop(name, None)
    payload = json.dumps({"config": values, "datasets": dict(sorted(versions.items()))}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def finished_runs(tracking_uri: str, experiment: str, base: str) -> int:
    """How many MLflow runs of `experiment` named `base` or `base-r<n>` FINISHED."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return 0
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`genops.run_name` LIKE '{base}%' and attributes.status = 'FINISHED'",
        max_results=1000,
    )
    names = {r.data.tags.get("genops.run_name") for r in runs}
    return sum(1 for n in names if n == base or (n or "").removeprefix(f"{base}-r").isdigit())


def training_run_name(recipe: str, profile: str, cfg: Any, versions: dict[str, str], tracking_uri: str) -> str:
    """The run name to launch under: resumes an unfinished training of this key, or starts the next one."""
    base = f"{recipe}-{profile}-{training_key(cfg, versions)}"
    done = finished_runs(tracking_uri, cfg.tracking.experiment, base)
    return base if done == 0 else f"{base}-r{done + 1}"
