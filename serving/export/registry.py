"""Export from the MLflow registry: resolve a version (alias or number), build the bundle, log it back."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class RegistryError(ValueError):
    pass


def resolve_version(client, name: str, alias: str | None, version: int | None):
    """The registered ModelVersion for `--version N` or `--alias A`; a missing alias says what to do instead."""
    from mlflow.exceptions import MlflowException

    if version is not None:
        try:
            return client.get_model_version(name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"--version {version}: model {name!r} has no version {version} in the registry") from exc
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        if not versions:
            raise RegistryError(f"model {name!r} has no registered version; train it first") from exc
        raise RegistryError(
            f"--alias {alias}: model {name!r} has no alias {alias!r} (versions: {versions}); pass --version N, or "
            f"promote a version first (genops registry promote {name} <version>)") from exc


def lineage_of(client, mv) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    run_tags = {}
    try:
        run_tags = client.get_run(mv.run_id).data.tags
    except Exception:  # noqa: BLE001 - a version whose run was deleted still exports, with less lineage
        logger.warning("run %s of %s v%s not found; lineage from the version's tags only", mv.run_id, mv.name, mv.version)
    merged = {**run_tags, **tags}
    metrics = {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}
    return {
        "source_run": mv.run_id,
        "dataset_versions": {k.removeprefix("dataset_version."): v for k, v in merged.items()
                             if k.startswith("dataset_version.")},
        "git_commit": merged.get("git_commit", "unknown"),
        "metrics": metrics,
    }


def export_from_registry(family: str, out: Path, tracking_uri: str, alias: str | None = "champion",
                         version: int | None = None, log_to_mlflow: bool = True, e2e_steps: int = 4) -> dict[str, Any]:
    """Build the bundle of a registered version of `family` at `out` and log it to MLflow beside the version."""
    import mlflow

    from serving.bundle import build_bundle
    from serving.export.families import FAMILIES
    from training_jobs.model_inputs import resolve_model_path

    if family not in FAMILIES:
        raise RegistryError(f"no exporter for {family!r}; families with one: {', '.join(FAMILIES)}")
    name = FAMILIES[family].registered_model
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    mv = resolve_version(client, name, None if version is not None else alias, version)
    model_dir = resolve_model_path(f"models:/{name}/{mv.version}", tracking_uri)
    registry = {"model": name, "version": int(mv.version), "alias": alias if version is None else None,
                "uri": f"models:/{name}/{mv.version}"}
    manifest = build_bundle(out, family, model_dir, registry, lineage_of(client, mv), e2e_steps=e2e_steps)
    if log_to_mlflow:
        log_bundle(client, tracking_uri, out, manifest)
    return manifest


def log_bundle(client, tracking_uri: str, bundle: Path, manifest: dict[str, Any]) -> str:
    """Log the bundle as artifacts of an export run (experiment genops-exports), and tag the model version with
    it and its parity result (the promotion gate reads `export.parity_passed`)."""
    from training_jobs.tracking import artifact_location

    reg = manifest["registry"]
    experiment = client.get_experiment_by_name("genops-exports")
    experiment_id = (experiment.experiment_id if experiment is not None else
                     client.create_experiment("genops-exports", artifact_location=artifact_location(tracking_uri)))
    run = client.create_run(experiment_id, run_name=f"export-{reg['model']}-v{reg['version']}", tags={
        "registered_model": reg["model"], "registered_version": str(reg["version"]),
        "source_run": manifest["source_run"] or "", "git_commit": manifest["git_commit"],
        "parity_passed": str(manifest["parity"]["passed"]).lower()})
    run_id = run.info.run_id
    client.log_metric(run_id, "parity/max_abs_err", max(r["max_abs_err"] for r in manifest["parity"]["graphs"]))
    client.log_metric(run_id, "parity/e2e_max_abs_pixel_diff", manifest["parity"]["end_to_end"]["max_abs_pixel_diff"])
    client.log_artifacts(run_id, str(bundle), "bundle")
    client.set_terminated(run_id, status="FINISHED")
    client.set_model_version_tag(reg["model"], str(reg["version"]), "export.bundle_run_id", run_id)
    client.set_model_version_tag(reg["model"], str(reg["version"]), "export.parity_passed",
                                 str(manifest["parity"]["passed"]).lower())
    return run_id
