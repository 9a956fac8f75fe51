"""Resources, chosen per environment in this one place: `local` (the embedded default) or `production`.

local       DVC in this checkout with the directory remote in .dvc/config; MLflow on a SQLite store
            under mlflow/store/; Ray started on this machine's CPUs on demand.
production  the same code against servers, configured by environment variables only:
            GENOPS_ROOT (checkout with dvc.yaml), GENOPS_DVC_REMOTE (an S3/GCS/MinIO remote name
            from .dvc/config), MLFLOW_TRACKING_URI, RAY_ADDRESS, GENOPS_RAY_STORAGE (the checkpoint
            folder, one every Ray node mounts, e.g. /shared/ray_results: the launcher takes a filesystem
            path, not an object-store URI), GENOPS_PROFILE (default paper).
Dagster's own storage (Postgres in production) is instance configuration: infra/dagster/dagster.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.dvc_pipeline import DvcPipeline


def project_root() -> Path:
    """The genops checkout: GENOPS_ROOT if set, else the folder this package was installed from."""
    root = os.environ.get("GENOPS_ROOT")
    return Path(root).resolve() if root else Path(__file__).resolve().parents[1]


def local_mlflow_uri(root: Path) -> str:
    """The embedded MLflow store: SQLite with an absolute path (MLflow 3.17 refuses the file store)."""
    return f"sqlite:///{(root / 'mlflow' / 'store' / 'mlflow.db').resolve()}"


class DvcResource(dg.ConfigurableResource):
    """The DVC repository that versions the data (dvc.yaml at `repo_root`)."""

    repo_root: str
    remote: str | None = None

    def pipeline(self) -> DvcPipeline:
        return DvcPipeline(self.repo_root, remote=self.remote)


class MlflowResource(dg.ConfigurableResource):
    """Where runs and registered models go."""

    tracking_uri: str
    registry_uri: str | None = None
    artifact_root: str | None = None


class RayResource(dg.ConfigurableResource):
    """The Ray cluster training jobs run on: None = a local instance on this machine."""

    address: str | None = None
    num_cpus: int | None = None


class TrainingResource(dg.ConfigurableResource):
    """How training assets launch their recipes: the config profile, where runs go, standing overrides."""

    profile: str = "demo"
    storage_path: str | None = None
    recipe_overrides: dict[str, list[str]] = {}

    def overrides_for(self, recipe: str) -> list[str]:
        return list(self.recipe_overrides.get(recipe, []))


def local_resources(root: Path | None = None) -> dict[str, Any]:
    root = Path(root or project_root()).resolve()
    (root / "mlflow" / "store").mkdir(parents=True, exist_ok=True)
    return {
        "dvc": DvcResource(repo_root=str(root)),
        "mlflow": MlflowResource(
            tracking_uri=local_mlflow_uri(root), artifact_root=str(root / "mlflow" / "store" / "artifacts")
        ),
        "ray": RayResource(),
        "training": TrainingResource(profile=os.environ.get("GENOPS_PROFILE", "demo"), storage_path=str(root / "ray_results")),
    }


def production_resources() -> dict[str, Any]:
    return {
        "dvc": DvcResource(repo_root=dg.EnvVar("GENOPS_ROOT"), remote=dg.EnvVar("GENOPS_DVC_REMOTE")),
        "mlflow": MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")),
        "ray": RayResource(address=dg.EnvVar("RAY_ADDRESS")),
        "training": TrainingResource(profile=os.environ.get("GENOPS_PROFILE", "paper"),
                                     storage_path=os.environ.get("GENOPS_RAY_STORAGE")),
    }


def resources_for(environment: str | None = None) -> dict[str, Any]:
    """Resources for GENOPS_ENV (`local` by default, or `production`)."""
    environment = environment or os.environ.get("GENOPS_ENV", "local")
    if environment == "local":
        return local_resources()
    if environment == "production":
        return production_resources()
    raise ValueError(f"GENOPS_ENV={environment!r} is not one of 'local', 'production'")
